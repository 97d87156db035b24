"""Tolerance-free facts of the gpt-oss block, checked on both the reference and the oracle:
the window keeps exactly W keys including the query, sinks only enlarge the denominator, and
query head h reads kv head h // q_mult."""

import pytest
import torch

from harness.presets import preset
from harness.weights import make_weights
from reference.gpt_oss import AttentionBlock
from reference.oracle import oracle_forward

CFG = preset("small")
W = CFG.sliding_window


def _ref_out(w, layer, x):
    block = AttentionBlock(CFG, layer)
    block.load_state_dict(w)
    with torch.no_grad():
        return block(x).double()


def _oracle_out(w, layer, x):
    return oracle_forward(w, CFG, layer, x).output


PRODUCERS = {"reference": _ref_out, "oracle": _oracle_out}


def _x(n, seed=0):
    return torch.randn(n, CFG.hidden_size, generator=torch.Generator().manual_seed(seed)).bfloat16()


@pytest.mark.parametrize("producer", PRODUCERS)
def test_window_holds_exactly_w_keys_including_self(producer):
    run = PRODUCERS[producer]
    w = make_weights(CFG, 0)
    x = _x(W + 10)
    i = W + 5
    base = run(w, 0, x)
    for j, should_matter in ((i - W, False), (i - W + 1, True)):
        x2 = x.clone()
        x2[j] = x2[j] * 4 + 1
        changed = not torch.equal(run(w, 0, x2)[i], base[i])
        assert changed == should_matter, f"key {j} for query {i} (W={W})"
    # odd layers see everything before them
    x2 = x.clone()
    x2[0] += 1
    assert not torch.equal(run(w, 1, x2)[i], run(w, 1, x)[i])


@pytest.mark.parametrize("producer", PRODUCERS)
def test_causal(producer):
    run = PRODUCERS[producer]
    w = make_weights(CFG, 1)
    x = _x(20)
    x2 = x.clone()
    x2[15:] = 7
    torch.testing.assert_close(run(w, 1, x2)[:15], run(w, 1, x)[:15], rtol=0, atol=0)


def test_sinks_only_enlarge_the_denominator():
    """With the sink at -inf the block is plain causal softmax attention; a larger sink shrinks every
    row's attention toward zero without changing the mix of values."""
    w = make_weights(CFG, 2)
    x = _x(30)
    res = {}
    for name, value in (("none", -float("inf")), ("big", 3.0)):
        w2 = dict(w, sinks=torch.full_like(w["sinks"], value))
        res[name] = oracle_forward(w2, CFG, 1, x, taps=True, score_taps=True).taps
    p_none, p_big = res["none"]["probs"], res["big"]["probs"]
    assert torch.all(p_none[..., -1] == 0)
    assert torch.all(p_big[..., -1] > 0)
    # the distribution over keys is the same once renormalised without the sink
    renorm = p_big[..., :-1] / p_big[..., :-1].sum(-1, keepdim=True)
    torch.testing.assert_close(renorm, p_none[..., :-1], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(res["none"]["attn"], res["big"]["attn"])


def test_gqa_query_head_h_reads_kv_head_h_div_q_mult():
    w = make_weights(CFG, 3)
    x = _x(12)
    hq, hkv, d = CFG.num_attention_heads, CFG.num_key_value_heads, CFG.head_dim
    q_mult = hq // hkv
    base = oracle_forward(w, CFG, 1, x, taps=True).taps["attn"]
    block = AttentionBlock(CFG, 1)
    block.load_state_dict(w)
    with torch.no_grad():
        ref_base = block.forward_with_taps(x)[1]["attn"]
    for kv in range(hkv):
        w2 = {k: v.clone() for k, v in w.items()}
        rows = slice(hq * d + hkv * d + kv * d, hq * d + hkv * d + (kv + 1) * d)  # v rows of kv head `kv`
        w2["qkv.bias"][rows] += 1.0
        changed = (oracle_forward(w2, CFG, 1, x, taps=True).taps["attn"] != base).any(dim=(0, 2))
        expected = torch.zeros(hq, dtype=torch.bool)
        expected[kv * q_mult : (kv + 1) * q_mult] = True
        assert torch.equal(changed, expected)
        block.load_state_dict(w2)
        with torch.no_grad():
            ref_changed = (block.forward_with_taps(x)[1]["attn"] != ref_base).any(dim=(0, 2))
        assert torch.equal(ref_changed, expected)


def test_sliding_layers_are_the_even_ones():
    assert AttentionBlock(CFG, 0).sliding_window == W
    assert AttentionBlock(CFG, 1).sliding_window == 0
    assert AttentionBlock(CFG, 22).sliding_window == W
