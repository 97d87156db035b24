"""Platform rounding: when a recomputed bf16 reference is the same reference computed by other kernels.

The reference rounds differently on other CPUs and torch versions (harness/cpu.py): a few elements
per tensor move by an ulp or a few, and attention amplifies that. A golden must verify on all of
them, yet a change of the reference's meaning (a window one key wider, other sinks, other RoPE) must
still be drift. A recomputed reference tensor is accepted as platform rounding of the stored one when

1. dtype, shape and the places of NaN and infinities are the same, and a probability the oracle
   gives exactly 0 (a masked key) is exactly 0 again: the masks did not change;
2. every element moved by at most ELEMENT_ULPS[stage] ulps of its magnitude, where the magnitude is
   the larger of the old value, the new value and the tensor's RMS (an element near zero after a
   cancellation carries the rounding of its larger operands);
3. the reference's own RMS error against the (stored) oracle changed by at most ERROR_CHANGE of
   itself at that stage.
Rule 3 is what a change of meaning cannot pass: it adds error to whole rows. Rule 2 catches a change
confined to a few elements, which rule 3 might average away.

Where the numbers come from (measured, bf16 reference, torch 2.13, over the 13 curated cases and
150 generated ones): recomputing goldens written with ATen AVX512 / oneDNN AVX512_CORE_BF16 on
an AVX2 machine moved 0.02-1% of the elements, by at most 1.25 ulps of magnitude, and the RMS errors
by at most 0.09%. ATen's scalar kernels against its AVX2 ones (ATEN_CPU_CAPABILITY=default, the most
different kernels one machine can run) moved up to 1% of the elements: q, k, v, their RoPE and the
norm by at most 2 ulps, the output and out-projection by up to 10.5, the probabilities by up to 25
and the attention output by up to 42 (softmax amplifies: a one-ulp change of a score s moves its
probability by about s ulps, and scores reach 20-40 with peaked attention); the RMS errors moved by
at most 3.5%. Changes of meaning moved the RMS error of at least one stage by 190% (YaRN's ramp
ends rounded to integers, HF's truncate) to 11,000% (another RoPE base): a window of W+1 keys 520%,
sinks 5% larger 530%, sinks in reverse head order 4,500%. The bounds below sit at 2-4x the largest
platform figure and far below the smallest change of meaning.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ELEMENT_ULPS = {
    "normed": 8, "q": 8, "k": 8, "v": 8, "q_rope": 8, "k_rope": 8, "inputs": 8,
    "probs": 96, "attn": 96, "scores": 96, "probs.sink": 8,
    "out_proj": 32, "output": 32,
}
ERROR_CHANGE = 0.10


@dataclass
class RoundingCheck:
    """How a recomputed reference tensor compares with the stored one."""

    accepted: bool
    differ: int  # elements that differ
    max_ulps: float  # largest move, in ulps of the element's magnitude (see the module docstring)
    error_change: float  # relative change of the reference's RMS error against the oracle
    reason: str = ""  # why it is not platform rounding

    def describe(self) -> str:
        if not self.accepted:
            return self.reason
        return (f"{self.differ} elements moved by at most {self.max_ulps:.3g} ulps, the reference's RMS error "
                f"{self.error_change:+.2%}")


def ulp(magnitude: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The spacing of `dtype` at each magnitude (float64)."""
    info = torch.finfo(dtype)
    m = magnitude.clamp_min(info.tiny)
    return torch.exp2(torch.floor(torch.log2(m))) * info.eps


def stage_of(name: str) -> str:
    """'layer0.reference.probs' -> 'probs'; 'layer1.inputs.hidden' -> 'inputs'."""
    parts = name.split(".")
    return "inputs" if "inputs" in parts else parts[-1]


def check(name: str, old: torch.Tensor, new: torch.Tensor, oracle: torch.Tensor | None) -> RoundingCheck:
    """Is `new` the stored `old` rounded by other kernels? `oracle`: the stored oracle of the same
    stage (None where there is none), against which the reference's own error is measured. The
    probabilities are judged as two tensors: the keys' columns and the sink's, whose probability a
    change of the sinks moves directly (platform rounding moved it by at most 1 ulp)."""
    stage = stage_of(name)
    if old.dtype != new.dtype or old.shape != new.shape:
        return RoundingCheck(False, old.numel(), math.inf, math.inf, "dtype or shape changed")
    a, b = old.double(), new.double()
    finite_a, finite_b = torch.isfinite(a), torch.isfinite(b)
    if not torch.equal(finite_a, finite_b) or not torch.equal(a[~finite_a].nan_to_num(0), b[~finite_b].nan_to_num(0)):
        return RoundingCheck(False, int((finite_a != finite_b).sum()), math.inf, math.inf,
                             "NaN or infinite elements moved (a mask or an uninitialised read changed)")
    o = oracle.double() if oracle is not None else None
    if stage != "probs":
        return _values(stage, a, b, o, old.dtype)
    if o is not None:
        masked = (o[..., :-1] == 0) & finite_a[..., :-1]
        opened = int((b[..., :-1][masked] != 0).sum())
        if opened:
            return RoundingCheck(False, int((a != b).sum()), math.inf, math.inf,
                                 f"{opened} probabilities of masked keys are no longer 0 (the mask changed)")
    keys = _values("probs", a[..., :-1], b[..., :-1], None if o is None else o[..., :-1], old.dtype)
    sink = _values("probs.sink", a[..., -1:], b[..., -1:], None if o is None else o[..., -1:], old.dtype)
    if not sink.accepted:
        sink.reason = "the sink column: " + sink.reason
        sink.differ += keys.differ
        return sink
    if not keys.accepted:
        keys.differ += sink.differ
        return keys
    return RoundingCheck(True, keys.differ + sink.differ, max(keys.max_ulps, sink.max_ulps),
                         max(keys.error_change, sink.error_change, key=abs))


def _values(stage: str, a: torch.Tensor, b: torch.Tensor, o: torch.Tensor | None, dtype: torch.dtype) -> RoundingCheck:
    """Rules 2 and 3 over the finite elements of float64 copies of one stage's tensors."""
    finite = torch.isfinite(a)
    fa, fb = a[finite], b[finite]
    differ = int((fa != fb).sum())
    if differ == 0:
        return RoundingCheck(True, 0, 0.0, 0.0)
    rms = fa.pow(2).mean().sqrt()
    magnitude = torch.maximum(torch.maximum(fa.abs(), fb.abs()), rms)
    max_ulps = float(((fa - fb).abs() / ulp(magnitude, dtype)).max())
    change = 0.0
    if o is not None:
        fo = o[finite]
        # bf16 rounding alone gives an RMS error of about 0.3 ulps; the floor only guards against a zero error
        floor = 0.05 * float(ulp(fo.pow(2).mean().sqrt(), dtype))
        before = max(float((fa - fo).pow(2).mean().sqrt()), floor)
        after = max(float((fb - fo).pow(2).mean().sqrt()), floor)
        change = after / before - 1.0
    bound = ELEMENT_ULPS.get(stage, min(ELEMENT_ULPS.values()))
    if max_ulps > bound:
        return RoundingCheck(False, differ, max_ulps, change,
                             f"an element moved by {max_ulps:.3g} ulps of its magnitude (platform rounding: at most {bound})")
    if abs(change) > ERROR_CHANGE:
        return RoundingCheck(False, differ, max_ulps, change,
                             f"the reference's RMS error against the oracle changed by {change:+.1%} (platform rounding: "
                             f"at most {ERROR_CHANGE:.0%})")
    return RoundingCheck(True, differ, max_ulps, change)
