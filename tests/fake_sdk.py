"""NxDI's build_module faked (no Neuron device or SDK here), for the tests of the device path: it builds
the module it is given, loads the checkpoint it is given, and runs eagerly; the attention inside is
the harness's NxDI-convention emulation unless a test supplies another."""

import sys
import types

from harness.neuron import nxdi
from harness.neuron.emulation import NxdiConventionAttention


def emulated_attention(kind, path, spec, batch, on_cpu):
    return NxdiConventionAttention(spec.config, spec.layer_idx, spec.dtype)


def install(monkeypatch, tmp_path, on_build=lambda module_cls, example_inputs: None,
            build_attention=emulated_attention) -> None:
    """Fake `neuronx_distributed_inference.utils.testing.build_module`; `on_build(module_cls,
    example_inputs)` is called on every build (to count them, or to log as NxD does)."""
    def build_module(module_cls, example_inputs, module_init_kwargs, checkpoint_path, checkpoint_loader_fn, **kw):
        on_build(module_cls, example_inputs)
        module = module_cls(**module_init_kwargs)
        module.load_state_dict(checkpoint_loader_fn(checkpoint_path), strict=True)
        return module.eval()

    testing = types.ModuleType("neuronx_distributed_inference.utils.testing")
    testing.build_module = build_module
    for name in ("neuronx_distributed_inference", "neuronx_distributed_inference.utils"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "neuronx_distributed_inference.utils.testing", testing)
    monkeypatch.setattr(nxdi, "build_attention", build_attention)
    monkeypatch.setenv("PARITY_NEURON_CACHE", str(tmp_path / "cache"))
