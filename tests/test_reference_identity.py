"""reference/gpt_oss.py must be bit-identical in bf16 to OpenAI's gpt_oss.torch.model.

OpenAI's package (gpt-oss==0.0.9) declares Python >= 3.12; its torch model imports on 3.11 when
installed with `pip install --no-deps --ignore-requires-python gpt-oss==0.0.9` (plus safetensors).
CI sets PARITY_REQUIRE_OPENAI=1 so that a missing package fails instead of skipping.
"""

import os

import pytest
import torch

from harness.presets import preset
from harness.weights import make_weights
from reference import gpt_oss as ours

try:
    from gpt_oss.torch import model as openai
except ImportError as exc:  # pragma: no cover - depends on the environment
    if os.environ.get("PARITY_REQUIRE_OPENAI"):
        raise
    pytest.skip(
        f"OpenAI's gpt-oss package is not importable ({exc}); install it with "
        "`pip install --no-deps --ignore-requires-python gpt-oss==0.0.9`",
        allow_module_level=True,
    )


def _pair(config_name: str, layer: int, seed: int, sinks: str = "small"):
    cfg = preset(config_name)
    theirs = openai.AttentionBlock(openai.ModelConfig(**vars(cfg)), layer)
    mine = ours.AttentionBlock(cfg, layer)
    weights = make_weights(cfg, seed, sinks=sinks)
    theirs.load_state_dict(weights)
    mine.load_state_dict(weights)
    return theirs, mine, cfg


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("n", [1, 2, 127, 128, 129, 257])
def test_bit_identical_small(layer, n):
    theirs, mine, cfg = _pair("small", layer, seed=n, sinks="dominant" if n % 2 else "small")
    x = torch.randn(n, cfg.hidden_size, generator=torch.Generator().manual_seed(n)).to(torch.bfloat16)
    with torch.no_grad():
        expected = theirs(x)
        assert torch.equal(mine(x), expected)
        assert torch.equal(mine.forward_with_taps(x)[0], expected)


@pytest.mark.parametrize("layer", [0, 1])
def test_bit_identical_full_dims_across_window(layer):
    theirs, mine, cfg = _pair("full", layer, seed=11)
    x = torch.randn(160, cfg.hidden_size, generator=torch.Generator().manual_seed(3)).to(torch.bfloat16)
    with torch.no_grad():
        assert torch.equal(mine(x), theirs(x))


def test_rope_tables_and_sdpa_identical():
    cfg = preset("full")
    args = (cfg.head_dim, cfg.rope_theta, torch.float32)
    kw = dict(initial_context_length=4096, scaling_factor=32.0, ntk_alpha=1.0, ntk_beta=32.0)
    for a, b in zip(ours.RotaryEmbedding(*args, **kw)._compute_cos_sin(4200), openai.RotaryEmbedding(*args, **kw)._compute_cos_sin(4200)):
        assert torch.equal(a, b)
    g = torch.Generator().manual_seed(0)
    q = torch.randn(40, 2, 4, 16, generator=g).bfloat16()
    k, v = (torch.randn(40, 2, 16, generator=g).bfloat16() for _ in range(2))
    s = torch.randn(8, generator=g).bfloat16()
    for window in (0, 8):
        assert torch.equal(ours.sdpa(q, k, v, s, 0.25, window), openai.sdpa(q, k, v, s, 0.25, window))
