"""Reading the project's JSON inputs (case files, policy files, repro files, results) with errors
that name the file and say what was expected, and writing any file atomically."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

# How deep arrays and objects may nest in a JSON file the harness reads. Its own files nest about 8 levels (a
# failing check's record in a results file); Python's parser recurses once per level, and a file nested some
# thousand levels deep ended in a RecursionError traceback, so deeper files are refused before they are parsed.
MAX_DEPTH = 64
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')  # a JSON string: brackets inside one do not nest
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def read_json(path: str | Path, what: str):
    """Parsed JSON of `path`; ValueError naming `what` (e.g. "case file") and the path otherwise."""
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise ValueError(f"{what} {p} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {p} is a directory, expected a JSON file") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} {p} is not valid JSON: {exc}") from None
    return parse_json(text, f"{what} {p}")


def parse_json(text: str, what: str):
    """Parsed JSON of `text`; ValueError naming `what` (e.g. "case file cases.json") when it is not valid
    JSON or nests deeper than MAX_DEPTH."""
    depth = nesting(text)
    if depth > MAX_DEPTH:
        raise ValueError(f"{what} nests arrays and objects {depth} levels deep; the harness reads at most "
                         f"{MAX_DEPTH} (its own files nest about 8): not a file the harness wrote")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{what} is not valid JSON: {exc}") from None


def nesting(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON `text`, counted without recursion and in linear
    time (50 ms for 5 MB). Exact for valid JSON; for other text, whatever it counts, the text is refused."""
    depth = deepest = 0
    for bracket in _NOT_BRACKET.sub("", _STRING.sub("", text)):
        depth += 1 if bracket in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


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
