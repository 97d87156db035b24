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
from hypothesis import given
from hypothesis import strategies as st

from harness.candidates import supported_plans
from harness.case import curated_cases
from harness.goldens import GoldenStore
from harness.strategies import cases, stack_cases
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
@pytest.mark.parametrize("case", [c for c in default_cases() if c.preset == "full"], ids=lambda c: c.id)
def test_full_dims(candidate_name, case, parity):
    parity.check(case, candidate_name)
