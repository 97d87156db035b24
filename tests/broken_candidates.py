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


# --- hostile candidates (issue 20): each must fail by name, never pass, never get another blamed ---

def _correct_then(act):
    """A correct block that does something it must not after computing its output."""
    def run(spec, batch, *, taps=False):
        out = run_reference(spec, batch, taps=taps)
        act(spec, batch)
        return CandidateResult(out.pop("output"), out)
    return run


def _exit(code):
    def act(spec, batch):
        import sys

        sys.exit(code)
    return act


def _os_exit(spec, batch):
    import os

    os._exit(0)


def _scale_weights(spec, batch):
    spec.weights["qkv.weight"].mul_(3)


def _scale_hidden(spec, batch):
    batch.hidden.mul_(2)


exits_0 = _Named("exits_0", _correct_then(_exit(0)))
exits_1 = _Named("exits_1", _correct_then(_exit(1)))
os_exits = _Named("os_exits", _correct_then(_os_exit))
mutates_weights = _Named("mutates_weights", _correct_then(_scale_weights))
mutates_hidden = _Named("mutates_hidden", _correct_then(_scale_hidden))


class exits_on_build:  # noqa: N801 (a class given by path, as a user would)
    """sys.exit while being built: a load, not a check, so the run refuses it as bad input."""
    name = "exits_on_build"

    def __init__(self):
        import sys

        sys.exit(0)

    def run(self, spec, batch, *, taps=False):
        raise AssertionError("never built")


def sleeps_on_long_rows(spec, batch):
    """Correct on rows of up to 10 tokens, hangs (in Python) on longer ones: a run that is killed midway."""
    import time

    if batch.hidden.shape[1] > 10:
        time.sleep(600)
    return run_reference(spec, batch)["output"]


def native_exit(spec, batch):
    """Ends the process from native code with status 0 (the C library's _exit): no Python guard sees it."""
    import ctypes

    ctypes.CDLL(None)._exit(0)


def _replace_sinks(spec, batch):
    spec.weights["sinks"] = spec.weights["sinks"] * 3  # a new tensor in the shared dict


def _retype_hidden(spec, batch):
    batch.hidden.data = batch.hidden.data.float()


def _xfail(spec, batch):
    import pytest

    pytest.xfail("not my problem")


replaces_weights = _Named("replaces_weights", _correct_then(_replace_sinks))
retypes_hidden = _Named("retypes_hidden", _correct_then(_retype_hidden))
raises_xfail = _Named("raises_xfail", _correct_then(_xfail))


def exits_on_nan(spec, batch):
    """Correct, except that it ends the process when it sees NaN in its input (as the NaN probes send)."""
    import sys

    if batch.hidden.isnan().any():
        sys.exit(0)
    return run_reference(spec, batch)["output"]
