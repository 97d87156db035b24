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
    handover_one_short: bool = False  # context encoding hands over the last W-2 keys (ring order mod W-2)
    handover_one_long: bool = False  # context encoding hands over the last W keys (ring order mod W)
    # tensor parallelism (nxdi-emulation@tpN, harness/neuron/sharding.py and tp.py)
    same_kv_shard: bool = False  # every rank loads rank 0's k/v projection shard
    sink_shards_reversed: bool = False  # rank r gets the sinks of rank tp-1-r
    kv_replicas_tiled: bool = False  # kv heads replicated by tiling (0,1,0,1) instead of NxDI's interleave (0,0,1,1)
    o_proj_not_reduced: bool = False  # o_proj's partial sums never all-reduced: each rank keeps its own share
    sinks_of_first_rank: bool = False  # every rank takes sinks[0 : Hq/tp], as if sinks were not sharded

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
    "handover_one_key_short": Bugs(handover_one_short=True),
    "handover_one_key_long": Bugs(handover_one_long=True),
}

# self-test name -> (tp_degree, the bug): sharding mistakes, run as nxdi-emulation@tpN at small dims
# (8 query, 2 kv heads), each at a degree where it changes what a rank holds
SHARDING_MUTANTS = {
    "tp_every_rank_loads_rank0_kv": (2, Bugs(same_kv_shard=True)),
    "tp_sink_shards_reversed": (2, Bugs(sink_shards_reversed=True)),
    "tp_kv_replicas_tiled": (4, Bugs(kv_replicas_tiled=True)),
    "tp_o_proj_not_reduced": (2, Bugs(o_proj_not_reduced=True)),
    "tp_sinks_of_first_rank": (4, Bugs(sinks_of_first_rank=True)),
}
