"""Numerical parity harness for gpt-oss attention: does a candidate block match the reference within
bf16 noise, and if not, where does it break? The data flow reads in module order:

case (harness.case) -> spec and batch (harness.batch) -> oracle and reference tensors
(harness.expected: computed by harness.produce and reference/, or stored as goldens, harness.goldens)
-> candidate tensors (harness.candidates) -> verdict (harness.compare) -> table / JSON (harness.cli).
harness.runner ties one case together.
"""

from harness.batch import Batch, BlockSpec, build
from harness.candidates import Candidate, CandidateResult, CandidateUnsupported, load_candidate
from harness.case import Case
from harness.compare import Bound, Bounds, Verdict, compare
from harness.expected import expected_for
from harness.runner import judge, run_case

__all__ = [
    "Batch", "BlockSpec", "Bound", "Bounds", "Candidate", "CandidateResult", "CandidateUnsupported", "Case", "Verdict",
    "build", "compare", "expected_for", "judge", "load_candidate", "run_case",
]
