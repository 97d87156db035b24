"""Float64 oracle for the gpt-oss attention block.

Upcasting the reference module is not an oracle: its RMSNorm and RoPE tables stay float32. Here every
stage runs in float64, from the same bf16 parameters. Only the requested query rows are evaluated,
in chunks, and each chunk reads only the keys it can see (<= its last position, and only the last W
on sliding layers), so memory grows linearly with sequence length. The pieces (`project`, `attend`,
`finish`) also serve callers that stream a long prefix in chunks (harness/prefix.py) and keep only its
keys and values.

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


def project(params: dict[str, torch.Tensor], config: ModelConfig, x: torch.Tensor, positions: torch.Tensor,
            queries: bool = True) -> dict[str, torch.Tensor]:
    """normed, q, k, v, q_rope, k_rope (float64) of tokens x (n, hidden) at `positions`; with
    queries=False only k_rope and v (a prefix's keys: a fifth of the work)."""
    hq, hkv, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    xs = x.to(F64)
    normed = xs * torch.rsqrt(xs.pow(2).mean(dim=-1, keepdim=True) + NORM_EPS) * params["norm.scale"].to(F64)
    w, b = params["qkv.weight"], params["qkv.bias"]
    lo = 0 if queries else hq * d
    qkv = normed @ w[lo:].to(F64).T + b[lo:].to(F64)
    qkv = torch.cat((qkv.new_empty(len(x), hq * d), qkv), dim=1) if not queries else qkv
    k = qkv[:, hq * d : (hq + hkv) * d].view(-1, hkv, d)
    v = qkv[:, (hq + hkv) * d :].view(-1, hkv, d)
    cos, sin = rope_tables_f64(config, positions)
    out = {"k_rope": rotate_half(k, cos, sin), "v": v}
    if queries:
        q = qkv[:, : hq * d].view(-1, hq, d)
        out.update(normed=normed, q=q, k=k, q_rope=rotate_half(q, cos, sin))
    return out


def attend(params: dict[str, torch.Tensor], config: ModelConfig, layer_idx: int, q_rope: torch.Tensor,
           rows: torch.Tensor, k_rope: torch.Tensor, v: torch.Tensor, key_positions: torch.Tensor,
           score_taps: bool = False) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Attention of query rows at positions `rows` (q_rope (r, hq, d)) over keys at `key_positions`
    (k_rope, v (K, hkv, d)); keys a row cannot see are masked here. Returns attn (r, hq, d) and, with
    `score_taps`, scores (hq, r, K) (-inf where masked) and probs (hq, r, K + 1) (the sink last)."""
    window = window_of(config, layer_idx)
    hq, hkv, d = config.num_attention_heads, config.num_key_value_heads, config.head_dim
    q_mult = hq // hkv
    visible = key_positions[None, :] <= rows[:, None]
    if window:
        visible &= key_positions[None, :] > rows[:, None] - window
    qc = q_rope.reshape(-1, hkv, q_mult, d)
    s = torch.einsum("cgmd,jgd->gmcj", qc, k_rope) * d**-0.5
    s = s.masked_fill(~visible, -float("inf"))
    sinks = params["sinks"].to(F64).view(hkv, q_mult)
    logits = torch.cat([s, sinks[:, :, None, None].expand(-1, -1, len(rows), 1)], dim=-1)
    p = torch.softmax(logits, dim=-1)
    attn = torch.einsum("gmcj,jgd->cgmd", p[..., :-1], v).reshape(-1, hq, d)
    if not score_taps:
        return attn, None, None
    return attn, s.reshape(hq, len(rows), -1), p.reshape(hq, len(rows), -1)


def finish(params: dict[str, torch.Tensor], x_rows: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out_proj, output) of rows whose attention output is attn (r, hq, d)."""
    out_proj = attn.reshape(len(attn), -1) @ params["out.weight"].to(F64).T + params["out.bias"].to(F64)
    return out_proj, x_rows.to(F64) + out_proj


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
    hq = config.num_attention_heads

    # Positions whose keys some requested row can see; the rows themselves are among them.
    needed = torch.zeros(int(rows.max()) + 1, dtype=torch.bool)
    if window:
        for r in rows.tolist():
            needed[max(0, r - window + 1) : r + 1] = True
    else:
        needed[:] = True
    kpos = needed.nonzero().squeeze(1)
    keys = project(params, config, x[kpos], kpos, queries=False)
    stages = project(params, config, x[rows], rows)

    attn = torch.empty(len(rows), hq, config.head_dim, dtype=F64)
    scores_tap = torch.full((hq, len(rows), n), -float("inf"), dtype=F64) if score_taps else None
    probs_tap = torch.zeros((hq, len(rows), n + 1), dtype=F64) if score_taps else None
    for c0 in range(0, len(rows), chunk):
        c_rows = rows[c0 : c0 + chunk]
        lo = int(c_rows.min()) - window + 1 if window else 0
        k_lo = int(torch.searchsorted(kpos, torch.tensor(max(lo, 0))))
        k_hi = int(torch.searchsorted(kpos, c_rows.max(), right=True))
        a, s, p = attend(params, config, layer_idx, stages["q_rope"][c0 : c0 + chunk], c_rows,
                         keys["k_rope"][k_lo:k_hi], keys["v"][k_lo:k_hi], kpos[k_lo:k_hi], score_taps)
        attn[c0 : c0 + chunk] = a
        if score_taps:
            scores_tap[:, c0 : c0 + chunk, kpos[k_lo:k_hi]] = s
            probs_tap[:, c0 : c0 + chunk, kpos[k_lo:k_hi]] = p[..., :-1]
            probs_tap[:, c0 : c0 + chunk, n] = p[..., -1]

    out_proj, output = finish(params, x[rows], attn)
    result = OracleResult(rows=rows, output=output)
    if taps:
        result.taps = {name: stages[name] for name in ("normed", "q", "k", "v", "q_rope", "k_rope")}
        result.taps.update(attn=attn, out_proj=out_proj, output=output)
        if score_taps:
            result.taps.update(scores=scores_tap, probs=probs_tap)
    return result
