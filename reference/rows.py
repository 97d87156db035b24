"""The bf16 reference, row-selective and chunked: only the query rows asked for are computed.

Every operation is the one `reference/gpt_oss.py` runs, in the same dtype and order (RMSNorm in float32
cast back, the fused qkv Linear, float32 RoPE tables cast to the activation dtype, scores and softmax in
the activation dtype with the sink as an extra column, the out Linear, the residual), but keys and values
are projected chunk by chunk, a query row reads only the keys it can see, and sliding layers read only
their last W keys. Memory grows linearly with the length: the dense reference holds (heads, n, n) scores.

Where the dense reference fits, the two agree bit for bit or within a few ulps at a few elements (a
matrix product over fewer rows may pick another kernel); tests/test_long_context.py measures it. Key
ranges start at a multiple of KEY_ALIGN so that the keys a row reads sit at the same offsets inside the
vector lanes and kernel blocks as in the dense row, whose extra keys are all masked (-inf, probability 0).
"""

from __future__ import annotations

import torch

from reference.gpt_oss import AttentionBlock, RotaryEmbedding, _apply_rotary_emb

KEY_ALIGN = 512


def linear(t: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """What a Linear computes (F.linear, as nn.Linear.forward), never on a single row: a one-row product runs another kernel (a matrix-vector product)
    whose bf16 results differ from the dense reference's rows by an ulp at a few elements (measured);
    two rows take the matrix-product kernel, whose rows do not depend on how many there are."""
    if t.shape[0] == 1:
        return torch.nn.functional.linear(torch.cat((t, t)), weight, bias)[:1]
    return torch.nn.functional.linear(t, weight, bias)


def rope_tables_at(rope: RotaryEmbedding, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's float32 cos and sin tables at `positions` (RotaryEmbedding._compute_cos_sin
    evaluates them at 0..n-1; each element is the same product and the same cos/sin)."""
    concentration, inv_freq = rope._compute_concentration_and_inv_freq()
    angles = torch.einsum("i,j->ij", positions.to(torch.float32), inv_freq)
    return angles.cos() * concentration, angles.sin() * concentration


def project(block: AttentionBlock, x: torch.Tensor, positions: torch.Tensor) -> dict[str, torch.Tensor]:
    """normed, q, k, v and their rotations for tokens x (n, hidden) at `positions`:
    q, q_rope (n, kv_heads, q_mult, d); k, v, k_rope (n, kv_heads, d)."""
    hq, hkv, d = block.num_attention_heads, block.num_key_value_heads, block.head_dim
    n_q, n_kv = hq * d, hkv * d
    t = block.norm(x)
    qkv = linear(t, block.qkv.weight, block.qkv.bias)
    q = qkv[:, :n_q].contiguous().view(-1, hkv, hq // hkv, d)
    k = qkv[:, n_q : n_q + n_kv].contiguous().view(-1, hkv, d)
    v = qkv[:, n_q + n_kv : n_q + 2 * n_kv].contiguous().view(-1, hkv, d)
    cos, sin = rope_tables_at(block.rope, positions)
    q_rope = _apply_rotary_emb(q.view(len(x), -1, d), cos, sin).reshape(q.shape)
    k_rope = _apply_rotary_emb(k, cos, sin)
    return {"normed": t, "q": q, "k": k, "v": v, "q_rope": q_rope, "k_rope": k_rope}


def project_keys(block: AttentionBlock, x: torch.Tensor, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """k_rope and v (n, kv_heads, d) of tokens x at `positions`: the k and v rows of the fused qkv
    weight only, a fifth of the work (per output element the same product as the fused Linear's)."""
    hq, hkv, d = block.num_attention_heads, block.num_key_value_heads, block.head_dim
    kv = linear(block.norm(x), block.qkv.weight[hq * d :], block.qkv.bias[hq * d :])
    k = kv[:, : hkv * d].contiguous().view(-1, hkv, d)
    v = kv[:, hkv * d :].contiguous().view(-1, hkv, d)
    cos, sin = rope_tables_at(block.rope, positions)
    return _apply_rotary_emb(k, cos, sin), v


def key_range(window: int, first_row: int, last_row: int) -> tuple[int, int]:
    """Positions [lo, hi) of the keys rows first_row..last_row can see, lo aligned down to KEY_ALIGN."""
    lo = max(0, first_row - window + 1) if window else 0
    return (lo // KEY_ALIGN) * KEY_ALIGN, last_row + 1


def attend(block: AttentionBlock, q_rope: torch.Tensor, rows: torch.Tensor, k_rope: torch.Tensor, v: torch.Tensor,
           key_lo: int, taps: dict | None = None) -> torch.Tensor:
    """sdpa for the query rows at positions `rows` (r, kv_heads, q_mult, d) over keys at positions
    key_lo, key_lo + 1, ... (K, kv_heads, d). Returns attn (r, heads * d); with `taps`, scores
    (heads, r, K) and probs (heads, r, K + 1) over those keys (the sink last)."""
    n_rows, n_heads, q_mult, _ = q_rope.shape
    n_keys = k_rope.shape[0]
    S = block.sinks.reshape(n_heads, q_mult, 1, 1).expand(-1, -1, n_rows, -1)
    key_pos = torch.arange(key_lo, key_lo + n_keys)
    hidden = key_pos[None, :] > rows[:, None]
    if block.sliding_window > 0:
        hidden |= key_pos[None, :] <= rows[:, None] - block.sliding_window
    mask = q_rope.new_zeros((n_rows, n_keys)).masked_fill_(hidden, -float("inf"))
    # sdpa expands K and V over q_mult first; reading the kv head directly is the same products without
    # a (keys, heads, d) copy per row block (bit-identical where measured, tests/test_long_context.py)
    scores = torch.einsum("qhmd,khd->hmqk", q_rope, k_rope)
    scores *= block.sm_scale
    scores += mask[None, None, :, :]
    logits = torch.cat([scores, S], dim=-1)
    probs = torch.softmax(logits, dim=-1)
    attn = torch.einsum("hmqk,khd->qhmd", probs[..., :-1], v)
    if taps is not None:
        taps["scores"] = scores.reshape(n_heads * q_mult, n_rows, n_keys)
        taps["probs"] = probs.reshape(n_heads * q_mult, n_rows, n_keys + 1)
    return attn.reshape(n_rows, -1)


def finish(block: AttentionBlock, x_rows: torch.Tensor, attn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(out_proj, output) of the rows: the out Linear, then the residual."""
    projected = linear(attn, block.out.weight, block.out.bias)
    return projected, x_rows + projected
