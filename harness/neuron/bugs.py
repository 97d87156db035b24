"""Ways to get NxDI's calling conventions wrong, each seen or easy to make when porting, for the
self-test's driver mutants (harness/mutants.py). All off: NxDI's behaviour."""

from __future__ import annotations

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Bugs:
    write_modulus_w: bool = False  # generated tokens written to the sliding ring at pos % W, not pos % (W-1)
    expose_last_slot: bool = False  # the token-generation mask shows the sliding cache's never-written slot
    seed_position_order: bool = False  # the context's last W-1 keys handed over in position order, not ring order
    padding_visible: bool = False  # padding slots of the context bucket left visible to generated tokens
    count_padding_positions: bool = False  # a bucket's padding given positions n, n+1, ... (NxDI gives it 1)
    generation_sinks_missing: bool = False  # sinks loaded into learned_sinks but not the token-generation copy

    def changed(self) -> dict:
        return {f.name: True for f in fields(self) if getattr(self, f.name)}


# self-test name -> the bug it carries
DRIVER_MUTANTS = {
    "ring_written_at_pos_mod_w": Bugs(write_modulus_w=True),
    "generation_mask_exposes_unwritten_slot": Bugs(expose_last_slot=True),
    "ring_seeded_in_position_order": Bugs(seed_position_order=True),
    "bucket_padding_visible": Bugs(padding_visible=True),
    "padding_positions_counted": Bugs(count_padding_positions=True),
    "generation_sinks_not_loaded": Bugs(generation_sinks_missing=True),
}
