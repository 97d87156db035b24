"""Repro files and the other JSON files the harness reads are inputs, not code: nesting is bounded before
parsing, and `parity replay` imports a candidate a file names only when it is the harness's own, or the
command line names or trusts it; the replay command printed after a failure works when pasted."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from harness import cli
from harness.case import Case
from harness.jsonfile import MAX_DEPTH

ROOT = Path(__file__).resolve().parent.parent
CASE = Case(layer=0, lengths=(6,))
MARKER_MODULE = '''
from pathlib import Path

Path(__file__).with_name("imported.marker").write_text("this module's code ran")

from harness.candidates.reference import ReferenceCandidate as Block
'''


def _parity(*args, cwd: Path, pythonpath: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(pythonpath), "PARITY_FAILURES_DIR": str(cwd / "failures")}
    env.pop("PARITY_HISTORY", None)
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=300, check=False)


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_a_deeply_nested_repro_file_is_one_line_not_a_traceback(tmp_path):
    repro = tmp_path / "deep.json"
    repro.write_text('{"case": {"layer": 0, "lengths": ' + _deep(100_000) + '}, "candidate": "reference"}')
    r = _parity("replay", str(repro), cwd=tmp_path)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip() == (f"parity: repro file {repro} nests arrays and objects 100002 levels deep; the harness "
                                f"reads at most {MAX_DEPTH} (its own files nest about 8): not a file the harness "
                                "wrote"), r.stderr[-2000:]


@pytest.mark.parametrize("kind", ["case file", "results file", "bounds file"])
def test_every_json_input_bounds_its_nesting(kind, tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text('{"a": ' + _deep(5000) + "}")
    argv = {"case file": ["run", "--case-file", str(deep)],
            "results file": ["report", str(deep), "--out", str(tmp_path / "rep")],
            "bounds file": ["run", "--case-file", str(tmp_path / "c.json"), "--bounds", str(deep)]}[kind]
    (tmp_path / "c.json").write_text(json.dumps(CASE.to_dict()))
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"{kind} {deep} nests arrays and objects 5001 levels deep" in err and len(err.strip().splitlines()) == 1
    # within the bound, nesting is the file's content, judged as usual ("[[1]]" is no valid length)
    deep.write_text('{"a": ' + _deep(MAX_DEPTH - 1) + "}")
    assert cli.main(argv) == 2
    assert "levels deep" not in capsys.readouterr().err


def _user_repro(tmp_path: Path) -> Path:
    """A repro file naming `marker_candidate:Block`, a module whose import leaves a marker file."""
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "marker_candidate.py").write_text(MARKER_MODULE)
    repro = tmp_path / "repro.json"
    repro.write_text(json.dumps({"case": CASE.to_dict(), "candidate": "marker_candidate:Block", "verdict": "fail"}))
    return repro


def test_a_repro_naming_outside_code_does_not_import_it(tmp_path):
    repro = _user_repro(tmp_path)
    marker = tmp_path / "mods" / "imported.marker"
    r = _parity("replay", str(repro), cwd=tmp_path, pythonpath=tmp_path / "mods")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-2000:]
    assert not marker.exists()
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "names the candidate marker_candidate:Block, code outside the harness; it was not imported" in err
    assert f"`parity replay {repro} --candidate marker_candidate:Block`" in err
    assert f"`parity replay {repro} --trust-candidate`" in err
    # trusted: imported, said so, and replayed
    r = _parity("replay", str(repro), "--trust-candidate", cwd=tmp_path, pythonpath=tmp_path / "mods")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert marker.exists() and "importing candidate marker_candidate:Block, named by repro file" in r.stderr
    assert ": PASS" in r.stdout


def test_a_repro_naming_a_shipped_candidate_replays_without_trust(tmp_path, capsys):
    repro = tmp_path / "repro.json"
    for candidate, status in (("reference", 0), ("mutant:sinks_dropped", 1)):
        repro.write_text(json.dumps({"case": CASE.to_dict(), "candidate": candidate}))
        assert cli.main(["replay", str(repro)]) == status
        assert f"candidate {candidate}: " in capsys.readouterr().out


def test_the_printed_replay_command_of_a_users_candidate_works_when_pasted(tmp_path):
    (tmp_path / "case.json").write_text(json.dumps(CASE.to_dict()))
    r = _parity("run", "--candidate", "tests.broken_candidates:no_sinks", "--case-file", "case.json", "--no-probes",
                cwd=tmp_path)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    (command,) = [line.split("replay: ", 1)[1] for line in r.stdout.splitlines() if "replay: " in line]
    assert command.endswith(" --candidate tests.broken_candidates:no_sinks"), command
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    pasted = subprocess.run(command, shell=True, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
                            check=False)
    assert pasted.returncode == 1, pasted.stdout[-2000:] + pasted.stderr[-2000:]
    assert "candidate no_sinks: FAIL, first divergent stage probs" in pasted.stdout
    assert shlex.split(command)[:2] == ["parity", "replay"]
