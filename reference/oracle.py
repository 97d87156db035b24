"""Float64 oracle for the gpt-oss attention block.

Upcasting the reference module is not an oracle: its RMSNorm and RoPE tables stay float32. Here every
stage runs in float64, from the same bf16 parameters. Only the requested query rows are evaluated,
in chunks, and each chunk reads only the keys it can see (<= its last position, and only the last W
on sliding layers), so memory grows linearly with sequence length.

Parameters use the gpt-oss checkpoint names without the `block.N.attn.` prefix:
norm.scale, qkv.weight, qkv.bias, sinks, out.weight, out.bias.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from reference.gpt_oss import ModelConfig, yarn_concentration_and_inv_freq

F64 = torch.float64
NORM_EPS = 1e-5


@dataclass
class OracleResult:
    """Float64 outputs for `rows` (sorted positions). Token stages are indexed [row, ...];
    `scores` is (heads, rows, n_keys) with -inf where masked, `probs` (heads, rows, n_keys + 1)
    with the sink probability last."""

    rows: torch.Tensor
    output: torch.Tensor
    taps: dict[str, torch.Tensor] = field(default_factory=dict)


def rope_tables_f64(config: ModelConfig, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    concentration, inv_freq = yarn_concentration_and_inv_freq(
        config.head_dim,
        config.rope_theta,
        config.initial_context_length,
        config.rope_scaling_factor,
        config.rope_ntk_alpha,
        config.rope_ntk_beta,
        dtype=F64,
    )
    angles = positions.to(F64)[:, None] * inv_freq[None, :]
    return angles.cos() * concentration, angles.sin() * concentration


def rotate_half(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: (n, heads, d); cos, sin: (n, d/2)."""
    cos, sin = cos[:, None, :], sin[:, None, :]
    first, second = torch.chunk(x, 2, dim=-1)
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)


def window_of(config: ModelConfig, layer_idx: int) -> int:
    """Keys visible to a query on this layer, itself included; 0 means unlimited (full causal)."""
    return config.sliding_window if layer_idx % 2 == 0 else 0


def oracle_forward(
    params: dict[str, torch.Tensor],
    config: ModelConfig,
    layer_idx: int,
    x: torch.Tensor,
    rows: torch.Tensor | list[int] | None = None,
    *,
    taps: bool = False,
    score_taps: bool = False,
    chunk: int = 64,
) -> OracleResult:
    """Evaluate the block in float64 on one unbatched sequence x (n_tokens, hidden), whose token i sits
    at position i, for the query positions `rows` (default: all)."""
    n = x.shape[0]
    if x.dim() != 2 or x.shape[1] != config.hidden_size:
        raise ValueError(f"oracle expects x of shape (n_tokens, {config.hidden_size}), got {tuple(x.shape)}")
    rows = torch.arange(n) if rows is None else torch.as_tensor(rows, dtype=torch.long).unique(sorted=True)
    if len(rows) == 0 or int(rows.min()) < 0 or int(rows.max()) >= n:
        raise ValueError(f"oracle rows must be non-empty positions in [0, {n}), got {rows.tolist()[:8]}...")
    window = window_of(config, layer_idx)
    hq, hkv, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    q_mult = hq // hkv

    # Positions whose keys some requested row can see; the rows themselves are among them.
    needed = torch.zeros(int(rows.max()) + 1, dtype=torch.bool)
    if window:
        for r in rows.tolist():
            needed[max(0, r - window + 1) : r + 1] = True
    else:
        needed[:] = True
    kpos = needed.nonzero().squeeze(1)

    xs = x[kpos].to(F64)
    normed = xs * torch.rsqrt(xs.pow(2).mean(dim=-1, keepdim=True) + NORM_EPS) * params["norm.scale"].to(F64)
    qkv = normed @ params["qkv.weight"].to(F64).T + params["qkv.bias"].to(F64)
    q = qkv[:, : hq * d].view(-1, hq, d)
    k = qkv[:, hq * d : (hq + hkv) * d].view(-1, hkv, d)
    v = qkv[:, (hq + hkv) * d :].view(-1, hkv, d)
    cos, sin = rope_tables_f64(config, kpos)
    q_rope, k_rope = rotate_half(q, cos, sin), rotate_half(k, cos, sin)
    sinks = params["sinks"].to(F64).view(hkv, q_mult)
    scale = d**-0.5

    row_idx = torch.searchsorted(kpos, rows)  # where each requested row sits among kpos
    attn = torch.empty(len(rows), hq, d, dtype=F64)
    scores_tap = torch.full((hq, len(rows), n), -float("inf"), dtype=F64) if score_taps else None
    probs_tap = torch.zeros((hq, len(rows), n + 1), dtype=F64) if score_taps else None
    for c0 in range(0, len(rows), chunk):
        c_rows = rows[c0 : c0 + chunk]
        lo = int(c_rows.min()) - window + 1 if window else 0
        k_lo = int(torch.searchsorted(kpos, torch.tensor(max(lo, 0))))
        k_hi = int(torch.searchsorted(kpos, c_rows.max(), right=True))
        keys = kpos[k_lo:k_hi]
        visible = keys[None, :] <= c_rows[:, None]
        if window:
            visible &= keys[None, :] > c_rows[:, None] - window
        qc = q_rope[row_idx[c0 : c0 + chunk]].view(-1, hkv, q_mult, d)
        s = torch.einsum("cgmd,jgd->gmcj", qc, k_rope[k_lo:k_hi]) * scale
        s = s.masked_fill(~visible, -float("inf"))
        logits = torch.cat([s, sinks[:, :, None, None].expand(-1, -1, len(c_rows), 1)], dim=-1)
        p = torch.softmax(logits, dim=-1)
        attn[c0 : c0 + chunk] = torch.einsum("gmcj,jgd->cgmd", p[..., :-1], v[k_lo:k_hi]).reshape(-1, hq, d)
        if score_taps:
            scores_tap[:, c0 : c0 + chunk, keys] = s.reshape(hq, len(c_rows), -1)
            probs_tap[:, c0 : c0 + chunk, keys] = p[..., :-1].reshape(hq, len(c_rows), -1)
            probs_tap[:, c0 : c0 + chunk, n] = p[..., -1].reshape(hq, len(c_rows))

    out_proj = attn.reshape(len(rows), -1) @ params["out.weight"].to(F64).T + params["out.bias"].to(F64)
    output = x[rows].to(F64) + out_proj
    result = OracleResult(rows=rows, output=output)
    if taps:
        result.taps = {
            "normed": normed[row_idx],
            "q": q[row_idx],
            "k": k[row_idx],
            "v": v[row_idx],
            "q_rope": q_rope[row_idx],
            "k_rope": k_rope[row_idx],
            "attn": attn,
            "out_proj": out_proj,
            "output": output,
        }
        if score_taps:
            result.taps.update(scores=scores_tap, probs=probs_tap)
    return result
