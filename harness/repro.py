"""Failure repros: a failing case is saved with the candidate that failed it, as a small JSON file,
and `parity replay FILE` reruns exactly that case (the same tensors, rebuilt from seeds).

A repro file is an input like any other, and the candidate it names is a code path: replaying
`mypkg.attn:Block` imports mypkg.attn, which runs its code. So replay imports a candidate named by a
file only when it is the harness's own (`shipped`), or when the command line names it (`--candidate`)
or trusts the file (`--trust-candidate`); the replay command printed after a failure names a
candidate of the user's with --candidate, so it works when pasted."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from harness.candidates.registry import BUILTIN, NEURON
from harness.case import Case
from harness.compare import Verdict
from harness.jsonfile import read_json, write_json

DEFAULT_DIR = ".parity/failures"


def failures_dir() -> Path:
    """$PARITY_FAILURES_DIR, or .parity/failures under the current directory."""
    return Path(os.environ.get("PARITY_FAILURES_DIR", DEFAULT_DIR))


def safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


def save_failure(case: Case, candidate: str, verdict: Verdict, directory: Path | None = None) -> Path:
    """Write {case, candidate, verdict summary}; atomic, so a crash never leaves half a file."""
    directory = Path(directory or failures_dir())
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{safe_name(case.id)}--{safe_name(candidate)}.json"
    record = {
        "case": case.to_dict(),
        "candidate": candidate,
        "verdict": verdict.verdict,
        "first_divergent_stage": verdict.first_divergent_stage,
        "worst_ratio": verdict.worst_ratio,
        "message": verdict.message,
    }
    if verdict.traceback:
        record["traceback"] = verdict.traceback
    return write_json(path, record)


def load_failure(path: str | Path) -> tuple[Case, str]:
    p = Path(path)
    record = read_json(p, "repro file")
    if not isinstance(record, dict) or "case" not in record or not isinstance(record.get("candidate"), str):
        raise ValueError(f"repro file {p}: expected an object with 'case' and 'candidate' (written by a failing parity run)")
    return Case.from_dict(record["case"], source=str(p)), record["candidate"]


def shipped(candidate: str) -> bool:
    """Whether `candidate` names code of the harness itself (a built-in, a self-test variant, or the
    Neuron SDK's modules), which loading it cannot turn into anything else."""
    from harness.neuron.config import IMPORT_PATHS, split

    candidate, config = split(candidate)  # a deployment variant (`nxdi-emulation@tp8`) is its candidate's code,
    if any(config.get(name) for name in IMPORT_PATHS):  # unless it names code of its own (a cache manager)
        return False
    return candidate in BUILTIN or candidate in NEURON or candidate.partition(":")[0] in ("mutant", "benign")


def replay_candidate(path: str | Path, saved: str, trusted: bool) -> str:
    """The candidate a replay of `path` loads when the command line names none: the saved one, if it is
    shipped or the file is `trusted`; ValueError saying how to run it otherwise."""
    if shipped(saved):
        return saved
    command = f"parity replay {shlex.quote(str(path))}"
    if not trusted:
        raise ValueError(f"repro file {path} names the candidate {saved}, code outside the harness; it was not "
                         f"imported (importing a module runs its code). To replay it, name it yourself: `{command} "
                         f"--candidate {shlex.quote(saved)}`, or, if you trust the file, `{command} --trust-candidate`")
    print(f"importing candidate {saved}, named by repro file {path} (--trust-candidate)", file=sys.stderr)
    return saved


def replay_command(path: Path) -> str:
    """The command printed after a failure. A candidate outside the harness goes on the command line,
    since replay imports no code a file alone names (`replay_candidate`): pasted, it runs as printed."""
    candidate = read_json(path, "repro file")["candidate"]  # the file just written, holding what it replays
    command = f"parity replay {shlex.quote(str(path))}"
    return command if shipped(candidate) else f"{command} --candidate {shlex.quote(candidate)}"
