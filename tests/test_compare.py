"""Verdicts: pass, fail with the right stage and the bound that would have passed, and the distinct
nonfinite / shape / dtype / error verdicts."""

import re

import pytest

from harness.candidates import load_candidate
from harness.case import Case
from harness.compare import Bound, Bounds
from harness.expected import expected_for
from harness.runner import judge

CASE = Case(layer=0, lengths=(140,), sinks="dominant", weight_seed=1, input_seed=1)


@pytest.fixture(scope="module")
def expected():
    return expected_for(CASE)


def _judge(name, expected, bounds=Bounds()):
    return judge(CASE, load_candidate(name), expected, bounds)


def test_reference_passes_with_ratio_one(expected):
    v = _judge("reference", expected)
    assert v.verdict == "pass" and v.worst_ratio == pytest.approx(1.0, abs=0.05)
    assert [s.stage for s in v.stages] == ["normed", "q", "k", "v", "q_rope", "k_rope", "scores", "probs", "attn", "out_proj", "output"]


def test_sinks_removed_fails_at_probs(expected):
    v = _judge("tests.broken_candidates:no_sinks", expected)
    assert v.verdict == "fail" and v.first_divergent_stage == "probs"
    assert "case " + CASE.id in v.message and "first divergent stage probs" in v.message
    needed = float(re.search(r"a bound of ([0-9.]+)x would have passed", v.message).group(1))
    assert needed > 10
    # and the printed bound really does pass (the bound: the sink probe, which it fails too, is not judged)
    looser = Bounds().overridden(max_ratio=needed * 1.01 + 1000, rms_ratio=1e6)
    v = judge(CASE, load_candidate("tests.broken_candidates:no_sinks"), expected, looser, probes=False)
    assert v.verdict == "pass"
    v = _judge("tests.broken_candidates:no_sinks", expected, looser)
    assert v.verdict == "fail" and v.first_divergent_stage == "probe sink_over_masked_keys", v.message


def test_window_on_wrong_parity_fails_at_scores_whatever_the_sinks(expected):
    # Even when dominant sinks make the extra keys' probabilities ~1e-6, the mask checks are exact.
    for case, exp in ((CASE, expected), (Case(layer=0, lengths=(140,), sinks="small"), None)):
        v = judge(case, load_candidate("tests.broken_candidates:window_wrong_parity"), exp or expected_for(case))
        assert v.verdict == "fail" and v.first_divergent_stage == "scores", v.message
        assert "left unmasked in the scores" in v.message
        probs = next(s for s in v.stages if s.stage == "probs")
        assert probs.leaks > 0


@pytest.mark.parametrize("name, verdict", [
    ("tests.broken_candidates:nan_output", "nonfinite"),
    ("tests.broken_candidates:float32_output", "dtype"),
    ("tests.broken_candidates:transposed_output", "shape"),
    ("tests.broken_candidates:crashes", "error"),
])
def test_distinct_verdicts(expected, name, verdict):
    v = _judge(name, expected)
    assert v.verdict == verdict, v.message
    assert CASE.id in v.message


def test_error_verdict_keeps_the_exception(expected):
    assert "kernel launch failed" in _judge("tests.broken_candidates:crashes", expected).message


def test_tight_bound_fails_hf_and_says_by_how_much(expected):
    strict = Bounds(tuple((s, Bound(0.5, 0.5)) for s, _ in Bounds().per_stage))
    v = _judge("hf", expected, strict)
    assert v.verdict == "fail" and v.first_divergent_stage == "normed"
    assert "bound 0.5x" in v.message


def test_bound_validation():
    with pytest.raises(ValueError, match="max_ratio=-1 must be a positive"):
        Bound(-1, 2)
    with pytest.raises(ValueError, match="unknown stage"):
        Bounds((("qk", Bound(1, 1)),))
