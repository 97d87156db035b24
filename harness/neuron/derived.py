"""Stages a real module does not show, derived from what it does show (harness/neuron/hooks.py): its q and
k before RoPE, its own RoPE tables (the rotary submodule's output), the mask and cache it was given,
and its own sinks. Derived, not observed: q_rope and k_rope by NxDI's apply_rotary_pos_emb, scores as
q_rope . k^T / sqrt(d) over the keys the call read (the cache's slots, then the call's own), masked by the
masks the module was given, probabilities as the softmax over the scores and the head's sink.

What they tell: with q, k and the derived stages within bounds and `attn` failing, the bug is in the
module's own masking, softmax, sinks or value product; a failing q_rope with q passing points at its
RoPE; failing scores with q_rope and the cached keys passing at the keys it read.
"""

from __future__ import annotations

import torch

from harness.neuron.emulation import rotate

DERIVED = ("q_rope", "scores", "probs")


def derive(seen: dict[str, torch.Tensor], mask: torch.Tensor, cache_k: torch.Tensor | None = None,
           active: torch.Tensor | None = None, *, sinks: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """q_rope, scores and probs of one call in the driver's internal layouts (scores [B, H, T, keys],
    probs [B, H, T, keys + 1] with the sink last), from `seen` (q, k [B, H, T, d], cos, sin [B, T, d]).
    Context encoding: `mask` [B, 1, T, T]. Token generation: `mask` [B, 1, T, L] over `cache_k`
    [B, Hkv, L, d], `active` [B, 1, T, T] over the call's own keys. {} when something is missing."""
    if not {"q", "k", "cos", "sin"} <= set(seen) or sinks is None:
        return {}
    q, k = seen["q"], seen["k"]
    cos, sin = seen["cos"][:, None].to(q.dtype), seen["sin"][:, None].to(q.dtype)
    q_rope, k_rope = rotate(q, cos, sin), rotate(k, cos, sin)
    if cache_k is not None:
        keys, visible = torch.cat((cache_k.to(q.dtype), k_rope), dim=2), torch.cat((mask, active), dim=-1)
    else:
        keys, visible = k_rope, mask
    group = q.shape[1] // keys.shape[1]
    scores = torch.matmul(q_rope.float(), keys.repeat_interleave(group, 1).float().transpose(2, 3)) / q.shape[-1] ** 0.5
    visible = visible.bool()
    b, h, t, _ = scores.shape
    masked = torch.where(visible, scores, torch.finfo(torch.float32).min)
    sink = sinks.float().to(scores.device).reshape(1, h, 1, 1).expand(b, h, t, 1)
    probs = torch.softmax(torch.cat((masked, sink), dim=-1), dim=-1)
    shown = torch.where(visible, scores, torch.finfo(q.dtype).min).to(q.dtype)  # as NxDI masks: the dtype's min
    return {"q_rope": q_rope, "scores": shown, "probs": probs.to(q.dtype)}
