"""Judge a candidate against the float64 oracle, in units of the bf16 reference's own error.

For each stage both the candidate and the reference are measured against the oracle; the candidate
passes a metric when   err(candidate) <= bound * max(err(reference), floor).
The ratio is scale-free: "2.1x the reference's own error" means the same at every stage and size.
Defaults follow FlashAttention's tests (kernel error <= 2x the same-precision baseline on max abs)
and PyTorch dynamo's same() (RMSE <= 2-3x the reference's RMSE against fp64); both are widened a
little because the reference here is itself bf16 and single tokens give max-abs statistics of one
element. The floor keeps a ratio meaningful where the reference happens to be (almost) exact.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch

from harness.batch import Batch
from harness.stages import STAGES, check_stage_names

VERDICTS = ("pass", "fail", "nonfinite", "shape", "dtype", "error")


@dataclass(frozen=True)
class Bound:
    max_ratio: float
    rms_ratio: float

    def __post_init__(self):
        for name in ("max_ratio", "rms_ratio"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and value > 0 and math.isfinite(value)):
                raise ValueError(f"{name}={value!r} must be a positive finite number")


# Attention internals get a wider bound: with dominant sinks a short row's attention output is
# nearly zero and every bf16 softmax variant's relative error grows there. HF eager (row max
# subtracted in bf16) measured up to 3.9x the reference on 1-token rows with sinks of 5..15, while
# its block output stayed within 1.1x. Real bugs measure 10x and far more.
_TOKEN = Bound(max_ratio=3.0, rms_ratio=2.0)
_ATTENTION = Bound(max_ratio=6.0, rms_ratio=6.0)
DEFAULT_BOUNDS = {stage: (_ATTENTION if stage in ("scores", "probs", "attn") else _TOKEN) for stage in STAGES}


@dataclass(frozen=True)
class Bounds:
    """The tolerance policy: one Bound per stage, and a noise floor in units of the bf16 unit
    roundoff (2^-8) times the oracle's own scale."""

    per_stage: tuple[tuple[str, Bound], ...] = tuple(DEFAULT_BOUNDS.items())
    floor_ulps: float = 0.5

    def __post_init__(self):
        check_stage_names(dict(self.per_stage))
        if not (self.floor_ulps > 0 and math.isfinite(self.floor_ulps)):
            raise ValueError(f"floor_ulps={self.floor_ulps!r} must be a positive finite number")

    def for_stage(self, stage: str) -> Bound:
        return dict(self.per_stage).get(stage, _TOKEN)

    def overridden(self, max_ratio: float | None = None, rms_ratio: float | None = None) -> "Bounds":
        """Every stage's bound with the given metric(s) replaced."""
        stages = tuple(
            (name, Bound(max_ratio or b.max_ratio, rms_ratio or b.rms_ratio)) for name, b in self.per_stage
        )
        return Bounds(stages, self.floor_ulps)


@dataclass
class StageResult:
    stage: str
    elements: int
    cand_max: float
    ref_max: float
    cand_rms: float
    ref_rms: float
    max_ratio: float
    rms_ratio: float
    passed: bool
    # Tolerance-free mask checks. probs: masked keys given a non-zero probability (every correct
    # implementation gives exactly 0 there), with the largest such probability. scores: visible keys
    # the candidate masked (-inf or the dtype's lowest value).
    leaks: int = 0
    leak_max: float = 0.0
    hidden: int = 0
    layer: int | None = None  # set in stacks

    @property
    def worst_ratio(self) -> float:
        return max(self.max_ratio, self.rms_ratio)


@dataclass
class Verdict:
    case_id: str
    candidate: str
    verdict: str
    worst_ratio: float | None = None
    first_divergent_stage: str | None = None
    stages: list[StageResult] = field(default_factory=list)
    message: str = ""
    # stacks: one summary per layer {layer, verdict, worst_ratio, first_divergent_stage}
    layers: list[dict] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["id"] = d.pop("case_id")
        return d


UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-24}


def region(stage: str, batch: Batch, oracle: torch.Tensor) -> torch.Tensor:
    """Boolean mask, shaped like the stage tensor, of the elements that are judged."""
    rows = batch.compare
    if stage == "scores":  # visible keys only: masked entries may be -inf or the dtype's min
        return (rows[:, None, :, None] & torch.isfinite(oracle)).expand(oracle.shape)
    if stage == "probs":  # every real key (masked ones must be 0) plus the sink column
        keys = torch.cat([batch.valid, torch.ones_like(batch.valid[:, :1])], dim=1)
        return (rows[:, None, :, None] & keys[:, None, None, :]).expand(oracle.shape)
    shape = rows.shape + (1,) * (oracle.dim() - 2)
    return rows.view(shape).expand(oracle.shape)


def _errors(x: torch.Tensor, oracle: torch.Tensor) -> tuple[float, float]:
    if x.numel() == 0:
        return 0.0, 0.0
    d = x.double() - oracle
    return float(d.abs().max()), float(d.pow(2).mean().sqrt())


def _ratio(err: float, ref_err: float, floor: float) -> float:
    return err / max(ref_err, floor) if err > 0 else 0.0


def judge_stage(stage, cand, ref, oracle, mask, bounds: Bounds, unit: float = 2.0**-8) -> StageResult:
    c, r, o = cand[mask], ref[mask], oracle[mask]
    cmax, crms = _errors(c, o)
    rmax, rrms = _errors(r, o)
    scale_max, scale_rms = _errors(torch.zeros_like(o), o)
    mr = _ratio(cmax, rmax, bounds.floor_ulps * unit * scale_max)
    rr = _ratio(crms, rrms, bounds.floor_ulps * unit * scale_rms)
    bound = bounds.for_stage(stage)
    passed = mr <= bound.max_ratio and rr <= bound.rms_ratio
    return StageResult(stage, int(mask.sum()), cmax, rmax, crms, rrms, mr, rr, passed)


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
        mask = region(stage, batch, oracle[stage])
        if not mask.any():
            continue
        hidden = torch.zeros_like(mask)
        if stage == "scores":  # a visible key the candidate masked is a mask error, not a NaN
            t = produced[stage]
            hidden = mask & (t <= torch.finfo(t.dtype).min / 2)
            mask = mask & ~hidden
        bad = ~torch.isfinite(produced[stage][mask])
        if bad.any():
            v.verdict, v.first_divergent_stage = "nonfinite", stage
            v.message = (f"{where} / stage {stage}: {int(bad.sum())} of {int(mask.sum())} judged elements are "
                         "NaN or Inf (a read of masked or uninitialised memory, or an overflow)")
            return v
        unit = UNIT_ROUNDOFF.get(expected_dtype, 2.0**-8)
        result = judge_stage(stage, produced[stage], reference[stage], oracle[stage], mask, bounds, unit)
        if hidden.any():
            result.hidden, result.passed = int(hidden.sum()), False
        if stage == "probs":
            masked = mask & _masked_keys(oracle)
            leaked = produced[stage][masked] != 0
            if leaked.any():
                result.leaks, result.leak_max = int(leaked.sum()), float(produced[stage][masked].abs().max())
                result.passed = False
        v.stages.append(result)
        if not result.passed:
            failing.append(result)
    v.worst_ratio = max((s.worst_ratio for s in v.stages), default=None)
    if failing:
        first = failing[0]
        v.verdict, v.first_divergent_stage = "fail", first.stage
        v.message = f"{where}: first divergent stage {first.stage}\n" + "\n".join(describe(s, bounds) for s in failing)
    return v


def _masked_keys(oracle: dict[str, torch.Tensor]) -> torch.Tensor:
    """[B, Hq, S, S+1] True where the key is masked for that query (sink column False)."""
    probs = oracle["probs"]
    if "scores" in oracle:
        masked = ~torch.isfinite(oracle["scores"])
    else:
        masked = probs[..., :-1] == 0
    return torch.cat([masked, torch.zeros_like(masked[..., :1])], dim=-1)


def describe(s: StageResult, bounds: Bounds) -> str:
    """One line per failing stage, ending with the bound that would have passed."""
    bound = bounds.for_stage(s.stage)
    parts = []
    if s.hidden:
        parts.append(f"{s.hidden} visible (query, key) pairs were masked: the mask is wrong (no tolerance makes this pass)")
    if s.leaks:
        parts.append(f"{s.leaks} masked (query, key) pairs got non-zero probability, up to {s.leak_max:.3g}: "
                     "the mask is missing or wrong (no tolerance makes this pass)")
    if s.max_ratio > bound.max_ratio:
        parts.append(f"max-abs error {s.cand_max:.3g} is {s.max_ratio:.3g}x the reference's {s.ref_max:.3g} "
                     f"(bound {bound.max_ratio:g}x; a bound of {_just_above(s.max_ratio)}x would have passed)")
    if s.rms_ratio > bound.rms_ratio:
        parts.append(f"RMS error {s.cand_rms:.3g} is {s.rms_ratio:.3g}x the reference's {s.ref_rms:.3g} "
                     f"(bound {bound.rms_ratio:g}x; a bound of {_just_above(s.rms_ratio)}x would have passed)")
    return f"  stage {s.stage}: " + "; ".join(parts)


def _just_above(x: float) -> str:
    """The ratio rounded UP to 3 significant digits, so the printed bound really passes."""
    digits = 2 - int(math.floor(math.log10(x)))
    step = 10.0**-digits
    return f"{math.ceil(x / step) * step:.{max(digits, 0)}f}"
