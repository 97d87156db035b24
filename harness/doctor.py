"""`parity doctor`: what the harness sees on this machine, and whether it can run what is asked.

It prints the versions that decide the numbers (Python, torch, transformers, this package), the
Neuron SDK's packages or their absence, the Neuron devices (`neuron-ls` where installed), the mode a
Neuron candidate would run in (device, cpu, unavailable: harness/neuron/environment.py), the compile
caches with their size, the golden stores with their state, and where histories and repro files go.

It answers in seconds: each line is printed as soon as it is known (the versions first, before torch
is imported), and the golden stores are checked from what they hold (entry checksums, file and tensor
hashes, the reference fingerprint), never by rebuilding a case's weights and inputs or recomputing a
reference: that is `parity goldens verify` (minutes: it rebuilds 131,072-token prefixes).

`--require` names what the caller needs (a CI gate: `parity doctor --require device`); each one that
this machine lacks is printed as what is missing and how to fix it, and the exit status is 1.
"""

from __future__ import annotations

import os
import platform
import sys
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

REQUIREMENTS = ("neuron", "device", "goldens")
PACKAGES = ("torch", "transformers", "safetensors", "hypothesis", "pytest", "pytest-xdist")


def _version(name: str) -> str | None:
    if name == "torch":  # the imported build's own version: its local tag (+cpu, +cu128) is not in the metadata
        import torch

        return torch.__version__
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def folder_size(path: Path) -> tuple[int, int] | None:
    """(files, bytes) under `path`, or None when it does not exist."""
    if not path.exists():
        return None
    files = size = 0
    for root, _, names in os.walk(path):
        for n in names:
            try:
                size += (Path(root) / n).stat().st_size
                files += 1
            except OSError:
                continue
    return files, size


def _size_text(found: tuple[int, int] | None) -> str:
    return "absent" if found is None else f"{found[0]} file(s), {found[1] / 2**20:.1f} MiB"


@dataclass
class StoreState:
    label: str
    goldens: int = 0
    bytes: int = 0
    problems: list[str] = field(default_factory=list)  # "case: state (why)"
    error: str | None = None  # the store as a whole cannot be read


def golden_state(store, curated: bool) -> StoreState:
    """Count a store's goldens and check each one's integrity and freshness from the store alone (no
    weights, inputs or reference are built: that is `parity goldens verify`)."""
    from harness.case import curated_cases
    from harness.cli_goldens import stored_case
    from harness.goldens import GoldenError

    state = StoreState(store.label)
    try:
        entries = store.entries()
    except GoldenError as exc:
        state.error = str(exc)
        return state
    state.goldens, state.bytes = len(entries), store.size()
    for cid, entry in sorted(entries.items()):
        try:
            stored_case(store, cid, entry)  # the entry describes the case it is filed under
            store.check_stored(cid)
        except GoldenError as exc:
            kind = type(exc).__name__.replace("Golden", "").lower()
            state.problems.append(f"{cid}: {'corrupt' if kind == 'error' else kind} ({str(exc)[:300]})")
    if curated:
        state.problems += [f"{c.id}: missing" for c in curated_cases() if c.id not in entries]
    return state


@dataclass
class Findings:
    lines: list[tuple[str, str]]  # (label, what was found)
    mode: str
    mode_reason: str
    devices: list[str]
    stores: list[StoreState]


def gather(emit=lambda label, value: None) -> Findings:
    """Everything doctor reports; `emit(label, value)` is called with each line as soon as it is known,
    so that a slow step (torch's import, a large compile cache) never leaves the terminal silent."""
    lines: list[tuple[str, str]] = []

    def found(label: str, value: str) -> None:
        lines.append((label, value))
        emit(label, value)

    from harness.locations import CHECKOUT_DIR, PACKAGE_DIR, running_from_checkout

    where = f"checkout {CHECKOUT_DIR}" if running_from_checkout() else f"installed in {PACKAGE_DIR.parent}"
    found("gpt-oss-parity", f"{_version('gpt-oss-parity') or 'not installed'} ({where})")
    found("python", f"{platform.python_version()} ({sys.executable})")
    found("platform", f"{platform.system()} {platform.machine()}")
    for name in PACKAGES:  # torch first: its import is the slowest step
        found(name, _version(name) or "absent")
    from harness.goldens import GoldenStore, cache_dir
    from harness.history import history_path
    from harness.neuron.environment import SDK_PACKAGES, detect, neuron_ls
    from harness.neuron.device import compile_cache_dir
    from harness.repro import failures_dir

    for name in SDK_PACKAGES:
        found(name, _version(name) or "absent")
    env = detect()
    listing = neuron_ls()
    found("neuron devices", ", ".join(env.devices) or "none (no /dev/neuron*)")
    found("neuron-ls", "not installed" if listing is None else (listing.strip() or "(printed nothing)"))
    found("neuron mode", f"{env.mode}: {env.reason}")
    neuron_cc = Path(os.environ.get("NEURON_COMPILE_CACHE_URL") or "/var/tmp/neuron-compile-cache")
    found("compile cache", f"{neuron_cc} ($NEURON_COMPILE_CACHE_URL): {_size_text(folder_size(neuron_cc))}"
          if "://" not in str(neuron_cc) else f"{neuron_cc} ($NEURON_COMPILE_CACHE_URL): remote, size not read")
    ours = compile_cache_dir()
    found("harness neuron cache", f"{ours} ($PARITY_NEURON_CACHE): {_size_text(folder_size(ours))}")
    found("golden cache", f"{cache_dir()} ($PARITY_GOLDEN_CACHE)")
    history = history_path()
    found("history", f"{history} ($PARITY_HISTORY)" if history else "none by default ($PARITY_HISTORY unset; "
          "--history / --parity-history name one)")
    found("repro files", f"{failures_dir()} ($PARITY_FAILURES_DIR)")
    stores = []
    for store, curated in ((GoldenStore.committed(), True), (GoldenStore.cache(), False)):
        stores.append(golden_state(store, curated))
        for label, value in store_lines(stores[-1]):
            found(label, value)
    return Findings(lines, env.mode, env.reason, env.devices, stores)


def unmet(findings: Findings, required: list[str]) -> list[str]:
    """What is missing for each requirement, with the fix; empty when all are met."""
    from harness.neuron.environment import INSTALL_LINE

    out = []
    if ("neuron" in required or "device" in required) and findings.mode == "unavailable":
        out.append(f"the Neuron SDK: {findings.mode_reason}" if INSTALL_LINE in findings.mode_reason else
                   f"the Neuron SDK: {findings.mode_reason}; install it with {INSTALL_LINE}")
    if "device" in required and findings.mode != "device":
        if not findings.devices:
            out.append("a Neuron device: no /dev/neuron* here; run on a trn1 or trn2 instance (a Neuron DLAMI or "
                       "container), where the Neuron driver creates them")
        elif findings.mode == "cpu":
            out.append("device mode: $PARITY_NEURON_MODE=cpu forces CPU mode; unset it")
    if "goldens" in required:
        for s in findings.stores[:1]:  # the committed (or installed) store: what a gate judges from
            if s.error:
                out.append(f"usable goldens: {s.error}")
            elif s.problems:
                out.append(f"usable goldens: {len(s.problems)} golden(s) of {s.label} are missing, stale or corrupt "
                           "(listed above); `parity goldens verify` says why and names the fix")
    return out


def store_lines(s: StoreState) -> list[tuple[str, str]]:
    if s.error:
        return [("goldens", f"{s.label}: UNREADABLE: {s.error}")]
    state = "all usable" if not s.problems else f"{len(s.problems)} missing, stale or corrupt"
    return [("goldens", "\n".join([f"{s.label}: {s.goldens} golden(s), {s.bytes / 2**20:.1f} MiB, {state} "
                                    "(hashes and fingerprint; `parity goldens verify` recomputes them)",
                                    *s.problems]))]


WIDTH = 31  # fixed, so that each line can be printed before the others are known


def line(label: str, value: str) -> str:
    first, *rest = str(value).splitlines() or [""]
    return "\n".join([f"{label + ':':{WIDTH}} {first}", *(" " * (WIDTH + 1) + more for more in rest)])


def report(findings: Findings) -> str:
    return "\n".join(line(label, value) for label, value in findings.lines)
