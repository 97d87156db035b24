"""This project's gpt-oss attention block on NxDI's NeuronAttentionBase: the `neuron-block` candidate,
for SDK 2.26 users who have no upstream gpt-oss model (it uses only keywords 2.26 has).

Contract: ParityGptOssAttention(config, layer_idx), config an InferenceConfig with the gpt-oss fields
(hidden_size, num_attention_heads, num_key_value_heads, head_dim, sliding_window, rope_theta,
rope_scaling_factor, rope_ntk_alpha, rope_ntk_beta, initial_context_length). Inputs and outputs are
NeuronAttentionBase's: forward(hidden_states [B, S, hidden] already normed, attention_mask (boolean,
built by the caller), position_ids [B, S], past_key_value=(K, V) for token generation, active_mask)
returns hidden_states (the out-projection with its bias, no residual) and present_key_value (keys
after RoPE). State dict: qkv_proj.{q,k,v}_proj.{weight,bias}, o_proj.o_proj.{weight,bias},
learned_sinks.sink.

What it fixes of the port in shared/context (six problems): one forward, inherited (no duplicate or
shadowed method); the window on even layers only (layer_idx decides, W keys including the query);
batched [B, S, hidden] in and out like every NxDI module; learned sinks through NeuronAttentionBase's
own sink path (learned_sinks_size=1: one logit per query head, appended before the softmax, dropped
after); GQA by NeuronAttentionBase's repeat_kv (query head h reads kv head h // 8, the reference's
grouping); and the return value documented above. RoPE is YaRN with the reference's parameters.
"""

from __future__ import annotations

import functools

import torch

from reference.gpt_oss import yarn_concentration_and_inv_freq


class YarnRotary(torch.nn.Module):
    """rotary_emb(x, position_ids) -> (cos, sin) [B, S, head_dim], full-width rotate-half tables in x's
    dtype: computed in float32 and scaled by YaRN's concentration, as the reference does."""

    def __init__(self, config):
        super().__init__()
        concentration, inv_freq = yarn_concentration_and_inv_freq(
            config.head_dim, config.rope_theta, config.initial_context_length, config.rope_scaling_factor,
            config.rope_ntk_alpha, config.rope_ntk_beta)
        self.concentration = concentration
        # a plain attribute, not a buffer: module.to(bfloat16) must not round the frequencies (at position
        # 200 that alone moved k_rope by 4x the reference's error)
        self.inv_freq = inv_freq

    def forward(self, x, position_ids):
        angles = position_ids.to(torch.float32)[..., None] * self.inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        return (angles.cos() * self.concentration).to(x.dtype), (angles.sin() * self.concentration).to(x.dtype)


@functools.cache
def gpt_oss_attention_class():
    """The class, defined once the SDK is importable (it subclasses NeuronAttentionBase)."""
    from neuronx_distributed_inference.modules.attention.attention_base import NeuronAttentionBase

    class ParityGptOssAttention(NeuronAttentionBase):
        def __init__(self, config, layer_idx: int):
            window = config.sliding_window if layer_idx % 2 == 0 else None
            super().__init__(
                config=config,
                hidden_size=config.hidden_size,
                num_attention_heads=config.num_attention_heads,
                num_key_value_heads=config.num_key_value_heads,
                head_dim=config.head_dim,
                rotary_emb=YarnRotary(config),
                qkv_bias=True,
                o_bias=True,
                learned_sinks_size=1,
                sliding_window=window,
            )
            self.layer_idx = layer_idx

    return ParityGptOssAttention
