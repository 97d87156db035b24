"""The parity check itself must be able to fail: deliberately broken candidates are caught, at the
stage where they break. (The parity suite is shipped in the package, harness/pytest_plugin/suite.py,
and collected by the plugin; tests/test_pytest_plugin.py tests the plugin.)"""

import pytest

from harness.candidates import load_candidate
from harness.case import Case
from harness.runner import run_case


@pytest.mark.parity
@pytest.mark.needs_reference
@pytest.mark.parametrize("broken, stage", [("no_sinks", "probs"), ("window_wrong_parity", "scores")])
def test_broken_candidates_are_caught(broken, stage):
    case = Case(layer=0, lengths=(131,), sinks="small")
    (verdict,) = run_case(case, [load_candidate(f"tests.broken_candidates:{broken}")])
    assert verdict.verdict == "fail" and verdict.first_divergent_stage == stage, verdict.message
