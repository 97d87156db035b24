"""Reading the project's JSON inputs (case files, policy files, repro files, results) with errors
that name the file and say what was expected."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path


def read_json(path: str | Path, what: str):
    """Parsed JSON of `path`; ValueError naming `what` (e.g. "case file") and the path otherwise."""
    p = Path(path)
    try:
        return json.loads(p.read_text())
    except FileNotFoundError:
        raise ValueError(f"{what} {p} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {p} is a directory, expected a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{what} {p} is not valid JSON: {exc}") from None


def write_json(path: str | Path, data) -> Path:
    """Write atomically (a temporary file in the same folder, then a rename): a crash or Ctrl-C leaves
    the old file or the new one, never half of either."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
