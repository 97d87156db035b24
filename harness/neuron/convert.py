"""Weight conversion to NxDI's attention state dict (pure torch), strict in both directions.

Sources: the harness's gpt-oss layout (norm.scale, qkv.*, sinks, out.*), OpenAI's original checkpoint
(block.N.attn.*) and HF's (model.layers.N.self_attn.{q,k,v,o}_proj.*, .sinks, input_layernorm.weight).
Target: the keys of the module actually built (its state_dict), which NxDI names
qkv_proj.{q,k,v}_proj.{weight,bias} (or qkv_proj.Wqkv when fused), o_proj.o_proj.{weight,bias},
learned_sinks.sink, and, when the config creates them (context or data parallelism), the copies
cte_qkv_proj.*, tkg_qkv_proj.*, cte_o_proj.*, tkg_o_proj.* and tkg_learned_sinks.sink.

Strict: every source tensor of the layer is used, every key of the module is filled, shapes must
match, values are cast to the module's dtypes; after loading, `check_loaded` confirms that every sink
and bias the module holds is the value given (NxDI initialises sinks to zero and silently builds no
biases without attention_bias=True: either would pass a smoke test with zero sinks).
"""

from __future__ import annotations

import torch

from harness.neuron.bugs import Bugs
from harness.weights import NAMES, validate_weights
from reference.gpt_oss import ModelConfig

COPIES = ("", "cte_", "tkg_")  # NxDI's per-phase copies of the projections


class ConversionError(ValueError):
    """A state dict that does not fit; the message names every key concerned."""


def harness_layout(tensors: dict[str, torch.Tensor], layer: int, config: ModelConfig,
                   source: str = "state dict") -> tuple[dict[str, torch.Tensor], str]:
    """The layer's attention weights in the harness's layout (and the format found), from any of the
    three formats. Every tensor of that layer's attention in the source must be used."""
    original = {f"block.{layer}.attn.{n}": n for n in NAMES}
    p = f"model.layers.{layer}"
    hf = {f"{p}.input_layernorm.weight": "norm.scale", f"{p}.self_attn.sinks": "sinks",
          **{f"{p}.self_attn.{x}_proj.{kind}": f"{x}.{kind}" for x in "qkvo" for kind in ("weight", "bias")}}
    if set(tensors) == set(NAMES):
        fmt, names, prefixes = "harness", {n: n for n in NAMES}, ()
    elif any(k in tensors for k in original):
        fmt, names, prefixes = "original", original, (f"block.{layer}.attn.",)
    elif any(k in tensors for k in hf):
        fmt, names, prefixes = "hf", hf, (f"{p}.self_attn.",)
    else:
        raise ConversionError(f"{source}: no attention weights of layer {layer} in any known format (harness names "
                              f"{list(NAMES)}, original block.{layer}.attn.*, or HF {p}.self_attn.*); found keys "
                              f"{sorted(tensors)[:8]}")
    missing = sorted(k for k in names if k not in tensors)
    unused = sorted(k for k in tensors if k.startswith(prefixes) and k not in names)
    if missing or unused:
        raise ConversionError(f"{source} ({fmt} format, layer {layer}): missing {missing}; not understood {unused}")
    raw = {names[k]: tensors[k] for k in names}
    if fmt == "hf":
        raw = {
            "norm.scale": raw["norm.scale"], "sinks": raw["sinks"],
            "qkv.weight": torch.cat([raw["q.weight"], raw["k.weight"], raw["v.weight"]]),
            "qkv.bias": torch.cat([raw["q.bias"], raw["k.bias"], raw["v.bias"]]),
            "out.weight": raw["o.weight"], "out.bias": raw["o.bias"],
        }
    weights = {n: t.to(torch.float32 if n == "norm.scale" else torch.bfloat16) for n, t in raw.items()}
    validate_weights(weights, config, source=f"{source} ({fmt} format, layer {layer})")
    return weights, fmt


def _sources(weights: dict[str, torch.Tensor], config: ModelConfig) -> dict[str, tuple[str, torch.Tensor]]:
    """NxDI key (without copy prefix) -> (harness name it comes from, tensor)."""
    nq = config.num_attention_heads * config.head_dim
    nkv = config.num_key_value_heads * config.head_dim
    w, b = weights["qkv.weight"], weights["qkv.bias"]
    parts = {"q": slice(0, nq), "k": slice(nq, nq + nkv), "v": slice(nq + nkv, nq + 2 * nkv)}
    out = {}
    for x, rows in parts.items():
        out[f"qkv_proj.{x}_proj.weight"] = ("qkv.weight", w[rows])
        out[f"qkv_proj.{x}_proj.bias"] = ("qkv.bias", b[rows])
    out["qkv_proj.Wqkv.weight"] = ("qkv.weight", w)  # fused: q, k, v rows in that order
    out["qkv_proj.Wqkv.bias"] = ("qkv.bias", b)
    out["o_proj.o_proj.weight"] = ("out.weight", weights["out.weight"])
    out["o_proj.o_proj.bias"] = ("out.bias", weights["out.bias"])
    out["learned_sinks.sink"] = ("sinks", weights["sinks"])
    return out


def nxdi_state_dict(weights: dict[str, torch.Tensor], config: ModelConfig, module_state: dict[str, torch.Tensor],
                    prefix: str = "attn.", norm_key: str | None = "norm_scale", bugs: Bugs = Bugs()) -> dict[str, torch.Tensor]:
    """The state dict for a module whose current state dict is `module_state`: its attention under
    `prefix`, the RMSNorm scale at `norm_key` (None: the module has none). Every module key filled,
    every gpt-oss tensor used. `bugs.generation_sinks_missing` (self-test only) leaves the
    token-generation sink copy as the module initialised it."""
    sources = _sources(weights, config)
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    unknown = []
    for key, current in module_state.items():
        if norm_key is not None and key == norm_key:
            name, value = "norm.scale", weights["norm.scale"]
        elif key.endswith("rank_util.rank"):
            out[key] = current  # the tensor-parallel rank table, not a weight
            continue
        elif key.startswith(prefix):
            rest = key[len(prefix):]
            copy = next((c for c in ("cte_", "tkg_") if rest.startswith(c)), "")
            base = rest[len(copy):]
            if base not in sources:
                unknown.append(key)
                continue
            if bugs.generation_sinks_missing and copy == "tkg_" and base == "learned_sinks.sink":
                out[key] = current
                continue
            name, value = sources[base]
        else:
            unknown.append(key)
            continue
        if tuple(value.shape) != tuple(current.shape):
            raise ConversionError(f"module key {key} has shape {tuple(current.shape)}, the gpt-oss {name} gives "
                                  f"{tuple(value.shape)}: the module's dims differ from the case's ({config})")
        out[key] = value.to(current.dtype)
        used.add(name)
    if unknown:
        raise ConversionError(f"the module has keys no gpt-oss weight fills: {unknown} (the converter knows "
                              f"{sorted(sources)} under {prefix!r}, with cte_/tkg_ copies, and {norm_key!r})")
    dropped = sorted(set(NAMES) - used - ({"norm.scale"} if norm_key is None else set()))
    if dropped:
        hint = (" NxDI builds q/k/v/o biases only with attention_bias=True" if any("bias" in n for n in dropped) else "")
        raise ConversionError(f"the module has nowhere to put gpt-oss {dropped}: they would be dropped.{hint}")
    return out


def check_loaded(module: torch.nn.Module, given: dict[str, torch.Tensor]) -> None:
    """After load_state_dict: every sink and bias in the module holds the value given (a zero-initialised
    sink or a bias the module ignored is an error naming the key)."""
    state = module.state_dict()
    problems = []
    for key, value in given.items():
        if not (key.endswith(".sink") or key.endswith(".bias")):
            continue
        held = state.get(key)
        if held is None:
            problems.append(f"{key}: not in the module after loading")
        elif not torch.equal(held, value.to(held.dtype)):
            what = "all zeros" if not bool(held.any()) else "other values"
            problems.append(f"{key}: holds {what}, not the values given")
    if problems:
        raise ConversionError("after loading, the module does not hold the weights given:\n  " + "\n  ".join(problems))
