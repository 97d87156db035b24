"""Run one case: build it, produce oracle and reference tensors once, run and judge each candidate."""

from __future__ import annotations

import traceback
from dataclasses import dataclass

import torch

from harness.batch import Batch, BlockSpec, build
from harness.candidates import Candidate, normalise_result
from harness.case import Case
from harness.compare import Bounds, Verdict, compare
from harness.produce import run_oracle, run_reference


@dataclass
class Expected:
    spec: BlockSpec
    batch: Batch
    oracle: dict[str, torch.Tensor]
    reference: dict[str, torch.Tensor]


def expected_for(case: Case, checkpoint: str | None = None) -> Expected:
    spec, batch = build(case, checkpoint)
    return Expected(spec, batch, run_oracle(spec, batch, taps=True), run_reference(spec, batch, taps=True))


def judge(case: Case, candidate: Candidate, expected: Expected, bounds: Bounds = Bounds()) -> Verdict:
    try:
        with torch.no_grad():
            result = normalise_result(candidate.run(expected.spec, expected.batch, taps=True), candidate.name)
    except Exception as exc:  # a candidate's crash is a verdict, not a crash of the harness
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
        return Verdict(case.id, candidate.name, "error", message=f"case {case.id} / candidate {candidate.name}: raised {tb}")
    return compare(case.id, candidate.name, expected.batch, expected.oracle, expected.reference,
                   result.output, result.taps, bounds, expected.spec.dtype)


def run_case(
    case: Case, candidates: list[Candidate], bounds: Bounds = Bounds(), checkpoint: str | None = None
) -> list[Verdict]:
    expected = expected_for(case, checkpoint)
    return [judge(case, c, expected, bounds) for c in candidates]
