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

    `show(i, what)` starts step i of `total` (1-based). The estimate assumes the steps left take as long
    as the steps done took on average; `phase` restarts the count (a self-test hunts mutants, then runs
    benign examples of another cost)."""

    def __init__(self, total: int, stream=None):
        self.stream = stream or sys.stderr
        self.total = total
        self.tty = self.stream.isatty() and not os.environ.get("CI")
        self.started = self.phase_started = time.monotonic()

    def phase(self, total: int) -> None:
        self.total, self.phase_started = total, time.monotonic()

    def estimate(self, i: int) -> str:
        """'about N left' once a step is done, from the average step so far in this phase."""
        done = i - 1
        if not self.total or done < 1:
            return ""
        left = (time.monotonic() - self.phase_started) / done * (self.total - done)
        return f", about {duration(left)} left"

    def show(self, i: int, what: str) -> None:
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
    parts += [f"{phase} {size}" for phase, size in (info.get("buckets") or {}).items() if phase != "batch"]
    if "builds" in info:
        parts.append(f"{info['builds']} builds {info.get('build_seconds', 0):.0f} s")
    return "  " + ", ".join(p for p in parts if p)
