"""What every command prints with: usage errors, aligned rows and a progress line."""

from __future__ import annotations

import os
import sys


class UsageError(Exception):
    """A bad argument or input file: printed as one line, exit status 2."""


def row(cols, widths) -> str:
    return "  ".join(str(c).ljust(w) for c, w in zip(cols, widths))


class Progress:
    """A one-line counter on a terminal's stderr; silent under CI or when redirected."""

    def __init__(self, total: int):
        self.total, self.on = total, sys.stderr.isatty() and not os.environ.get("CI")

    def show(self, i: int, what: str) -> None:
        if self.on:
            count = f"[{i}/{self.total}] " if self.total else ""
            print(f"\r{count}{what[:70]:70}", end="", file=sys.stderr, flush=True)

    def clear(self) -> None:
        if self.on:
            print("\r" + " " * 80 + "\r", end="", file=sys.stderr, flush=True)


def run_notes(info: dict) -> str:
    """What a candidate reported about its run, in a few words (Neuron: mode, buckets, builds)."""
    if not info:
        return ""
    parts = [info.get("mode", "")]
    parts += [f"{phase} {size}" for phase, size in (info.get("buckets") or {}).items() if phase != "batch"]
    if "builds" in info:
        parts.append(f"{info['builds']} builds {info.get('build_seconds', 0):.0f} s")
    return "  " + ", ".join(p for p in parts if p)
