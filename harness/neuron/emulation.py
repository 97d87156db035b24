"""NxDI's native attention conventions in pure torch: the attention module of the `nxdi-emulation`
candidate, which runs on every machine through the same driver, masks, cache, buckets and weight
conversion as the real Neuron candidates. It is an emulation: it shows that the harness drives NxDI's
conventions correctly, never what a device computes.

What it follows (modules/attention/attention_base.py, native path, release 2.29): separate q, k, v
projections with biases, rotate-half RoPE with YaRN tables (cos and sin in float32, scaled by the
concentration, cast to the activation dtype), repeat_kv grouping (query head h reads kv head h //
q_mult), scores QK / sqrt(d) in the activation dtype with masked scores set to the dtype's lowest
finite value, the learned sink as an extra column, softmax in float32 cast back, the sink column
dropped. Context encoding hands over the last W-1 keys in ring order on sliding layers
(get_last_kv_window); token generation scores the cache (sink appended to the cached scores) and the
step's own keys under one max and denominator (manual_softmax), with the token-generation copy of
the sinks (tkg_learned_sinks, which NxDI creates under context or data parallelism; kept here so that
loading only one copy is a bug the self-test can show).
"""

from __future__ import annotations

import torch

from harness.neuron.bugs import Bugs
from harness.neuron.cache import last_window
from reference.gpt_oss import ModelConfig, yarn_concentration_and_inv_freq

QUERY_BLOCK = 512  # context encoding in blocks of queries: memory bounded at long buckets, same numbers


class _Sink(torch.nn.Module):
    def __init__(self, heads: int, dtype: torch.dtype):
        super().__init__()
        self.sink = torch.nn.Parameter(torch.zeros(heads, dtype=dtype))  # zero-initialised, as NxDI's


class _Projections(torch.nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype):
        super().__init__()
        h, d = config.hidden_size, config.head_dim
        self.q_proj = torch.nn.Linear(h, config.num_attention_heads * d, dtype=dtype)
        self.k_proj = torch.nn.Linear(h, config.num_key_value_heads * d, dtype=dtype)
        self.v_proj = torch.nn.Linear(h, config.num_key_value_heads * d, dtype=dtype)


class _Output(torch.nn.Module):
    def __init__(self, config: ModelConfig, dtype: torch.dtype):
        super().__init__()
        self.o_proj = torch.nn.Linear(config.num_attention_heads * config.head_dim, config.hidden_size, dtype=dtype)


def rope_tables(config: ModelConfig, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-width rotate-half tables [B, S, d] in `dtype`."""
    concentration, inv_freq = yarn_concentration_and_inv_freq(
        config.head_dim, config.rope_theta, config.initial_context_length, config.rope_scaling_factor,
        config.rope_ntk_alpha, config.rope_ntk_beta)
    angles = position_ids.to(torch.float32)[..., None] * inv_freq
    angles = torch.cat((angles, angles), dim=-1)
    return (angles.cos() * concentration).to(dtype), (angles.sin() * concentration).to(dtype)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """NxDI's apply_rotary_pos_emb: x * cos + rotate_half(x) * sin (tables already broadcast to x)."""
    first, second = torch.chunk(x, 2, dim=-1)
    return x * cos + torch.cat((-second, first), dim=-1) * sin


class _Rotary(torch.nn.Module):
    """forward(x, position_ids) -> (cos, sin) [B, S, d], as NxDI's rotary modules (a submodule, so that
    hooks see the tables as they see a real module's)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config

    def forward(self, x, position_ids):
        return rope_tables(self.config, position_ids, x.dtype)


class NxdiConventionAttention(torch.nn.Module):
    """forward(hidden_states, attention_mask, position_ids, past_key_value=None, active_mask=None)
    -> (hidden_states, (k, v)), as NeuronAttentionBase's native path."""

    records_internals = True  # it keeps its own (see keep_internals); a real module is seen through hooks

    def __init__(self, config: ModelConfig, layer_idx: int, dtype: torch.dtype, bugs: Bugs = Bugs()):
        super().__init__()
        self.config, self.dtype, self.bugs = config, dtype, bugs
        self.window = config.sliding_window if layer_idx % 2 == 0 else 0
        self.ring = config.sliding_window - 1
        self.qkv_proj = _Projections(config, dtype)
        self.o_proj = _Output(config, dtype)
        self.learned_sinks = _Sink(config.num_attention_heads, dtype)
        self.tkg_learned_sinks = _Sink(config.num_attention_heads, dtype)
        self.rotary_emb = _Rotary(config)
        # Set by the driver: when True, each call keeps its internals (q, k, v before and after RoPE,
        # scores and probabilities over the keys it read, attention output) in `recorded`, which the
        # driver maps to stage taps; a real NxDI module offers no such view.
        self.keep_internals = False
        # Set when the module is one rank's share of a tensor-parallel block (harness/neuron/tp.py): o_proj is
        # row-parallel, its partial sums are reduced over the ranks and the bias is added once after
        self.reduce = None
        self.recorded: dict[str, torch.Tensor] = {}
        # Set by the driver for stage isolation: {stage: (values, rows)} in this module's layout, rows [B, T]
        # marking the query tokens whose value is replaced (the oracle's, entering the pipeline there).
        self.fed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _feed(self, stage: str, value: torch.Tensor, queries: slice = slice(None)) -> torch.Tensor:
        """`value` [B, H, T, ...] (or [B, T, hidden] for out_proj) with fed rows replaced."""
        if stage not in self.fed:
            return value
        fed, rows = self.fed[stage]
        fed, rows = fed[:, :, queries] if stage != "out_proj" else fed, rows[:, queries]
        where = rows[:, :, None] if stage == "out_proj" else rows[:, None, :, None]
        return torch.where(where, fed.to(value.dtype), value)

    def _heads(self, x: torch.Tensor, proj: torch.nn.Linear, heads: int) -> torch.Tensor:
        b, s, _ = x.shape
        return proj(x).view(b, s, heads, self.config.head_dim).transpose(1, 2)  # [B, H, S, d]

    def forward(self, hidden_states, attention_mask, position_ids, past_key_value=None, active_mask=None):
        c = self.config
        hq, hkv = c.num_attention_heads, c.num_key_value_heads
        group = hq // hkv
        q = self._feed("q", self._heads(hidden_states, self.qkv_proj.q_proj, hq))
        k = self._feed("k", self._heads(hidden_states, self.qkv_proj.k_proj, hkv))
        v = self._feed("v", self._heads(hidden_states, self.qkv_proj.v_proj, hkv))
        cos, sin = self.rotary_emb(q, position_ids)
        self.recorded = {"q": q, "k": k, "v": v} if self.keep_internals else {}
        q = self._feed("q_rope", rotate(q, cos[:, None], sin[:, None]))
        k = self._feed("k_rope", rotate(k, cos[:, None], sin[:, None]))
        scale = c.head_dim**0.5  # a divisor, as NxDI's softmax_scale
        if past_key_value is None:
            attn = self._context(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), attention_mask, scale)
            present = last_window(k, v, position_ids, self.ring, self.bugs) if self.window else (k, v)
        else:
            attn = self._generation(q, k, v, past_key_value, attention_mask, active_mask, scale, group)
            present = (k, v)
        attn = self._feed("attn", attn)
        if self.keep_internals:
            self.recorded.update(q_rope=q, k_rope=k, attn=attn)
        b, _, s, _ = attn.shape
        out = self._feed("out_proj", self._project_out(attn.transpose(1, 2).reshape(b, s, hq * c.head_dim)))
        return out, present

    def _project_out(self, x: torch.Tensor) -> torch.Tensor:
        o = self.o_proj.o_proj
        if self.reduce is None:
            return o(x)
        return self.reduce(torch.nn.functional.linear(x, o.weight)) + o.bias

    def _context(self, q, k, v, mask, scale):
        sinks = self.learned_sinks.sink
        out = []
        for q0 in range(0, q.shape[2], QUERY_BLOCK):
            block = slice(q0, q0 + QUERY_BLOCK)
            qb = q[:, :, block]
            scores = torch.matmul(qb, k.transpose(2, 3)) / scale
            scores = torch.where(mask[:, :, block], scores, torch.finfo(scores.dtype).min)
            scores = self._feed("scores", scores, block).clamp_min(torch.finfo(scores.dtype).min)
            b, h, n, _ = scores.shape
            scores = torch.cat((scores, sinks.reshape(1, h, 1, 1).expand(b, h, n, 1)), dim=-1)
            probs = self._feed("probs", torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype), block)
            if self.keep_internals:
                self.recorded.setdefault("scores", []).append(scores[..., :-1])
                self.recorded.setdefault("probs", []).append(probs)
            out.append(torch.matmul(probs[..., :-1], v))
        if self.keep_internals:  # [B, H, S, keys] and [B, H, S, keys + 1] (the sink last)
            self.recorded["scores"] = torch.cat(self.recorded["scores"], dim=2)
            self.recorded["probs"] = torch.cat(self.recorded["probs"], dim=2)
        return torch.cat(out, dim=2)

    def _generation(self, q, k, v, past, mask, active_mask, scale, group):
        # repeat_kv's grouping (query head h reads kv head h // group) without copying the cache per query
        # head: a 131,072-slot cache would take 1 GiB per copy
        b, hq, n, d = q.shape
        k_prior, v_prior = past
        qg = q.reshape(b, hq // group, group, n, d)
        prior = torch.einsum("bgmnd,bgld->bgmnl", qg, k_prior).reshape(b, hq, n, -1) / scale
        prior = torch.where(mask, prior, torch.finfo(prior.dtype).min)
        active = torch.matmul(q, k.repeat_interleave(group, 1).transpose(2, 3)) / scale
        active = torch.where(active_mask, active, torch.finfo(active.dtype).min)
        if "scores" in self.fed:  # the fed scores cover the cache's slots, then the step's own keys
            both = self._feed("scores", torch.cat((prior, active), dim=-1)).clamp_min(torch.finfo(prior.dtype).min)
            prior, active = both[..., : prior.shape[-1]], both[..., prior.shape[-1]:]
        active = active.to(torch.float32)
        h = hq
        prior = torch.cat((prior, self.tkg_learned_sinks.sink.reshape(1, h, 1, 1).expand(b, h, n, 1)), dim=-1)
        top = torch.maximum(prior.amax(-1, keepdim=True), active.amax(-1, keepdim=True))
        e_prior, e_active = torch.exp(prior - top), torch.exp(active - top)
        total = e_prior.sum(-1, keepdim=True) + e_active.sum(-1, keepdim=True)
        p_prior, p_active = (e_prior / total).to(q.dtype), (e_active / total).to(q.dtype)
        if "probs" in self.fed:  # keys: the cache's slots, the step's own, then the sink
            m = p_prior.shape[-1] - 1
            both = self._feed("probs", torch.cat((p_prior[..., :-1], p_active, p_prior[..., -1:]), dim=-1))
            p_prior, p_active = torch.cat((both[..., :m], both[..., -1:]), dim=-1), both[..., m:-1]
        if self.keep_internals:  # keys: the cache's slots, then the step's own; probabilities: the sink last
            self.recorded["scores"] = torch.cat((prior[..., :-1], active.to(prior.dtype)), dim=-1)
            self.recorded["probs"] = torch.cat((p_prior[..., :-1], p_active, p_prior[..., -1:]), dim=-1)
        p_cached = p_prior[..., :-1].reshape(b, hq // group, group, n, -1)
        cached = torch.einsum("bgmnl,bgld->bgmnd", p_cached, v_prior).reshape(b, hq, n, d)
        return cached + torch.matmul(p_active, v.repeat_interleave(group, 1))
