"""Where do the errors start? Stage isolation names every stage where one does, not only the first.

The candidate is entered at each stage X in pipeline order with the oracle's values of every earlier
stage (`run(..., feed={stage: tensor})`), and its own X is judged. X fails *on its own* when that X,
computed from the oracle's inputs, fails its bound or a tolerance-free check. Every stage before X is
then the oracle's, so no earlier bug can reach X: each stage found this way is an independent
divergence, and a port with several bugs learns all of them from one run. A stage that failed end to
end only because an earlier one did passes when entered this way, and is not listed.

Two refinements:
- Operations. Some stages come out of one operation and share its parameters, so one bug there fails
  each of them on its own (plain RoPE fails q_rope and k_rope). Such stages count as one divergence,
  named at the first and listing the others as `also` (OPERATIONS). The price: a second, unrelated bug
  in the same operation is listed under the first.
- Stages the candidate does not tap are bracketed by the block output instead: if the output fails
  entered at X and passes entered after X, an error enters at X. Every earlier entry point carries the
  later bugs too, so from the output alone only the last bug can be bracketed; taps localise each.
"""

from __future__ import annotations

import inspect

import torch

from harness.compare import Divergence, StageResult, Verdict, describe, failures, judge_stage_in_batch
from harness.expected import Expected
from harness.stages import STAGES
from harness.tolerances import Bounds

# Stages computed by one operation from shared parameters: (q, k, v) one fused projection and its
# split; (q_rope, k_rope) one set of RoPE tables and positions; (scores, attn) both read keys and
# values through one query-head -> kv-head mapping (GQA: the tile-order bug fails both, and nothing
# else fails attn when it is entered with the oracle's probabilities and values).
OPERATIONS = {
    ("q", "k", "v"): "one fused projection",
    ("q_rope", "k_rope"): "one RoPE",
    ("scores", "attn"): "one query-to-kv-head mapping",
}

TAPPABLE = ", ".join(s for s in STAGES if s != "output")


def accepts_feed(candidate) -> bool:
    if getattr(candidate, "enters_stages", True) is False:  # e.g. a traced graph (xla mode)
        return False
    try:
        return "feed" in inspect.signature(candidate.run).parameters
    except (TypeError, ValueError):
        return False


def _feedable(stage: str, t: torch.Tensor) -> torch.Tensor:
    """Oracle tensors hold NaN where nothing was computed; a fed NaN would spread (0 x NaN)."""
    return torch.nan_to_num(t, nan=-float("inf") if stage == "scores" else 0.0, neginf=-float("inf"))


def _failed(result) -> bool:
    return isinstance(result, str) or (result is not None and not result.passed)


def _divergence(stage: str, result, located_by: str = "tap") -> Divergence:
    """`result`: a StageResult, or the text judge_stage_in_batch returns instead (e.g. NaN on entry)."""
    if isinstance(result, str):
        return Divergence(stage, None, located_by=located_by, detail=result)
    return Divergence(stage, result, located_by=located_by)


def isolate(candidate, expected: Expected, bounds: Bounds, end_to_end: str | None = None) -> tuple[list[Divergence], str]:
    """Every stage that fails on its own, in pipeline order (see the module docstring), and why the
    search stopped early ("" if it did not). An empty list: nothing fails on its own, the failure is
    error accumulated across stages."""
    from harness.runner import CandidateFailure, run_candidate  # the runner imports this module
    earlier: dict[str, torch.Tensor] = {}
    own: list[Divergence] = []
    output_fails_from: tuple[str, StageResult] | None = None  # the last entry point whose output fails
    # The first stage that failed end to end brackets too: a bug in memory a later step reads (a KV cache)
    # shows at that stage's later rows but not in the stage where it was written.
    bracket = end_to_end if end_to_end in STAGES and end_to_end != "output" else None
    bracket_fails_from: tuple[str, StageResult] | None = None
    stopped = ""
    for stage in STAGES:
        if stage not in expected.oracle:
            continue
        out = run_candidate(candidate, expected.spec, expected.batch, feed=dict(earlier))  # within its time limit
        if isinstance(out, CandidateFailure):
            what = "raised" if out.verdict == "error" else out.verdict + ":"
            stopped = f"entering the candidate at {stage} {what} {out.summary}"
            break
        produced = {**out.taps, "output": out.output}
        judge_bracket = bracket is not None and STAGES.index(stage) < STAGES.index(bracket)
        for judged in dict.fromkeys((stage, "output", *((bracket,) if judge_bracket else ()))):
            if judged not in produced or judged not in expected.reference:
                continue
            result = judge_stage_in_batch(judged, expected.batch, produced[judged], expected.reference[judged],
                                          expected.oracle, bounds, expected.spec.dtype)
            if not _failed(result):
                continue
            if judged == stage:
                own.append(_divergence(stage, result))
            elif judged == "output":
                output_fails_from = (stage, result)
            else:
                bracket_fails_from = (stage, result)
        earlier[stage] = _feedable(stage, expected.oracle[stage])
    last_own = max((STAGES.index(d.stage) for d in own), default=-1)
    divergences = _by_operation(own, operations_of(candidate))
    # A stage that fails end to end, entered here, and passes entered after: the error enters here.
    if bracket_fails_from and STAGES.index(bracket_fails_from[0]) > last_own and not own:
        divergences.append(_divergence(*bracket_fails_from, located_by=bracket))
        last_own = STAGES.index(bracket_fails_from[0])
    # A failing output past every tapped divergence: an error enters at an untapped stage.
    if output_fails_from and STAGES.index(output_fails_from[0]) > last_own:
        divergences.append(_divergence(*output_fails_from, located_by="output"))
    return divergences, stopped


def operations_of(candidate) -> dict[tuple[str, ...], str]:
    """OPERATIONS, with the candidate's own groups (its `operations` attribute) taking precedence for the
    stages they name: the Neuron driver taps k_rope and v from one KV-cache handover."""
    own = getattr(candidate, "operations", None) or {}
    taken = {stage for op in own for stage in op}
    kept = {tuple(s for s in op if s not in taken): why for op, why in OPERATIONS.items()}
    return {**{op: why for op, why in kept.items() if len(op) > 1}, **own}


def _by_operation(own: list[Divergence], operations: dict[tuple[str, ...], str] = OPERATIONS) -> list[Divergence]:
    """One divergence per operation: later stages of an operation already listed become its `also`."""
    operation_of = {stage: op for op in operations for stage in op}
    out: list[Divergence] = []
    for d in own:
        op = operation_of.get(d.stage)
        head = next((h for h in out if op is not None and operation_of.get(h.stage) == op), None)
        if head:
            head.also.append(d.stage)
            head.operation = operations[op]
        else:
            out.append(d)
    return out


def diagnose(v: Verdict, candidate, tapped: set[str], expected: Expected, bounds: Bounds, isolation: bool = True) -> None:
    """Complete a failing verdict: every stage that fails on its own (candidates that accept `feed`),
    headline first; otherwise, what the candidate would need for that."""
    feed = accepts_feed(candidate)
    end_to_end = v.first_divergent_stage
    if isolation and feed:
        divergences, stopped = isolate(candidate, expected, bounds, end_to_end)
        if divergences:
            v.divergences = divergences
            v.isolated_stage = v.first_divergent_stage = divergences[0].stage
            v.message = _message(v, end_to_end, bounds)
        else:
            v.message += ("\n  entered at each stage with the oracle's inputs, no stage fails on its own: "
                          "the failure is error accumulated across stages")
        if stopped:
            v.message += f"\n  stage isolation stopped early: {stopped}"
    untapped = [s for s in STAGES if s in expected.oracle and s not in tapped | {"output"}]
    if not tapped - {"output"}:
        v.message += (f"\n  the candidate taps only its output: returning stage taps (CandidateResult.taps, any of "
                      f"{TAPPABLE}; layouts in harness/stages.py) would localise each bug to its stage"
                      + (" (from the output alone only the last one is bracketed)" if feed else ""))
    elif untapped:
        v.message += (f"\n  not tapped: {', '.join(untapped)}; an error that starts there is named at the next tapped "
                      "stage (tapping them would name it where it starts)")
    if not feed:
        v.message += ("\n  only the first failing stage is certain, later ones may carry its error: a candidate "
                      "whose run() accepts feed={stage: tensor} gets every stage that fails on its own named")


def _message(v: Verdict, end_to_end: str | None, bounds: Bounds) -> str:
    ds = v.divergences
    head = f"case {v.case_id} / candidate {v.candidate}: first divergent stage {ds[0].stage}"
    if len(ds) > 1:
        head += f" ({len(ds)} divergent stages: {', '.join(d.stage for d in ds)})"
    if end_to_end and end_to_end != ds[0].stage:
        head += f" (first seen at {end_to_end})"
    intro = "  entered with the oracle's values of every earlier stage"
    if all(d.located_by == "tap" for d in ds):
        intro += ", " + ("each of these stages fails on its own" if len(ds) > 1 else "it fails on its own")
    lines = [head, intro + ":"]
    lines += [_describe(d, bounds) for d in ds]
    carried = [s.stage for s in v.stages if not s.passed]
    if carried:
        lines.append(f"  end to end (errors carried from the stages above): {len(carried)} stage(s) fail: {', '.join(carried)}")
    return "\n".join(lines)


def _describe(d: Divergence, bounds: Bounds) -> str:
    also = ""
    if d.also:
        verb = "also fails on its own" if len(d.also) == 1 else "also fail on their own"
        also = f"; {', '.join(d.also)} {verb} ({d.operation}: counted once)"
    if d.located_by != "tap":
        found = "; ".join(failures(d.result, bounds)) if d.result else d.detail
        by = "the block output" if d.located_by == "output" else f"stage {d.located_by}"
        return (f"  stage {d.stage}: the error starts at {d.stage} (within its own bounds or not tapped; entered "
                f"here, {by} fails, entered after it, it passes): {d.located_by} {found}")
    if d.result is None:
        return f"  stage {d.stage}: {d.detail}{also}"
    return describe(d.result, bounds) + also
