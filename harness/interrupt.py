"""SIGTERM ends a run as Ctrl-C does.

A cancelled CI job, `timeout`, or a runner shutting down sends SIGTERM, whose default action ends the
process at once: pytest wrote no JUnit XML, the plugin no JSON results or report, `parity run` no
JSON, and `--lf` and the report had nothing to work on. Turned into KeyboardInterrupt, it unwinds
like Ctrl-C: pytest and the commands write what has run (marked as interrupted) and exit with their
interrupted status.
"""

from __future__ import annotations

import signal
import threading


def _interrupt(signum, frame):
    raise KeyboardInterrupt("terminated (SIGTERM)")


def sigterm_as_interrupt() -> object | None:
    """Install the handler when SIGTERM still has its default action and this is the main thread (a
    handler of someone else's is kept). Returns the previous handler for `restore`, or None."""
    if not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        return None
    if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        return None
    signal.signal(signal.SIGTERM, _interrupt)
    return signal.SIG_DFL


def restore(previous: object | None) -> None:
    if previous is not None and signal.getsignal(signal.SIGTERM) is _interrupt:
        signal.signal(signal.SIGTERM, previous)
