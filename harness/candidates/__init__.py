"""Candidates: anything that computes the attention block for a batch, behind one protocol.

A candidate is an object with a `name` and a method

    run(spec: BlockSpec, batch: Batch, *, taps: bool) -> CandidateResult | torch.Tensor

returning the block output [B, S, hidden] (and, optionally, stage taps in the layout of
harness/stages.py). A plain function `fn(spec, batch)` returning the output tensor is accepted too.
Optional declarations (plans, accepts_cache for from_cache plans, buckets): harness/candidates/protocol.py.
Built-ins are looked up by name; anything else by import path `package.module:attribute`.
"""

from harness.candidates.protocol import (Candidate, CandidateInconsistent, CandidateResult, CandidateUnsupported,
                                         accepts_cache,
                                         as_candidate, normalise_result, supported_plans)
from harness.candidates.registry import BUILTIN, load_candidate

__all__ = ["BUILTIN", "Candidate", "CandidateInconsistent", "CandidateResult", "CandidateUnsupported", "accepts_cache", "as_candidate",
           "load_candidate", "normalise_result", "supported_plans"]
