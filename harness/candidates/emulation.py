"""A configurable pure-torch gpt-oss attention block: the `emulation` candidate.

With default knobs it computes what the reference computes, batched and from positions (not from
"token i is at position i"), with RoPE positions taken per plan step the way a serving loop hands
them out. Each knob reproduces one real bug class (see notes/semantics.md) or one harmless
numerical variant; the self-test's mutants and benign variants are named knob settings
(harness/mutants.py). `feed` lets the harness enter the pipeline at any stage with tensors of its
own (the oracle's), so a propagated error cannot hide the true first divergence.

It accepts a KV cache (plan from_cache, harness/batch.py: CachedPrefix): the cache's keys and values
come before the batch's own on the key axis, and only the batch's tokens are projected. Attention
reads each kv head where it is (query heads grouped by the kv head they use), so a 131,072-key cache
is never copied per query head.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace

import torch

from harness.batch import Batch, BlockSpec
from harness.candidates.protocol import CandidateResult
from harness.masks import visible_keys
from reference.gpt_oss import yarn_concentration_and_inv_freq

CHOICES = {
    "window_layers": ("even", "odd", "none"),
    "sinks": ("normal", "dropped", "zero", "reversed", "per_kv"),
    "gqa": ("interleave", "tile"),
    "rope": ("yarn", "plain", "no_concentration"),
    "positions": ("absolute", "step"),
    "qkv_order": ("qkv", "kqv"),
    "scale": ("divide", "multiply"),
    "softmax": ("model", "float32", "max_subtracted"),
    "projections": ("fused", "separate"),
    "out_accumulate": ("model", "float32"),
    "position_dtype": ("int64", "int16"),
    "decode_sinks": ("normal", "dropped"),
}


@dataclass(frozen=True)
class Knobs:
    # semantics: anything but the default is a bug
    causal: bool = True
    window_delta: int = 0  # the window keeps W + window_delta keys
    window_layers: str = "even"  # which layers slide
    sinks: str = "normal"
    gqa: str = "interleave"  # query head h reads kv head h // q_mult ("tile": h % kv_heads)
    rope: str = "yarn"
    positions: str = "absolute"  # "step": RoPE positions restart at 0 in every plan step
    qkv_order: str = "qkv"  # row order assumed for the fused qkv weight
    norm: bool = True
    residual: bool = True
    flatten_batch: bool = False  # batch rows concatenated into one sequence
    mask_padding: bool = True
    scale: str = "divide"  # scores / sqrt(d); "multiply": scores * sqrt(d)
    # bugs of long contexts, invisible below position 4096 (or 32768)
    rope_table: int = 0  # RoPE tables precomputed for this many positions, indexed modulo it (0: every position)
    full_cache: int = 0  # full-attention layers keep only the last this many keys (0: all of them)
    position_dtype: str = "int64"  # "int16": position ids stored in 16 bits wrap past 32767
    # bugs of token generation only (queries of plan steps after the first, or from a cache)
    decode_sinks: str = "normal"  # "dropped": sinks ignored in token generation
    decode_window_delta: int = 0  # the sliding window keeps W + this many keys in token generation
    decode_break: int = 0  # token generation's queries at positions >= this get RoPE position - 1 (0: never)
    # numerics: every value is a correct implementation
    softmax: str = "model"  # in the model dtype; "float32"; "max_subtracted" (row max removed in model dtype, HF eager)
    projections: str = "fused"  # one qkv matmul, or q, k and v separately
    out_accumulate: str = "model"  # out-projection accumulated in the model dtype or in float32

    def __post_init__(self):
        for name, allowed in CHOICES.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name}={getattr(self, name)!r} must be one of {allowed}")

    def changed(self) -> dict:
        default = Knobs()
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)}


def rope_positions(batch: Batch, mode: str) -> torch.Tensor:
    if mode == "absolute":
        return batch.positions
    # "step": every plan step's tokens from 0 (a from_cache step starts after the cache)
    relative = batch.positions.clone()
    for step in batch.steps:
        for row, (start, stop) in enumerate(step):
            inside = (batch.positions[row] >= start) & (batch.positions[row] < stop) & batch.valid[row]
            relative[row, inside] -= start
    return relative


def decode_queries(batch: Batch) -> torch.Tensor:
    """[B, S]: the tokens served by token generation (plan steps after the first; every step of a batch
    that starts from a cache)."""
    starts = [step[0] if batch.cache is not None else step[1] for step in batch.steps[0]]
    first = torch.tensor(starts + [0] * (batch.valid.shape[0] - len(starts)))
    return (batch.positions >= first[:, None]) & batch.valid


def rope_tables(spec: BlockSpec, positions: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, S, d/2] in float32, cast to the model dtype by the caller (as the reference does)."""
    c = spec.config
    if mode == "plain":
        concentration, inv_freq = 1.0, 1.0 / (c.rope_theta ** (torch.arange(0, c.head_dim, 2, dtype=torch.float32) / c.head_dim))
    else:
        concentration, inv_freq = yarn_concentration_and_inv_freq(
            c.head_dim, c.rope_theta, c.initial_context_length, c.rope_scaling_factor, c.rope_ntk_alpha, c.rope_ntk_beta
        )
        if mode == "no_concentration":
            concentration = 1.0
    angles = positions.to(torch.float32)[..., None] * inv_freq
    return angles.cos() * concentration, angles.sin() * concentration


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, S, heads, d]; tables [B, S, d/2]."""
    cos, sin = cos[:, :, None, :].to(x.dtype), sin[:, :, None, :].to(x.dtype)
    first, second = torch.chunk(x, 2, dim=-1)
    return torch.cat((first * cos - second * sin, second * cos + first * sin), dim=-1)


class EmulatedBlock:
    """The `emulation` candidate. Also exposes stage entry: run(..., feed={stage: tensor})."""

    accepts_cache = True  # runs from_cache plans (harness/candidates/protocol.py)

    def __init__(self, knobs: Knobs | None = None, name: str = "emulation", buckets=None, **changes):
        self.knobs = replace(knobs or Knobs(), **changes)
        self.name = name
        # Like a compiled Neuron block: only these padded lengths run (None: any). Case strategies
        # read this attribute and draw only shapes inside the buckets.
        self.buckets = tuple(buckets) if buckets else None

    def run(self, spec: BlockSpec, batch: Batch, *, taps: bool = False, feed: dict | None = None) -> CandidateResult:
        if self.buckets and batch.hidden.shape[1] not in self.buckets:
            raise ValueError(f"no compiled bucket for padded length {batch.hidden.shape[1]}; buckets are {self.buckets}")
        if self.knobs.flatten_batch and batch.valid.shape[0] > 1 and batch.cache is None:
            return self._run_flattened(spec, batch, taps)
        t = self._stages(spec, batch, feed or {})
        output = t.pop("output")
        return CandidateResult(output, t if taps else {})

    def _run_flattened(self, spec, batch, taps):
        # The bug: every row's tokens in one sequence, positions counting on across rows.
        order = [(row, slot) for row in range(batch.valid.shape[0]) for slot in batch.slots(row).tolist()]
        n = len(order)
        flat = Batch(
            hidden=torch.stack([batch.hidden[r, s] for r, s in order])[None],
            positions=torch.arange(n)[None],
            valid=torch.ones(1, n, dtype=torch.bool),
            compare=torch.ones(1, n, dtype=torch.bool),
            lengths=(n,),
            padding="right",
            steps=(((0, n),),),
        )
        out = self._stages(spec, flat, {})["output"][0]
        result = torch.zeros_like(batch.hidden)
        for i, (r, s) in enumerate(order):
            result[r, s] = out[i]
        return CandidateResult(result)

    def _stages(self, spec: BlockSpec, batch: Batch, feed: dict) -> dict[str, torch.Tensor]:
        k, c, dt = self.knobs, spec.config, spec.dtype
        w = {name: t.to(torch.float32 if name == "norm.scale" else dt) for name, t in spec.weights.items()}
        hq, hkv, d = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        q_mult = hq // hkv
        b, s, _ = batch.hidden.shape
        out: dict[str, torch.Tensor] = {}

        def stage(name, value):
            out[name] = feed[name].to(value.dtype) if name in feed else value
            return out[name]

        x = batch.hidden
        if k.norm:
            xf = x.float()
            normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-5) * w["norm.scale"]).to(dt)
        else:
            normed = x
        normed = stage("normed", normed)

        sizes = {"q": hq * d, "k": hkv * d, "v": hkv * d}
        order = ("q", "k", "v") if k.qkv_order == "qkv" else ("k", "q", "v")
        if k.projections == "fused":
            fused = torch.nn.functional.linear(normed, w["qkv.weight"], w["qkv.bias"])
            parts = dict(zip(order, torch.split(fused, [sizes[n] for n in order], dim=-1)))
        else:
            bounds, lo = {}, 0
            for n in order:
                bounds[n], lo = (lo, lo + sizes[n]), lo + sizes[n]
            parts = {n: torch.nn.functional.linear(normed, w["qkv.weight"][a:z], w["qkv.bias"][a:z]) for n, (a, z) in bounds.items()}
        q = stage("q", parts["q"].reshape(b, s, hq, d))
        key = stage("k", parts["k"].reshape(b, s, hkv, d))
        v = stage("v", parts["v"].reshape(b, s, hkv, d))

        positions = rope_positions(batch, k.positions)
        if k.position_dtype == "int16":
            positions = positions.to(torch.int16).long()
        if k.rope_table:
            positions = positions % k.rope_table
        cos, sin = rope_tables(spec, positions, k.rope)
        decoding = decode_queries(batch)
        q_cos, q_sin = cos, sin
        if k.decode_break:  # the port that degenerated once decode crossed a tile boundary
            q_cos, q_sin = rope_tables(spec, positions - (decoding & (positions >= k.decode_break)).long(), k.rope)
        q_rope = stage("q_rope", rotate(q, q_cos, q_sin))
        k_rope = stage("k_rope", rotate(key, cos, sin))
        keys, values = k_rope, v
        if batch.cache is not None:  # the cache's keys first, then the batch's own (the batch's key axis)
            keys = torch.cat((batch.cache.k_rope.to(dt), k_rope), dim=1)
            values = torch.cat((batch.cache.v.to(dt), v), dim=1)

        kv_of_head = torch.arange(hq) // q_mult if k.gqa == "interleave" else torch.arange(hq) % hkv
        sliding = {"even": spec.layer_idx % 2 == 0, "odd": spec.layer_idx % 2 == 1, "none": False}[k.window_layers]
        window = c.sliding_window + k.window_delta if sliding else (k.full_cache or 0)
        key_valid = batch.key_valid if k.mask_padding else torch.ones_like(batch.key_valid)
        keep = visible_keys(batch.positions, batch.key_positions, key_valid, window)
        if k.decode_window_delta and sliding:
            narrower = visible_keys(batch.positions, batch.key_positions, key_valid, window + k.decode_window_delta)
            keep = torch.where(decoding[:, :, None], narrower, keep)
        if not k.causal:
            keep = key_valid[:, None, :].expand(b, s, -1)
        sinks = {
            "normal": w["sinks"], "zero": torch.zeros_like(w["sinks"]), "reversed": w["sinks"].flip(0),
            "per_kv": w["sinks"][:hkv][kv_of_head], "dropped": torch.full_like(w["sinks"], -float("inf")),
        }[k.sinks]
        if k.decode_sinks == "dropped":  # per query: [B, S, Hq]
            sinks = torch.where(decoding[:, :, None], -float("inf"), sinks[None, None, :].expand(b, s, hq))
        scale = d**-0.5 if k.scale == "divide" else math.sqrt(d)
        attn = self.attention(q_rope, keys, values, kv_of_head, keep, sinks, scale, stage)
        flat = attn.reshape(b, s, hq * d)
        if k.out_accumulate == "float32":
            projected = torch.nn.functional.linear(flat.float(), w["out.weight"].float(), w["out.bias"].float()).to(dt)
        else:
            projected = torch.nn.functional.linear(flat, w["out.weight"], w["out.bias"])
        projected = stage("out_proj", projected)
        stage("output", x + projected if k.residual else projected)
        return out

    def attention(self, q, k, v, kv_of_head, keep, sinks, scale, stage):
        """q [B, S, Hq, d]; k, v [B, K, Hkv, d] (the key axis); query head h reads kv head kv_of_head[h];
        keep [B, S, K]; sinks [Hq]. Dense: materialise scores and probabilities, as the reference does.
        Returns attn [B, S, Hq, d]."""
        knobs, (b, s, hq, d) = self.knobs, q.shape
        order, inverse, grouped = group_heads(kv_of_head, k.shape[2])
        scores = torch.einsum("bqgmd,bkgd->bgmqk", grouped(q), k).reshape(b, hq, s, -1)[:, inverse] * scale
        scores = stage("scores", scores.masked_fill(~keep[:, None], -float("inf")))
        per_query = sinks.permute(0, 2, 1)[..., None] if sinks.dim() == 3 else sinks[None, :, None, None].expand(b, hq, s, 1)
        logits = torch.cat([scores, per_query.to(scores.dtype)], dim=-1)
        if knobs.softmax == "float32":
            probs = torch.softmax(logits.float(), dim=-1).to(q.dtype)
        elif knobs.softmax == "max_subtracted":
            probs = torch.softmax(logits - logits.max(dim=-1, keepdim=True).values, dim=-1)
        else:
            probs = torch.softmax(logits, dim=-1)
        probs = stage("probs", probs)
        p = probs[:, order, :, :-1].reshape(b, k.shape[2], -1, s, k.shape[1])
        attn = torch.einsum("bgmqk,bkgd->bqgmd", p, v).reshape(b, s, hq, d)[:, :, inverse]
        return stage("attn", attn)


def group_heads(kv_of_head: torch.Tensor, kv_heads: int):
    """Query heads ordered by the kv head they read: (order, its inverse, and a function viewing a
    [B, S, Hq, d] tensor as [B, S, Hkv, q_mult, d] in that order). Every kv head serves q_mult heads."""
    order = torch.argsort(kv_of_head, stable=True)
    inverse = torch.argsort(order)

    def grouped(t: torch.Tensor) -> torch.Tensor:
        b, s, hq, d = t.shape
        return t[:, :, order].reshape(b, s, kv_heads, hq // kv_heads, d)

    return order, inverse, grouped
