"""Visibility masks built from positions, for candidates whose attention takes an explicit mask
(HF eager, NxDI's NeuronAttentionBase, which never builds masks itself)."""

from __future__ import annotations

import torch


def visible_keys(q_pos: torch.Tensor, k_pos: torch.Tensor, k_valid: torch.Tensor, window: int) -> torch.Tensor:
    """Boolean [B, Sq, Sk]: query i sees key j iff j is a real token, pos_j <= pos_i and, on sliding
    layers, pos_i - W < pos_j (exactly W keys including the query itself)."""
    qp, kp = q_pos[:, :, None], k_pos[:, None, :]
    keep = (kp <= qp) & k_valid[:, None, :]
    if window:
        keep &= kp > qp - window
    return keep


def additive_mask(keep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, Sq, Sk] with 0 where visible and the dtype's lowest finite value elsewhere (as HF does;
    -inf would give NaN rows wherever a row sees nothing and has no sink)."""
    mask = torch.zeros(keep.shape, dtype=dtype)
    mask.masked_fill_(~keep, torch.finfo(dtype).min)
    return mask[:, None]
