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


# The three mask rules, in the order they are reported. A mask error is a (query, key) pair that the
# candidate left open although a rule masks it, or masked although every rule leaves it visible.
MASK_RULES = ("causal", "window", "padding")


def broken_rules(positions: torch.Tensor, key_positions: torch.Tensor, key_valid: torch.Tensor, opened: torch.Tensor,
                 hidden: torch.Tensor | None = None) -> dict[str, dict[str, int]]:
    """Which rule each wrong pair breaks, with counts: {"causal": {"open": n}, "window": {"open": n,
    "hidden": m}, ...}, only the rules with errors. positions [B, Sq] of the queries, key_positions and
    key_valid [B, Sk] of the keys (a batch's key axis). `opened`, `hidden`: [B, H, Sq, Sk] pairs wrongly
    open / wrongly masked (masked by the oracle, i.e. by some rule / visible to the oracle).

    An opened pair is classified by its key alone, which needs no window size: a padding key breaks
    the padding rule, a key later than the query the causal rule, and a real earlier key can only be
    masked by the window. A hidden pair is visible to the oracle, so its key is real, not later and
    inside any window: hiding the query's own key is a causal-mask off-by-one, hiding an earlier key a
    window too narrow (or a window on a layer without one)."""
    qp, kp = positions[:, None, :, None], key_positions[:, None, None, :]
    pad = ~key_valid[:, None, None, :]
    later = kp > qp
    counts = {
        ("padding", "open"): opened & pad,
        ("causal", "open"): opened & ~pad & later,
        ("window", "open"): opened & ~pad & ~later,
    }
    if hidden is not None:
        counts[("causal", "hidden")] = hidden & (kp == qp)
        counts[("window", "hidden")] = hidden & (kp != qp)
    out: dict[str, dict[str, int]] = {rule: {} for rule in MASK_RULES}
    for (rule, how), pairs in counts.items():
        if pairs.any():
            out[rule][how] = int(pairs.sum())
    return {rule: found for rule, found in out.items() if found}
