"""The Neuron path: NxDI attention blocks as candidates (see harness/neuron/candidate.py).

Pure torch, importable without the Neuron SDK: the environment check (environment.py), masks
(masks.py), the KV cache (cache.py), weight conversion (convert.py), the plan driver (driver.py), the
layer wrapper (layer.py), the NxDI-convention emulation (emulation.py) and the self-test's driver
bugs (bugs.py). Only nxdi.py and block.py import the SDK, and only when a Neuron candidate is built.
"""
