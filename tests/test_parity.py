"""Parity of every selected candidate against the float64 oracle (`pytest -m parity`).

Candidates come from `--candidate NAME|MODULE:ATTR` (repeatable; default: every built-in).
Hypothesis draws layer parity, lengths around the window, plans (decode / chunked positions),
padding, sink and scale regimes and seeds; the curated sweep runs too.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.candidates import load_candidate
from harness.case import Case, curated_cases
from harness.runner import run_case
from harness.sweep import default_cases

W = 128
LENGTHS = st.one_of(st.sampled_from([1, 2, W - 1, W, W + 1, 2 * W, 2 * W + 1]), st.integers(1, 2 * W + 8))


@st.composite
def cases(draw):
    lengths = tuple(draw(st.lists(LENGTHS, min_size=1, max_size=3)))
    plan = draw(st.sampled_from(["prefill", "decode", "chunked"]))
    extra = {}
    if plan == "decode" and min(lengths) > 1:
        extra["decode_steps"] = draw(st.integers(1, min(4, min(lengths) - 1)))
    elif plan == "chunked" and max(lengths) > 1:
        extra["chunk_offset"] = draw(st.integers(1, max(lengths) - 1))
    else:
        plan = "prefill"
    return Case(
        layer=draw(st.sampled_from([0, 1, 2, 3])),
        lengths=lengths,
        padding=draw(st.sampled_from(["right", "left"])),
        plan=plan,
        sinks=draw(st.sampled_from(["zero", "small", "dominant"])),
        scale=draw(st.sampled_from(["normal", "sharp"])),
        inputs=draw(st.sampled_from(["normal", "large", "outliers"])),
        weight_seed=draw(st.integers(0, 2**16)),
        input_seed=draw(st.integers(0, 2**16)),
        **extra,
    )


def _assert_parity(case, candidate_name):
    __tracebackhide__ = True
    (verdict,) = run_case(case, [load_candidate(candidate_name)])
    if not verdict.passed:
        pytest.fail(f"{verdict.verdict.upper()}: {verdict.message}\ncase: {case.to_dict()}", pytrace=False)


@pytest.mark.parity
@given(case=cases())
def test_generated_cases(candidate_name, case):
    _assert_parity(case, candidate_name)


@pytest.mark.parity
@pytest.mark.parametrize("case", default_cases(quick=True), ids=lambda c: c.id)
def test_curated_sweep(candidate_name, case):
    _assert_parity(case, candidate_name)


@pytest.mark.parity
@pytest.mark.parametrize("case", curated_cases(), ids=lambda c: c.id)
def test_curated_case_files(candidate_name, case):
    _assert_parity(case, candidate_name)


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in default_cases() if c.preset == "full"], ids=lambda c: c.id)
def test_full_dims(candidate_name, case):
    _assert_parity(case, candidate_name)


@pytest.mark.parity
@pytest.mark.parametrize("broken", ["no_sinks", "window_wrong_parity"])
def test_broken_candidates_are_caught(broken):
    """The parity check itself must be able to fail."""
    case = Case(layer=0, lengths=(W + 3,), sinks="small")
    (verdict,) = run_case(case, [load_candidate(f"tests.broken_candidates:{broken}")])
    assert verdict.verdict == "fail" and verdict.first_divergent_stage == "probs", verdict.message
