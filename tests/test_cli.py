"""The `parity` command line, run as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.candidates import BUILTIN
from harness.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)


def test_run_quick_passes_and_writes_json(tmp_path):
    out = tmp_path / "r.json"
    r = _cli("run", "--quick", "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verdict" in r.stdout and "0 failed" in r.stdout
    data = json.loads(out.read_text())
    rows = data["cases"]
    assert {row["candidate"] for row in rows} == set(BUILTIN)
    assert all({"id", "candidate", "verdict", "worst_ratio", "first_divergent_stage"} <= set(row) for row in rows)
    # the sweep decodes position 131,071 from a cache, which hf (no accepts_cache) cannot take
    assert all(row["verdict"] == "pass" or (row["verdict"] == "unsupported" and row["candidate"] == "hf"
                                            and "-cache" in row["id"]) for row in rows)
    assert sum(row["verdict"] == "unsupported" for row in rows) == 2


def test_broken_candidate_fails_and_says_where(tmp_path):
    case = tmp_path / "case.json"
    case.write_text(json.dumps({"layer": 0, "lengths": [130]}))
    r = _cli("run", "--candidate", "tests.broken_candidates:no_sinks", "--case-file", str(case))
    assert r.returncode == 1
    assert "FAIL" in r.stdout and "first divergent stage probs" in r.stdout and "would have passed" in r.stdout


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ('{"lengths": [3], "sinks": "loud"}', "sinks='loud' must be one of"),
    ('[{"layer": 0}, {"lenghts": [2]}]', "(case 1): unknown field"),
])
def test_bad_case_files(tmp_path, capsys, content, message):
    f = tmp_path / "bad.json"
    f.write_text(content)
    assert main(["run", "--case-file", str(f)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(f) in err


def test_bad_candidate_and_bound(capsys):
    assert main(["run", "--candidate", "nope"]) == 2
    assert "unknown candidate 'nope'" in capsys.readouterr().err
    assert main(["run", "--max-ratio", "0"]) == 2
    assert "--max-ratio must be a positive finite number" in capsys.readouterr().err


def test_checkpoint_weights(tmp_path, capsys):
    from safetensors.torch import save_file

    from harness.presets import preset
    from harness.weights import NAMES, make_weights

    w = make_weights(preset("small"), 9, sinks="dominant")
    save_file({f"block.1.attn.{n}": w[n] for n in NAMES}, str(tmp_path / "model.safetensors"))
    case = tmp_path / "case.json"
    case.write_text(json.dumps({"layer": 1, "lengths": [20]}))
    assert main(["run", "--checkpoint", str(tmp_path), "--case-file", str(case), "--candidate", "reference"]) == 0
    case.write_text(json.dumps({"layer": 2, "lengths": [20]}))
    assert main(["run", "--checkpoint", str(tmp_path), "--case-file", str(case)]) == 2
    assert "layer 2 is incomplete" in capsys.readouterr().err
