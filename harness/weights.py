"""Attention-block weights in the gpt-oss checkpoint layout: made from a seed, or loaded from disk.

A weight dict always uses the names of one block's attention in OpenAI's original checkpoint, without
the `block.N.attn.` prefix, and the reference dtypes: norm.scale float32, everything else bfloat16.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from pathlib import Path

import torch

from harness.seeds import generator, normal, uniform
from reference.gpt_oss import ModelConfig

NAMES = ("norm.scale", "qkv.weight", "qkv.bias", "sinks", "out.weight", "out.bias")

# Sinks in real ports are often all-zero by accident, which hides every sink bug; "dominant" follows
# vLLM's tests (5..15 x uniform) and outweighs most rows' scores.
SINK_REGIMES = ("zero", "small", "dominant")
# "sharp" triples q and k so that softmax rows are peaked, as in trained models.
SCALE_REGIMES = ("normal", "sharp")


def tensor_sha256(t: torch.Tensor) -> str:
    return hashlib.sha256(t.contiguous().view(torch.uint8).numpy().tobytes()).hexdigest()


def weights_sha256(weights: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode() + b"\0" + tensor_sha256(weights[name].reshape(-1)).encode())
    return h.hexdigest()



def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    hq, hkv, d, h = config.num_attention_heads, config.num_key_value_heads, config.head_dim, config.hidden_size
    qkv = d * (hq + 2 * hkv)
    return {
        "norm.scale": (h,),
        "qkv.weight": (qkv, h),
        "qkv.bias": (qkv,),
        "sinks": (hq,),
        "out.weight": (h, hq * d),
        "out.bias": (h,),
    }


def expected_dtype(name: str) -> torch.dtype:
    return torch.float32 if name == "norm.scale" else torch.bfloat16


def make_weights(config: ModelConfig, seed: int, sinks: str = "small", scale: str = "normal") -> dict[str, torch.Tensor]:
    """Deterministic weights, the same on every machine (harness/seeds.py); every head gets distinct
    values so head-order bugs are visible. Each call returns new tensors (a candidate may modify them)."""
    if sinks not in SINK_REGIMES:
        raise ValueError(f"sinks={sinks!r} is not a sink regime; expected one of {SINK_REGIMES}")
    if scale not in SCALE_REGIMES:
        raise ValueError(f"scale={scale!r} is not a scale regime; expected one of {SCALE_REGIMES}")
    from harness.timing import section

    with section("weights"):
        cached = _seeded_weights(dataclasses.astuple(config), seed, sinks, scale)
    return {name: t.clone() for name, t in cached.items()}


@functools.lru_cache(maxsize=4)
def _seeded_weights(dims: tuple, seed: int, sinks: str, scale: str) -> dict[str, torch.Tensor]:
    # Cached: at full dims the float64 draws take about 2 s, and a run meets the same weights many times.
    config = ModelConfig(*dims)
    g = generator("weights", seed)
    shapes = expected_shapes(config)
    h, hq, hkv, d = config.hidden_size, config.num_attention_heads, config.num_key_value_heads, config.head_dim

    def normal_(name: str, std: float) -> torch.Tensor:
        return normal(g, *shapes[name]) * std

    qkv_w = normal_("qkv.weight", h**-0.5)
    if scale == "sharp":
        qkv_w[: (hq + hkv) * d] *= 3.0
    w = {
        "norm.scale": 1.0 + normal_("norm.scale", 0.2),
        "qkv.weight": qkv_w,
        "qkv.bias": normal_("qkv.bias", 0.1),
        "out.weight": normal_("out.weight", (hq * d) ** -0.5),
        "out.bias": normal_("out.bias", 0.1),
    }
    if sinks == "zero":
        w["sinks"] = torch.zeros(hq, dtype=torch.float64)
    elif sinks == "small":
        w["sinks"] = normal_("sinks", 1.0)
    else:
        w["sinks"] = 5.0 + 10.0 * uniform(g, hq)
    return {name: w[name].to(expected_dtype(name)) for name in NAMES}


def validate_weights(weights: dict[str, torch.Tensor], config: ModelConfig, source: str = "weights") -> None:
    """Raise ValueError naming every missing name, wrong shape or wrong dtype."""
    problems = []
    for name, shape in expected_shapes(config).items():
        if name not in weights:
            problems.append(f"{name}: missing")
            continue
        t = weights[name]
        if tuple(t.shape) != shape:
            problems.append(f"{name}: expected shape {shape}, found {tuple(t.shape)}")
        if t.dtype != expected_dtype(name):
            problems.append(f"{name}: expected dtype {expected_dtype(name)}, found {t.dtype}")
        elif not torch.isfinite(t).all():
            problems.append(f"{name}: contains NaN or Inf (uninitialised parameter?)")
    if problems:
        raise ValueError(f"{source} do not fit the config {config}:\n  " + "\n  ".join(problems))


# --- checkpoints -------------------------------------------------------------------------------------

def _original_names(layer: int) -> dict[str, str]:
    return {name: f"block.{layer}.attn.{name}" for name in NAMES}


def _hf_names(layer: int) -> dict[str, str]:
    p = f"model.layers.{layer}"
    return {
        "input_layernorm": f"{p}.input_layernorm.weight",
        **{f"{x}.{kind}": f"{p}.self_attn.{x}_proj.{kind}" for x in "qkvo" for kind in ("weight", "bias")},
        "sinks": f"{p}.self_attn.sinks",
    }


def _index_checkpoint(directory: Path) -> dict[str, Path]:
    """Map every tensor name to the safetensors file holding it."""
    from safetensors import safe_open

    if not directory.is_dir():
        raise FileNotFoundError(f"checkpoint directory {directory} does not exist")
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        found = sorted(p.name for p in directory.iterdir())[:10]
        raise FileNotFoundError(
            f"no *.safetensors file in {directory} (found {found}); only safetensors checkpoints are "
            "read, never pickled .bin/.pt files"
        )
    where: dict[str, Path] = {}
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as handle:
                for key in handle.keys():
                    where[key] = f
        except Exception as exc:  # safetensors raises its own error types for corrupt headers
            raise ValueError(f"{f} is not a readable safetensors file: {exc}") from exc
    return where


def _read(where: dict[str, Path], names: dict[str, str]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    out = {}
    for short, full in names.items():
        with safe_open(str(where[full]), framework="pt") as handle:
            out[short] = handle.get_tensor(full)
    return out


def detect_format(where: dict[str, Path], layer: int) -> str:
    if all(n in where for n in _original_names(layer).values()):
        return "original"
    if all(n in where for n in _hf_names(layer).values()):
        return "hf"
    layers = sorted({k.split(".")[1] for k in where if k.startswith("block.")} | {k.split(".")[2] for k in where if k.startswith("model.layers.")})
    missing_o = [n for n in _original_names(layer).values() if n not in where]
    missing_h = [n for n in _hf_names(layer).values() if n not in where]
    raise KeyError(
        f"layer {layer} is incomplete in both checkpoint formats. Original format is missing {missing_o}; "
        f"HF format is missing {missing_h}. Layers present: {layers[:40]}"
    )


def load_layer_weights(directory: str | Path, layer: int, config: ModelConfig) -> tuple[dict[str, torch.Tensor], str]:
    """Load one layer's attention weights from a safetensors checkpoint directory, in the original
    (`block.N.attn.*`) or HF (`model.layers.N.self_attn.*` + `input_layernorm`) format.
    Returns (weights in gpt-oss layout and dtypes, detected format)."""
    directory = Path(directory)
    where = _index_checkpoint(directory)
    fmt = detect_format(where, layer)
    if fmt == "original":
        raw = _read(where, _original_names(layer))
        weights = {n: raw[n].to(expected_dtype(n)) for n in NAMES}
    else:
        raw = _read(where, _hf_names(layer))
        # The fused qkv rows are q, then k, then v: the HF split is exactly that order.
        weights = {
            "norm.scale": raw["input_layernorm"].to(torch.float32),
            "qkv.weight": torch.cat([raw["q.weight"], raw["k.weight"], raw["v.weight"]]).to(torch.bfloat16),
            "qkv.bias": torch.cat([raw["q.bias"], raw["k.bias"], raw["v.bias"]]).to(torch.bfloat16),
            "sinks": raw["sinks"].to(torch.bfloat16),
            "out.weight": raw["o.weight"].to(torch.bfloat16),
            "out.bias": raw["o.bias"].to(torch.bfloat16),
        }
    validate_weights(weights, config, source=f"layer {layer} of {directory} ({fmt} format)")
    return weights, fmt


_CONFIG_KEYS = {
    "hidden_size": "hidden_size",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "sliding_window": "sliding_window",
    "rope_theta": "rope_theta",
    "initial_context_length": "initial_context_length",
    "rope_scaling_factor": "rope_scaling_factor",
    "rope_ntk_alpha": "rope_ntk_alpha",
    "rope_ntk_beta": "rope_ntk_beta",
    "num_hidden_layers": "num_hidden_layers",
}
_HF_ROPE_KEYS = {
    "factor": "rope_scaling_factor",
    "beta_slow": "rope_ntk_alpha",
    "beta_fast": "rope_ntk_beta",
    "original_max_position_embeddings": "initial_context_length",
    "rope_theta": "rope_theta",
}


def config_from_checkpoint(directory: str | Path, base: ModelConfig) -> ModelConfig:
    """Read config.json (either format) when present; fields it does not name keep `base`'s values."""
    path = Path(directory) / "config.json"
    if not path.exists():
        return base
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from exc
    values = {field: raw[key] for key, field in _CONFIG_KEYS.items() if key in raw}
    rope = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    values.update({field: rope[key] for key, field in _HF_ROPE_KEYS.items() if key in rope})
    from dataclasses import replace

    return replace(base, **values)
