"""The reference as a candidate: the harness's self-check (its ratio is exactly 1 by construction)."""

from __future__ import annotations

from harness.batch import Batch, BlockSpec
from harness.candidates.protocol import CandidateResult
from harness.produce import run_reference


class ReferenceCandidate:
    name = "reference"
    accepts_cache = True  # the cache is the reference's own keys and values

    def run(self, spec: BlockSpec, batch: Batch, *, taps: bool) -> CandidateResult:
        result = run_reference(spec, batch, taps=taps)
        return CandidateResult(output=result.pop("output"), taps=result)
