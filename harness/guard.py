"""What a candidate may not do to the run: end the process, or change the inputs it shares with the
candidates after it.

Candidates run in the harness's own process (a child process per call would cost a torch import and
the inputs' transfer each time). So the gate fails closed in-process, around every candidate call
(harness/runner.py `run_candidate`) and every candidate load:

- `process_kept`: `sys.exit()` / `exit()` (SystemExit) and `os._exit()` called by the candidate's
  Python code become a CandidateMisbehaved error naming what it did; the run goes on with the next
  check. A real Ctrl-C or SIGTERM (KeyboardInterrupt) is not the candidate's: it stops the run, which
  writes what it has, marked incomplete. Native code calling the C library's exit() cannot be stopped
  in-process: the results file's completion record (`summary.complete`) and `parity summary` catch it.
- `inputs_kept`: every tensor the call can reach (spec.weights, the batch and its cache, the feed) is
  copied before the call and compared after it; one that changed is restored for the candidates after
  it, and the call fails by name ("modified its input batch.hidden in place"). Without this a mutating
  candidate passed and the correct candidate run after it was blamed (ratio 8.5e5 at `normed`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import weakref

import torch

real_exit = os._exit  # the harness's own watchdog (harness/timelimit.py) exits with it


class CandidateMisbehaved(Exception):
    """A candidate tried to end the process or changed its inputs: an `error` verdict naming what it did."""


class ExitAttempt(BaseException):
    """Raised in place of os._exit() inside a candidate (BaseException: a candidate's `except Exception`
    must not swallow it and carry on as if the process had ended)."""


_owner: int | None = None  # the pid whose candidate is running (process-wide: its threads count too)


def _guarded_exit(status: int = 0) -> None:
    if _owner is None or os.getpid() != _owner:  # a forked child, or no candidate running: a real exit
        real_exit(status)
    raise ExitAttempt(status)


@contextlib.contextmanager
def process_kept(what: str):
    """Run `what` (a candidate's load or call) so that it cannot end the process."""
    global _owner
    outer = _owner
    _owner = os.getpid()
    os._exit = _guarded_exit
    try:
        yield
    except SystemExit as exc:
        raise CandidateMisbehaved(f"{what} called sys.exit({exc.code!r}) (SystemExit): a candidate may not end "
                                  "the process; raise an exception to report an error") from None
    except ExitAttempt as exc:
        raise CandidateMisbehaved(f"{what} called os._exit({exc.args[0]!r}): a candidate may not end the "
                                  "process; raise an exception to report an error") from None
    finally:
        _owner = outer
        if outer is None:
            os._exit = real_exit


def _tensors(obj, path: str, out: list) -> None:
    if isinstance(obj, torch.Tensor):
        out.append((path, obj))
    elif isinstance(obj, dict):
        for key, value in obj.items():
            _tensors(value, f"{path}[{key!r}]", out)
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            _tensors(value, f"{path}[{i}]", out)
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for f in dataclasses.fields(obj):
            if f.name != "config":  # the model config holds no tensors
                _tensors(getattr(obj, f.name), f"{path}.{f.name}", out)


@contextlib.contextmanager
def inputs_kept(what: str, **inputs):
    """Fail `what` by name if it changes any tensor reachable from `inputs` (name=object), after putting
    the original values back so that no later candidate is judged on changed inputs."""
    found: list = []
    for name, obj in inputs.items():
        _tensors(obj, name, found)
    saved = [(path, t, _pristine(t)) for path, t in found]
    try:
        yield
    except BaseException:  # its error (or a Ctrl-C) is the verdict; the inputs are put back all the same
        _put_back(saved)
        raise
    changed = _put_back(saved)
    if changed:
        raise CandidateMisbehaved(f"{what} modified its input {', '.join(changed)} in place (the values were put "
                                  "back for the checks after it); a candidate must not write to the tensors it "
                                  "is given: copy them first")


# The first copy of each input tensor, kept while the tensor lives: a case's weights and batch reach
# every call of every candidate (its run, probes, isolation), and copying them once instead of per
# call halves the guard's cost. Every call is still compared with this copy, and a change is put back,
# so the copy stays the value the tensor had when the harness made it.
_copies: dict[int, tuple[weakref.ref, torch.Tensor]] = {}


def _pristine(t: torch.Tensor) -> torch.Tensor:
    kept = _copies.get(id(t))
    if kept is not None and kept[0]() is t:
        return kept[1]
    copy = t.detach().clone()
    key = id(t)
    _copies[key] = (weakref.ref(t, lambda _, key=key: _copies.pop(key, None)), copy)
    return copy


def _put_back(saved: list) -> list[str]:
    """Restore every changed tensor; the paths of those that changed."""
    changed = []
    with torch.no_grad():
        for path, t, copy in saved:
            if not _unchanged(t, copy):
                changed.append(path)
                if t.shape == copy.shape and t.dtype == copy.dtype:
                    t.copy_(copy)
    return changed


def _unchanged(t: torch.Tensor, copy: torch.Tensor) -> bool:
    """Bit equality: NaN where it was counts as unchanged (the probes put NaN in padding on purpose)."""
    if t.shape != copy.shape or t.dtype != copy.dtype:
        return False
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}.get(t.element_size())
    if t.is_floating_point() and bits is not None:
        return torch.equal(t.view(bits), copy.view(bits))
    return torch.equal(t, copy)
