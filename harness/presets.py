"""Model dimension presets. Attention dims are the same for gpt-oss-20b and gpt-oss-120b."""

from __future__ import annotations

from dataclasses import replace

from reference.gpt_oss import ModelConfig

PRESETS: dict[str, ModelConfig] = {
    # The real thing: 64 query heads, 8 kv heads, head_dim 64, hidden 2880, window 128.
    "full": ModelConfig(),
    # Scaled down but still bug-revealing: 4 query heads per kv head (GQA order matters), q width 128
    # vs hidden 96 (a transposed projection cannot hide behind a square matrix), head_dim 16 (YaRN
    # needs >= 8), and the real window, RoPE base and YaRN parameters.
    "small": replace(ModelConfig(), hidden_size=96, num_attention_heads=8, num_key_value_heads=2, head_dim=16),
}


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}") from None
