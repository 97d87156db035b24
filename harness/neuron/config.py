"""The deployment a Neuron candidate is checked as: NeuronConfig fields given with `--neuron-config`
(`parity run`, `parity replay`, the pytest plugin) or $PARITY_NEURON_CONFIG.

The value is a JSON object, a JSON list of objects (each its own candidate variant), or the path of a
file holding either. Known fields: `tp_degree` (default 1), `cache_manager` and `mask_builder` (import
paths of the user's own), and NeuronConfig flags (FLAGS). A configuration is part of a check's
identity: a Neuron candidate checked at tp 8 is named `NAME@tp8` (with flags `NAME@tp8+fused_qkv`) in
the table, the JSON results, the history and the repro file, so results of different deployments never
mix, and a repro file replays the same variant. (tp 1 with nothing else keeps the plain name: it is
the candidate as it always ran.)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

FIELDS = {
    "tp_degree": "tensor-parallel degree: the ranks the block is sharded over (default 1)",
    "cache_manager": "MODULE:CLASS, your KV-cache manager, built and driven as NxDI's GptOssKVCacheManager "
                     "(SDK candidates; default the SDK's)",
    "mask_builder": "MODULE:CLASS whose mask methods (_create_context_attn_mask, _create_simple_attn_mask, "
                    "_create_windowed_attn_mask_cte/_tkg) replace NeuronBaseModel's (SDK candidates; default the SDK's)",
}
IMPORT_PATHS = ("cache_manager", "mask_builder")  # code: a repro file naming one is not trusted by default
# NeuronConfig flags a deployment sets. Kernel flags need NKI kernels, which run only on a Neuron
# device: in NxDI's CPU mode they are refused, never silently switched off.
KERNEL_FLAGS = ("attn_kernel_enabled", "qkv_kernel_enabled", "qkv_nki_kernel_enabled", "qkv_cte_nki_kernel_fuse_rope",
                "attn_tkg_nki_kernel_enabled", "attn_tkg_builtin_kernel_enabled", "attn_block_tkg_nki_kernel_enabled",
                "attn_block_cte_nki_kernel_enabled", "out_proj_kernel_enabled", "flash_decoding_enabled")
FLAGS = ("fused_qkv", *KERNEL_FLAGS)
# Flags that change what the layer is given or returns, which the harness does not drive yet: refused.
NOT_DRIVEN = {
    "sequence_parallel_enabled": "each rank would be given a slice of the sequence (NxDI scatters the hidden states "
                                 "before the layers), which the harness's layer does not do yet",
    "k_cache_transposed": "full layers' K cache would be [batch, heads, head_dim, slots], which the harness's cache "
                          "model and checks do not follow yet",
}
DEFAULT = {"tp_degree": 1}
HELP = ("the deployment Neuron candidates are checked as: a JSON object such as '{\"tp_degree\": 8}' of NeuronConfig "
        "fields (tp_degree; flags such as fused_qkv or attn_kernel_enabled, kernel flags on a device only; "
        "cache_manager / mask_builder: MODULE:CLASS of your own), a JSON list of objects (each its own candidate "
        "variant, NAME@tp8+FLAG...), or a file holding either (default $PARITY_NEURON_CONFIG, else tp_degree 1)")
_SUFFIX = re.compile(r"^(?P<base>.+?)@(?P<rest>tp\d+(?:\+[^@]*)?)$")


def parse(value: str | None) -> list[dict]:
    """The configurations named by `value` (JSON text or a file), default [DEFAULT]; ValueError that
    says what was expected, what was found and how to fix it."""
    if value is None or value == "":
        return [dict(DEFAULT)]
    text = value
    if not value.lstrip().startswith(("{", "[")):
        path = Path(value)
        if not path.is_file():
            raise ValueError(f"--neuron-config {value!r}: expected a JSON object such as '{{\"tp_degree\": 8}}', a JSON "
                             "list of such objects, or the path of a file holding one; found neither JSON nor a file")
        text = path.read_text()
    from harness.jsonfile import parse_json

    try:
        data = parse_json(text, f"--neuron-config {value}")
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    configs = data if isinstance(data, list) else [data]
    if not configs or not all(isinstance(c, dict) for c in configs):
        raise ValueError(f"--neuron-config {value!r}: expected a JSON object or a non-empty list of objects, found "
                         f"{json.dumps(data)[:100]}")
    return [check(c, value) for c in configs]


def check(config: dict, source: str = "--neuron-config") -> dict:
    refused = sorted(set(config) & set(NOT_DRIVEN))
    if refused:
        raise ValueError(f"{source}: {refused[0]} is not supported: {NOT_DRIVEN[refused[0]]}")
    unknown = sorted(set(config) - set(FIELDS) - set(FLAGS))
    if unknown:
        known = "; ".join(f"{k}: {v}" for k, v in FIELDS.items())
        raise ValueError(f"{source}: unknown NeuronConfig field(s) {unknown}; this harness knows {known}; and the "
                         f"flags (true/false) {', '.join(FLAGS)}")
    tp = config.get("tp_degree", 1)
    if not isinstance(tp, int) or isinstance(tp, bool) or not 1 <= tp <= 128:
        raise ValueError(f"{source}: tp_degree must be an integer from 1 to 128, found {tp!r}")
    for name in IMPORT_PATHS:
        path = config.get(name)
        if path is not None and (not isinstance(path, str) or path.count(":") != 1 or "+" in path or "@" in path):
            raise ValueError(f"{source}: {name} must be an import path MODULE:CLASS (e.g. \"mypkg.cache:MyManager\"), "
                             f"found {path!r}")
    for name in FLAGS:
        if name in config and not isinstance(config[name], bool):
            raise ValueError(f"{source}: {name} is a flag: true or false, found {config[name]!r}")
    return {**DEFAULT, **config}


def refused_in_cpu_mode(config: dict) -> str | None:
    """Why `config` cannot run in NxDI's CPU mode (None: it can)."""
    kernels = [name for name in KERNEL_FLAGS if config.get(name)]
    if kernels:
        return (f"{', '.join(kernels)} need{'s' if len(kernels) == 1 else ''} NKI kernels, which do not run in NxDI's CPU "
                "mode: run on a Neuron device, or leave the flag out to check the native path")
    if config.get("fused_qkv") and config.get("tp_degree", 1) > 1:
        return "fused_qkv at tp_degree > 1 in CPU mode is not wired yet (the fused checkpoint's sharding): use tp_degree 1"
    return None


def deployment(config: dict) -> dict:
    """The NeuronConfig flags of `config` (what is passed to the SDK's NeuronConfig)."""
    return {name: config[name] for name in FLAGS if name in config}


def given(option: str | None, environment: bool = True) -> tuple[str | None, bool]:
    """(the deployment asked for, whether it is strict): `option` (--neuron-config) is; else, where the
    command reads it, $PARITY_NEURON_CONFIG, which applies where it applies (a run of CPU candidates only
    is no error, and it never overrides the deployment a repro file names: `environment=False`)."""
    if option:
        return option, True
    return (os.environ.get("PARITY_NEURON_CONFIG") or None) if environment else None, False


def variant(spec: str, config: dict) -> str:
    """The candidate spec of `spec` checked with `config`: `nxdi-emulation@tp8`,
    `neuron@tp8+attn_kernel_enabled+cache_manager=mypkg.cache:MyManager` (tp 1 and nothing else: the
    plain name)."""
    base, _ = split(spec)
    tp = config.get("tp_degree", 1)
    parts = [f"tp{tp}"]
    parts += [name if config[name] else f"{name}=false" for name in FLAGS if name in config]
    parts += [f"{name}={config[name]}" for name in IMPORT_PATHS if config.get(name)]
    return base if parts == ["tp1"] else f"{base}@{'+'.join(parts)}"


def split(spec: str) -> tuple[str, dict]:
    """(`spec` without its variant suffix, its configuration)."""
    m = _SUFFIX.match(spec)
    if not m:
        return spec, dict(DEFAULT)
    tp, *rest = m.group("rest").split("+")
    config: dict = {"tp_degree": int(tp[2:])}
    for part in rest:
        name, eq, value = part.partition("=")
        if name in FLAGS:
            if eq and value not in ("true", "false"):
                raise ValueError(f"candidate {spec!r}: {name} takes true or false, found {value!r}")
            config[name] = value != "false"
        else:
            config[name] = value if eq else True
    return m.group("base"), check(config, f"candidate {spec!r}")


def expand(specs: list[str], configs: list[dict], strict: bool = True) -> list[str]:
    """Each Neuron candidate of `specs` once per configuration (its variants, in order); the others as
    they are. ValueError when configurations are given and no candidate can take them (`strict`; a
    configuration from the environment applies where it applies)."""
    from harness.candidates.registry import is_neuron

    if strict and configs != [DEFAULT] and not any(is_neuron(split(s)[0]) for s in specs):
        raise ValueError(f"--neuron-config configures Neuron candidates (nxdi-emulation, neuron, neuron-block, "
                         f"neuron:MODULE:CLASS); none of the candidates given ({', '.join(specs)}) is one")
    out: list[str] = []
    for spec in specs:
        out += list(dict.fromkeys(variant(spec, c) for c in configs)) if is_neuron(split(spec)[0]) else [spec]
    return out
