"""Run one case: build it, produce oracle and reference tensors once, run and judge each candidate.
Stacks (depth > 1) are judged layer by layer, teacher-forced or free-running."""

from __future__ import annotations

import traceback
from dataclasses import dataclass

import torch

from harness.batch import Batch, BlockSpec
from harness.candidates import (Candidate, CandidateInconsistent, CandidateResult, CandidateUnsupported, accepts_cache,
                                normalise_result)
from harness.case import Case
from harness.compare import Bounds, Divergence, Verdict, compare
from harness.expected import Expected, ExpectedFn, compute_expected, next_input
from harness.guard import CandidateMisbehaved, inputs_kept, process_kept
from harness.isolation import diagnose
from harness.probes import BINDING, STRICT, judge_probe
from harness.timelimit import CandidateTimeout, limit_for, time_limit
from harness.timing import section


@dataclass
class CandidateFailure:
    """A candidate call that raised ("error"), ran past its time limit ("timeout"), could not run the case
    ("unsupported") or contradicted itself ("fail" at `stage`: CandidateInconsistent)."""

    verdict: str
    summary: str  # the exception's last line
    traceback: str  # the whole traceback, kept in repro files and JSON, printed with -v
    says_who: bool = False  # the summary names the candidate and what it did (harness/guard.py)
    stage: str | None = None  # verdict "fail": where its own results disagree


def run_candidate(candidate: Candidate, spec: BlockSpec, batch: Batch, **kwargs) -> CandidateResult | CandidateFailure:
    """The candidate's result, or what went wrong in it (a crash is a verdict, not ours), within the
    candidate's time limit (harness/timelimit.py). `kwargs` go to run() (e.g. feed)."""
    if batch.cache is not None and not accepts_cache(candidate):
        return CandidateFailure("unsupported", f"candidate {candidate.name} does not accept a KV cache (plan from_cache); "
                                "a candidate that can declares accepts_cache = True (harness/candidates/protocol.py)", "")
    seconds = limit_for(candidate)
    what = f"candidate {candidate.name}"
    try:
        # guards outside the clock's "candidate" section (their copies are the harness's cost, not the
        # block's) and outside the time limit (a restore is never cut short by the alarm)
        with torch.no_grad(), process_kept(what), inputs_kept(what, spec=spec, batch=batch, **kwargs), \
                time_limit(seconds, what), section("candidate"):
            return normalise_result(candidate.run(spec, batch, taps=True, **kwargs), candidate.name)
    except CandidateMisbehaved as exc:  # ended the process or wrote to its inputs (harness/guard.py)
        return CandidateFailure("error", str(exc), "", says_who=True)
    except CandidateTimeout as exc:
        return CandidateFailure("timeout", str(exc), traceback.format_exc())
    except CandidateUnsupported as exc:
        return CandidateFailure("unsupported", str(exc), "")
    except CandidateInconsistent as exc:
        return CandidateFailure("fail", str(exc), "", stage=exc.stage)
    except Exception as exc:
        return CandidateFailure("error", traceback.format_exception_only(type(exc), exc)[-1].strip(),
                                traceback.format_exc())


def judge(case: Case, candidate: Candidate, expected: Expected, bounds: Bounds = Bounds(),
          probes: bool = True, strict_probes: bool = False, isolation: bool = True) -> Verdict:
    bounds = bounds.for_candidate(candidate)
    result = run_candidate(candidate, expected.spec, expected.batch)
    v = _verdict(case.id, candidate, result, expected, bounds)
    if isinstance(result, CandidateFailure) or v.verdict in ("shape", "dtype", "error"):
        return v
    if v.verdict == "fail":  # every stage that fails on its own (harness/isolation.py)
        diagnose(v, candidate, set(result.taps), expected, bounds, isolation)
    if probes and v.passed:  # a failing verdict needs no further evidence
        run_probes(candidate, expected, result.output, v, strict_probes)
    return v


def run_probes(candidate, expected: Expected, baseline: torch.Tensor, v: Verdict, strict: bool) -> None:
    binding = BINDING + (STRICT if strict or getattr(candidate, "skips_masked_memory", False) else ())
    for probe in expected.probes:
        if probe.spec is not None and getattr(candidate, "fixed_weights", False):
            continue  # its weights are compiled in: other weights would mean a compile per case
        out = run_candidate(candidate, probe.spec or expected.spec, probe.batch)
        if isinstance(out, CandidateFailure) and out.says_who:  # ended the process, wrote its inputs: never
            v.verdict, v.first_divergent_stage = "error", f"probe {probe.name}"  # a pass, binding probe or not
            v.message = f"case {v.case_id} / {out.summary} (on probe {probe.name})"
            return
        if isinstance(out, CandidateFailure):
            record = {"name": probe.name, "passed": False, "detail": f"{out.verdict}: {out.summary}"}
        else:
            record = judge_probe(probe, baseline, out.output)
        record["binding"] = probe.name in binding
        v.probes.append(record)
        if record["binding"] and not record["passed"] and v.verdict == "pass":
            v.verdict, v.first_divergent_stage = "fail", f"probe {probe.name}"
            why = ("a key the rule says is read moved nothing" if probe.must_change else
                   "the output had to be exactly that" if probe.expected is not None else
                   "values that must not matter changed the output")
            v.message = (f"case {v.case_id} / candidate {v.candidate}: probe {probe.name} failed: {record['detail']} "
                         f"(tolerance-free: {why})")


def _verdict(case_id, candidate, result, expected: Expected, bounds) -> Verdict:
    if isinstance(result, CandidateFailure):
        what = {"error": "raised", "timeout": "timed out:", "unsupported": "cannot run this case:",
                "fail": f"failed at {result.stage}:"}[result.verdict]
        message = (f"case {case_id} / {result.summary}" if result.says_who else
                   f"case {case_id} / candidate {candidate.name}: {what} {result.summary}")
        return Verdict(case_id, candidate.name, result.verdict, first_divergent_stage=result.stage,
                       traceback=result.traceback, message=message)
    with section("compare"):
        v = compare(case_id, candidate.name, expected.batch, expected.oracle, expected.reference,
                    result.output, result.taps, bounds, expected.spec.dtype)
    v.info = result.info
    tracing = result.info.get("tracing")
    checks = tracing.get("checks", []) if isinstance(tracing, dict) else tracing
    if checks is not None and not well_formed(checks):  # the candidate's own report: never trusted blindly
        return Verdict(case_id, candidate.name, "error", info=result.info, message=(
            f"case {case_id} / candidate {candidate.name}: its info['tracing']['checks'] is not a list of "
            "{name: str, passed: bool, detail: str, binding: bool} (harness/neuron/tracing.py); found "
            f"{str(checks)[:200]}"))
    apply_checks(v, checks or [])
    return v


def well_formed(checks) -> bool:
    types = {"name": str, "passed": bool, "detail": str, "binding": bool}
    return isinstance(checks, list) and all(
        isinstance(c, dict) and all(isinstance(c.get(k), t) for k, t in types.items()) for c in checks)


def apply_checks(v: Verdict, checks: list[dict]) -> None:
    """Tolerance-free checks a candidate reports about its own run (xla mode's tracing checks,
    harness/neuron/tracing.py), each a verdict of its own next to the numerical one: kept with the
    probes; a failing binding one fails a passing check, naming the rule. Nothing here can turn a
    failing verdict into a pass."""
    for check in checks:
        v.probes.append(dict(check))
        if check["binding"] and not check["passed"] and v.verdict == "pass":
            v.verdict, v.first_divergent_stage = "fail", check["name"]
            v.message = f"case {v.case_id} / candidate {v.candidate}: {check['name']} failed: {check['detail']}"


def run_case(
    case: Case,
    candidates: list[Candidate],
    bounds: Bounds = Bounds(),
    checkpoint: str | None = None,
    probes: bool = True,
    strict_probes: bool = False,
    expected: ExpectedFn = compute_expected,
    isolation: bool = True,
) -> list[Verdict]:
    """Every candidate's verdict on one case. `expected` supplies the oracle's and the reference's
    tensors: computed by default, or from the golden store (harness/goldens.py). `isolation`: name
    every stage that fails on its own (harness/isolation.py; up to one candidate run per stage)."""
    layers = expected(case, checkpoint)
    if case.depth > 1:
        return run_stack(case, candidates, bounds, layers, isolation, probes, strict_probes)
    return [judge(case, c, layers[0], bounds, probes, strict_probes, isolation) for c in candidates]


def run_stack(case: Case, candidates: list[Candidate], bounds: Bounds, layers: list[Expected],
              isolation: bool = True, probes: bool = True, strict_probes: bool = False) -> list[Verdict]:
    """Judge a stack layer by layer. Teacher and same_input modes: every candidate gets each layer's
    shared input, and each layer is judged as a block of its own (stages, isolation, probes). Free
    mode: each candidate gets its own previous output; a candidate that crashed or produced nothing
    usable is not run on later layers."""
    per_layer: dict[str, list[Verdict]] = {c.name: [] for c in candidates}
    cand_in = {c.name: layers[0].batch.hidden for c in candidates}
    alive = {c.name: True for c in candidates}
    alone = case.stack_mode != "free"  # no layer's error reaches another
    for layer in layers:
        for c in candidates:
            if not alive[c.name]:
                continue
            e = layer if alone else Expected(
                layer.spec, layer.batch.with_hidden(cand_in[c.name]), layer.oracle, layer.reference)
            result = run_candidate(c, e.spec, e.batch)
            layer_bounds = bounds.for_candidate(c)
            v = _verdict(case.id, c, result, e, layer_bounds if alone else layer_bounds.output_only())
            if alone and not isinstance(result, CandidateFailure):
                if v.verdict == "fail":
                    diagnose(v, c, set(result.taps), e, layer_bounds, isolation)
                elif probes and v.passed:
                    run_probes(c, e, result.output, v, strict_probes)
            per_layer[c.name].append(v)
            if isinstance(result, CandidateFailure) or v.verdict in ("shape", "dtype", "nonfinite"):
                alive[c.name] = False  # nothing sensible to feed the next layer
            else:
                cand_in[c.name] = next_input(result.output, e.batch, e.spec.dtype)
    specs = [layer.spec for layer in layers]
    return [combine_layers(case.id, c.name, specs, per_layer[c.name], independent_layers=alone) for c in candidates]


def combine_layers(case_id: str, candidate: str, specs: list[BlockSpec], verdicts: list[Verdict],
                   independent_layers: bool = True) -> Verdict:
    """One verdict for a stack: the first failing layer decides; every layer's summary is kept.
    `independent_layers` (teacher mode: each layer gets the oracle's input, so no layer's error reaches
    another): every failing layer's divergences are listed. Free-running, a later layer may fail only
    because an earlier one did, so only the first failing layer counts."""
    combined = Verdict(case_id, candidate, "pass")
    for spec, v in zip(specs, verdicts):
        for s in v.stages:
            s.layer = spec.layer_idx
        combined.stages += v.stages
        combined.probes += [{**record, "layer": spec.layer_idx} for record in v.probes]
        combined.layers.append({"layer": spec.layer_idx, "verdict": v.verdict, "worst_ratio": v.worst_ratio,
                                "first_divergent_stage": v.first_divergent_stage,
                                "divergent_stages": v.divergent_stages})
        if v.verdict != "pass" and (independent_layers or combined.verdict == "pass"):
            found = v.divergences or [Divergence(v.first_divergent_stage, located_by="end to end")]
            for d in found:
                d.layer = spec.layer_idx
            combined.divergences += found
        if combined.verdict == "pass" and v.verdict != "pass":
            combined.verdict = v.verdict
            combined.first_divergent_stage = f"layer {spec.layer_idx} / {v.first_divergent_stage}"
            combined.message = v.message.replace(f"case {case_id} /", f"case {case_id} / layer {spec.layer_idx} /", 1)
            combined.maps = v.maps
    later = [d.label for d in combined.divergences if d.layer != combined.divergences[0].layer] if combined.divergences else []
    if later:
        combined.message += f"\n  divergent in other layers too (each judged on its own input): {', '.join(later)}"
    ratios = [v.worst_ratio for v in verdicts if v.worst_ratio is not None]
    combined.worst_ratio = max(ratios) if ratios else None
    return combined
