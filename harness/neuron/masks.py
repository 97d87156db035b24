"""Attention masks exactly as NxDI's model builds them (models/model_base.py); NeuronAttentionBase
never builds masks itself, and a None mask means no masking at all. All masks are boolean, True = visible.

- context encoding (CTE): [B, 1, S, S], causal, and on sliding layers causal within the window of W
  keys including the query (_create_context_attn_mask, _create_windowed_attn_mask_cte). Padding is on
  the right, so a real query never sees a padding key; the rows of padding queries are thrown away.
- token generation (TKG), keys in the cache: [B, 1, q, L]. Full layers: the cache holds position p in
  slot p, and slots below the step's first position are visible (_create_simple_attn_mask). Sliding
  layers: a ring of R slots (R = W-1 in NxDI 2.29, W in 2.26) in a cache of L slots; slot s holds the
  newest position below the step's start with p % R == s, visible when it was written and lies inside
  the query's window (for one query at position pos and R = W-1 this is slot s < min(pos, W-1), NxDI's
  _create_windowed_attn_mask_tkg; slots R..L-1 are never written).
- TKG, keys of the step itself (several tokens per step, as speculation runs): the active mask
  [B, 1, q, q], causal within the window, and only real tokens.
"""

from __future__ import annotations

import torch


def context_mask(batch: int, length: int, window: int) -> torch.Tensor:
    i = torch.arange(length)[:, None]
    j = torch.arange(length)[None, :]
    keep = j <= i
    if window:
        keep &= j > i - window
    return keep[None, None].expand(batch, 1, length, length).clone()


def ring_positions(start: torch.Tensor, ring: int, slots: int) -> torch.Tensor:
    """[B, slots]: the position each ring slot holds before a step that starts at `start` [B]
    (-1: never written). Slot s < ring holds the newest p < start with p % ring == s."""
    s = torch.arange(slots)[None, :]
    last = start[:, None] - 1  # newest position in the cache
    p = last - ((last - s) % ring)  # the newest p <= last with p % ring == s
    p = torch.where((s < ring) & (p >= 0), p, torch.full_like(p, -1))
    return p


def generation_mask(positions: torch.Tensor, start: torch.Tensor, cache_len: int, window: int,
                    ring: int | None, expose_last_slot: bool = False) -> torch.Tensor:
    """[B, 1, q, cache_len]: cached keys each query of a TKG step sees. positions [B, q] are the
    step's query positions, start [B] the step's first position (everything before it is cached).
    `ring`: the ring size on sliding layers (None on full layers). expose_last_slot: a bug (the
    never-written slots of a sliding cache left visible), for the self-test."""
    if ring is None:
        held = torch.arange(cache_len)[None, :].expand(len(start), cache_len)
        keep = (held[:, None, :] < start[:, None, None]).expand(-1, positions.shape[1], -1)
    else:
        held = ring_positions(start, ring, cache_len)  # [B, L]
        keep = (held[:, None, :] >= 0) & (held[:, None, :] > positions[:, :, None] - window)
        if expose_last_slot:
            keep = keep | (torch.arange(cache_len) >= ring)[None, None, :]
    return keep[:, None].clone()


def active_mask(positions: torch.Tensor, valid: torch.Tensor, window: int) -> torch.Tensor:
    """[B, 1, q, q]: keys of the step itself each query sees (causal, within the window, real tokens)."""
    qp, kp = positions[:, :, None], positions[:, None, :]
    keep = (kp <= qp) & valid[:, None, :]
    if window:
        keep &= kp > qp - window
    return keep[:, None]
