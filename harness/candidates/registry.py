"""Find candidates by built-in name or by import path."""

from __future__ import annotations

import importlib

from harness.candidates.protocol import Candidate, as_candidate

BUILTIN = {
    "reference": "harness.candidates.reference:ReferenceCandidate",
    "hf": "harness.candidates.hf:HFCandidate",
    "emulation": "harness.candidates.emulation:EmulatedBlock",
    "flash": "harness.candidates.flash:FlashBlock",
    "nxdi-emulation": "harness.neuron.candidate:NxdiEmulation",
}
# Need the Neuron SDK (harness/neuron): never in the default set, and a clear error without it.
NEURON = ("neuron", "neuron-block")


def needs_neuron_sdk(spec: str) -> bool:
    """Whether the candidate `spec` runs on the Neuron SDK (`neuron`, `neuron-block`, `neuron:...`)."""
    return spec in NEURON or spec.partition(":")[0] == "neuron"


def load_candidate(spec: str) -> Candidate:
    """`spec` is a built-in name (see BUILTIN), `neuron` or `neuron-block` (harness/neuron),
    `neuron:package.module:Class` (a user's NeuronAttentionBase subclass), `mutant:NAME` or `benign:NAME`
    (the self-test's variants, harness/mutants.py), or `package.module:attribute`. A Neuron candidate
    without the SDK raises NeuronUnavailable (a ValueError naming the install line)."""
    kind, _, variant = spec.partition(":")
    if needs_neuron_sdk(spec):
        from harness.neuron.candidate import NeuronCandidate

        if spec in NEURON:
            return NeuronCandidate(spec)
        if variant.count(":") != 1:
            raise ValueError(f"candidate {spec!r}: expected neuron:package.module:Class, a NeuronAttentionBase subclass")
        return NeuronCandidate("class", class_path=variant)
    if kind in ("mutant", "benign"):
        from harness.mutants import variant as make_variant

        return make_variant(kind, variant)
    path = BUILTIN.get(spec, spec)
    if ":" not in path:
        raise ValueError(
            f"unknown candidate {spec!r}: use a built-in name ({', '.join(BUILTIN)}) or an import path "
            "'package.module:attribute'"
        )
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(
            f"candidate {spec!r}: cannot import module {module_name!r} ({exc}); is it installed or on PYTHONPATH?"
        ) from exc
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"candidate {spec!r}: module {module_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    return as_candidate(obj, name=spec)
