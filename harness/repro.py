"""Failure repros: a failing case is saved with the candidate that failed it, as a small JSON file,
and `parity replay FILE` reruns exactly that case (the same tensors, rebuilt from seeds)."""

from __future__ import annotations

import os
from pathlib import Path

from harness.case import Case
from harness.jsonfile import read_json, write_json
from harness.compare import Verdict

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


def replay_command(path: Path) -> str:
    return f"parity replay {path}"
