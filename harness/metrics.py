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
    def of(cls, x: torch.Tensor, oracle: torch.Tensor) -> "Errors":
        if x.numel() == 0:
            return cls(0.0, 0.0, 0.0, 1.0)
        x = x.double()
        d = x - oracle
        norm_o, norm_x = float(oracle.norm()), float(x.norm())
        cosine = float((x * oracle).sum()) / (norm_o * norm_x) if norm_o and norm_x else float(norm_o == norm_x)
        return cls(float(d.abs().max()), float(d.pow(2).mean().sqrt()), float(d.norm()) / norm_o if norm_o else 0.0, cosine)


def beyond_fraction(cand: torch.Tensor, oracle: torch.Tensor, envelope: float) -> float:
    """Fraction of elements whose error exceeds `envelope` (the reference's largest error)."""
    if cand.numel() == 0:
        return 0.0
    return float(((cand.double() - oracle).abs() > envelope).double().mean())


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
