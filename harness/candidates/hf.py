"""HF transformers' GptOssAttention as a candidate, with the RMSNorm and residual that live outside it.

Three settings are mandatory or HF silently computes something else (see shared notes/semantics.md):
eager attention (sdpa ignores the sinks; an unset implementation can drop the causal mask), YaRN with
truncate False, and norm eps 1e-5. HF applies the sliding window only through the mask its model
builds, so this wrapper builds the mask (harness/masks.py) from the window HF's own layer_types give
this layer. Works with transformers 4.57 (rope_scaling) and 5.x (rope_parameters).
"""

from __future__ import annotations

import dataclasses
import inspect

import torch

from harness.batch import Batch, BlockSpec
from harness.candidates.protocol import CandidateResult
from harness.masks import additive_mask, visible_keys


def _hf_config(spec: BlockSpec):
    from transformers import GptOssConfig

    c = spec.config
    rope = {
        "rope_type": "yarn",
        "factor": c.rope_scaling_factor,
        "beta_fast": c.rope_ntk_beta,
        "beta_slow": c.rope_ntk_alpha,
        "truncate": False,
        "original_max_position_embeddings": c.initial_context_length,
    }
    common = dict(
        hidden_size=c.hidden_size,
        head_dim=c.head_dim,
        num_attention_heads=c.num_attention_heads,
        num_key_value_heads=c.num_key_value_heads,
        sliding_window=c.sliding_window,
        num_hidden_layers=max(spec.layer_idx + 1, 2),
        rms_norm_eps=1e-5,
        attention_bias=True,
        max_position_embeddings=c.initial_context_length * int(c.rope_scaling_factor),
    )
    fields = {f.name for f in dataclasses.fields(GptOssConfig)} if dataclasses.is_dataclass(GptOssConfig) else set()
    if "rope_parameters" in fields or "rope_parameters" in inspect.signature(GptOssConfig.__init__).parameters:
        config = GptOssConfig(**common, rope_parameters={**rope, "rope_theta": c.rope_theta})
    else:  # transformers 4.x
        config = GptOssConfig(**common, rope_theta=c.rope_theta, rope_scaling=rope)
    config._attn_implementation = "eager"
    return config


class HFCandidate:
    name = "hf"

    def __init__(self):
        self._cache: tuple | None = None

    def _build(self, spec: BlockSpec):
        from transformers.models.gpt_oss.modeling_gpt_oss import GptOssAttention, GptOssRMSNorm, GptOssRotaryEmbedding

        # The weights dict itself is kept in the key: an id() alone can be reused by a later dict once the
        # first is freed, which handed a new case the previous case's module.
        key = (spec.weights, spec.layer_idx, spec.config, spec.dtype)
        if self._cache and self._cache[0][0] is spec.weights and self._cache[0][1:] == key[1:]:
            return self._cache[1]
        config = _hf_config(spec)
        w = spec.weights
        c = spec.config
        nq, nkv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
        norm = GptOssRMSNorm(c.hidden_size, eps=config.rms_norm_eps)
        attn = GptOssAttention(config, spec.layer_idx).to(spec.dtype)
        rotary = GptOssRotaryEmbedding(config)
        with torch.no_grad():
            norm.weight.copy_(w["norm.scale"])
            splits = {"q_proj": (0, nq), "k_proj": (nq, nq + nkv), "v_proj": (nq + nkv, nq + 2 * nkv)}
            for proj, (lo, hi) in splits.items():
                getattr(attn, proj).weight.copy_(w["qkv.weight"][lo:hi])
                getattr(attn, proj).bias.copy_(w["qkv.bias"][lo:hi])
            attn.o_proj.weight.copy_(w["out.weight"])
            attn.o_proj.bias.copy_(w["out.bias"])
            attn.sinks.copy_(w["sinks"])
        modules = (norm.eval(), attn.eval(), rotary)
        self._cache = (key, modules)
        return modules

    def run(self, spec: BlockSpec, batch: Batch, *, taps: bool) -> CandidateResult:
        norm, attn, rotary = self._build(spec)
        c = spec.config
        b, s = batch.valid.shape
        window = attn.sliding_window or 0  # decided by HF's layer_types, not by the harness
        keep = visible_keys(batch.positions, batch.positions, batch.valid, window)
        mask = additive_mask(keep, spec.dtype)
        recorded: dict[str, torch.Tensor] = {}
        hooks = []
        if taps:
            heads = {"q_proj": c.num_attention_heads, "k_proj": c.num_key_value_heads, "v_proj": c.num_key_value_heads}
            for proj, n in heads.items():
                hooks.append(getattr(attn, proj).register_forward_hook(
                    lambda m, i, o, name=proj[0], n=n: recorded.__setitem__(name, o.view(b, s, n, c.head_dim))
                ))
            hooks.append(attn.o_proj.register_forward_hook(
                lambda m, i, o: recorded.update(attn=i[0].view(b, s, -1, c.head_dim), out_proj=o)
            ))
        try:
            with torch.no_grad():
                normed = norm(batch.hidden)
                cos, sin = rotary(normed, batch.positions)
                projected, _ = attn(hidden_states=normed, position_embeddings=(cos, sin), attention_mask=mask)
                output = batch.hidden + projected
        finally:
            for h in hooks:
                h.remove()
        if taps:
            recorded.update(normed=normed, output=output)
        return CandidateResult(output=output, taps=recorded)
