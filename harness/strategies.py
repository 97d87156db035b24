"""Hypothesis strategies that draw cases where attention ports break.

Strategies draw structured parameters and seeds, never tensor elements (hypothesis has no bfloat16
floats, and a seed reproduces exactly). Every strategy shrinks toward a small, readable case: short
rows, one row, right padding, plain prefill, layer 0, small sinks, normal inputs, seed 0. Lengths
are drawn from integers first, so an off-by-one at the window shrinks to the first length that
fails (W + 2 for a window one key too wide), not to an arbitrary edge.

    from harness.strategies import cases
    @given(cases(buckets=(256,)))
    def test_x(case): ...
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from hypothesis import strategies as st

from harness.case import Case
from harness.presets import preset

__all__ = [
    "EDGE_LENGTHS",
    "LONG_LENGTHS",
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
) -> Case:
    """One block, one case. With `buckets` (padded lengths a compiled candidate accepts), every row fits
    in a drawn bucket and the batch is padded to it, so no new shape is ever asked for."""
    bucket = draw(st.sampled_from(sorted(buckets))) if buckets else None
    if bucket:
        edges = [n for n in EDGE_LENGTHS + TILE_LENGTHS + LONG_LENGTHS if n <= bucket]
        row_length = st.one_of(st.integers(1, min(bucket, 2 * W + 8)), st.sampled_from(edges))
    else:
        row_length = lengths(max_length, long=long)
    rows = tuple(draw(st.lists(row_length, min_size=1, max_size=max_batch)))
    if max(rows) >= LONG_LENGTHS[0]:
        rows = (max(rows),)  # a 2047+ token row comes alone: dense candidates hold (heads, S, S) scores
    long_rows = max(rows) > 2 * W + 8
    plan = draw(st.sampled_from(list(plans)))
    extra: dict = {}
    if plan == "decode" and min(rows) > 1:
        # decode steps continue each row: positions cross W and 2W whenever the rows end near them
        extra["decode_steps"] = draw(st.integers(1, min(max_decode_steps, min(rows) - 1)))
    elif plan == "chunked" and max(rows) > 1:
        extra["chunk_offset"] = draw(st.integers(1, max(rows) - 1))
    else:
        plan = "prefill"
    return Case(
        preset=preset_name,
        layer=draw(layers(parities)),
        lengths=rows,
        padding=draw(st.sampled_from(["right", "left"])),
        plan=plan,
        sinks=draw(sink_regimes(sinks)),
        scale=draw(st.sampled_from(["normal", "sharp"])),
        inputs=draw(input_regimes()),
        weight_seed=draw(st.integers(0, 2**16)),
        input_seed=draw(st.integers(0, 2**16)),
        # long rows: judge only the last positions (the oracle then evaluates just those rows)
        compare_last=8 if long_rows else 0,
        pad_to=bucket or 0,
        **extra,
    )


@st.composite
def stack_cases(draw, preset_name: str = "small", max_depth: int = 4) -> Case:
    """A stack of alternating sliding and full layers, teacher-forced or free-running."""
    base = draw(cases(preset_name=preset_name, max_batch=2, long=False))
    return replace(
        base,
        layer=draw(st.sampled_from([0, 1])),
        depth=draw(st.integers(2, max_depth)),
        stack_mode=draw(st.sampled_from(["teacher", "free"])),
        compare_last=0,
    )
