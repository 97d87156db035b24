"""Reading the project's JSON inputs (case files, policy files, repro files, results) with errors
that name the file and say what was expected, and writing any file atomically."""

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


def write_bytes(path: str | Path, data: bytes, pause=None) -> Path:
    """Write atomically: a temporary file in the same folder, flushed to disk, then renamed over `path`.
    A crash, Ctrl-C or kill -9 leaves the old file or the new one, never half of either (at worst a
    stray .tmp-* file). `pause` (tests only) is called halfway through writing."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=".tmp-", suffix=p.suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            half = len(data) // 2
            f.write(data[:half])
            if pause:
                f.flush()
                pause()
            f.write(data[half:])
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; these are ordinary files
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: str | Path, data, pause=None) -> Path:
    """JSON, written atomically (see write_bytes)."""
    return write_bytes(path, (json.dumps(data, indent=2) + "\n").encode(), pause)
