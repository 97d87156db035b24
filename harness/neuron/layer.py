"""The layer a Neuron candidate runs: RMSNorm, an NxDI attention module, the residual. Tensors in and
tensors out, so that the same module runs eagerly (CPU mode, the emulation) and traced on a device,
and so that the driver gets its stage taps without changing the attention module:

    forward(x, mask, position_ids[, k_cache, v_cache, active_mask])
        -> (output, normed, out_proj, k, v)

Context encoding passes no cache; token generation passes the cache and the active mask. `out_proj`
is the attention module's output (NxDI's o_proj with bias, no residual); k and v are its
present_key_value (after RoPE): the window or the whole context after context encoding, the step's
own keys after token generation.
"""

from __future__ import annotations

import torch

NORM_EPS = 1e-5  # gpt-oss's RMSNorm


def unpack(result) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden_states, k, v) from NxDI's NeuronAttentionBaseOutput or the tuple older releases return."""
    hidden = getattr(result, "hidden_states", None)
    present = getattr(result, "present_key_value", None)
    if hidden is None:
        hidden, present = result[0], result[1]
    return hidden, present[0], present[1]


class NeuronLayer(torch.nn.Module):
    def __init__(self, attention: torch.nn.Module, hidden_size: int):
        super().__init__()
        self.norm_scale = torch.nn.Parameter(torch.ones(hidden_size, dtype=torch.float32))  # float32, as gpt-oss's
        self.attn = attention
        self.fed_normed: tuple[torch.Tensor, torch.Tensor] | None = None  # stage isolation (the emulation only)

    def forward(self, x, mask, position_ids, k_cache=None, v_cache=None, active_mask=None):
        t = x.float()
        normed = (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + NORM_EPS) * self.norm_scale).to(x.dtype)
        if self.fed_normed is not None:
            fed, rows = self.fed_normed
            normed = torch.where(rows[..., None], fed.to(normed.dtype), normed)
        extra = {} if k_cache is None else {"past_key_value": (k_cache, v_cache), "active_mask": active_mask}
        hidden, k, v = unpack(self.attn(hidden_states=normed, attention_mask=mask, position_ids=position_ids, **extra))
        return x + hidden.to(x.dtype), normed, hidden, k, v
