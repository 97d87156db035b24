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
import threading
import weakref

import torch

real_exit = os._exit  # the harness's own watchdog (harness/timelimit.py) exits with it


class CandidateMisbehaved(Exception):
    """A candidate tried to end the process or changed its inputs: an `error` verdict naming what it did."""


class ExitAttempt(BaseException):
    """Raised in place of os._exit() inside a candidate (BaseException: a candidate's `except Exception`
    must not swallow it and carry on as if the process had ended)."""


_owner: tuple[int, int] | None = None  # (pid, thread) running a candidate


def _guarded_exit(status: int = 0) -> None:
    # Only the candidate's own thread is stopped: another thread's exit (a test runner's timeout thread)
    # is real, and a forked child exits as it asked. An exit 0 from elsewhere leaves the results file
    # incomplete, which `parity summary --require-complete` fails.
    if _owner != (os.getpid(), threading.get_ident()):
        real_exit(status)
    raise ExitAttempt(status)


@contextlib.contextmanager
def process_kept(what: str):
    """Run `what` (a candidate's load or call) so that it cannot end the process, nor leave the check
    by any other BaseException (pytest's skip or xfail raised by a candidate would pass a gate)."""
    global _owner
    outer = _owner
    pid = os.getpid()
    _owner = (pid, threading.get_ident())
    os._exit = _guarded_exit
    try:
        yield
    except (KeyboardInterrupt, Exception):
        raise  # Ctrl-C or SIGTERM stops the run; an ordinary error is reported with its traceback
    except BaseException as exc:
        if os.getpid() != pid:
            raise  # a child the candidate forked: let it end as it asked, never run the harness twice
        raise CandidateMisbehaved(f"{what} {_what_it_did(exc)}: a candidate may not end the process or leave "
                                  "the check another way; raise an exception to report an error") from None
    finally:
        _owner = outer
        if outer is None:
            os._exit = real_exit


def _what_it_did(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"called sys.exit({exc.code!r}) (SystemExit)"
    if isinstance(exc, ExitAttempt):
        return f"called os._exit({exc.args[0]!r})"
    return f"raised {type(exc).__module__}.{type(exc).__name__} ({exc}), which is not an error"


def _walk(obj, path: str, tensors: list, holders: list) -> None:
    """Every tensor reachable from `obj` (path, tensor), and every container on the way with what it
    held (a candidate may replace `spec.weights["sinks"]` instead of writing into it)."""
    if isinstance(obj, torch.Tensor):
        tensors.append((path, obj))
        return
    if isinstance(obj, dict):
        holders.append((path, obj, dict(obj)))
        items = [(f"{path}[{k!r}]", v) for k, v in obj.items()]
    elif isinstance(obj, (list, tuple)):
        if isinstance(obj, list):
            holders.append((path, obj, list(obj)))
        items = [(f"{path}[{i}]", v) for i, v in enumerate(obj)]
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj) if f.name != "config"}
        holders.append((path, obj, fields))  # the model config holds no tensors
        items = [(f"{path}.{k}", v) for k, v in fields.items()]
    else:
        return
    for sub, value in items:
        _walk(value, sub, tensors, holders)


def _restore_holders(holders: list) -> list[str]:
    """Put back every container entry that was replaced, added or removed; the paths that changed."""
    changed = []
    for path, holder, held in holders:
        if isinstance(holder, dict):
            if holder.keys() != held.keys() or any(holder[k] is not v for k, v in held.items()):
                changed.append(path)
                holder.clear()
                holder.update(held)
        elif isinstance(holder, list):
            if len(holder) != len(held) or any(a is not b for a, b in zip(holder, held)):
                changed.append(path)
                holder[:] = held
        elif any(getattr(holder, k) is not v for k, v in held.items()):
            changed.append(path)
            for k, v in held.items():
                object.__setattr__(holder, k, v)  # frozen dataclasses too
    return changed


@contextlib.contextmanager
def inputs_kept(what: str, **inputs):
    """Fail `what` by name if it changes any tensor reachable from `inputs` (name=object), or replaces one
    in its container, after putting the originals back so that no later candidate is judged on changed
    inputs."""
    found: list = []
    holders: list = []
    for name, obj in inputs.items():
        _walk(obj, name, found, holders)
    saved = [(path, t, _pristine(t)) for path, t in found]
    try:
        yield
    except BaseException:  # its error (or a Ctrl-C) is the verdict; the inputs are put back all the same
        _restore_holders(holders)
        _put_back(saved)
        raise
    changed = _restore_holders(holders) + _put_back(saved)
    if changed:
        raise CandidateMisbehaved(f"{what} modified its input {', '.join(changed)} in place (the values were put "
                                  "back for the checks after it); a candidate must not write to the tensors it "
                                  "is given, nor replace them: copy them first")


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
                else:  # its dtype or shape was changed (t.data = ...): give it back its own
                    t.data = copy.clone()
    return changed


def _unchanged(t: torch.Tensor, copy: torch.Tensor) -> bool:
    """Bit equality: NaN where it was counts as unchanged (the probes put NaN in padding on purpose)."""
    if t.shape != copy.shape or t.dtype != copy.dtype:
        return False
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}.get(t.element_size())
    if t.is_floating_point() and bits is not None:
        return torch.equal(t.view(bits), copy.view(bits))
    return torch.equal(t, copy)
