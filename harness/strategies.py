"""Hypothesis strategies that draw cases where attention ports break.

Strategies draw structured parameters and seeds, never tensor elements (hypothesis has no bfloat16
floats, and a seed reproduces exactly). Every strategy shrinks toward a small, readable case: short
rows, one row, right padding, plain prefill, layer 0, small sinks, normal inputs, seed 0. Lengths
are drawn from integers first, so an off-by-one at the window shrinks to the first length that
fails (W + 2 for a window one key too wide), not to an arbitrary edge.

Plans with steps after the first (decode, chunked, from_cache) are where serving loops break: the
cache ring wraps, the window's edge moves, positions continue. Such bugs must be found within a few
examples, so after the general draw most draws are redirected (the redirection is drawn last and
shrinks to "as drawn"): to a stepped plan whose generated tokens start at an edge of the window or
the ring (W - 2 .. W + 1, 2W - 3 .. 2W, 3W - 4, 3W - 3) with two or more generation steps, as a
teacher-forced stack of a sliding and a full layer when it starts from a context encoding (each judged
on its own, as two blocks), so that every such draw reaches the bugs of both layer kinds; to a long
position past 65,536 (up to gpt-oss's last position 131,071, past every long-context threshold) as a
from_cache row, which costs O(n) for every producer; or to token generation across a tile edge (512 ..
65,536) from a cache. Cache draws are stacks of a sliding and a full layer too (same_input: each layer
its own cache of the case's inputs). Mode weights: 5 stepped, 5 long, 1 tile, 1 as drawn, so that plan
and long-context bugs are both reached within 10 examples on any seed (the first example is always a
stepped one; measured over seeds 0-5 by `parity selftest --seeds 6`).

    from harness.strategies import cases
    @given(cases(buckets=(256,)))
    def test_x(case): ...
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from hypothesis import strategies as st

from harness.case import MAX_POSITIONS, Case
from harness.presets import preset

__all__ = [
    "EDGE_LENGTHS",
    "LONG_LENGTHS",
    "LONG_POSITIONS",
    "long_cases",
    "tile_cases",
    "TILE_EDGES",
    "TILE_LENGTHS",
    "cases",
    "input_regimes",
    "layers",
    "lengths",
    "sink_regimes",
    "stack_cases",
]

W = preset("small").sliding_window  # the same 128 in every preset
# Single tokens and the window edges (W is also the 128-query tile of flash kernels).
EDGE_LENGTHS = (1, 2, W - 2, W - 1, W, W + 1, W + 2, 2 * W, 2 * W + 1, 2 * W + 2)
# Edges of 512- and 1024-wide kernel tiles.
TILE_LENGTHS = (511, 512, 513, 1023, 1024, 1025)
# The YaRN original context (4096) and the last tile edge below it: occasional long positions.
LONG_LENGTHS = (2047, 2048, 4095, 4096, 4097)
# Positions judged from a cache by the suite's test_long_positions: around the original context, powers
# of two minus one, just past 8192 and 65,536, and the last one.
LONG_POSITIONS = (4095, 4096, 4097, 8191, 8193, 32767, 65535, 65537, 131071)
# The generators' long draws end at or past this, so that even the first of up to three generated tokens
# is past every long-context threshold (the YaRN original context 4096, a RoPE table of 8192, 16-bit
# positions) and sees keys more than 65,536 positions back on a full layer.
FAR_POSITION = 65539
# Tile edges decode steps cross in the generators' tile draws (one NxDI port broke once decode crossed
# 512 while prefill was fine), up to the long-context thresholds.
TILE_EDGES = (512, 1024, 2048, 4096, 8192, 32768, 65536)
# Where the steps after the first start: at the edges of the window (W) and of NxDI's ring of W - 1
# slots, its first and second wrap.
STEP_STARTS = (W - 2, W - 1, W, W + 1, 2 * W - 3, 2 * W - 2, 2 * W - 1, 2 * W, 3 * W - 4, 3 * W - 3)
# Stepped draws hand the cache over from a context encoding, where ring bugs live (decode twice as
# often as chunked); token generation from a cache has draws of its own (long, tile)
STEPPED = ("decode", "decode", "chunked")


def lengths(max_length: int = 2 * W + 8, long: bool = True) -> st.SearchStrategy[int]:
    """Token counts: small integers (which shrink smoothly), window edges, tile edges, and with `long`
    the YaRN original context. Edges above max_length are left out unless max_length is the default."""
    cap = max_length if max_length < 2 * W + 8 else 1 << 30
    options = [st.integers(1, max_length)]
    for edges in (EDGE_LENGTHS, TILE_LENGTHS) + ((LONG_LENGTHS,) if long else ()):
        kept = [n for n in edges if n <= cap]
        if kept:
            options.append(st.sampled_from(kept))
    return st.one_of(*options)


def layers(parities: Sequence[int] = (0, 1)) -> st.SearchStrategy[int]:
    """Both parities; a few deeper indices so that "layer 0 only" bugs cannot hide."""
    return st.one_of(st.sampled_from(list(parities)), st.integers(1, 11).map(lambda i: 2 * i + parities[0]) if len(parities) == 1
                     else st.integers(2, 23))


def sink_regimes(choices: Sequence[str] = ("small", "zero", "dominant")) -> st.SearchStrategy[str]:
    """small first (the simple case), then zero (what buggy ports often load) and dominant."""
    return st.sampled_from(list(choices))


def input_regimes() -> st.SearchStrategy[str]:
    return st.sampled_from(["normal", "large", "outliers"])


def _weighted(options: list, first: int = 0):
    """One of `options` (repeat an option to weight it): an index drawn as a wide integer taken modulo
    their number (hypothesis favours small indices of a short range). Hypothesis still favours small
    integers, so the options after `first` come up more often than their weight (measured: the
    generators' stepped draws are about two thirds of all). The integer's simplest value, which
    hypothesis also tries early and shrinks to, picks options[first]."""
    return st.integers(0, 2**16 - 1).map(lambda k: options[(k + first) % len(options)])


def _both_kinds(draw, parities: Sequence[int], preset_name: str) -> dict:
    """A layer, and with both parities allowed a same_input stack of a sliding and the next (full)
    layer from it: every such draw reaches both layer kinds at the same positions."""
    layer = draw(layers(parities))
    if len(parities) == 2 and layer - layer % 2 + 1 < preset(preset_name).num_hidden_layers:
        return {"layer": layer - layer % 2, "depth": 2, "stack_mode": "same_input"}
    return {"layer": layer}


def _from_cache(draw, preset_name: str, last: int, steps: int, parities: Sequence[int], sinks: Sequence[str]) -> Case:
    return Case(
        preset=preset_name,
        lengths=(last + 1,),
        plan="from_cache",
        decode_steps=steps,
        sinks=draw(sink_regimes(sinks)),
        scale=draw(st.sampled_from(["normal", "sharp"])),
        inputs=draw(input_regimes()),
        weight_seed=draw(st.integers(0, 2**16)),
        input_seed=draw(st.integers(0, 2**16)),
        **_both_kinds(draw, parities, preset_name),
    )


@st.composite
def long_cases(draw, preset_name: str = "small", positions: Sequence[int] | None = None,
               parities: Sequence[int] = (0, 1), sinks: Sequence[str] = ("small", "dominant", "zero")) -> Case:
    """One from_cache row whose last generated token sits at a long position: one of `positions`, else
    past FAR_POSITION (shrinking toward it), 131,071 as often as any other. With both parities it is a
    stack of a sliding and a full layer, each with its own cache (stack_mode same_input)."""
    if positions is None:
        last = draw(st.one_of(st.just(MAX_POSITIONS - 1), st.integers(FAR_POSITION, MAX_POSITIONS - 1)))
    else:
        last = draw(_weighted(list(positions)))
    return _from_cache(draw, preset_name, last, draw(st.integers(1, 3)), parities, sinks)


@st.composite
def tile_cases(draw, preset_name: str = "small", parities: Sequence[int] = (0, 1),
               sinks: Sequence[str] = ("small", "dominant", "zero")) -> Case:
    """Token generation from a cache across a tile edge (TILE_EDGES): two or more generated tokens, the
    first at or before edge - 1, the last at or after the edge."""
    edge = draw(_weighted(list(TILE_EDGES)))
    steps = draw(st.integers(2, 4))
    last = edge + draw(st.integers(0, steps - 2))
    return _from_cache(draw, preset_name, last, steps, parities, sinks)


@st.composite
def _stepped_rows(draw, plan: str, max_batch: int, max_decode_steps: int, cap: int) -> tuple[tuple[int, ...], dict]:
    """Rows whose steps after the first cross the window and the ring: the first row's generated tokens
    start at (or near) a step edge, two or more of them (decode, from_cache) or a second chunk."""
    first = draw(st.one_of(st.sampled_from(STEP_STARTS), st.integers(W - 8, 3 * W)))
    steps = draw(st.integers(2, max(2, max_decode_steps + 1)))
    first = max(1, min(first, cap - steps))  # every row within max_length
    rows = (first + steps, *draw(st.lists(st.integers(steps + 1, cap), max_size=max_batch - 1)))
    if plan == "chunked":
        return rows, {"chunk_offset": first}
    return rows, {"decode_steps": steps}


@st.composite
def cases(
    draw,
    preset_name: str = "small",
    max_batch: int = 3,
    buckets: Sequence[int] | None = None,
    long: bool = True,
    plans: Sequence[str] = ("prefill", "decode", "chunked"),
    max_decode_steps: int = 4,
    sinks: Sequence[str] = ("small", "zero", "dominant"),
    parities: Sequence[int] = (0, 1),
    max_length: int = 2 * W + 8,
    long_cache: bool = True,
    stacks: bool = True,
) -> Case:
    """One block, one case. With `buckets` (padded lengths a compiled candidate accepts), every row fits
    in a drawn bucket and the batch is padded to it, so no new shape is ever asked for. `plans`: those
    the candidate runs (harness/candidates/protocol.py: supported_plans); `long`: rows of 2047-4097 tokens
    now and then; `long_cache`: from_cache rows at LONG_POSITIONS now and then (when from_cache is a plan);
    `stacks`: stepped plans as a two-layer teacher-forced stack."""
    bucket = draw(st.sampled_from(sorted(buckets))) if buckets else None
    extra: dict = {}
    if bucket:
        edges = [n for n in EDGE_LENGTHS + TILE_LENGTHS + LONG_LENGTHS if n <= bucket]
        row_length = st.one_of(st.integers(1, min(bucket, 2 * W + 8)), st.sampled_from(edges))
    else:
        row_length = lengths(max_length, long=long)
    rows = tuple(draw(st.lists(row_length, min_size=1, max_size=max_batch)))
    if max(rows) >= LONG_LENGTHS[0]:
        rows = (max(rows),)  # a 2047+ token row comes alone: dense candidates hold (heads, S, S) scores
    plan = draw(st.sampled_from(list(plans)))
    if plan in ("decode", "from_cache") and min(rows) > 1:
        # decode steps continue each row: positions cross W and 2W whenever the rows end near them
        extra["decode_steps"] = draw(st.integers(1, min(max_decode_steps, min(rows) - 1)))
    elif plan == "chunked" and max(rows) > 1:
        extra["chunk_offset"] = draw(st.integers(1, max(rows) - 1))
    else:
        plan = "prefill"
    layer = draw(layers(parities))
    sink_choices, scales = list(sinks), ["normal", "sharp"]
    # Then, most of the time, the draw is redirected: a stepped plan across the window and ring edges, a
    # long position from a cache, or a tile edge crossed from a cache. Drawn last; it shrinks to a
    # stepped plan (one row, two steps).
    stepped = [p for p in STEPPED if p in plans]
    modes = ["as drawn"] + (["stepped"] * 5 if stepped and not bucket else [])
    if long_cache and "from_cache" in plans and not bucket:
        modes += ["long"] * 5 + ["tile"]
    # hypothesis tries each choice's simplest value early and often (more so with a larger budget): that
    # value picks a stepped plan where there is one, so plan bugs die within a few examples on every seed
    mode = draw(_weighted(modes, first=1 if len(modes) > 1 and modes[1] == "stepped" else 0))
    cache_sinks = [n for n in ("small", "dominant", "zero") if n in sinks]
    if mode == "long":
        return draw(long_cases(preset_name, parities=parities, sinks=cache_sinks))
    if mode == "tile":
        return draw(tile_cases(preset_name, parities=parities, sinks=cache_sinks))
    if mode == "stepped":
        plan = draw(st.sampled_from(stepped))
        cap = max_length if max_length < 2 * W + 8 else 3 * W + 4
        rows, extra = draw(_stepped_rows(plan, max_batch, max_decode_steps, cap))
        if stacks and plan != "from_cache" and len(parities) == 2 and layer + 1 < preset(preset_name).num_hidden_layers:
            extra.update(depth=2, stack_mode="teacher")  # a sliding and a full layer, each judged alone
        # dominant sinks and normal scores: a sink the generation path loses shows at once (sharp scores
        # would outweigh it; keys' errors show at the scores either way)
        sink_choices = ["dominant"] if "dominant" in sinks else list(sinks)
        scales = ["normal"]
    long_rows = max(rows) > 2 * W + 8 and plan != "from_cache" and extra.get("depth", 1) == 1
    if bucket and plan == "from_cache":
        pad_to = bucket if bucket >= extra["decode_steps"] else 0
    else:
        pad_to = bucket or 0
    return Case(
        preset=preset_name,
        layer=layer,
        lengths=rows,
        padding=draw(st.sampled_from(["right", "left"])),
        plan=plan,
        sinks=draw(sink_regimes(sink_choices)),
        scale=draw(st.sampled_from(scales)),
        inputs=draw(input_regimes()),
        weight_seed=draw(st.integers(0, 2**16)),
        input_seed=draw(st.integers(0, 2**16)),
        # long rows: judge only the last positions (the oracle then evaluates just those rows)
        compare_last=8 if long_rows else 0,
        pad_to=pad_to,
        **extra,
    )


@st.composite
def stack_cases(draw, preset_name: str = "small", max_depth: int = 4) -> Case:
    """A stack of alternating sliding and full layers, teacher-forced or free-running."""
    base = draw(cases(preset_name=preset_name, max_batch=2, long=False, long_cache=False, stacks=False))
    return replace(
        base,
        layer=draw(st.sampled_from([0, 1])),
        depth=draw(st.integers(2, max_depth)),
        stack_mode=draw(st.sampled_from(["teacher", "free"])),
        compare_last=0,
    )
