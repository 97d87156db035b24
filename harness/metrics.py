"""Error metrics against the float64 oracle, the judged region of each stage, and error maps."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.batch import Batch

UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11, torch.float32: 2.0**-24}


def region(stage: str, batch: Batch, oracle: torch.Tensor) -> torch.Tensor:
    """Boolean mask, shaped like the stage tensor, of the elements that are judged."""
    rows = batch.compare
    if stage == "scores":  # visible keys only: masked entries may be -inf or the dtype's min
        return (rows[:, None, :, None] & torch.isfinite(oracle)).expand(oracle.shape)
    if stage == "probs":  # every real key (masked ones must be 0) plus the sink column
        keys = torch.cat([batch.key_valid, torch.ones_like(batch.valid[:, :1])], dim=1)
        return (rows[:, None, :, None] & keys[:, None, None, :]).expand(oracle.shape)
    shape = rows.shape + (1,) * (oracle.dim() - 2)
    return rows.view(shape).expand(oracle.shape)


@dataclass
class Errors:
    """Errors of one producer's judged elements against the oracle's."""

    max: float
    rms: float
    rel_fro: float  # ||x - oracle|| / ||oracle||
    cosine: float  # cosine similarity of x and the oracle, flattened

    @classmethod
    def of(cls, x: torch.Tensor, oracle: torch.Tensor, mask: torch.Tensor | None = None) -> Errors:
        """Over the elements where `mask` is True (all without one)."""
        return Judged.of(oracle, mask).errors(x)[0]


@dataclass
class Judged:
    """The oracle over a stage's judged elements (zero elsewhere) and its scale, shared by every producer
    judged there. Reductions run masked over the whole tensor rather than on gathered copies: a stage of
    64 heads x 131,072 keys is judged in a few passes."""

    oracle: torch.Tensor
    mask: torch.Tensor | None
    count: int
    norm: float
    scale_max: float  # max |oracle| over the judged elements
    scale_rms: float
    gathered: torch.Tensor | None = None  # the mask the oracle was gathered with (producers are gathered too)

    @classmethod
    def of(cls, oracle: torch.Tensor, mask: torch.Tensor | None = None) -> Judged:
        n = oracle.numel() if mask is None else int(mask.sum())
        gathered = mask
        if mask is not None and n < mask.numel() // 4:  # sparse (a sliding layer's keys among 131,072): gather
            oracle, mask = oracle[mask], None
        o = oracle.double() if mask is None else torch.where(mask, oracle.double(), 0.0)
        sumsq = float(o.square().sum())
        judged = cls(o, mask, n, sumsq**0.5, float(o.abs().max()) if n else 0.0, (sumsq / n) ** 0.5 if n else 0.0)
        judged.gathered = gathered
        return judged

    def errors(self, x: torch.Tensor, envelope: float | None = None) -> tuple[Errors, float]:
        """The producer's errors, and the fraction of judged elements whose error exceeds `envelope`."""
        if self.count == 0:
            return Errors(0.0, 0.0, 0.0, 1.0), 0.0
        if self.mask is None and x.shape != self.oracle.shape:
            x = x[self.gathered]
        x = x.double() if self.mask is None else torch.where(self.mask, x.double(), 0.0)
        d = x - self.oracle
        sumsq = float(d.square().sum())
        a = d.abs_()
        norm_x = float(x.norm())
        cosine = float((x * self.oracle).sum()) / (self.norm * norm_x) if self.norm and norm_x else float(self.norm == norm_x)
        beyond = float((a > envelope).sum()) / self.count if envelope is not None else 0.0
        errors = Errors(float(a.max()), (sumsq / self.count) ** 0.5, sumsq**0.5 / self.norm if self.norm else 0.0, cosine)
        return errors, beyond


def token_head_map(cand: torch.Tensor, oracle: torch.Tensor, batch: Batch) -> torch.Tensor:
    """[judged tokens, heads] max-abs error of a [B, S, H, d] stage, tokens in batch-row order."""
    err = (cand.double() - oracle).abs().amax(dim=-1)  # [B, S, H]
    return err[batch.compare]


def token_error(cand: torch.Tensor, oracle: torch.Tensor, batch: Batch) -> torch.Tensor:
    """[judged tokens] max-abs error of a [B, S, ...] stage."""
    err = (cand.double() - oracle).abs().flatten(2).amax(dim=-1)
    return err[batch.compare]


def judged_positions(batch: Batch) -> torch.Tensor:
    return batch.positions[batch.compare]
