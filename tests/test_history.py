"""Ratio history: one row per check, safe under concurrent writers, drift flagged against a baseline
run, runs recorded by `parity run` listed by `parity history`, and the report's picture across runs."""

import contextlib
import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import time

import pytest

from harness import cli
from harness.history import DRIFT_FACTOR, History, HistoryError, compare_runs


def _record(case_id, ratio, verdict="pass", candidate="mine", stages=None):
    stages = stages or {"scores": ratio * 0.5, "output": ratio}
    return {"id": case_id, "candidate": candidate, "verdict": verdict, "worst_ratio": ratio,
            "first_divergent_stage": None if verdict == "pass" else "output", "message": "",
            "stages": [{"stage": s, "max_ratio": r, "rms_ratio": r / 2, "layer": None} for s, r in stages.items()],
            "info": {}, "case": {"lengths": [8]}}


def test_drift_is_a_passing_ratio_that_rose_more_than_the_factor(tmp_path):
    h = History(tmp_path / "h.sqlite")
    h.append([_record("steady", 1.2), _record("creeping", 1.1), _record("tiny", 0.1), _record("breaks", 1.0)], "test")
    h.append([_record("steady", 1.3), _record("creeping", 1.1 * DRIFT_FACTOR * 1.05), _record("tiny", 0.9),
              _record("breaks", 40.0, "fail")], "test")
    first, last = h.runs()
    found = {c.now.case_id: c for c in compare_runs(h, last, first)}
    assert found["creeping"].drifts() and not found["steady"].drifts()
    assert not found["tiny"].drifts()  # below the reference's own error: measured from the floor of 1
    assert not found["breaks"].drifts() and found["breaks"].state == "FAIL (was passing)"
    assert list(found)[0] == "breaks"  # largest growth first
    assert found["creeping"].grown_stage()[0] == "output"


def _append_many(path, worker):
    history = History(path)
    for i in range(10):
        history.append([_record(f"case-{worker}-{i}", 1.0), _record(f"other-{worker}-{i}", 1.0)], f"writer {worker}")


def test_concurrent_writers_lose_no_row(tmp_path):
    path = tmp_path / "h.sqlite"
    procs = [multiprocessing.get_context("spawn").Process(target=_append_many, args=(path, w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    h = History(path)
    assert len(h.rows()) == 4 * 10 * 2 and len(h.runs()) == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == ["h.sqlite"]  # one file, nothing beside it for a cache


def test_files_that_are_no_history_are_named(tmp_path):
    (tmp_path / "junk").write_text("not sqlite at all, but long enough to have a header of some kind" * 20)
    with pytest.raises(HistoryError, match="is not a SQLite database"):
        History(tmp_path / "junk").rows()
    db = sqlite3.connect(tmp_path / "other.sqlite")
    db.execute("CREATE TABLE t (x)")
    db.commit()
    db.close()
    with pytest.raises(HistoryError, match="is not a parity history of format version 1"):
        History(tmp_path / "other.sqlite").append([_record("a", 1.0)], "test")
    with pytest.raises(HistoryError, match="does not exist; runs write it with"):
        History(tmp_path / "none.sqlite").runs()
    with pytest.raises(HistoryError, match="is a folder"):
        History(tmp_path)


def test_two_parity_runs_show_up_in_parity_history(tmp_path, capsys):
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps([{"layer": 0, "lengths": [6]}, {"layer": 1, "lengths": [5]}]))
    history = tmp_path / "h.sqlite"
    for _ in range(2):
        assert cli.main(["run", "--case-file", str(cases), "--candidate", "reference", "--no-probes",
                         "--history", str(history)]) == 0
    assert "appended 2 check(s) to history" in capsys.readouterr().out
    assert cli.main(["history", "--history", str(history), "--runs"]) == 0
    runs = capsys.readouterr().out
    assert runs.count("parity run") == 2
    assert cli.main(["history", "--history", str(history)]) == 0
    out = capsys.readouterr().out
    assert "2 check(s) compared; 0 drifting" in out and out.count(" pass") >= 2


def test_parity_history_flags_drift_and_can_fail_on_it(tmp_path, capsys):
    h = History(tmp_path / "h.sqlite")
    h.append([_record("a", 1.0), _record("b", 1.0)], "test", commit="aaaa1111")
    h.append([_record("a", 2.5), _record("b", 1.05)], "test", commit="bbbb2222")
    assert cli.main(["history", "--history", str(h.path)]) == 0
    out = capsys.readouterr().out
    assert "DRIFT: a / mine: worst ratio 1 -> 2.5 (2.50x), still passing" in out and "1 drifting" in out
    assert cli.main(["history", "--history", str(h.path), "--fail-on-drift"]) == 1
    capsys.readouterr()
    assert cli.main(["history", "--history", str(h.path), "--drift-factor", "3", "--fail-on-drift"]) == 0
    assert cli.main(["history", "--history", str(h.path), "--baseline", "aaaa", "--run", "bbbb"]) == 0
    capsys.readouterr()
    assert cli.main(["history", "--history", str(h.path), "--baseline", "zzzz"]) == 2
    assert "no run in" in capsys.readouterr().err
    assert cli.main(["history"]) == 2
    assert "give --history PATH or set $PARITY_HISTORY" in capsys.readouterr().err


def test_the_report_plots_failing_and_drifting_checks_across_runs(tmp_path):
    from harness.report import write_report

    h = History(tmp_path / "h.sqlite")
    h.append([_record("a", 1.0), _record("b", 1.0), _record("c", 1.0)], "test")
    now = [_record("a", 2.0), _record("b", 30.0, "fail"), _record("c", 1.1)]
    run = h.append(now, "test")
    index = write_report(now, tmp_path / "report", history=h.path, run=run)
    page = index.read_text()
    assert "1 passed" not in page and "2 passed, 1 failed, 1 drifting" in page
    assert (tmp_path / "report" / "img" / "a--mine-history.png").exists()  # drifting
    assert (tmp_path / "report" / "img" / "b--mine-history.png").exists()  # failing
    assert not (tmp_path / "report" / "img" / "c--mine-history.png").exists()  # steady
    assert "PASS, drifting (2.00x)" in page


# -- a damaged history is refused, never read into a traceback nor written to ------------------------

def _damaged_history(tmp_path):
    """A history of three runs whose pages from the third on are overwritten (a disk or a cache restore
    gone wrong), and a case file to run. Page 1 (the header and schema) is intact, so SQLite opens the
    file; the checks' pages are garbage, so a full read fails."""
    cases = tmp_path / "case.json"
    cases.write_text(json.dumps({"layer": 0, "lengths": [6]}))
    history = tmp_path / "h.sqlite"
    h = History(history)
    for i in range(3):
        h.append([_record(f"case-{i}-{j}", 1.0) for j in range(30)], "test")
    data = bytearray(history.read_bytes())
    with contextlib.closing(sqlite3.connect(history)) as db:
        page = db.execute("PRAGMA page_size").fetchone()[0]
    assert len(data) >= 5 * page
    data[2 * page:] = b"\x5a" * (len(data) - 2 * page)
    history.write_bytes(bytes(data))
    with contextlib.closing(sqlite3.connect(history)) as db, pytest.raises(sqlite3.DatabaseError, match="malformed"):
        db.execute("SELECT * FROM checks").fetchall()  # what SQLite itself makes of it
    return cases, history


def test_a_damaged_history_is_refused_and_left_as_it_is(tmp_path, capsys):
    cases, history = _damaged_history(tmp_path)
    damaged = history.read_bytes()
    results = tmp_path / "r.json"
    assert cli.main(["run", "--case-file", str(cases), "--candidate", "reference", "--no-probes",
                     "--json", str(results)]) == 0
    capsys.readouterr()
    commands = {"history": ["history", "--history", str(history)],
                "report": ["report", str(results), "--history", str(history), "--out", str(tmp_path / "rep")],
                "run": ["run", "--case-file", str(cases), "--candidate", "reference", "--no-probes",
                        "--history", str(history)]}
    for name, argv in commands.items():
        assert cli.main(argv) == 2, name
        out, err = capsys.readouterr()
        assert f"history {history} is damaged" in err and f"mv {history} {history}.damaged" in err, (name, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "reference" not in out, out  # refused before anything ran
        assert history.read_bytes() == damaged, name  # never written to
    with pytest.raises(HistoryError, match="is damaged"):
        History(history).check_writable()
    assert history.read_bytes() == damaged


def test_an_index_page_damaged_is_refused_though_reads_would_succeed(tmp_path):
    """Damage that a plain read walks past (an index page) would be written into by the next run."""
    h = History(tmp_path / "h.sqlite")
    for i in range(3):
        h.append([_record(f"case-{i}-{j}", 1.0) for j in range(30)], "test")
    with contextlib.closing(sqlite3.connect(h.path)) as db:
        (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'checks_by_run'").fetchone()
        page = db.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(h.path.read_bytes())
    data[(root - 1) * page:root * page] = b"\x5a" * page
    h.path.write_bytes(bytes(data))
    with contextlib.closing(sqlite3.connect(h.path)) as db:
        assert len(db.execute("SELECT * FROM checks").fetchall()) == 90  # reads pass
    for use in (h.runs, h.check_writable, lambda: h.append([_record("new", 1.0)], "test")):
        with pytest.raises(HistoryError, match=r"is damaged \(SQLite.s integrity check: "):
            use()
    assert h.path.read_bytes() == bytes(data)


def test_a_damaged_history_stops_pytest_at_start_up(tmp_path):
    _, history = _damaged_history(tmp_path)
    damaged = history.read_bytes()
    (tmp_path / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PARITY_HISTORY")}
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--parity-history",
                          str(history), "test_nothing.py"], check=False, capture_output=True, text=True, timeout=300,
                         cwd=tmp_path, env=env)
    assert out.returncode == 4, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"history {history} is damaged" in out.stderr and "Traceback" not in out.stderr
    assert history.read_bytes() == damaged


def test_a_text_file_as_the_report_history_is_refused_within_seconds(tmp_path):
    cases = tmp_path / "case.json"
    cases.write_text(json.dumps({"layer": 0, "lengths": [6]}))
    results = tmp_path / "r.json"
    assert cli.main(["run", "--case-file", str(cases), "--candidate", "reference", "--no-probes",
                     "--json", str(results)]) == 0
    text = tmp_path / "notes.txt"
    text.write_text("not a history\n" * 50)
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "harness.cli", "report", str(results), "--history", str(text),
                          "--out", str(tmp_path / "rep")], check=False, capture_output=True, text=True,
                         timeout=60, stdin=subprocess.DEVNULL)
    assert out.returncode == 2 and time.monotonic() - started < 30, (out.returncode, out.stderr)
    assert f"history {text} is not a SQLite database" in out.stderr and "move it aside" in out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "rep").exists()
    assert text.read_text() == "not a history\n" * 50
