"""SIGTERM ends a run as Ctrl-C does.

A cancelled CI job, `timeout`, or a runner shutting down sends SIGTERM, whose default action ends the
process at once: pytest wrote no JUnit XML, the plugin no JSON results or report, `parity run` no
JSON, and `--lf` and the report had nothing to work on. Turned into KeyboardInterrupt, it unwinds
like Ctrl-C: pytest and the commands write what has run (marked as interrupted) and exit with their
interrupted status.
"""

from __future__ import annotations

import os
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
    _watch_for_a_stuck_main_thread()
    return signal.SIG_DFL


GRACE_SECONDS = 60.0  # after SIGTERM, the run has this long to unwind before the process ends anyway
_watching = False


def _watch_for_a_stuck_main_thread() -> None:
    """Python runs a signal handler only when the main thread returns to the interpreter: a run stuck
    in native code would ignore SIGTERM for ever (a plain `timeout` could not stop it). The C-level
    handler still writes the signal's number to the wakeup fd at once; a thread watching it ends the
    process (status 143, as the default action would) if the run has not unwound GRACE_SECONDS later.
    Left alone when another wakeup fd is in use (an event loop's)."""
    global _watching
    if _watching:
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    try:
        previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    except ValueError:  # not the main thread
        os.close(read_end)
        os.close(write_end)
        return
    if previous != -1:
        signal.set_wakeup_fd(previous)
        os.close(read_end)
        os.close(write_end)
        return
    _watching = True
    threading.Thread(target=_watch, args=(read_end,), daemon=True, name="parity-sigterm-watch").start()


def _watch(read_end: int) -> None:
    from harness.guard import real_exit

    while True:
        try:
            data = os.read(read_end, 64)
        except OSError:
            return
        if not data:
            return
        if signal.SIGTERM in data:
            timer = threading.Timer(GRACE_SECONDS, real_exit, (128 + signal.SIGTERM,))
            timer.daemon = True
            timer.start()
            return


def restore(previous: object | None) -> None:
    if previous is not None and signal.getsignal(signal.SIGTERM) is _interrupt:
        signal.signal(signal.SIGTERM, previous)
