"""Judge a candidate against the float64 oracle, in units of the bf16 reference's own error.

For each stage both the candidate and the reference are measured against the oracle; the bounds
(harness/tolerances.py) apply to the ratio of the two errors, which is scale-free: "2.1x the
reference's own error" means the same at every stage and size. Next to the ratios, tolerance-free
mask checks fail a stage outright (see StageResult).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from harness.batch import Batch
from harness.masks import broken_rules
import weakref

from harness.metrics import UNIT_ROUNDOFF, Errors, Judged, judged_positions, region, token_error, token_head_map
from harness.stages import STAGES
from harness.tolerances import Bound, Bounds  # noqa: F401  (re-exported)

@dataclass
class StageResult:
    """One stage's errors against the oracle, for the candidate and the bf16 reference. The policy
    bounds max_ratio and rms_ratio; the other metrics are reported for diagnosis."""

    stage: str
    elements: int
    cand_max: float
    ref_max: float
    cand_rms: float
    ref_rms: float
    max_ratio: float
    rms_ratio: float
    passed: bool
    cand_rel_fro: float = 0.0
    ref_rel_fro: float = 0.0
    cand_cosine: float = 1.0
    ref_cosine: float = 1.0
    beyond: float = 0.0  # fraction of the candidate's elements outside the reference's max error
    # Tolerance-free mask checks. probs: masked keys given a non-zero probability (every correct
    # implementation gives exactly 0 there), with the largest such probability. scores: visible keys
    # the candidate masked (hidden), masked real keys it left open (exposed).
    leaks: int = 0
    leak_max: float = 0.0
    hidden: int = 0
    exposed: int = 0
    # The same mask errors by the rule they break (harness/masks.py: broken_rules), e.g.
    # {"causal": {"open": 120}, "window": {"open": 30, "hidden": 2}}: a port with several mask bugs
    # learns each one. "open": masked pairs left open (scores) or given probability (probs).
    mask_rules: dict = field(default_factory=dict)
    # probs only: the errors of the sink column and of the key columns apart, {"sink column": {cand_max,
    # ref_max, max_ratio}, "key columns": {...}}. A sink bug shows in the sink column directly.
    split: dict = field(default_factory=dict)
    layer: int | None = None  # set in stacks

    @property
    def worst_ratio(self) -> float:
        return max(self.max_ratio, self.rms_ratio)


@dataclass
class Divergence:
    """A stage where an error starts: the candidate, entered at this stage with the oracle's values of
    every earlier stage, still fails here (harness/isolation.py). No earlier bug can reach it that way."""

    stage: str
    # located_by "tap": the stage's own tap failed, `result` holds its errors on entry. "output": the
    # stage is not tapped; the block output fails entered here and passes entered after it, `result`
    # holds the block output's errors on entry.
    result: StageResult | None = None
    located_by: str = "tap"
    # stages of the same operation (harness/isolation.py: OPERATIONS) that fail on their own too
    also: list[str] = field(default_factory=list)
    operation: str = ""  # what the stages in `also` share with this one
    detail: str = ""  # when there is no result: what was found (e.g. NaN on entry)
    layer: int | None = None  # set in stacks

    @property
    def label(self) -> str:
        return self.stage if self.layer is None else f"layer {self.layer} / {self.stage}"


@dataclass
class Verdict:
    case_id: str
    candidate: str
    verdict: str  # pass, fail, nonfinite, shape, dtype, error, timeout or unsupported
    worst_ratio: float | None = None
    first_divergent_stage: str | None = None
    stages: list[StageResult] = field(default_factory=list)
    message: str = ""
    # stacks: one summary per layer {layer, verdict, worst_ratio, first_divergent_stage}
    layers: list[dict] = field(default_factory=list)
    # failing verdicts: error maps for reports {"attn_token_head": {...}, "output_position": {...}}
    maps: dict = field(default_factory=dict)
    # the first stage that still fails when fed the oracle's inputs (candidates with stage entry)
    isolated_stage: str | None = None
    # every stage that fails on its own, in pipeline order (candidates with stage entry); the first is
    # first_divergent_stage
    divergences: list[Divergence] = field(default_factory=list)
    # tolerance-free probes: [{name, passed, detail}]
    probes: list[dict] = field(default_factory=list)
    # verdicts "error" and "timeout": the candidate's whole traceback
    traceback: str = ""
    # what the candidate reported about its run (CandidateResult.info: e.g. Neuron mode, buckets, compiles)
    info: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    @property
    def divergent_stages(self) -> list[str]:
        """Every independent divergence, headline first. Without stage entry only the first failing
        stage is known to be one (later failures may carry its error)."""
        if self.divergences:
            return [d.label for d in self.divergences]
        return [self.first_divergent_stage] if self.first_divergent_stage else []

    def to_dict(self) -> dict:
        d = asdict(self)
        d["id"] = d.pop("case_id")
        d["divergent_stages"] = self.divergent_stages
        return d


def _ratio(err: float, ref_err: float, floor: float) -> float:
    return err / max(ref_err, floor) if err > 0 else 0.0


class _PerTensor:
    """Memos attached to a tensor's identity, dropped with the tensor (tensors compare elementwise, so a
    WeakKeyDictionary cannot hold them). Each memo holds what its key names, so ids stay theirs."""

    def __init__(self):
        self.items: dict[int, dict] = {}

    def of(self, t: torch.Tensor) -> dict:
        key = id(t)
        if key not in self.items:
            self.items[key] = {}
            weakref.finalize(t, self.items.pop, key, None)
        return self.items[key]


# Judging one set of expected tensors against several candidates: a stage's region and the reference's
# errors there are the same for every candidate, so they are computed once (while the tensors live).
_REGIONS, _REFERENCE_ERRORS = _PerTensor(), _PerTensor()


def _region(stage: str, batch: Batch, oracle: torch.Tensor) -> torch.Tensor:
    memo = _REGIONS.of(oracle)
    if (stage, id(batch)) not in memo:
        memo[stage, id(batch)] = (region(stage, batch, oracle), batch)
    return memo[stage, id(batch)][0]


def _reference_errors(ref, oracle, mask, shared: bool) -> tuple[Judged, Errors]:
    """The oracle over the judged elements, and the reference's errors there."""
    memo = _REFERENCE_ERRORS.of(ref) if shared else {}
    key = (id(oracle), id(mask))
    if key not in memo:
        judged = Judged.of(oracle, mask)
        memo[key] = (judged, judged.errors(ref)[0], oracle)
    return memo[key][:2]


def judge_stage(stage, cand, ref, oracle, mask, bounds: Bounds, unit: float = 2.0**-8,
                shared_mask: bool = False) -> StageResult:
    """`shared_mask`: `mask` is the stage's region, one object for every candidate judged against these
    expected tensors (the reference's errors there are then computed once)."""
    judged, re_ = _reference_errors(ref, oracle, mask, shared_mask)
    ce, beyond = judged.errors(cand, envelope=re_.max)
    mr = _ratio(ce.max, re_.max, bounds.floor_ulps * unit * judged.scale_max)
    rr = _ratio(ce.rms, re_.rms, bounds.floor_ulps * unit * judged.scale_rms)
    bound = bounds.for_stage(stage)
    passed = (mr <= bound.max_ratio and rr <= bound.rms_ratio) or not bounds.binds(stage)
    return StageResult(stage, int(mask.sum()), ce.max, re_.max, ce.rms, re_.rms, mr, rr, passed,
                       ce.rel_fro, re_.rel_fro, ce.cosine, re_.cosine, beyond)


def compare(
    case_id: str,
    candidate: str,
    batch: Batch,
    oracle: dict[str, torch.Tensor],
    reference: dict[str, torch.Tensor],
    cand_output: torch.Tensor,
    cand_taps: dict[str, torch.Tensor],
    bounds: Bounds = Bounds(),
    expected_dtype: torch.dtype = torch.bfloat16,
) -> Verdict:
    where = f"case {case_id} / candidate {candidate}"
    v = Verdict(case_id, candidate, "pass")
    produced = {**cand_taps, "output": cand_output}
    for stage in STAGES:
        if stage not in produced or stage not in oracle or stage not in reference:
            continue
        t = produced[stage]
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(oracle[stage].shape):
            found = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            v.verdict, v.first_divergent_stage = "shape", stage
            v.message = (f"{where} / stage {stage}: expected shape {tuple(oracle[stage].shape)} "
                         f"(layout in harness/stages.py), found {found}")
            return v
    if cand_output.dtype != expected_dtype:
        v.verdict, v.first_divergent_stage = "dtype", "output"
        v.message = f"{where} / stage output: expected dtype {expected_dtype}, found {cand_output.dtype}"
        return v
    failing = []
    for stage in STAGES:
        if stage not in produced or stage not in oracle or stage not in reference:
            continue
        result = judge_stage_in_batch(stage, batch, produced[stage], reference[stage], oracle, bounds, expected_dtype)
        if result is None:
            continue
        if isinstance(result, str):
            v.verdict, v.first_divergent_stage = "nonfinite", stage
            v.message = f"{where} / stage {stage}: {result}"
            return v
        v.stages.append(result)
        if not result.passed:
            failing.append(result)
    v.worst_ratio = max((s.worst_ratio for s in v.stages), default=None)
    if failing:
        first = failing[0]
        v.verdict, v.first_divergent_stage = "fail", first.stage
        v.message = f"{where}: first divergent stage {first.stage}\n" + "\n".join(describe(s, bounds) for s in failing)
        v.maps = error_maps(batch, oracle, reference, produced)
    return v


def judge_stage_in_batch(stage, batch, cand, ref, oracle: dict, bounds: Bounds, dtype) -> StageResult | str | None:
    """Judge one stage over its region: a StageResult, a message if judged elements are NaN/Inf,
    or None when nothing is judged. `oracle` is the dict of oracle stages (the mask checks of probs
    read its scores)."""
    mask = region_mask = _region(stage, batch, oracle[stage])
    if not mask.any():
        return None
    hidden = exposed = torch.zeros_like(mask)
    if stage == "scores":
        # Masked means -inf or at most half the dtype's lowest value. A visible key the candidate masked,
        # or a masked real key it left open, is a mask error (tolerance-free), not a NaN.
        is_masked = cand <= torch.finfo(cand.dtype).min / 2
        hidden = mask & is_masked
        exposed = batch.compare[:, None, :, None] & _masked_keys(oracle, batch)[..., :-1] & ~is_masked
        mask = mask & ~hidden
    bad = mask & ~torch.isfinite(cand)
    if bad.any():
        return (f"{int(bad.sum())} of {int(mask.sum())} judged elements are NaN or Inf "
                "(a read of masked or uninitialised memory, or an overflow)")
    unit = UNIT_ROUNDOFF.get(dtype, 2.0**-8)
    result = judge_stage(stage, cand, ref, oracle[stage], mask, bounds, unit, shared_mask=mask is region_mask)
    if hidden.any() or exposed.any():
        result.hidden, result.exposed, result.passed = int(hidden.sum()), int(exposed.sum()), False
        result.mask_rules = broken_rules(batch.positions, batch.key_positions, batch.key_valid, exposed, hidden)
    if stage == "probs":
        masked = batch.compare[:, None, :, None] & _masked_keys(oracle, batch)
        leaked = masked & (cand != 0)
        if leaked.any():
            result.leaks, result.leak_max = int(leaked.sum()), float(cand[leaked].abs().max())
            result.mask_rules = broken_rules(batch.positions, batch.key_positions, batch.key_valid, leaked[..., :-1])
            result.passed = False
        result.split = _split_sink(cand, ref, oracle[stage], mask, bounds, unit)
    return result


def _split_sink(cand, ref, oracle, mask, bounds: Bounds, unit: float) -> dict:
    """The probs errors of the sink column and of the key columns apart, each in units of the
    reference's error there (same floor as the stage)."""
    memo = _REFERENCE_ERRORS.of(ref)
    key = ("split", id(oracle), id(mask))
    if key not in memo:
        memo[key] = (_column_max(ref, oracle, mask), _column_max(oracle, torch.zeros_like(oracle), mask), oracle, mask)
    (r_sink, r_keys), (s_sink, s_keys), *_ = memo[key]
    c_sink, c_keys = _column_max(cand, oracle, mask)
    floor = bounds.floor_ulps * unit
    return {"sink column": {"cand_max": c_sink, "ref_max": r_sink, "max_ratio": _ratio(c_sink, r_sink, floor * s_sink)},
            "key columns": {"cand_max": c_keys, "ref_max": r_keys, "max_ratio": _ratio(c_keys, r_keys, floor * s_keys)}}


def _column_max(x: torch.Tensor, oracle: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Max |x - oracle| over the judged elements of the sink column and of the key columns."""
    d = torch.where(mask, (x.double() - oracle).abs(), 0.0)
    return float(d[..., -1].max()), float(d[..., :-1].max())


def error_maps(batch, oracle, reference, produced) -> dict:
    """Token x head errors of the attention output, and per-position block-output errors, for both
    the candidate and the reference (lists, so they travel in JSON)."""
    maps: dict = {"positions": judged_positions(batch).tolist(), "rows": batch.compare.nonzero()[:, 0].tolist()}
    if "attn" in produced and "attn" in reference:
        maps["attn_token_head"] = {
            "candidate": token_head_map(produced["attn"], oracle["attn"], batch).tolist(),
            "reference": token_head_map(reference["attn"], oracle["attn"], batch).tolist(),
        }
    maps["output_position"] = {
        "candidate": token_error(produced["output"], oracle["output"], batch).tolist(),
        "reference": token_error(reference["output"], oracle["output"], batch).tolist(),
    }
    return maps


def _masked_keys(oracle: dict[str, torch.Tensor], batch: Batch) -> torch.Tensor:
    """[B, Hq, S, S+1] True where the key is masked for that query or is padding (sink column False).
    Only meaningful on judged query rows."""
    if "scores" in oracle:
        masked = oracle["scores"] == -float("inf")
    else:
        masked = oracle["probs"][..., :-1] == 0
    masked = masked | ~batch.key_valid[:, None, None, :]
    return torch.cat([masked, torch.zeros_like(masked[..., :1])], dim=-1)


def describe(s: StageResult, bounds: Bounds) -> str:
    """One line per failing stage, ending with the bound that would have passed."""
    return f"  stage {s.stage}: " + "; ".join(failures(s, bounds))


# What a wrong (query, key) pair of each rule is, in words: (rule, "open" or "hidden") -> the pairs.
_PAIRS = {
    ("causal", "open"): "with a later key",
    ("window", "open"): "with a key W or more positions back",
    ("padding", "open"): "with a padding key",
    ("causal", "hidden"): "of a query and its own key",
    ("window", "hidden"): "with an earlier key inside the window",
}


def mask_failures(s: StageResult) -> list[str]:
    """One phrase per broken mask rule, with counts (tolerance-free: no bound makes these pass)."""
    out = []
    for rule, counts in s.mask_rules.items():
        said = []
        for how, n in counts.items():
            pairs = f"{n} (query, key) pairs {_PAIRS[rule, how]}"
            if how == "hidden":
                said.append(f"{pairs} masked")
            elif s.stage == "probs":
                said.append(f"{pairs} given non-zero probability (up to {s.leak_max:.3g})")
            else:
                said.append(f"{pairs} left unmasked in the scores")
        out.append(f"{rule} mask broken: " + ", ".join(said))
    if out:
        out[-1] += " (no tolerance makes this pass)"
    return out


def failures(s: StageResult, bounds: Bounds) -> list[str]:
    """What fails at a stage: each broken mask rule, then each metric over its bound with the bound
    that would have passed (and, at probs, the sink column and the key columns apart)."""
    bound = bounds.for_stage(s.stage)
    parts = mask_failures(s)
    if s.max_ratio > bound.max_ratio:
        parts.append(f"max-abs error {s.cand_max:.3g} is {s.max_ratio:.3g}x the reference's {s.ref_max:.3g} "
                     f"(bound {bound.max_ratio:g}x; a bound of {_just_above(s.max_ratio)}x would have passed)")
    if s.rms_ratio > bound.rms_ratio:
        parts.append(f"RMS error {s.cand_rms:.3g} is {s.rms_ratio:.3g}x the reference's {s.ref_rms:.3g} "
                     f"(bound {bound.rms_ratio:g}x; a bound of {_just_above(s.rms_ratio)}x would have passed)")
    if s.split and len(parts) > len(s.mask_rules):
        parts.append("max-abs error by column: " + ", ".join(f"{part} {e['max_ratio']:.3g}x" for part, e in s.split.items())
                     + " the reference's")
    return parts


def _just_above(x: float) -> str:
    """The ratio rounded UP to 3 significant digits, so the printed bound really passes."""
    digits = 2 - int(math.floor(math.log10(x)))
    step = 10.0**-digits
    return f"{math.ceil(x / step) * step:.{max(digits, 0)}f}"
