"""Numerical parity harness for gpt-oss attention: does a candidate block match the reference within
bf16 noise, and if not, where does it break? The data flow reads in module order:

case (harness.case) -> spec and batch (harness.batch) -> oracle and reference tensors
(harness.expected: computed by harness.produce and reference/, or stored as goldens, harness.goldens)
-> candidate tensors (harness.candidates) -> verdict (harness.compare) -> table / JSON (harness.cli).
harness.runner ties one case together.

The names below are imported on first use: the package's pytest plugin (harness.pytest_plugin) is
loaded by every pytest run in an environment where this package is installed, and must not make each
of them import torch.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Batch": "harness.batch", "BlockSpec": "harness.batch", "build": "harness.batch",
    "Candidate": "harness.candidates", "CandidateResult": "harness.candidates",
    "CandidateUnsupported": "harness.candidates", "load_candidate": "harness.candidates",
    "Case": "harness.case",
    "Bound": "harness.compare", "Bounds": "harness.compare", "Verdict": "harness.compare", "compare": "harness.compare",
    "expected_for": "harness.expected",
    "judge": "harness.runner", "run_case": "harness.runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'harness' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
