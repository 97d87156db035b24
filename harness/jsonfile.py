"""Reading the project's JSON inputs (case files, policy files, repro files, results) with errors
that name the file and say what was expected."""

from __future__ import annotations

import json
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
