"""gpt-oss attention block, written from the maths to match OpenAI's `gpt_oss.torch.model`.

Public names and contracts are those of the OpenAI module (ModelConfig, RMSNorm, RotaryEmbedding,
sdpa, AttentionBlock) so either can replace the other. Every operation runs in the same dtype and
order as the original, which is what makes the two bit-identical in bfloat16; do not "simplify"
an operation here without re-running tests/test_reference_identity.py.

Beyond the drop-in, `AttentionBlock.forward_with_taps` returns the intermediate tensors the harness
compares stage by stage. The plain `forward` runs the very same code with tapping switched off.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class ModelConfig:
    num_hidden_layers: int = 36
    num_experts: int = 128
    experts_per_token: int = 4
    vocab_size: int = 201088
    hidden_size: int = 2880
    intermediate_size: int = 2880
    swiglu_limit: float = 7.0
    head_dim: int = 64
    num_attention_heads: int = 64
    num_key_value_heads: int = 8
    sliding_window: int = 128
    initial_context_length: int = 4096
    rope_theta: float = 150000.0
    rope_scaling_factor: float = 32.0
    rope_ntk_alpha: float = 1.0
    rope_ntk_beta: float = 32.0


def yarn_concentration_and_inv_freq(
    head_dim: int,
    base: float,
    initial_context_length: int,
    scaling_factor: float,
    ntk_alpha: float,
    ntk_beta: float,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
) -> tuple[float, torch.Tensor]:
    """YaRN (arXiv:2309.00071) with NTK-by-parts and no rounding of the ramp ends.

    The reference evaluates this in float32; the oracle calls it with dtype=float64.
    """
    freq = base ** (torch.arange(0, head_dim, 2, dtype=dtype, device=device) / head_dim)
    if scaling_factor <= 1.0:
        return 1.0, 1.0 / freq
    concentration = 0.1 * math.log(scaling_factor) + 1.0
    d_half = head_dim / 2
    # Dimensions below `low` rotate fast enough to keep their original frequency, above `high`
    # they are fully interpolated; the ramp between them is linear.
    low = d_half * math.log(initial_context_length / (ntk_beta * 2 * math.pi)) / math.log(base)
    high = d_half * math.log(initial_context_length / (ntk_alpha * 2 * math.pi)) / math.log(base)
    if not 0 < low < high < d_half - 1:
        raise ValueError(
            f"YaRN needs 0 < low < high < head_dim/2 - 1, found low={low:.3f}, high={high:.3f} for "
            f"head_dim={head_dim}; use head_dim >= 8 (gpt-oss uses 64)"
        )
    interpolation = 1.0 / (scaling_factor * freq)
    extrapolation = 1.0 / freq
    ramp = (torch.arange(d_half, dtype=dtype, device=freq.device) - low) / (high - low)
    keep = 1 - ramp.clamp(0, 1)
    return concentration, interpolation * (1 - keep) + extrapolation * keep


class RMSNorm(torch.nn.Module):
    def __init__(self, num_features: int, eps: float = 1e-05, device: torch.device | None = None):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.scale = torch.nn.Parameter(torch.ones(num_features, device=device, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.num_features:
            raise ValueError(f"RMSNorm expects a last dimension of {self.num_features}, got shape {tuple(x.shape)}")
        dtype = x.dtype
        t = x.float()
        t = t * torch.rsqrt(torch.mean(t**2, dim=-1, keepdim=True) + self.eps)
        return (t * self.scale).to(dtype)


def _apply_rotary_emb(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # Rotate-half layout: dimension i is paired with i + d/2. Tables are cast to x's dtype first.
    cos = cos.unsqueeze(-2).to(x.dtype)
    sin = sin.unsqueeze(-2).to(x.dtype)
    first, second = torch.chunk(x, 2, dim=-1)
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)


class RotaryEmbedding(torch.nn.Module):
    def __init__(
        self,
        head_dim: int,
        base: int,
        dtype: torch.dtype,
        initial_context_length: int = 4096,
        scaling_factor: float = 1.0,
        ntk_alpha: float = 1.0,
        ntk_beta: float = 32.0,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        self.head_dim = head_dim
        self.base = base
        self.dtype = dtype
        self.initial_context_length = initial_context_length
        self.scaling_factor = scaling_factor
        self.ntk_alpha = ntk_alpha
        self.ntk_beta = ntk_beta
        self.device = device

    def _compute_concentration_and_inv_freq(self) -> tuple[float, torch.Tensor]:
        return yarn_concentration_and_inv_freq(
            self.head_dim,
            self.base,
            self.initial_context_length,
            self.scaling_factor,
            self.ntk_alpha,
            self.ntk_beta,
            dtype=torch.float32,
            device=self.device,
        )

    def _compute_cos_sin(self, num_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        concentration, inv_freq = self._compute_concentration_and_inv_freq()
        positions = torch.arange(num_tokens, dtype=torch.float32, device=self.device)
        angles = torch.einsum("i,j->ij", positions, inv_freq)
        return angles.cos() * concentration, angles.sin() * concentration

    def forward(self, query: torch.Tensor, key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        num_tokens = query.shape[0]
        cos, sin = self._compute_cos_sin(num_tokens)
        rotated = []
        for t in (query, key):
            flat = t.view(num_tokens, -1, self.head_dim)
            rotated.append(_apply_rotary_emb(flat, cos, sin).reshape(t.shape))
        return rotated[0], rotated[1]


def sdpa(Q, K, V, S, sm_scale, sliding_window=0, _taps: dict | None = None):
    """Attention with learned sinks. Q: (n, kv_heads, q_mult, d); K, V: (n, kv_heads, d); S: (heads,).

    sliding_window == 0 means full causal attention; W > 0 keeps keys j with i - W < j <= i.
    """
    n_tokens, n_heads, q_mult, d_head = Q.shape
    if K.shape != (n_tokens, n_heads, d_head) or V.shape != (n_tokens, n_heads, d_head):
        raise ValueError(
            f"sdpa expects K and V of shape {(n_tokens, n_heads, d_head)} to match Q {tuple(Q.shape)}, "
            f"got K {tuple(K.shape)} and V {tuple(V.shape)}"
        )
    # Query head h = kv * q_mult + m reads kv head kv: expanding on a new q_mult axis is interleaving.
    K = K[:, :, None, :].expand(-1, -1, q_mult, -1)
    V = V[:, :, None, :].expand(-1, -1, q_mult, -1)
    S = S.reshape(n_heads, q_mult, 1, 1).expand(-1, -1, n_tokens, -1)
    mask = torch.triu(Q.new_full((n_tokens, n_tokens), -float("inf")), diagonal=1)
    if sliding_window > 0:
        mask += torch.tril(mask.new_full((n_tokens, n_tokens), -float("inf")), diagonal=-sliding_window)
    scores = torch.einsum("qhmd,khmd->hmqk", Q, K)
    scores *= sm_scale
    scores += mask[None, None, :, :]
    # The sink is one more logit per head: it only enlarges the softmax denominator.
    logits = torch.cat([scores, S], dim=-1)
    probs = torch.softmax(logits, dim=-1)
    attn = torch.einsum("hmqk,khmd->qhmd", probs[..., :-1], V)
    if _taps is not None:
        _taps["scores"] = scores.reshape(n_heads * q_mult, n_tokens, n_tokens)
        _taps["probs"] = probs.reshape(n_heads * q_mult, n_tokens, n_tokens + 1)
    return attn.reshape(n_tokens, -1)


class AttentionBlock(torch.nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int = 0, device: torch.device | None = None):
        super().__init__()
        self.head_dim = config.head_dim
        self.num_attention_heads = config.num_attention_heads
        self.num_key_value_heads = config.num_key_value_heads
        # gpt-oss alternates: even layers use the sliding window, odd layers full attention.
        self.sliding_window = config.sliding_window if layer_idx % 2 == 0 else 0
        self.sinks = torch.nn.Parameter(torch.empty(config.num_attention_heads, device=device, dtype=torch.bfloat16))
        self.norm = RMSNorm(config.hidden_size, device=device)
        qkv_dim = config.head_dim * (config.num_attention_heads + 2 * config.num_key_value_heads)
        self.qkv = torch.nn.Linear(config.hidden_size, qkv_dim, device=device, dtype=torch.bfloat16)
        self.out = torch.nn.Linear(
            config.head_dim * config.num_attention_heads, config.hidden_size, device=device, dtype=torch.bfloat16
        )
        self.sm_scale = 1 / math.sqrt(config.head_dim)
        self.rope = RotaryEmbedding(
            config.head_dim,
            config.rope_theta,
            torch.float32,
            initial_context_length=config.initial_context_length,
            scaling_factor=config.rope_scaling_factor,
            ntk_alpha=config.rope_ntk_alpha,
            ntk_beta=config.rope_ntk_beta,
            device=device,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, None)

    def forward_with_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Forward plus every stage (see harness.stages for names and layouts), computed once."""
        taps: dict[str, torch.Tensor] = {}
        return self._run(x, taps), taps

    def _run(self, x: torch.Tensor, taps: dict | None) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError(f"AttentionBlock takes unbatched (n_tokens, hidden) input, got shape {tuple(x.shape)}")
        n_q = self.num_attention_heads * self.head_dim
        n_kv = self.num_key_value_heads * self.head_dim
        t = self.norm(x)
        qkv = self.qkv(t)
        q = qkv[:, :n_q].contiguous()
        k = qkv[:, n_q : n_q + n_kv].contiguous()
        v = qkv[:, n_q + n_kv : n_q + 2 * n_kv].contiguous()
        q = q.view(-1, self.num_key_value_heads, self.num_attention_heads // self.num_key_value_heads, self.head_dim)
        k = k.view(-1, self.num_key_value_heads, self.head_dim)
        v = v.view(-1, self.num_key_value_heads, self.head_dim)
        if taps is not None:
            taps.update(normed=t, q=q.reshape(len(x), -1, self.head_dim), k=k, v=v)
        q, k = self.rope(q, k)
        attn = sdpa(q, k, v, self.sinks, self.sm_scale, self.sliding_window, _taps=taps)
        projected = self.out(attn)
        y = x + projected
        if taps is not None:
            taps.update(
                q_rope=q.reshape(len(x), -1, self.head_dim),
                k_rope=k,
                attn=attn.view(len(x), -1, self.head_dim),
                out_proj=projected,
                output=y,
            )
        return y
