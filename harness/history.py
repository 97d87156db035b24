"""Ratio history: every check of a `parity run` or a pytest parity session, one row each, in a SQLite
file a CI cache can carry, so that a ratio creeping up across runs is seen before it fails.

A row holds the run (an id, its time, what made it, the commit, the versions), the case, the
candidate, the verdict, the worst ratio and each stage's worst ratio (max-abs or RMS, over layers).
Writers append in one transaction each, with a busy timeout, in SQLite's default rollback-journal
mode: concurrent writers (pytest-xdist, parallel CI jobs sharing a disk) wait for each other and
never lose a row, and the store stays one file (WAL mode would add -wal and -shm files that a cache
could save without the database). Nothing is ever unpickled: stage ratios and versions are JSON text.

Drift: a check that passes in both runs but whose worst ratio rose by more than DRIFT_FACTOR against
the baseline, measured from at least DRIFT_FLOOR. Why 1.5: the same case on the same machine gives
the same ratio bit for bit (the case is rebuilt from seeds), and another CPU's kernels move the
reference's own RMS error by at most 3.5% (README "Goldens"), so a rise of half again is a change of
the candidate, not noise; yet it fires while the ratio is still far from the bounds (2x-6x), and
the benign variants of the self-test, correct implementations with other numerics, reach 1.5 at
most. Why the floor of 1: a ratio below 1 means more accurate than the bf16 reference, and a rise
from 0.1 to 0.3 there is no warning of anything.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import secrets
import shlex
import sqlite3
import subprocess
from dataclasses import dataclass
from pathlib import Path

DRIFT_FACTOR = 1.5
DRIFT_FLOOR = 1.0
FORMAT_VERSION = 1
BUSY_TIMEOUT_S = 120  # writers wait this long for another writer's transaction before giving up
# SQLite's primary result codes (sqlite3.SQLITE_* only from Python 3.11): a damaged file, a file that is no database
SQLITE_CORRUPT = 11
SQLITE_NOTADB = 26

SCHEMA = """
CREATE TABLE IF NOT EXISTS checks (
    id INTEGER PRIMARY KEY,
    run TEXT NOT NULL,
    time TEXT NOT NULL,
    source TEXT NOT NULL,
    commit_sha TEXT,
    case_id TEXT NOT NULL,
    candidate TEXT NOT NULL,
    verdict TEXT NOT NULL,
    worst_ratio REAL,
    first_divergent_stage TEXT,
    stage_ratios TEXT NOT NULL,
    versions TEXT NOT NULL,
    info TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS checks_by_check ON checks (case_id, candidate);
CREATE INDEX IF NOT EXISTS checks_by_run ON checks (run);
"""


class HistoryError(ValueError):
    """A history file that cannot be used; the message names it and the fix."""


def history_path(given: str | None = None) -> Path | None:
    """The history file: `given` (--history / --parity-history), else $PARITY_HISTORY, else none."""
    value = given or os.environ.get("PARITY_HISTORY")
    return Path(value) if value else None


def new_run_id() -> str:
    """Sortable by time, unique across concurrent runs."""
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(3)


def current_commit(directory: str | Path = ".") -> str | None:
    """$GITHUB_SHA in a workflow, else the git commit of `directory`, else None."""
    if os.environ.get("GITHUB_SHA"):
        return os.environ["GITHUB_SHA"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def current_versions() -> dict:
    """What produced the numbers: Python, torch, transformers, this package and the Neuron SDK."""
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "gpt-oss-parity", "neuronx-cc", "torch-neuronx",
                 "neuronx-distributed-inference"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def stage_ratios(record: dict) -> dict[str, float]:
    """Each stage's worst ratio (max-abs or RMS, over every layer) of a check record."""
    out: dict[str, float] = {}
    for s in record.get("stages") or []:
        worst = max(s["max_ratio"], s["rms_ratio"])
        out[s["stage"]] = max(out.get(s["stage"], 0.0), worst)
    return out


@dataclass
class Row:
    run: str
    time: str
    source: str
    commit: str | None
    case_id: str
    candidate: str
    verdict: str
    worst_ratio: float | None
    first_divergent_stage: str | None
    stages: dict[str, float]
    versions: dict
    info: dict

    @property
    def key(self) -> tuple[str, str]:
        return self.case_id, self.candidate

    @property
    def passed(self) -> bool:
        return self.verdict == "pass"


@dataclass
class Run:
    id: str
    time: str
    source: str
    commit: str | None
    checks: int
    failed: int


class History:
    """One SQLite history file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.is_dir():
            raise HistoryError(f"history {self.path} is a folder; the history is one SQLite file: name a file "
                               "(e.g. parity-history.sqlite)")

    def _connect(self, create: bool) -> sqlite3.Connection:
        if not create and not self.path.is_file():
            raise HistoryError(f"history {self.path} does not exist; runs write it with `parity run --history "
                               f"{self.path}` or `pytest -m parity --parity-history {self.path}`")
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        try:
            if create:  # under the write lock, so that two first writers create the table once
                db.execute("BEGIN IMMEDIATE")
            self._check_integrity(db)  # before the first write, and before a read can half-succeed
            if create:
                if not db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            db.execute(statement)
                    db.execute(f"PRAGMA user_version = {FORMAT_VERSION}")
                db.execute("COMMIT")
            version = db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except HistoryError:
            db.close()
            raise
        except sqlite3.DatabaseError as exc:
            db.close()
            raise self._unusable(exc) from None
        if version != FORMAT_VERSION or "checks" not in tables:
            db.close()
            raise HistoryError(f"history {self.path} is not a parity history of format version {FORMAT_VERSION} "
                               f"(found version {version}, tables {sorted(tables) or 'none'}); move it aside and let "
                               "the next run start a new one")
        return db

    def _check_integrity(self, db: sqlite3.Connection) -> None:
        """SQLite's quick_check (every page of every table and index, in milliseconds for 100,000 rows): a
        damaged history fails some reads, passes others and takes new rows as if it were sound, so it
        is refused whole, before anything is read from or written to it."""
        found = [line.strip() for r in db.execute("PRAGMA quick_check(3)") for line in str(r[0]).splitlines()]
        if found != ["ok"]:
            problems = [f for f in found if f and not f.startswith("***")]  # not the "*** in database main ***" heading
            raise self._damaged("; ".join(problems or found))

    def _damaged(self, detail: str) -> HistoryError:
        here, aside = shlex.quote(str(self.path)), shlex.quote(f"{self.path}.damaged")
        return HistoryError(f"history {self.path} is damaged (SQLite's integrity check: {detail}); nothing was read "
                            f"from or written to it. Fix: move it aside (`mv {here} {aside}`) and the next run "
                            f"starts a new history (`sqlite3 {aside} .recover` prints the rows it can salvage)")

    def _unusable(self, exc: sqlite3.DatabaseError) -> HistoryError:
        """The HistoryError of an error SQLite raised on this file: damage, a file that is no database, or
        a lock held past the busy timeout, read-only storage or a full disk."""
        code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+ (extended codes); the message before that
        code = None if code is None else code & 0xFF
        if code == SQLITE_NOTADB or (code is None and "not a database" in str(exc)):
            return HistoryError(f"history {self.path} is not a SQLite database ({exc}); move it aside and let the "
                                "next run start a new one")
        if code == SQLITE_CORRUPT or (code is None and "malformed" in str(exc)):
            return self._damaged(str(exc))
        return HistoryError(f"history {self.path} cannot be used: {exc} (another writer may have held it for "
                            f"{BUSY_TIMEOUT_S} s)")

    @contextlib.contextmanager
    def _open(self, create: bool):
        """A checked connection, closed afterwards; SQLite's errors while it is used become HistoryErrors."""
        db = self._connect(create)
        try:
            yield db
        except sqlite3.DatabaseError as exc:
            raise self._unusable(exc) from None
        finally:
            db.close()

    def check_writable(self) -> None:
        """Create the file if needed and check it is a history this harness can write (HistoryError)."""
        with self._open(create=True):
            pass

    def append(self, records: list[dict], source: str, run: str | None = None, commit: str | None = None,
               versions: dict | None = None, time: str | None = None) -> str:
        """Append one row per check record (the records of `parity run --json` or a pytest session) as one
        run; returns the run id."""
        run = run or new_run_id()
        time = time or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        versions = json.dumps(versions if versions is not None else current_versions(), sort_keys=True)
        rows = [(run, time, source, commit, r["id"], r["candidate"], r["verdict"], r.get("worst_ratio"),
                 r.get("first_divergent_stage"), json.dumps(stage_ratios(r), sort_keys=True), versions,
                 json.dumps(r.get("info") or {}, sort_keys=True)) for r in records]
        try:
            with self._open(create=True) as db:
                db.execute("BEGIN IMMEDIATE")  # take the write lock now, waiting for other writers
                db.executemany("INSERT INTO checks (run, time, source, commit_sha, case_id, candidate, verdict, "
                               "worst_ratio, first_divergent_stage, stage_ratios, versions, info) "
                               "VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)
                db.execute("COMMIT")
        except HistoryError as exc:
            raise HistoryError(f"{exc}; the run's {len(rows)} row(s) were not written") from None
        return run

    def rows(self, run: str | None = None) -> list[Row]:
        query = ("SELECT run, time, source, commit_sha, case_id, candidate, verdict, worst_ratio, "
                 "first_divergent_stage, stage_ratios, versions, info FROM checks")
        with self._open(create=False) as db:
            found = db.execute(query + (" WHERE run = ?" if run else "") + " ORDER BY id",
                               (run,) if run else ()).fetchall()
        return [Row(r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], json.loads(r[9]), json.loads(r[10]),
                    json.loads(r[11])) for r in found]

    def runs(self) -> list[Run]:
        """Every run, oldest first."""
        with self._open(create=False) as db:
            found = db.execute("SELECT run, MIN(time), MIN(source), MIN(commit_sha), COUNT(*), "
                               "SUM(verdict != 'pass' AND verdict != 'unsupported') FROM checks GROUP BY run "
                               "ORDER BY MIN(id)").fetchall()
        return [Run(*r) for r in found]

    def series(self, case_id: str, candidate: str) -> list[Row]:
        """One check across every run, oldest first."""
        return [r for r in self.rows() if r.key == (case_id, candidate)]

    def find_run(self, wanted: str, runs: list[Run] | None = None) -> Run:
        """A run by id, id prefix or commit prefix (the latest such run), or `first`, `last`, `previous`."""
        runs = runs if runs is not None else self.runs()
        if not runs:
            raise HistoryError(f"history {self.path} holds no runs yet")
        named = {"first": runs[0], "last": runs[-1], "previous": runs[-2] if len(runs) > 1 else None}
        if wanted in named:
            if named[wanted] is None:
                raise HistoryError(f"history {self.path} holds one run only: there is no previous run to compare with")
            return named[wanted]
        matches = [r for r in runs if r.id.startswith(wanted) or (r.commit or "").startswith(wanted)]
        if not matches:
            raise HistoryError(f"no run in {self.path} has an id or commit starting with {wanted!r}; `parity history "
                               f"--runs --history {self.path}` lists them")
        return matches[-1]


@dataclass
class Comparison:
    """One check in a run against the same check in the baseline run."""

    now: Row
    before: Row | None

    @property
    def growth(self) -> float | None:
        if self.before is None or self.now.worst_ratio is None or self.before.worst_ratio is None:
            return None
        return self.now.worst_ratio / max(self.before.worst_ratio, DRIFT_FLOOR)

    def drifts(self, factor: float = DRIFT_FACTOR) -> bool:
        return (self.before is not None and self.now.passed and self.before.passed and self.growth is not None
                and self.growth > factor)

    @property
    def state(self) -> str:
        if self.before is None:
            return "new" if self.now.passed else "FAIL (new)"
        if not self.now.passed:
            return "FAIL" if not self.before.passed else "FAIL (was passing)"
        return "fixed" if not self.before.passed else "pass"

    def grown_stage(self) -> tuple[str, float] | None:
        """The stage whose ratio grew most, and by what factor (from at least the floor)."""
        if self.before is None:
            return None
        growth = {s: r / max(self.before.stages.get(s, 0.0), DRIFT_FLOOR) for s, r in self.now.stages.items()}
        return max(growth.items(), key=lambda kv: kv[1]) if growth else None


def compare_runs(history: History, run: Run, baseline: Run) -> list[Comparison]:
    """Every check of `run` with its row in `baseline` (None where the baseline did not check it),
    largest growth first; failures without a baseline come first."""
    before = {r.key: r for r in history.rows(baseline.id)}
    found = [Comparison(r, before.get(r.key)) for r in history.rows(run.id)]
    return sorted(found, key=lambda c: (c.growth is not None, -(c.growth or 0.0), c.now.passed))


def previous_rows(history: History, run_id: str) -> dict[tuple[str, str], Row]:
    """For each check, its latest row in a run before `run_id`: the baseline a report flags drift against."""
    out: dict[tuple[str, str], Row] = {}
    for r in history.rows():
        if r.run == run_id:
            break
        out[r.key] = r
    return out
