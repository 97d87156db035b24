"""The one protocol every candidate implements (see harness/candidates/__init__.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

import torch

from harness.batch import Batch, BlockSpec
from harness.case import PLANS, TOKEN_PLANS


@dataclass
class CandidateResult:
    output: torch.Tensor
    taps: dict[str, torch.Tensor] = field(default_factory=dict)
    # anything the candidate wants reported with its verdict (JSON-able: e.g. the Neuron mode, buckets, compiles)
    info: dict = field(default_factory=dict)


class CandidateUnsupported(Exception):
    """Raised by a candidate for a case it cannot run (e.g. a plan its module does not support): the
    check is reported as `unsupported` with this message (pytest skips it), never run as something else."""


class CandidateInconsistent(Exception):
    """Raised by a candidate whose own results contradict each other where a correct block's cannot
    (e.g. two ranks of a sharded block holding different outputs): a `fail` at `stage`, found without
    the oracle and without a tolerance."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage


@runtime_checkable
class Candidate(Protocol):
    """Optional attributes a candidate may declare:
    - plans: the plans it can run (default: every plan that hands it all tokens, TOKEN_PLANS);
    - accepts_cache = True: it runs from_cache plans, whose batch carries `cache` (harness/batch.py:
      CachedPrefix, the reference's k_rope and v of every earlier position, [B, C, Hkv, d] in the case's
      dtype, slot j holding position j) and only the tokens to generate, at their absolute positions.
      Its keys come before the batch's own on the key axis (Batch.key_positions / key_valid), and score
      taps span that axis. A candidate that does not declare it is never drawn such cases, and one that
      is handed one anyway is reported `unsupported`;
    - buckets: the padded lengths it was compiled for (cases are drawn inside them);
    - fixed_weights = True: its weights are compiled in, so the probe that runs it with other weights
      (sink_over_masked_keys, harness/probes.py) is not run on it."""

    name: str

    def run(self, spec: BlockSpec, batch: Batch, *, taps: bool) -> CandidateResult: ...


def accepts_cache(candidate) -> bool:
    return bool(getattr(candidate, "accepts_cache", False))


def supported_plans(candidate) -> tuple[str, ...]:
    """The plans to draw for a candidate: its declared `plans` (default TOKEN_PLANS), with from_cache
    exactly when it accepts a cache."""
    plans = tuple(p for p in getattr(candidate, "plans", TOKEN_PLANS) if p != "from_cache")
    return tuple(p for p in PLANS if p in plans or (p == "from_cache" and accepts_cache(candidate)))


class FunctionCandidate:
    """Adapts a plain `fn(spec, batch) -> Tensor` to the protocol."""

    def __init__(self, fn: Callable, name: str):
        self.fn = fn
        self.name = name

    def run(self, spec: BlockSpec, batch: Batch, *, taps: bool) -> CandidateResult:
        return normalise_result(self.fn(spec, batch), self.name)


def normalise_result(value, name: str) -> CandidateResult:
    if isinstance(value, CandidateResult):
        return value
    if isinstance(value, torch.Tensor):
        return CandidateResult(output=value)
    raise TypeError(
        f"candidate {name!r} returned {type(value).__name__}; expected a CandidateResult or the output "
        "tensor [B, S, hidden]"
    )


def as_candidate(obj, name: str | None = None) -> Candidate:
    """Accept an instance with run(), a class to instantiate without arguments, or a plain function."""
    if isinstance(obj, type):
        try:
            obj = obj()
        except TypeError as exc:
            raise TypeError(f"candidate {name or obj.__name__}: the class {obj.__name__} cannot be built without arguments "
                            f"({exc}); give it defaults for every constructor argument, or name an instance or a "
                            "function instead (package.module:attribute)") from None
    if hasattr(obj, "run") and callable(obj.run):
        if not getattr(obj, "name", None):
            obj.name = name or type(obj).__name__
        return obj
    if callable(obj):
        return FunctionCandidate(obj, name or getattr(obj, "__name__", "candidate"))
    raise TypeError(
        f"{name or obj!r} is not a candidate: expected an object with run(spec, batch, *, taps), a class "
        "of such objects, or a function fn(spec, batch) returning the output tensor"
    )
