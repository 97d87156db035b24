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


class OutputOnly:
    """A feed-capable candidate that taps nothing but its output (like most real ports)."""

    def __init__(self, **bug):
        from harness.candidates.emulation import EmulatedBlock

        self.inner = EmulatedBlock(**bug)
        self.name = "output_only:" + ",".join(f"{k}={v}" for k, v in bug.items())

    def run(self, spec, batch, *, taps=False, feed=None):
        return CandidateResult(self.inner.run(spec, batch, taps=False, feed=feed).output)


def _leaky(spec, batch, weight_of_leak):
    out = run_reference(spec, batch)["output"]
    return out + weight_of_leak(batch).to(out.dtype)


def reads_padding(spec, batch):
    """Numerically invisible with zero padding, but valid rows read the padded slots."""
    pad = (batch.hidden * (~batch.valid)[..., None]).float().sum(dim=1, keepdim=True)
    return _leaky(spec, batch, lambda b: 1e-3 * pad * batch.valid[..., None])


def peeks_ahead(spec, batch):
    """Each row's output moves (a little) with its last token: a causality leak."""
    last = torch.stack([batch.hidden[r, batch.slots(r)[-1]] for r in range(batch.hidden.shape[0])])[:, None].float()
    return _leaky(spec, batch, lambda b: 2e-3 * last * batch.valid[..., None])


def raises_key_error(spec, batch):
    """A candidate that crashes deep inside its own code."""
    def lookup(weights):
        return weights["qkv"]  # the gpt-oss name is qkv.weight
    return lookup(spec.weights)


def sleeps(spec, batch):
    """A candidate that hangs in Python (a sleep, a loop, a wait)."""
    import time

    time.sleep(600)


def stuck_in_native_code(spec, batch):
    """A candidate that hangs where no signal reaches it (as a deadlocked kernel or device call does)."""
    import signal
    import time

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(600)


def readme_block(spec, batch):
    """Written from the README's protocol: uses spec.weights as they come, in the case's dtype."""
    import torch.nn.functional as F

    return run_reference(spec, batch)["output"] if spec.dtype == torch.bfloat16 else _float32_block(spec, batch, F)


def _float32_block(spec, batch, F):
    w = spec.weights
    assert all(t.dtype == torch.float32 for t in w.values()), {n: t.dtype for n, t in w.items()}
    x = batch.hidden
    normed = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * w["norm.scale"]
    qkv = F.linear(normed, w["qkv.weight"], w["qkv.bias"])  # a dtype error here if weights stayed bf16
    return run_reference(spec, batch)["output"] + 0 * qkv.sum()
