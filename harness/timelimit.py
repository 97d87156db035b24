"""A time limit on each candidate call, so that a hung candidate is a `timeout` verdict, not a hung gate.

The limit comes from $PARITY_TIME_LIMIT (seconds; `parity run --time-limit`, `pytest
--parity-time-limit`), else the candidate's own `time_limit` attribute (a device candidate that
compiles on its first call may need more), else DEFAULT_SECONDS; 0 means no limit.

In the main thread on POSIX, SIGALRM interrupts the candidate at the limit: Python code (loops,
sleeps, waits) stops there with CandidateTimeout. Native code only sees the signal when it returns to
Python, so a watchdog thread also runs: a candidate still stuck GRACE_SECONDS after its limit (a
deadlocked kernel or device call) ends the process with exit status 124 and a message saying why,
which a CI job reports as a failure instead of waiting for ever.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from collections.abc import Callable

from harness.guard import real_exit

DEFAULT_SECONDS = 600.0
GRACE_SECONDS = float(os.environ.get("PARITY_TIME_LIMIT_GRACE") or 60)  # tests shorten it
EXIT_STATUS = 124  # what `timeout` exits with
CALLBACK_SECONDS = 20.0  # what the on_stuck callbacks get before the process exits regardless


class CandidateTimeout(Exception):
    """A candidate call ran past its time limit."""


def limit_for(candidate) -> float:
    """Seconds allowed for one call of `candidate` (0: unlimited)."""
    raw = os.environ.get("PARITY_TIME_LIMIT")
    if raw:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"PARITY_TIME_LIMIT={raw!r} must be a number of seconds (0: no limit)") from None
        if not value >= 0:
            raise ValueError(f"PARITY_TIME_LIMIT={raw!r} must be a number of seconds >= 0 (0: no limit)")
        return value
    own = getattr(candidate, "time_limit", None)
    return float(own) if isinstance(own, (int, float)) and own >= 0 else DEFAULT_SECONDS


# Called (in the watchdog's thread) with the message before the process exits: the pytest plugin prints
# it past pytest's output capture and writes the JUnit XML and JSON results of what ran.
on_stuck: list[Callable[[str], None]] = []


def _stuck(what: str, seconds: float, started: float) -> None:
    message = (f"\nparity: {what} has run for {time.monotonic() - started:.0f} s, past its time limit of {seconds:g} "
               "s, and does not return to Python (stuck in native code, e.g. a kernel or device call); exiting with "
               f"status {EXIT_STATUS}. Raise the limit with --time-limit / --parity-time-limit / $PARITY_TIME_LIMIT if "
               "it was only slow")
    print(message, file=sys.stderr, flush=True)
    # the callbacks write files (JUnit, JSON, a history that may wait on a lock): whatever they do, the
    # process ends within CALLBACK_SECONDS, or the watchdog would hang like the candidate it reports
    deadline = threading.Timer(CALLBACK_SECONDS, real_exit, (EXIT_STATUS,))
    deadline.daemon = True
    deadline.start()
    for callback in list(on_stuck):
        try:
            callback(message)
        except Exception as exc:  # noqa: BLE001 (the exit below must happen whatever a callback does)
            print(f"parity: while exiting: {type(exc).__name__}: {exc}", file=sys.__stderr__, flush=True)
    real_exit(EXIT_STATUS)  # not os._exit: a candidate call patches that (harness/guard.py)


@contextlib.contextmanager
def time_limit(seconds: float, what: str):
    """Raise CandidateTimeout in the block after `seconds` (0: no limit); see the module docstring."""
    if not seconds:
        yield
        return
    started = time.monotonic()
    watchdog = threading.Timer(seconds + GRACE_SECONDS, _stuck, (what, seconds, started))
    watchdog.daemon = True
    use_alarm = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if use_alarm:
        def expire(signum, frame):
            raise CandidateTimeout(f"{what} ran past its time limit of {seconds:g} s")

        previous = signal.signal(signal.SIGALRM, expire)
        signal.setitimer(signal.ITIMER_REAL, seconds)
    watchdog.start()
    try:
        yield
    finally:
        watchdog.cancel()
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
