"""The float64 oracle: agrees with the reference within the reference's own error, is row-selective,
and its memory grows linearly with sequence length."""

import resource

import pytest
import torch

from harness.presets import preset
from harness.weights import make_weights
from reference.gpt_oss import AttentionBlock
from reference.oracle import oracle_forward


def _block(name, layer, seed=0, sinks="small"):
    cfg = preset(name)
    w = make_weights(cfg, seed, sinks=sinks)
    block = AttentionBlock(cfg, layer)
    block.load_state_dict(w)
    return cfg, w, block


def _x(cfg, n, seed=0):
    return torch.randn(n, cfg.hidden_size, generator=torch.Generator().manual_seed(seed)).bfloat16()


@pytest.mark.parametrize("layer", [0, 1])
def test_upcast_reference_is_close_but_not_the_oracle(layer):
    """The reference upcast to float64 still has float32 norm and RoPE: a few 1e-6 off, not 1e-12."""
    cfg, w, block = _block("small", layer)
    x = _x(cfg, 200)
    oracle = oracle_forward(w, cfg, layer, x).output
    with torch.no_grad():
        upcast = block.double()(x.double())
    diff = (upcast - oracle).abs().max().item()
    assert 1e-9 < diff < 1e-4


@pytest.mark.parametrize("name", ["small", "full"])
def test_bf16_reference_error_is_bf16_sized(name):
    cfg, w, block = _block(name, 0)
    x = _x(cfg, 150)
    oracle = oracle_forward(w, cfg, 0, x).output
    with torch.no_grad():
        err = block(x).double() - oracle
    rel = (err.norm() / oracle.norm()).item()
    assert 1e-4 < rel < 2e-2  # measured ~0.5% at full dims (shared notes); zero would mean no bf16 at all


def test_rows_and_chunks_do_not_change_results():
    cfg, w, _ = _block("small", 0, sinks="dominant")
    x = _x(cfg, 300)
    full = oracle_forward(w, cfg, 0, x, taps=True, score_taps=True)
    rows = [0, 126, 127, 128, 129, 299]
    part = oracle_forward(w, cfg, 0, x, rows, taps=True, score_taps=True, chunk=2)
    torch.testing.assert_close(part.output, full.output[rows], rtol=0, atol=1e-12)
    torch.testing.assert_close(part.taps["probs"], full.taps["probs"][:, rows], rtol=0, atol=1e-12)
    torch.testing.assert_close(part.taps["k_rope"], full.taps["k_rope"][rows], rtol=0, atol=1e-12)


def test_oracle_taps_match_reference_taps():
    cfg, w, block = _block("small", 1)
    x = _x(cfg, 40)
    o = oracle_forward(w, cfg, 1, x, taps=True, score_taps=True)
    with torch.no_grad():
        _, t = block.forward_with_taps(x)
    for stage in ("normed", "q", "k", "v", "q_rope", "k_rope", "attn", "out_proj", "output", "probs"):
        ref = t[stage].double()
        scale = o.taps[stage].abs().max().item()
        assert (ref - o.taps[stage]).abs().max().item() < 0.02 * scale + 1e-3, stage
    visible = torch.isfinite(o.taps["scores"])
    assert torch.equal(visible, torch.isfinite(t["scores"]))


def test_bad_rows_rejected():
    cfg, w, _ = _block("small", 0)
    with pytest.raises(ValueError, match=r"rows must be"):
        oracle_forward(w, cfg, 0, _x(cfg, 10), [10])
    with pytest.raises(ValueError, match="expects x of shape"):
        oracle_forward(w, cfg, 0, torch.zeros(10, 7))


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


@pytest.mark.slow
@pytest.mark.parametrize("layer", [0, 1])
def test_8192_tokens_full_dims_in_bounded_memory(layer):
    """Dense float64 scores at 8192 tokens would need ~32 GiB for one layer; the oracle stays small."""
    cfg, w, _ = _block("full", layer)
    x = _x(cfg, 8192)
    rows = [0, 4095, 4096, 8190, 8191]
    before = _peak_rss_gib()
    res = oracle_forward(w, cfg, layer, x, rows)
    assert torch.isfinite(res.output).all()
    assert _peak_rss_gib() - before < 3.0
    if layer == 0:  # at length too, keys before the window cannot matter
        x2 = x.clone()
        x2[: 8192 - cfg.sliding_window] = 0
        torch.testing.assert_close(oracle_forward(w, cfg, layer, x2, [8191]).output, res.output[-1:], rtol=0, atol=1e-12)
