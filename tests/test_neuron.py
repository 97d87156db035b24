"""The Neuron path's pure-torch parts (no SDK needed): NxDI's masks, the sliding-cache ring, strict
weight conversion, the plan driver through the `nxdi-emulation` candidate (bucketed cases, decode
plans that wrap the ring, chunked plans), every driver mutant killed, and clear refusals without the SDK."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import cli
from harness.batch import build, layer_specs
from harness.candidates import load_candidate
from harness.case import Case
from harness.expected import compute_expected
from harness.neuron.bugs import DRIVER_MUTANTS
from harness.neuron.cache import KVCache, last_window
from harness.neuron.candidate import NxdiEmulation
from harness.neuron.convert import ConversionError, check_loaded, harness_layout, nxdi_state_dict
from harness.neuron.driver import BucketError, Buckets, pick
from harness.neuron.emulation import NxdiConventionAttention
from harness.neuron.environment import INSTALL_LINE, NeuronUnavailable, detect
from harness.neuron.layer import NeuronLayer
from harness.neuron.masks import context_mask, generation_mask, ring_positions
from harness.presets import preset
from harness.runner import run_case
from tests import fake_sdk

ROOT = Path(__file__).resolve().parent.parent
W = 128
SDK = detect().mode != "unavailable"


# -- masks and the ring, against NxDI's own formulas (models/model_base.py) ---------------------------

def test_context_masks_keep_w_keys_including_the_query():
    full, sliding = context_mask(1, 300, 0)[0, 0], context_mask(1, 300, W)[0, 0]
    i, j = torch.arange(300)[:, None], torch.arange(300)[None, :]
    assert torch.equal(full, j <= i)
    assert torch.equal(sliding, (j <= i) & (j >= i - W + 1))  # _create_windowed_attn_mask_cte
    assert int(sliding[299].sum()) == W


@pytest.mark.parametrize("pos", [0, 1, 5, 125, 126, 127, 128, 129, 200, 253, 254, 255, 256, 257, 1000])
def test_one_token_generation_mask_is_nxdis(pos):
    positions, start = torch.tensor([[pos]]), torch.tensor([pos])
    ring = generation_mask(positions, start, 128, W, ring=W - 1)[0, 0, 0]
    assert torch.equal(ring, (torch.arange(128) < min(pos, W - 1)))  # _create_windowed_attn_mask_tkg
    full = generation_mask(positions, start, 1024, 0, ring=None)[0, 0, 0]
    assert torch.equal(full, torch.arange(1024) < pos)  # _create_simple_attn_mask: the first pos slots
    # NxDI 2.26's ring of W slots written at pos % W: the slot about to be overwritten holds pos - W, hidden
    ring_w = generation_mask(positions, start, 128, W, ring=W)[0, 0, 0]
    if pos >= W:
        assert not ring_w[pos % W] and int(ring_w.sum()) == W - 1


def test_ring_slots_hold_the_newest_positions():
    held = ring_positions(torch.tensor([0, 5, 127, 128, 300]), W - 1, 128)
    assert (held[0] == -1).all() and held[1, :5].tolist() == list(range(5)) and (held[1, 5:] == -1).all()
    for row, start in ((2, 127), (3, 128), (4, 300)):
        got = held[row, : W - 1]
        assert sorted(got.tolist()) == list(range(start - (W - 1), start))
        assert ((got % (W - 1)) == torch.arange(W - 1)).all() and held[row, W - 1] == -1


@pytest.mark.parametrize("n, bucket", [(127, 128), (100, 128), (130, 256), (300, 512), (254, 256)])
def test_the_context_window_is_handed_over_in_ring_order(n, bucket):
    k = torch.arange(bucket, dtype=torch.float32).view(1, 1, bucket, 1).expand(2, 1, bucket, 1).clone()
    pos = torch.arange(bucket).repeat(2, 1)
    pos[:, n:] = 1  # NxDI's padding positions
    window, _ = last_window(k, k, pos, W - 1)
    held = window[0, 0, :, 0].long()
    if n >= W - 1:
        assert sorted(held.tolist()) == list(range(n - (W - 1), n)) and ((held % (W - 1)) == torch.arange(W - 1)).all()
    else:  # a short prompt: slot s = position s (the rest is padding, hidden by the mask)
        assert held[:n].tolist() == list(range(n))
    with pytest.raises(ValueError, match="shorter than its cache ring"):
        last_window(k[:, :, :100], k[:, :, :100], pos[:, :100], W - 1)


def test_generated_tokens_go_to_pos_mod_w_minus_1():
    cache = KVCache(1, 1, 1, 128, torch.float32, ring=W - 1, window=W)
    for p in (126, 127, 128, 254, 255):
        cache.write(torch.full((1, 1, 1, 1), float(p)), torch.zeros(1, 1, 1, 1), torch.tensor([[p]]), torch.tensor([[True]]))
    assert cache.k[0, 0, 126, 0] == 126 and cache.k[0, 0, 0, 0] == 254 and cache.k[0, 0, 1, 0] == 255
    assert cache.k[0, 0, 127, 0] == 0  # never written


def test_buckets_follow_nxdis_first_fit():
    assert pick((128, 256), 100, "x") == 128 and pick((128, 256), 128, "x") == 256 and pick((128, 256), 256, "x") == 256
    with pytest.raises(BucketError, match=r"does not fit the configured buckets \[128, 256\]"):
        pick((128, 256), 257, "a context of tokens")
    assert Buckets.parse("context=256,128;batch=1") == Buckets(context=(128, 256), batch=(1,))
    with pytest.raises(BucketError, match="unknown phase"):
        Buckets.parse("contxt=1")


# -- weight conversion -----------------------------------------------------------------------------

def _emulated_layer(layer=0, dtype=torch.bfloat16, preset_name="small"):
    config = preset(preset_name)
    return NeuronLayer(NxdiConventionAttention(config, layer, dtype), config.hidden_size), config


def test_conversion_fills_exactly_the_modules_keys():
    module, config = _emulated_layer()
    spec = layer_specs(Case())[0]
    given = nxdi_state_dict(spec.weights, config, module.state_dict())
    assert set(given) == set(module.state_dict()) == {
        "norm_scale", "attn.learned_sinks.sink", "attn.tkg_learned_sinks.sink", "attn.o_proj.o_proj.weight",
        "attn.o_proj.o_proj.bias", *(f"attn.qkv_proj.{x}_proj.{k}" for x in "qkv" for k in ("weight", "bias"))}
    module.load_state_dict(given, strict=True)
    check_loaded(module, given)
    assert torch.equal(module.attn.tkg_learned_sinks.sink, spec.weights["sinks"])
    assert given["norm_scale"].dtype == torch.float32 and given["attn.qkv_proj.q_proj.weight"].dtype == torch.bfloat16


def test_conversion_from_both_checkpoint_formats_is_the_same():
    config = preset("small")
    w = layer_specs(Case(layer=3))[0].weights
    nq, nkv = config.num_attention_heads * config.head_dim, config.num_key_value_heads * config.head_dim
    original = {f"block.3.attn.{n}": t for n, t in w.items()}
    parts = {"q": slice(0, nq), "k": slice(nq, nq + nkv), "v": slice(nq + nkv, None)}
    hf = {"model.layers.3.input_layernorm.weight": w["norm.scale"], "model.layers.3.self_attn.sinks": w["sinks"],
          "model.layers.3.self_attn.o_proj.weight": w["out.weight"], "model.layers.3.self_attn.o_proj.bias": w["out.bias"],
          **{f"model.layers.3.self_attn.{x}_proj.{k}": w[f"qkv.{k}"][s] for x, s in parts.items() for k in ("weight", "bias")}}
    for source, fmt in ((original, "original"), (hf, "hf"), (w, "harness")):
        got, found = harness_layout(source, 3, config)
        assert found == fmt and all(torch.equal(got[n], w[n]) for n in w)
    with pytest.raises(ConversionError, match=r"not understood \['block.3.attn.extra'\]"):
        harness_layout({**original, "block.3.attn.extra": w["sinks"]}, 3, config)
    with pytest.raises(ConversionError, match=r"missing \['block.3.attn.sinks'\]"):
        harness_layout({k: v for k, v in original.items() if not k.endswith("sinks")}, 3, config)


def test_conversion_refuses_what_would_be_lost_or_left_out():
    module, config = _emulated_layer()
    w = layer_specs(Case())[0].weights
    state = module.state_dict()
    no_bias = {k: v for k, v in state.items() if not k.endswith("bias")}  # attention_bias=False in NxDI
    with pytest.raises(ConversionError, match="nowhere to put gpt-oss .*qkv.bias.* attention_bias=True"):
        nxdi_state_dict(w, config, no_bias)
    with pytest.raises(ConversionError, match=r"keys no gpt-oss weight fills: \['attn.rotary.inv_freq'\]"):
        nxdi_state_dict(w, config, {**state, "attn.rotary.inv_freq": torch.zeros(8)})
    with pytest.raises(ConversionError, match="has shape"):
        nxdi_state_dict(layer_specs(Case(preset="full"))[0].weights, config, state)
    fused = {k: v for k, v in state.items() if "_proj." not in k or "o_proj" in k}
    fused["attn.qkv_proj.Wqkv.weight"] = torch.zeros(w["qkv.weight"].shape, dtype=torch.bfloat16)
    fused["attn.qkv_proj.Wqkv.bias"] = torch.zeros(w["qkv.bias"].shape, dtype=torch.bfloat16)
    assert torch.equal(nxdi_state_dict(w, config, fused)["attn.qkv_proj.Wqkv.weight"], w["qkv.weight"])
    copies = {**state, "attn.cte_qkv_proj.q_proj.weight": state["attn.qkv_proj.q_proj.weight"]}
    assert torch.equal(nxdi_state_dict(w, config, copies)["attn.cte_qkv_proj.q_proj.weight"],
                       nxdi_state_dict(w, config, copies)["attn.qkv_proj.q_proj.weight"])


def test_a_module_left_with_zero_sinks_is_caught_after_loading():
    module, config = _emulated_layer()
    w = layer_specs(Case())[0].weights
    given = nxdi_state_dict(w, config, module.state_dict())
    module.load_state_dict({k: v for k, v in given.items() if k != "attn.learned_sinks.sink"}, strict=False)
    with pytest.raises(ConversionError, match="attn.learned_sinks.sink: holds all zeros, not the values given"):
        check_loaded(module, given)


# -- the driver, through the emulation ------------------------------------------------------------

RING_CASES = [  # decode steps across 126-129, 254-257, past 2W; left-padded batches; chunks past the window
    Case(layer=0, lengths=(130,), plan="decode", decode_steps=4, input_seed=1),
    Case(layer=0, lengths=(258, 131), padding="left", plan="decode", decode_steps=4, input_seed=2),
    Case(layer=2, lengths=(300,), plan="decode", decode_steps=3, sinks="dominant", input_seed=3),
    Case(layer=1, lengths=(140, 20, 64), plan="decode", decode_steps=2, input_seed=4),
    Case(layer=0, lengths=(260, 90), plan="chunked", chunk_offset=100, input_seed=5),
    Case(layer=1, lengths=(200,), plan="chunked", chunk_offset=128, input_seed=6),
    Case(layer=0, lengths=(100, 37), pad_to=128, input_seed=7),
    Case(layer=0, lengths=(40,), dtype="float32", plan="decode", decode_steps=2, input_seed=8),
]


@pytest.fixture(scope="module")
def ring_expected():
    return {c: compute_expected(c) for c in RING_CASES}


def _expected(table):
    return lambda case, checkpoint=None: table[case]


@pytest.mark.parametrize("case", RING_CASES, ids=lambda c: c.id)
def test_the_emulation_passes_through_the_driver(case, ring_expected):
    (v,) = run_case(case, [load_candidate("nxdi-emulation")], expected=_expected(ring_expected))
    assert v.verdict == "pass", v.message
    stages = {s.stage for s in v.stages}
    assert {"normed", "q_rope", "scores", "probs", "attn", "out_proj", "output"} <= stages, stages
    assert v.info["mode"] == "emulation" and v.info["buckets"]["context"] >= 128


KILLERS = {  # each driver mutant, and a case of RING_CASES that shows it
    "ring_written_at_pos_mod_w": 0, "generation_mask_exposes_unwritten_slot": 0, "ring_seeded_in_position_order": 2,
    "bucket_padding_visible": 3, "padding_positions_counted": 1, "generation_sinks_not_loaded": 2,
    "handover_one_key_short": 2, "handover_one_key_long": 2,
}


# where each is named: nxdi-emulation accepts feed, so stage isolation enters it at every stage (the cache
# slots included) and names one stage per bug; without feed the mask and sink bugs would read as four
NAMED_AT = {
    "ring_written_at_pos_mod_w": "k_rope", "generation_mask_exposes_unwritten_slot": "scores",
    "ring_seeded_in_position_order": "k_rope", "bucket_padding_visible": "scores",
    "padding_positions_counted": "k_rope", "generation_sinks_not_loaded": "probs",
    "handover_one_key_short": "k_rope", "handover_one_key_long": "k_rope",  # the hand-over check, by position
}


@pytest.mark.parametrize("mutant", DRIVER_MUTANTS)
def test_every_driver_mutant_is_caught_and_named_at_one_stage(mutant, ring_expected):
    case = RING_CASES[KILLERS[mutant]]
    (v,) = run_case(case, [load_candidate(f"mutant:{mutant}")], expected=_expected(ring_expected), probes=False)
    assert v.verdict == "fail", (mutant, v.message)
    assert v.divergent_stages == [NAMED_AT[mutant]], (mutant, v.message)


def test_a_case_outside_the_buckets_is_a_clear_error():
    small = NxdiEmulation(buckets=Buckets(context=(128,)))
    (v,) = run_case(Case(lengths=(200,)), [small], probes=False)
    assert v.verdict == "error" and "does not fit the configured buckets [128]" in v.message


class _NoMultiToken:
    """A layer whose module, like some ports, cannot take several tokens in one generation step."""

    def __init__(self, inner):
        self.inner = inner

    def context(self, *args):
        return self.inner.context(*args)

    def generation(self, x, *args):
        if x.shape[1] > 1:
            raise RuntimeError("q_len > 1 not supported")
        return self.inner.generation(x, *args)


def test_a_plan_the_module_cannot_run_is_unsupported_not_something_else(monkeypatch):
    cand = NxdiEmulation()
    real = cand._layer
    monkeypatch.setattr(cand, "_layer", lambda spec, batch: _NoMultiToken(real(spec, batch)))
    (v,) = run_case(Case(lengths=(60,), plan="chunked", chunk_offset=30), [cand], probes=False)
    assert v.verdict == "unsupported" and "several tokens per step" in v.message
    (v,) = run_case(Case(lengths=(60,), plan="decode", decode_steps=2), [cand], probes=False)
    assert v.verdict == "pass"


def test_the_emulation_is_in_the_default_candidates():
    from harness.candidates import BUILTIN

    assert "nxdi-emulation" in BUILTIN


# -- without the SDK ---------------------------------------------------------------------------------

@pytest.mark.skipif(SDK, reason="the Neuron SDK is installed here")
def test_neuron_candidates_without_the_sdk_say_how_to_install(tmp_path, capsys):
    for name in ("neuron", "neuron-block", "neuron:mypkg.attn:MyAttention"):
        with pytest.raises(NeuronUnavailable, match="Neuron SDK does not import") as err:
            load_candidate(name)
        assert INSTALL_LINE in str(err.value)
    assert cli.main(["run", "--candidate", "neuron", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("pip install --extra-index-url https://pip.repos.neuron.amazonaws.com") == 1


@pytest.mark.skipif(SDK, reason="the Neuron SDK is installed here")
def test_pytest_skips_every_neuron_test_with_one_reason():
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "parity", "-rs",
                          "--candidate", "neuron", "harness/pytest_plugin/suite.py", "-k", "curated_sweep or case_files"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600, env={**os.environ, "CI": ""})
    assert out.returncode == 0, out.stdout[-3000:]
    skips = [line for line in out.stdout.splitlines() if line.startswith("SKIPPED")]
    assert skips and all("Neuron SDK does not import" in line for line in skips), out.stdout[-3000:]
    assert " passed" not in out.stdout.splitlines()[-1]


# -- the device path, with NxDI's build_module faked (no device here) ----------------------------------

def test_the_device_path_builds_each_phase_and_shape_once(monkeypatch, tmp_path):
    """DeviceLayer traces one module per (phase, shape) through build_module, with the converted weights
    as its checkpoint, and runs the plan through the same driver: the result equals the eager one."""
    built = fake_sdk.install(monkeypatch, tmp_path).builds
    device = NxdiEmulation(name="fake-device")
    device.kind, device.mode, device.class_path = "neuron", "device", None
    case = Case(layer=0, lengths=(130, 20), plan="decode", decode_steps=3, input_seed=9)
    spec, batch = build(case)
    on_device = device.run(spec, batch, taps=True)
    eager = NxdiEmulation().run(spec, batch, taps=True)
    assert torch.equal(on_device.output.nan_to_num(0), eager.output.nan_to_num(0))
    # what forward hooks saw while the module was traced comes back as the graph's extra outputs
    for stage in ("q", "k", "attn"):
        assert torch.equal(on_device.taps[stage].nan_to_num(0), eager.taps[stage].nan_to_num(0)), stage
    assert on_device.info["handover"] == "checked by position"
    assert {"q_rope", "scores", "probs"} <= set(on_device.taps)  # derived from them (harness/neuron/derived.py)
    assert [b[0] for b in built] == ["ContextModule", "GenerationModule"]  # three generation steps, one shape
    assert on_device.info["mode"] == "device" and on_device.info["builds"] == 2
    assert len(list((tmp_path / "cache" / "weights").glob("*.safetensors"))) == 1


def test_each_process_rendezvous_on_a_port_of_its_own(monkeypatch):
    """NxD's one-process fallback group used MASTER_PORT 29500 in every process: two processes building
    modules at once clashed (EADDRINUSE). A free port is chosen per process unless one was given."""
    import socket

    from harness.neuron.nxdi import own_rendezvous_port

    monkeypatch.delenv("MASTER_PORT", raising=False)
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    own_rendezvous_port()
    port = int(os.environ["MASTER_PORT"])
    assert os.environ["MASTER_ADDR"] == "127.0.0.1" and port != 29500
    with socket.socket() as s:  # free: it can be bound
        s.bind(("127.0.0.1", port))
    monkeypatch.setenv("MASTER_PORT", "31234")
    own_rendezvous_port()
    assert os.environ["MASTER_PORT"] == "31234"  # the caller's choice is kept
