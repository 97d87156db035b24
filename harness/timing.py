"""Where a run's time goes: a clock that attributes wall time to named sections (forward passes of the
reference, the oracle and candidates, and input making), each section's time net of the sections
nested inside it, so that `parity bench` can divide a run's wall time by the forward passes it ran.

The producers and the runner mark their sections with `section(name)`; with no clock started the cost
is one attribute read.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict

FORWARD = ("reference", "oracle", "prefix", "candidate")  # forward passes; "inputs" is harness work


class Clock:
    def __init__(self):
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[list] = []  # [name, start, time of nested sections]
        self.started = time.perf_counter()

    @property
    def wall(self) -> float:
        return time.perf_counter() - self.started

    def forward(self) -> float:
        return sum(self.seconds[name] for name in FORWARD)

    def enter(self, name: str) -> None:
        self._stack.append([name, time.perf_counter(), 0.0])

    def leave(self) -> None:
        name, start, nested = self._stack.pop()
        spent = time.perf_counter() - start
        self.seconds[name] += spent - nested
        self.calls[name] += 1
        if self._stack:
            self._stack[-1][2] += spent


_local = threading.local()


def start() -> Clock:
    """Start a clock for this thread (replacing any): sections from now on are counted on it."""
    _local.clock = Clock()
    return _local.clock


def stop() -> Clock | None:
    clock, _local.clock = getattr(_local, "clock", None), None
    return clock


@contextlib.contextmanager
def section(name: str):
    clock = getattr(_local, "clock", None)
    if clock is None:
        yield
        return
    clock.enter(name)
    try:
        yield
    finally:
        clock.leave()
