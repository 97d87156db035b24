"""The Neuron path: NxDI attention blocks as candidates (see harness/neuron/candidate.py).

Pure torch, importable without the Neuron SDK: the environment check (environment.py), masks
(masks.py), the KV cache (cache.py), weight conversion (convert.py), the plan driver (driver.py), the
layer wrapper and its eager runner (layer.py), the NxDI-convention emulation (emulation.py), the
self-test's bugs (bugs.py), tensor parallelism (sharding.py, launcher.py, tp.py, config.py). Only
nxdi.py, block.py, device.py (the trace layer) and tp.py's SDK rank function import the SDK, and only
when a Neuron candidate is built.
"""
