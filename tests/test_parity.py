"""Parity of every selected candidate against the float64 oracle (`pytest -m parity`).

Candidates come from `--candidate NAME|MODULE:ATTR` (repeatable; default: every built-in). Cases are
drawn by harness.strategies (inside the candidate's compiled buckets when it declares `buckets`), and
the curated files in cases/ always run, judged from their committed goldens. A failure is saved as a repro file and the message ends with
the command that replays it.
"""

import pytest
from hypothesis import given, target
from hypothesis.control import current_build_context, currently_in_test_context
from hypothesis import strategies as st

from harness.candidates import load_candidate
from harness.case import PLANS, Case, curated_cases
from harness.neuron.environment import NeuronUnavailable
from harness.goldens import GoldenError
from harness.report import record_of
from harness.repro import replay_command, save_failure
from harness.runner import run_case
from harness.strategies import cases, stack_cases
from harness.sweep import default_cases


def _candidate(name):
    """The candidate, or a skip when it cannot run here (a Neuron candidate without the SDK)."""
    try:
        return load_candidate(name)
    except NeuronUnavailable as exc:
        pytest.skip(str(exc))


def _assert_parity(case, candidate_name, options, expected, candidate=None):
    __tracebackhide__ = True
    candidate = candidate or _candidate(candidate_name)
    # Stage isolation costs a run per stage; while hypothesis searches and shrinks, only the final
    # falsifying example (the one reported) needs it.
    isolation = not currently_in_test_context() or current_build_context().is_final
    try:
        (verdict,) = run_case(case, [candidate], options.bounds, strict_probes=options.strict_probes, expected=expected,
                              isolation=isolation)
    except GoldenError as exc:  # missing, stale or corrupted: the message says how to fix it
        problem = str(exc)
    else:
        problem = None
    if problem:  # failed outside the except block, so that pytest prints the message once
        pytest.fail(problem, pytrace=False)
    if verdict.verdict == "unsupported":  # the candidate cannot run this case (e.g. its plan): said, not passed
        pytest.skip(verdict.message)
    replay = None if verdict.passed else replay_command(save_failure(case, candidate_name, verdict))
    options.records.add(record_of(case, verdict, options.bounds.for_candidate(candidate), replay))
    if verdict.worst_ratio is not None and currently_in_test_context():  # nightly: steer toward large ratios
        target(min(verdict.worst_ratio, 1e6), label="worst ratio")
    if not verdict.passed:
        trace = f"\n\nthe candidate's traceback:\n{verdict.traceback}" if verdict.traceback else ""
        pytest.fail(f"{verdict.verdict.upper()}: {verdict.message}\nreplay: {replay}{trace}", pytrace=False)


@pytest.mark.parity
@given(data=st.data())
def test_generated_cases(candidate_name, parity_options, generated_expected, data):
    candidate = _candidate(candidate_name)
    case = data.draw(cases(buckets=getattr(candidate, "buckets", None), plans=getattr(candidate, "plans", PLANS)),
                     label="case")
    _assert_parity(case, candidate_name, parity_options, generated_expected, candidate)


@pytest.mark.parity
@given(case=stack_cases())
def test_generated_stacks(candidate_name, case, parity_options, generated_expected):
    _assert_parity(case, candidate_name, parity_options, generated_expected)


@pytest.mark.parity
@pytest.mark.parametrize("case", default_cases(quick=True), ids=lambda c: c.id)
def test_curated_sweep(candidate_name, case, parity_options, generated_expected):
    _assert_parity(case, candidate_name, parity_options, generated_expected)


@pytest.mark.parity
@pytest.mark.parametrize("case", curated_cases(), ids=lambda c: c.id)
def test_curated_case_files(candidate_name, case, parity_options, curated_expected):
    """Judged from the committed goldens alone, as a device runner does (tests/test_goldens.py checks
    the goldens against the reference)."""
    _assert_parity(case, candidate_name, parity_options, curated_expected)


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in default_cases() if c.preset == "full"], ids=lambda c: c.id)
def test_full_dims(candidate_name, case, parity_options, generated_expected):
    _assert_parity(case, candidate_name, parity_options, generated_expected)


@pytest.mark.parity
@pytest.mark.parametrize("broken, stage", [("no_sinks", "probs"), ("window_wrong_parity", "scores")])
def test_broken_candidates_are_caught(broken, stage, generated_expected):
    """The parity check itself must be able to fail."""
    case = Case(layer=0, lengths=(131,), sinks="small")
    (verdict,) = run_case(case, [load_candidate(f"tests.broken_candidates:{broken}")])
    assert verdict.verdict == "fail" and verdict.first_divergent_stage == stage, verdict.message
