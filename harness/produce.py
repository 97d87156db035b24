"""Producers of expected tensors: the bf16 reference and the float64 oracle, run over a batch.

Both evaluate each batch row as its own sequence from position 0: a query at position p depends only
on keys <= p, so decode and chunked-prefill rows are the rows of a full-prefix run. Results are
scattered into the batch's slot layout (harness/stages.py); slots that were not computed hold NaN.
"""

from __future__ import annotations

import torch

from harness.batch import Batch, BlockSpec
from harness.limits import DENSE_SCORE_LIMIT
from harness.stages import score_taps_fit
from reference.gpt_oss import AttentionBlock
from reference.oracle import oracle_forward



def reference_block(spec: BlockSpec) -> AttentionBlock:
    block = AttentionBlock(spec.config, spec.layer_idx)
    block.load_state_dict(spec.weights)
    if spec.dtype != torch.bfloat16:  # e.g. float32 runs (Neuron compiled with --auto-cast=none)
        block = block.to(spec.dtype)
    return block.eval()


def _empty_like_batch(batch: Batch, spec: BlockSpec, dtype: torch.dtype, score_taps: bool) -> dict[str, torch.Tensor]:
    b, s = batch.valid.shape
    c = spec.config
    hq, hkv, d, h = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.hidden_size
    shapes = {
        "normed": (b, s, h), "q": (b, s, hq, d), "k": (b, s, hkv, d), "v": (b, s, hkv, d),
        "q_rope": (b, s, hq, d), "k_rope": (b, s, hkv, d), "attn": (b, s, hq, d),
        "out_proj": (b, s, h), "output": (b, s, h),
    }
    out = {name: torch.full(shape, float("nan"), dtype=dtype) for name, shape in shapes.items()}
    if score_taps:  # nothing attends to padding: its keys are masked (-inf, probability 0) by definition
        out.update(scores=torch.full((b, hq, s, s), -float("inf"), dtype=dtype), probs=torch.zeros((b, hq, s, s + 1), dtype=dtype))
    return out


def _scatter_scores(dst: dict, row: int, src: dict, q_slots: torch.Tensor, k_slots: torch.Tensor, sink_col: int) -> None:
    n = len(k_slots)
    dst["scores"][row, :, q_slots[:, None], k_slots[None, :]] = src["scores"][:, :, :n].to(dst["scores"].dtype)
    dst["probs"][row, :, q_slots[:, None], k_slots[None, :]] = src["probs"][:, :, :n].to(dst["probs"].dtype)
    dst["probs"][row, :, q_slots, sink_col] = src["probs"][:, :, n].to(dst["probs"].dtype)


def run_reference(spec: BlockSpec, batch: Batch, taps: bool = False) -> dict[str, torch.Tensor]:
    """The bf16 reference, row by row; stage taps in slot layout when `taps`."""
    longest = max(batch.lengths)
    if spec.config.num_attention_heads * longest**2 > DENSE_SCORE_LIMIT:
        raise ValueError(
            f"the bf16 reference materialises dense scores; a row of {longest} tokens with "
            f"{spec.config.num_attention_heads} heads exceeds its limit of {DENSE_SCORE_LIMIT} score elements "
            "(about 6.6 GiB). Use shorter rows, or fewer heads"
        )
    block = reference_block(spec)
    score_taps = taps and score_taps_fit(batch.valid.shape[0], spec.config.num_attention_heads, batch.valid.shape[1])
    out = _empty_like_batch(batch, spec, spec.dtype, score_taps) if taps else {
        "output": torch.full(batch.hidden.shape, float("nan"), dtype=spec.dtype)
    }
    s = batch.valid.shape[1]
    with torch.no_grad():
        for row in range(batch.valid.shape[0]):
            slots = batch.slots(row)
            x = batch.hidden[row, slots]
            if not taps:
                out["output"][row, slots] = block(x)
                continue
            _, t = block.forward_with_taps(x)
            for name in ("normed", "q", "k", "v", "q_rope", "k_rope", "attn", "out_proj", "output"):
                out[name][row, slots] = t[name].to(out[name].dtype)
            if score_taps:
                _scatter_scores(out, row, t, slots, slots, s)
    return out


def run_oracle(spec: BlockSpec, batch: Batch, taps: bool = False) -> dict[str, torch.Tensor]:
    """The float64 oracle on each row's compared positions only; NaN elsewhere."""
    score_taps = taps and score_taps_fit(batch.valid.shape[0], spec.config.num_attention_heads, batch.valid.shape[1])
    out = _empty_like_batch(batch, spec, torch.float64, score_taps) if taps else {
        "output": torch.full(batch.hidden.shape, float("nan"), dtype=torch.float64)
    }
    s = batch.valid.shape[1]
    for row in range(batch.valid.shape[0]):
        slots = batch.slots(row)
        wanted = batch.compare[row, slots].nonzero().squeeze(1)  # positions, since slots are in order
        if len(wanted) == 0:
            continue
        res = oracle_forward(
            spec.weights, spec.config, spec.layer_idx, batch.hidden[row, slots], wanted, taps=taps, score_taps=score_taps
        )
        q_slots = slots[res.rows]
        out["output"][row, q_slots] = res.output
        for name, value in res.taps.items():
            if name not in ("scores", "probs"):
                out[name][row, q_slots] = value
        if score_taps:
            _scatter_scores(out, row, res.taps, q_slots, slots, s)
    return out
