"""Ratio history: one row per check, safe under concurrent writers, drift flagged against a baseline
run, runs recorded by `parity run` listed by `parity history`, and the report's picture across runs."""

import json
import multiprocessing
import sqlite3

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
