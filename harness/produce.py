"""Producers of expected tensors: the bf16 reference and the float64 oracle, run over a batch.

Both evaluate each batch row as its own sequence from position 0: a query at position p depends only
on keys <= p, so decode and chunked-prefill rows are the rows of a full-prefix run. Results are
scattered into the batch's slot layout (harness/stages.py); slots that were not computed hold NaN.

The reference runs densely (reference/gpt_oss.py, OpenAI's block) wherever its (heads, n, n) scores
fit; beyond that, and for a from_cache batch, it runs row-selectively (reference/rows.py): only the
judged rows, keys projected in chunks or read from the batch's cache (which is the reference's own).
The oracle always evaluates only the judged rows; for a from_cache batch it reads the keys of its own
float64 prefix (harness/prefix.py), never the cache.
"""

from __future__ import annotations

import torch

from harness.batch import Batch, BlockSpec
from harness.limits import DENSE_SCORE_LIMIT
from harness.stages import score_taps_fit
from harness.timing import section
from reference import oracle as oracle_math
from reference import rows as ref_rows
from reference.gpt_oss import AttentionBlock

TOKEN_STAGES = ("normed", "q", "k", "v", "q_rope", "k_rope", "attn", "out_proj", "output")
KEY_CHUNK = 4096  # tokens projected at a time when the row-selective reference reads keys from hidden states
ROW_SCORES = 1 << 24  # score elements per block of query rows
ORACLE_ROWS = 1024  # judged rows the oracle evaluates at a time


def reference_block(spec: BlockSpec) -> AttentionBlock:
    block = AttentionBlock(spec.config, spec.layer_idx)
    block.load_state_dict(spec.weights)
    if spec.dtype != torch.bfloat16:  # e.g. float32 runs (Neuron compiled with --auto-cast=none)
        block = block.to(spec.dtype)
    return block.eval()


def dense_reference_fits(spec: BlockSpec, batch: Batch) -> bool:
    """Whether OpenAI's dense block can run the batch: no cache, and its scores within the limit."""
    return batch.cache is None and spec.config.num_attention_heads * max(batch.lengths) ** 2 <= DENSE_SCORE_LIMIT


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
        keys = batch.cached + s
        out.update(scores=torch.full((b, hq, s, keys), -float("inf"), dtype=dtype),
                   probs=torch.zeros((b, hq, s, keys + 1), dtype=dtype))
    return out


def _taps_fit(spec: BlockSpec, batch: Batch) -> bool:
    b, s = batch.valid.shape
    return score_taps_fit(b, spec.config.num_attention_heads, s, batch.cached + s)


def _scatter_scores(dst: dict, row: int, src: dict, q_slots: torch.Tensor, k_index: torch.Tensor) -> None:
    """Place one row's scores (H, q, keys) and probs (H, q, keys + 1) at key-axis entries `k_index`."""
    n = len(k_index)
    dst["scores"][row, :, q_slots[:, None], k_index[None, :]] = src["scores"][:, :, :n].to(dst["scores"].dtype)
    dst["probs"][row, :, q_slots[:, None], k_index[None, :]] = src["probs"][:, :, :n].to(dst["probs"].dtype)
    dst["probs"][row, :, q_slots, -1] = src["probs"][:, :, n].to(dst["probs"].dtype)


def _scatter_tokens(dst: dict, row: int, q_slots: torch.Tensor, values: dict) -> None:
    for name in TOKEN_STAGES:
        if name in values and name in dst:
            dst[name][row, q_slots] = values[name].reshape(dst[name][row, q_slots].shape).to(dst[name].dtype)


def _judged(batch: Batch, row: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(slots, positions) of the row's judged tokens, in position order."""
    slots = batch.slots(row)
    q_slots = slots[batch.compare[row, slots]]
    return q_slots, batch.positions[row, q_slots]


def _row_blocks(heads: int, n_rows: int, n_keys: int) -> int:
    return max(1, min(n_rows, ROW_SCORES // max(1, heads * (n_keys + 1))))


def run_reference(spec: BlockSpec, batch: Batch, taps: bool = False) -> dict[str, torch.Tensor]:
    """The bf16 reference; stage taps in slot layout when `taps`."""
    with section("reference"):
        return _run_reference(spec, batch, taps)


def _run_reference(spec: BlockSpec, batch: Batch, taps: bool) -> dict[str, torch.Tensor]:
    if not dense_reference_fits(spec, batch):
        return _reference_rows(spec, batch, taps)
    block = reference_block(spec)
    score_taps = taps and _taps_fit(spec, batch)
    out = _empty_like_batch(batch, spec, spec.dtype, score_taps) if taps else {
        "output": torch.full(batch.hidden.shape, float("nan"), dtype=spec.dtype)
    }
    with torch.no_grad():
        for row in range(batch.valid.shape[0]):
            slots = batch.slots(row)
            x = batch.hidden[row, slots]
            if not taps:
                out["output"][row, slots] = block(x)
                continue
            _, t = block.forward_with_taps(x)
            _scatter_tokens(out, row, slots, t)
            if score_taps:
                _scatter_scores(out, row, t, slots, slots)
    return out


def _reference_keys(block: AttentionBlock, batch: Batch, row: int, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The reference's k_rope and v of positions [lo, hi) of one row: from the cache where it holds
    them, else projected from the row's hidden states, KEY_CHUNK tokens at a time."""
    first = batch.first_position(row)
    parts = []
    if batch.cache is not None and lo < first:
        parts.append((batch.cache.k_rope[row, lo:min(hi, first)], batch.cache.v[row, lo:min(hi, first)]))
    slots = batch.slots(row)
    for a in range(max(lo, first), hi, KEY_CHUNK):
        b = min(hi, a + KEY_CHUNK)
        positions = torch.arange(a, b)
        parts.append(ref_rows.project_keys(block, batch.hidden[row, slots[positions - first]], positions))
    return torch.cat([k for k, _ in parts]), torch.cat([v for _, v in parts])


def _reference_rows(spec: BlockSpec, batch: Batch, taps: bool) -> dict[str, torch.Tensor]:
    """The row-selective reference (reference/rows.py) on the judged rows; NaN elsewhere."""
    block = reference_block(spec)
    heads = spec.config.num_attention_heads
    score_taps = taps and _taps_fit(spec, batch)
    out = _empty_like_batch(batch, spec, spec.dtype, score_taps) if taps else {
        "output": torch.full(batch.hidden.shape, float("nan"), dtype=spec.dtype)
    }
    with torch.no_grad():
        for row in range(batch.valid.shape[0]):
            q_slots, rows = _judged(batch, row)
            if len(rows) == 0:
                continue
            lo, hi = ref_rows.key_range(spec.window, int(rows[0]), int(rows[-1]))
            k_rope, v = _reference_keys(block, batch, row, lo, hi)
            x_rows = batch.hidden[row, q_slots]
            stages = ref_rows.project(block, x_rows, rows)
            step = _row_blocks(heads, len(rows), hi - lo)
            attn, scores, probs = [], [], []
            for r0 in range(0, len(rows), step):
                t: dict | None = {} if score_taps else None
                attn.append(ref_rows.attend(block, stages["q_rope"][r0 : r0 + step], rows[r0 : r0 + step], k_rope, v, lo, t))
                if score_taps:
                    scores.append(t["scores"])
                    probs.append(t["probs"])
            stages["attn"] = torch.cat(attn)
            stages["out_proj"], stages["output"] = ref_rows.finish(block, x_rows, stages["attn"])
            if not taps:
                out["output"][row, q_slots] = stages["output"]
                continue
            _scatter_tokens(out, row, q_slots, stages)
            if score_taps:
                keys = batch.key_index(row, torch.arange(lo, hi))
                _scatter_scores(out, row, {"scores": torch.cat(scores, 1), "probs": torch.cat(probs, 1)}, q_slots, keys)
    return out


def run_oracle(spec: BlockSpec, batch: Batch, taps: bool = False, prefix=None) -> dict[str, torch.Tensor]:
    """The float64 oracle on each row's compared positions only; NaN elsewhere. A from_cache batch
    needs `prefix` (harness/prefix.py: the oracle's own keys of the cached positions)."""
    with section("oracle"):
        return _run_oracle(spec, batch, taps, prefix)


def _run_oracle(spec: BlockSpec, batch: Batch, taps: bool, prefix) -> dict[str, torch.Tensor]:
    if batch.cache is not None:
        if prefix is None or prefix.oracle is None:
            raise ValueError("the oracle does not read the candidate's cache: a from_cache batch needs the oracle's own "
                             "prefix (harness/prefix.py: prefix_pass(case, spec, oracle=True))")
        return _oracle_cached(spec, batch, taps, prefix.oracle)
    score_taps = taps and _taps_fit(spec, batch)
    out = _empty_like_batch(batch, spec, torch.float64, score_taps) if taps else {
        "output": torch.full(batch.hidden.shape, float("nan"), dtype=torch.float64)
    }
    for row in range(batch.valid.shape[0]):
        slots = batch.slots(row)
        wanted = batch.compare[row, slots].nonzero().squeeze(1)  # positions, since slots are in order
        # in blocks of rows, each scattered before the next is computed: an 8,192-token prefill with every
        # row judged holds one block's float64 stages at a time beside the result
        for r0 in range(0, len(wanted), ORACLE_ROWS):
            rows = wanted[r0 : r0 + ORACLE_ROWS]
            x = batch.hidden[row, slots[: int(rows[-1]) + 1]]
            res = oracle_math.oracle_forward(spec.weights, spec.config, spec.layer_idx, x, rows, taps=taps,
                                             score_taps=score_taps)
            q_slots = slots[res.rows]
            out["output"][row, q_slots] = res.output
            _scatter_tokens(out, row, q_slots, res.taps)
            if score_taps:
                _scatter_scores(out, row, res.taps, q_slots, slots[: len(x)])
            del res
    return out


def _oracle_cached(spec: BlockSpec, batch: Batch, taps: bool, keys: list) -> dict[str, torch.Tensor]:
    c = spec.config
    score_taps = taps and _taps_fit(spec, batch)
    out = _empty_like_batch(batch, spec, torch.float64, score_taps) if taps else {
        "output": torch.full(batch.hidden.shape, float("nan"), dtype=torch.float64)
    }
    for row in range(batch.valid.shape[0]):
        q_slots, rows = _judged(batch, row)
        if len(rows) == 0:
            continue
        first = batch.first_position(row)
        slots = batch.slots(row)
        last = int(rows[-1])
        # the generated tokens up to the last judged one, in float64 (queries and keys)
        new_positions = torch.arange(first, last + 1)
        new = oracle_math.project(spec.weights, c, batch.hidden[row, slots[new_positions - first]], new_positions)
        held = keys[row]
        held.k_rope[first - held.first : last + 1 - held.first] = new["k_rope"]
        held.v[first - held.first : last + 1 - held.first] = new["v"]
        k_all, v_all = held.covering(held.first, last + 1)
        key_positions = torch.arange(held.first, last + 1)
        at = rows - first
        stages = {name: new[name][at] for name in ("normed", "q", "k", "v", "q_rope", "k_rope")}
        step = _row_blocks(c.num_attention_heads, len(rows), len(key_positions))
        attn, scores, probs = [], [], []
        for r0 in range(0, len(rows), step):
            a, s, p = oracle_math.attend(spec.weights, c, spec.layer_idx, stages["q_rope"][r0 : r0 + step],
                                         rows[r0 : r0 + step], k_all, v_all, key_positions, score_taps)
            attn.append(a)
            if score_taps:
                scores.append(s)
                probs.append(p)
        stages["attn"] = torch.cat(attn)
        stages["out_proj"], stages["output"] = oracle_math.finish(spec.weights, batch.hidden[row, q_slots], stages["attn"])
        out["output"][row, q_slots] = stages["output"]
        if taps:
            _scatter_tokens(out, row, q_slots, stages)
        if score_taps:
            index = batch.key_index(row, key_positions)
            _scatter_scores(out, row, {"scores": torch.cat(scores, 1), "probs": torch.cat(probs, 1)}, q_slots, index)
    return out
