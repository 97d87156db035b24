"""The deployment a Neuron candidate is checked as: NeuronConfig fields given with `--neuron-config`
(`parity run`, `parity replay`, the pytest plugin) or $PARITY_NEURON_CONFIG.

The value is a JSON object, a JSON list of objects (each its own candidate variant), or the path of a
file holding either. Known fields: `tp_degree` (default 1). A configuration is part of a check's
identity: a Neuron candidate checked at tp 8 is named `NAME@tp8` in the table, the JSON results, the
history and the repro file, so results of tp 1 and tp 8 never mix, and a repro file replays the same
variant. (tp 1 keeps the plain name: it is the candidate as it always ran.)
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

FIELDS = {"tp_degree": "tensor-parallel degree: the ranks the block is sharded over (default 1)"}
DEFAULT = {"tp_degree": 1}
_SUFFIX = re.compile(r"^(?P<base>.+)@tp(?P<tp>\d+)$")


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
    unknown = sorted(set(config) - set(FIELDS))
    if unknown:
        known = "; ".join(f"{k}: {v}" for k, v in FIELDS.items())
        raise ValueError(f"{source}: unknown NeuronConfig field(s) {unknown}; this harness knows {known}")
    tp = config.get("tp_degree", 1)
    if not isinstance(tp, int) or isinstance(tp, bool) or not 1 <= tp <= 128:
        raise ValueError(f"{source}: tp_degree must be an integer from 1 to 128, found {tp!r}")
    return {**DEFAULT, **config}


def given(option: str | None, environment: bool = True) -> tuple[str | None, bool]:
    """(the deployment asked for, whether it is strict): `option` (--neuron-config) is; else, where the
    command reads it, $PARITY_NEURON_CONFIG, which applies where it applies (a run of CPU candidates only
    is no error, and it never overrides the deployment a repro file names: `environment=False`)."""
    if option:
        return option, True
    return (os.environ.get("PARITY_NEURON_CONFIG") or None) if environment else None, False


def variant(spec: str, config: dict) -> str:
    """The candidate spec of `spec` checked with `config` (`nxdi-emulation@tp8`)."""
    base, _ = split(spec)
    tp = config.get("tp_degree", 1)
    return base if tp == 1 else f"{base}@tp{tp}"


def split(spec: str) -> tuple[str, dict]:
    """(`spec` without its variant suffix, its configuration)."""
    m = _SUFFIX.match(spec)
    if not m:
        return spec, dict(DEFAULT)
    return m.group("base"), check({"tp_degree": int(m.group("tp"))}, f"candidate {spec!r}")


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
