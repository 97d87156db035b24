"""Seeded weights and checkpoint loading in both formats (small checkpoints written here)."""

import json

import pytest
import torch
from safetensors.torch import save_file

from harness.presets import preset
from harness.weights import NAMES, config_from_checkpoint, load_layer_weights, make_weights, validate_weights

CFG = preset("small")


def test_seeded_weights_are_deterministic_and_distinct():
    a, b, c = make_weights(CFG, 1), make_weights(CFG, 1), make_weights(CFG, 2)
    assert all(torch.equal(a[n], b[n]) for n in NAMES)
    assert not torch.equal(a["qkv.weight"], c["qkv.weight"])
    assert a["norm.scale"].dtype == torch.float32 and a["qkv.weight"].dtype == torch.bfloat16
    validate_weights(a, CFG)


def test_sink_regimes():
    assert torch.all(make_weights(CFG, 0, sinks="zero")["sinks"] == 0)
    small = make_weights(CFG, 0, sinks="small")["sinks"].float()
    dominant = make_weights(CFG, 0, sinks="dominant")["sinks"].float()
    assert small.std() > 0.2 and small.abs().max() < 5
    assert dominant.min() >= 5 and dominant.max() <= 15 and len(set(dominant.tolist())) > 1
    with pytest.raises(ValueError, match="sink regime"):
        make_weights(CFG, 0, sinks="huge")


def test_weights_and_inputs_streams_are_independent():
    """Weights and inputs from the same integer seed must not be the same numbers."""
    from harness.batch import build
    from harness.case import Case

    spec, batch = build(Case(lengths=(8,), weight_seed=0, input_seed=0))
    x = batch.hidden[0].float()
    w = spec.weights["qkv.weight"].float()
    cos = torch.nn.functional.normalize(x, dim=1) @ torch.nn.functional.normalize(w, dim=1).T
    assert cos.abs().max() < 0.6


def _original_checkpoint(path, layers, weights):
    tensors = {f"block.{i}.attn.{n}": weights[n].clone() for i in layers for n in NAMES}
    save_file(tensors, str(path / "model.safetensors"))


def _hf_checkpoint(path, layers, weights, shards=2):
    nq, nkv = CFG.num_attention_heads * CFG.head_dim, CFG.num_key_value_heads * CFG.head_dim
    tensors = {}
    for i in layers:
        p = f"model.layers.{i}"
        tensors[f"{p}.input_layernorm.weight"] = weights["norm.scale"].bfloat16()
        for name, lo, hi in (("q", 0, nq), ("k", nq, nq + nkv), ("v", nq + nkv, nq + 2 * nkv)):
            tensors[f"{p}.self_attn.{name}_proj.weight"] = weights["qkv.weight"][lo:hi].clone()
            tensors[f"{p}.self_attn.{name}_proj.bias"] = weights["qkv.bias"][lo:hi].clone()
        tensors[f"{p}.self_attn.o_proj.weight"] = weights["out.weight"].clone()
        tensors[f"{p}.self_attn.o_proj.bias"] = weights["out.bias"].clone()
        tensors[f"{p}.self_attn.sinks"] = weights["sinks"].clone()
    keys = sorted(tensors)
    for s in range(shards):
        save_file({k: tensors[k] for k in keys[s::shards]}, str(path / f"model-{s:05d}-of-{shards:05d}.safetensors"))


@pytest.mark.parametrize("layer", [0, 3])
def test_load_original_format(tmp_path, layer):
    w = make_weights(CFG, 5)
    _original_checkpoint(tmp_path, [0, 3], w)
    loaded, fmt = load_layer_weights(tmp_path, layer, CFG)
    assert fmt == "original"
    assert all(torch.equal(loaded[n], w[n]) for n in NAMES)


def test_load_hf_format_sharded(tmp_path):
    w = make_weights(CFG, 6)
    w["norm.scale"] = w["norm.scale"].bfloat16().float()  # HF stores the norm weight in bf16
    _hf_checkpoint(tmp_path, [0, 1, 2], w)
    loaded, fmt = load_layer_weights(tmp_path, 2, CFG)
    assert fmt == "hf"
    assert all(torch.equal(loaded[n], w[n]) for n in NAMES)
    assert loaded["norm.scale"].dtype == torch.float32


def test_missing_layer_names_what_is_missing(tmp_path):
    _original_checkpoint(tmp_path, [0], make_weights(CFG, 0))
    with pytest.raises(KeyError, match=r"layer 4 is incomplete.*block\.4\.attn\.qkv\.weight.*Layers present: \['0'\]"):
        load_layer_weights(tmp_path, 4, CFG)


def test_wrong_shapes_are_reported_with_the_file(tmp_path):
    _original_checkpoint(tmp_path, [0], make_weights(preset("full"), 0))
    with pytest.raises(ValueError, match=r"qkv.weight: expected shape \(192, 96\), found \(5120, 2880\)"):
        load_layer_weights(tmp_path, 0, CFG)


def test_no_safetensors_and_corrupt_files(tmp_path):
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(FileNotFoundError, match="never pickled"):
        load_layer_weights(tmp_path, 0, CFG)
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_layer_weights(tmp_path, 0, CFG)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_layer_weights(tmp_path / "nope", 0, CFG)


def test_nan_weights_rejected():
    w = make_weights(CFG, 0)
    w["sinks"] = torch.full_like(w["sinks"], float("nan"))
    with pytest.raises(ValueError, match="sinks: contains NaN"):
        validate_weights(w, CFG)


def test_config_from_checkpoint_both_formats(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({
        "hidden_size": 96, "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 16,
        "rope_parameters": {"factor": 16.0, "beta_fast": 30.0, "beta_slow": 1.0, "original_max_position_embeddings": 2048, "rope_theta": 10000.0},
    }))
    cfg = config_from_checkpoint(tmp_path, preset("full"))
    assert (cfg.hidden_size, cfg.num_key_value_heads, cfg.rope_scaling_factor, cfg.rope_ntk_beta) == (96, 2, 16.0, 30.0)
    assert (cfg.initial_context_length, cfg.rope_theta) == (2048, 10000.0)
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        config_from_checkpoint(tmp_path, CFG)
