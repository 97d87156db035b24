"""The parity suite shipped with the package: every selected candidate against the float64 oracle.

The plugin adds this file to a pytest run that asks for parity (`pytest -m parity`, `--candidate`,
or the ini setting parity_suite; see harness/pytest_plugin/collection.py), in this project's checkout
and in any repository where the package is installed. Candidates come from `--candidate
NAME|MODULE:ATTR` (repeatable; default: every built-in). Cases are drawn by harness.strategies (inside
the candidate's compiled buckets when it declares `buckets`), plus the built-in sweep, and the curated
case files, judged from the goldens committed with them (shipped in the package). A failure is saved
as a repro file and the message ends with the command that replays it.
"""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.candidates import supported_plans
from harness.case import curated_cases
from harness.goldens import GoldenStore
from harness.strategies import LONG_POSITIONS, cases, long_cases, stack_cases
from harness.sweep import default_cases


@pytest.mark.parity
@pytest.mark.needs_reference
@given(data=st.data())
def test_generated_cases(candidate_name, parity, data):
    candidate = parity.load(candidate_name)
    case = data.draw(cases(buckets=getattr(candidate, "buckets", None), plans=supported_plans(candidate)),
                     label="case")
    parity.check(case, candidate_name, candidate=candidate)


@pytest.mark.parity
@pytest.mark.needs_reference
@pytest.mark.parametrize("parity_of_layer", (0, 1), ids=("sliding", "full"))
@pytest.mark.parametrize("position", LONG_POSITIONS)
@settings(max_examples=2)  # per position and parity: 28 long rows per candidate, each O(n) from a cache
@given(data=st.data())
def test_long_positions(candidate_name, parity, position, parity_of_layer, data):
    """Every long position on both layer kinds, decoded from a cache: where YaRN, RoPE precision and
    cache sizing break. Candidates that do not accept a cache skip (harness/candidates/protocol.py)."""
    candidate = parity.load(candidate_name)
    if "from_cache" not in supported_plans(candidate):
        pytest.skip(f"candidate {candidate_name} does not accept a KV cache (accepts_cache)")
    case = data.draw(long_cases(positions=(position,), parities=(parity_of_layer,)), label="case")
    parity.check(case, candidate_name, candidate=candidate)


@pytest.mark.parity
@pytest.mark.needs_reference
@given(case=stack_cases())
def test_generated_stacks(candidate_name, case, parity):
    parity.check(case, candidate_name)


@pytest.mark.parity
@pytest.mark.needs_reference
@pytest.mark.parametrize("case", default_cases(quick=True), ids=lambda c: c.id)
def test_curated_sweep(candidate_name, case, parity):
    parity.check(case, candidate_name)


@pytest.mark.parity
@pytest.mark.parametrize("case", curated_cases(), ids=lambda c: c.id)
def test_curated_case_files(candidate_name, case, parity):
    """Judged from the committed goldens alone, as a device runner does (tests/test_platforms.py checks
    the goldens against the reference)."""
    parity.check(case, candidate_name, goldens=GoldenStore.committed())


@pytest.mark.parity
@pytest.mark.slow
@pytest.mark.needs_reference
@pytest.mark.parametrize("case", [c for c in default_cases(long=True) if c.preset == "full"], ids=lambda c: c.id)
def test_full_dims(candidate_name, case, parity):
    parity.check(case, candidate_name)
