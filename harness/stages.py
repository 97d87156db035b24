"""The stages of the block, in pipeline order, and the layout every producer uses for them.

All tensors are in the batch's slot layout (B = rows, S = padded length, keys indexed by slot too):
  normed   [B, S, hidden]      RMSNorm output
  q        [B, S, Hq, d]       query heads before RoPE, head h = kv_head * q_mult + m
  k, v     [B, S, Hkv, d]      before RoPE
  q_rope   [B, S, Hq, d]       after RoPE
  k_rope   [B, S, Hkv, d]
  scores   [B, Hq, S, K]       scaled QK with masked entries -inf (compared on visible keys only)
  probs    [B, Hq, S, K + 1]   softmax including the sink, whose probability is the last column
The key axis K is the batch's (harness/batch.py: Batch.key_positions): its S slots, or for a from_cache
batch the cache's C slots followed by its S slots (K = C + S).
  attn     [B, S, Hq, d]       attention output before the out-projection
  out_proj [B, S, hidden]      out-projection output (with bias)
  output   [B, S, hidden]      block output, residual included
A candidate may return any subset; "output" is required.
"""

from __future__ import annotations

STAGES = ("normed", "q", "k", "v", "q_rope", "k_rope", "scores", "probs", "attn", "out_proj", "output")

# Score taps are (B * Hq * S * (K + 1)) large; beyond this many elements they are not produced.
SCORE_TAP_LIMIT = 1 << 24


def score_taps_fit(batch_size: int, heads: int, seq: int, keys: int | None = None) -> bool:
    return batch_size * heads * seq * ((seq if keys is None else keys) + 1) <= SCORE_TAP_LIMIT


def check_stage_names(names) -> None:
    unknown = sorted(set(names) - set(STAGES))
    if unknown:
        raise ValueError(f"unknown stage name(s) {unknown}; stages are {list(STAGES)} (see harness/stages.py)")
