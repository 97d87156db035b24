"""The self-test's variants. Each mutant carries one bug class seen in real gpt-oss ports (shared
notes/semantics.md); each benign variant is a correct implementation with other numerics. Mutants
must be caught, benign variants must pass. To add a bug class of your own, add a knob to
harness/candidates/emulation.py (or a candidate class) and an entry here.

Real ports have several bugs at once. A mutant named "a+b" carries the bugs of mutants a and b
together (any combination whose knobs do not collide works, e.g. `--candidate mutant:a+b`); the
self-test runs the combinations in MULTI_BUG and requires each of their bugs named at its own stage."""

from __future__ import annotations

from typing import Callable

from harness.candidates.emulation import EmulatedBlock
from harness.candidates.flash import FlashBlock
from harness.neuron.bugs import DRIVER_MUTANTS, SHARDING_MUTANTS
from harness.neuron.candidate import NxdiEmulation, ShardedCandidate

MUTANTS: dict[str, dict] = {
    "no_causal_mask": {"causal": False},
    "window_w_plus_1": {"window_delta": 1},
    "window_w_minus_1": {"window_delta": -1},
    "window_on_odd_layers": {"window_layers": "odd"},
    "no_window": {"window_layers": "none"},
    "sinks_dropped": {"sinks": "dropped"},
    "sinks_zeroed": {"sinks": "zero"},
    "sinks_wrong_head_order": {"sinks": "reversed"},
    "sinks_per_kv_head": {"sinks": "per_kv"},
    "gqa_tile_not_interleave": {"gqa": "tile"},
    "plain_rope_not_yarn": {"rope": "plain"},
    "yarn_concentration_missing": {"rope": "no_concentration"},
    "decode_positions_ignored": {"positions": "step"},
    "qkv_split_order_swapped": {"qkv_order": "kqv"},
    "norm_skipped": {"norm": False},
    "residual_missing": {"residual": False},
    "batch_flattened": {"flatten_batch": True},
    "padding_not_masked": {"mask_padding": False},
    "softmax_scale_multiplied": {"scale": "multiply"},
    # Long-context bugs, invisible below position 4096 (the last one below 32768): a RoPE table sized for
    # the original context and indexed modulo it; full layers whose KV cache was sized for the original
    # context and used as a ring, so they forget keys 4096 or more positions back; position ids stored in
    # 16 bits.
    "rope_table_wraps_at_4096": {"rope_table": 4096},
    "full_layers_keep_last_4096": {"full_cache": 4096},
    "positions_stored_as_int16": {"position_dtype": "int16"},
    # Regimes the default sweep and the generators must reach (issue 24): token generation only, the
    # window's edge, long positions past 8192 and keys past 65,536, decode across a tile boundary.
    "sinks_ignored_in_decode": {"decode_sinks": "dropped"},
    "window_one_short_in_decode": {"decode_window_delta": -1},
    "rope_table_wraps_at_8192": {"rope_table": 8192},
    "full_layers_keep_last_65536": {"full_cache": 65536},
    "decode_rope_off_from_512": {"decode_break": 512},
}

# Mutants whose bug only long positions reach (drawn as from_cache rows, harness/strategies.py).
LONG_CONTEXT_MUTANTS = ("rope_table_wraps_at_4096", "full_layers_keep_last_4096", "positions_stored_as_int16",
                        "rope_table_wraps_at_8192", "full_layers_keep_last_65536")
# Mutants whose bug only steps after the first reach (decode steps, a second chunk, a step from a cache)
# and the long-context ones (FAST_BUGS below): each must be killed within KILL_WITHIN generated examples
# on every seed the self-test tries.
KILL_WITHIN = 10
# One mutant per regime the default sweep must reach (issue 24): the self-test runs the sweep against
# each and requires it to fail there as well as in generated cases.
REGIME_MUTANTS = ("sinks_ignored_in_decode", "window_one_short_in_decode", "rope_table_wraps_at_8192",
                  "full_layers_keep_last_65536", "decode_rope_off_from_512")

# Combinations the self-test runs. The last is the port this harness was built for: no causal mask, the
# pre-attention norm never applied, sinks dropped and no residual, all at once.
MULTI_BUG: dict[str, tuple[str, ...]] = {"+".join(bugs): bugs for bugs in (
    ("no_causal_mask", "sinks_dropped"),
    ("norm_skipped", "no_window", "residual_missing"),
    ("plain_rope_not_yarn", "gqa_tile_not_interleave"),
    ("norm_skipped", "no_causal_mask", "sinks_dropped", "residual_missing"),
)}

# Every mutant the self-test hunts: the emulation's bug classes, their combinations, then NxDI's calling
# conventions broken in the driver the Neuron candidates share (harness/neuron/bugs.py), run through
# `nxdi-emulation`.
# Sharding mistakes (harness/neuron/bugs.py SHARDING_MUTANTS) run as `nxdi-emulation@tpN`, one process per rank.
ALL_MUTANTS = (*MUTANTS, *MULTI_BUG, *DRIVER_MUTANTS, *SHARDING_MUTANTS)
# Whole-mutant names (no "a+b" combinations) that are not knobs of the CPU emulation
OWN_CANDIDATE = (*DRIVER_MUTANTS, *SHARDING_MUTANTS)
PLAN_BUGS = ("decode_positions_ignored", "sinks_ignored_in_decode", "window_one_short_in_decode",
             "decode_rope_off_from_512", *DRIVER_MUTANTS)
FAST_BUGS = (*PLAN_BUGS, *LONG_CONTEXT_MUTANTS)

BENIGN: dict[str, Callable[[], object]] = {
    "softmax_float32": lambda: EmulatedBlock(name="benign:softmax_float32", softmax="float32"),
    "row_max_subtracted_bf16": lambda: EmulatedBlock(name="benign:row_max_subtracted_bf16", softmax="max_subtracted"),
    "separate_qkv_matmuls": lambda: EmulatedBlock(name="benign:separate_qkv_matmuls", projections="separate"),
    "flash_tiles_online_softmax": lambda: FlashBlock(name="benign:flash_tiles_online_softmax"),
    "out_projection_fp32_accumulate": lambda: EmulatedBlock(name="benign:out_projection_fp32_accumulate", out_accumulate="float32"),
}


def bug_classes(name: str) -> tuple[str, ...]:
    """The single-bug mutants a mutant name combines ("a+b" -> ("a", "b"))."""
    if name in OWN_CANDIDATE:
        return (name,)
    bugs = tuple(name.split("+"))
    unknown = [b for b in bugs if b not in MUTANTS]
    if unknown or len(set(bugs)) != len(bugs):
        what = f"unknown mutant {unknown[0]!r}" if unknown else f"mutant {name!r} names a bug twice"
        raise ValueError(f"{what}; mutants are: {', '.join((*MUTANTS, *OWN_CANDIDATE))} (or several of the first "
                         f"{len(MUTANTS)} joined with '+')")
    return bugs


def mutant_knobs(name: str) -> dict:
    """The knobs of every bug class in `name`; two bug classes that set the same knob cannot combine."""
    knobs: dict = {}
    for bug in bug_classes(name):
        clash = sorted(set(knobs) & set(MUTANTS[bug]))
        if clash:
            raise ValueError(f"mutant {name!r}: {bug} sets {', '.join(clash)}, which an earlier bug in it sets too")
        knobs.update(MUTANTS[bug])
    return knobs


def variant(kind: str, name: str):
    """A fresh candidate for `mutant:NAME` (NAME may join several mutants with '+') or `benign:NAME`."""
    if kind == "mutant" and name in DRIVER_MUTANTS:  # NxDI's calling conventions broken, in the emulation's driver
        return NxdiEmulation(name=f"mutant:{name}", bugs=DRIVER_MUTANTS[name])
    if kind == "mutant" and name in SHARDING_MUTANTS:  # NxDI's sharding done wrong, over N rank processes
        tp_degree, bugs = SHARDING_MUTANTS[name]
        return ShardedCandidate(tp_degree, name=f"mutant:{name}", bugs=bugs)
    if kind == "mutant":
        return EmulatedBlock(name=f"mutant:{name}", **mutant_knobs(name))
    if name not in BENIGN:
        raise ValueError(f"unknown {kind} {name!r}; {kind}s are: {', '.join(BENIGN)}")
    return BENIGN[name]()
