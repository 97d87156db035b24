"""Deliberately broken candidates, importable by path (e.g. --candidate tests.broken_candidates:no_sinks)."""

from dataclasses import replace

import torch

from harness.candidates import CandidateResult
from harness.produce import run_reference


def _reference_with(weights_change=None, layer_shift=0):
    def run(spec, batch, *, taps=False):
        w = dict(spec.weights)
        if weights_change:
            w.update(weights_change(w))
        out = run_reference(replace(spec, weights=w, layer_idx=spec.layer_idx + layer_shift), batch, taps=taps)
        return CandidateResult(out.pop("output"), out)
    return run


class _Named:
    def __init__(self, name, fn):
        self.name, self.run = name, fn


# sinks removed: a sink of -inf contributes nothing to the denominator
no_sinks = _Named("no_sinks", _reference_with(lambda w: {"sinks": torch.full_like(w["sinks"], -float("inf"))}))
# the window on the wrong layer parity (even layers full, odd layers windowed)
window_wrong_parity = _Named("window_wrong_parity", _reference_with(layer_shift=1))


def nan_output(spec, batch):
    out = run_reference(spec, batch)["output"].clone()
    out[0, 0, 0] = float("nan")
    return out


def float32_output(spec, batch):
    return run_reference(spec, batch)["output"].float()


def transposed_output(spec, batch):
    return run_reference(spec, batch)["output"].transpose(0, 1)


def crashes(spec, batch):
    raise RuntimeError("kernel launch failed")
