"""What every command prints with: usage errors, aligned rows and progress."""

from __future__ import annotations

import os
import sys
import time


class UsageError(Exception):
    """A bad argument or input file: printed as one line, exit status 2."""


def row(cols, widths) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(cols, widths))


def duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Progress on stderr. On a terminal: one counter line rewritten in place. Under CI (`$CI` set) or
    when stderr is not a terminal: one line per step, with the time elapsed and an estimate of what is
    left, because a CI log shows nothing of a rewritten line until the command ends (a self-test ran
    for minutes without a line).

    `show(i, what)` starts step i of `total` (1-based). The estimate is the time this phase took per
    unit of work done, times the work left (step i's included): `weights` gives each step's cost in any
    unit (harness/work.py: a case's multiply-adds), so that cheap steps do not promise seconds for a
    costly one (issue 19: a 131,072-token row after 22 small cases showed "about 34 s left" for 13
    minutes). No estimate is printed before some work is done. Without weights every step counts one,
    and once the steps done differ more than UNEVEN times in duration (beyond FLOOR seconds, below which
    differences are noise) no estimate is printed: the average of uneven steps says nothing of the next
    one, and nothing is better than a wrong number. `phase` restarts the count with another total and
    weights (a self-test hunts mutants, then runs benign examples of another cost)."""

    UNEVEN = 10.0
    FLOOR = 1.0

    def __init__(self, total: int, stream=None, weights=None):
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() and not os.environ.get("CI")
        self.started = time.monotonic()
        self.phase(total, weights)

    def phase(self, total: int, weights=None) -> None:
        if weights is not None and len(weights) != total:
            raise ValueError(f"progress: {len(weights)} step weights for {total} steps; give one weight per step")
        self.total, self.weights = total, None if weights is None else [float(w) for w in weights]
        self.phase_started = time.monotonic()
        self.step_started: dict[int, float] = {}  # step -> when show() started it, in this phase

    def estimate(self, i: int) -> str:
        """'about N left' when step i starts (see the class doc), or nothing."""
        done = i - 1
        if not self.total or done < 1:
            return ""
        if self.weights is None:
            if self._uneven(i):
                return ""
            work_done, work_left = done, self.total - done
        else:
            work_done, work_left = sum(self.weights[:done]), sum(self.weights[done:])
        if work_done <= 0:
            return ""
        left = (time.monotonic() - self.phase_started) / work_done * work_left
        return f", about {duration(left)} left"

    def _uneven(self, i: int) -> bool:
        """Whether the steps done before step i, where their durations are known, differ more than
        UNEVEN times."""
        starts = self.step_started
        took = [starts[j + 1] - starts[j] for j in range(1, i) if j in starts and j + 1 in starts]
        return bool(took) and max(took) > self.UNEVEN * max(min(took), self.FLOOR)

    def show(self, i: int, what: str) -> None:
        self.step_started[i] = time.monotonic()
        count = f"[{i}/{self.total}] " if self.total else ""
        if self.tty:
            print(f"\r{count}{what[:70]:70}", end="", file=self.stream, flush=True)
        else:
            elapsed = duration(time.monotonic() - self.started)
            print(f"{count}{what} ({elapsed} elapsed{self.estimate(i)})", file=self.stream, flush=True)

    def clear(self) -> None:
        if self.tty:
            print("\r" + " " * 80 + "\r", end="", file=self.stream, flush=True)


def run_notes(info: dict) -> str:
    """What a candidate reported about its run, in a few words (Neuron: mode, buckets, builds)."""
    if not info:
        return ""
    parts = [info.get("mode", "")]
    if info.get("tp_degree", 1) > 1:  # the deployment checked (the candidate's name says it too: NAME@tpN)
        parts.append(f"tp {info['tp_degree']} ({info.get('gqa', '?')})")
    parts += [f"{phase} {size}" for phase, size in (info.get("buckets") or {}).items() if phase != "batch"]
    if "builds" in info:
        parts.append(f"{info['builds']} builds {info.get('build_seconds', 0):.0f} s")
    tracing = info.get("tracing")
    if tracing:  # xla mode: compiles of this case, and a warning that does not fail it
        parts.append(f"{sum(tracing['graphs'].values())} compiles")
        warned = [c["name"].removeprefix("tracing: ") for c in tracing["checks"] if not c["passed"] and not c["binding"]]
        parts += [f"WARNING {name}" for name in warned]
    return "  " + ", ".join(p for p in parts if p)
