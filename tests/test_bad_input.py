"""Bad input never reaches a traceback, an allocation or a silent wrong run: every field has one type,
every size is checked first, every file and option is validated with a message naming it, a crashing
or hanging candidate is a verdict with its traceback kept, and a failure found with a checkpoint replays
with that checkpoint."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import harness.expected
import harness.limits
from harness import cli
from harness.batch import layer_specs, with_checkpoint
from harness.candidates import load_candidate
from harness.case import Case
from harness.repro import load_failure
from harness.runner import run_case

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _failures(tmp_path, monkeypatch):
    monkeypatch.setenv("PARITY_FAILURES_DIR", str(tmp_path / "failures"))


def _case_file(tmp_path, data) -> str:
    path = tmp_path / "cases.json"
    path.write_text(json.dumps(data))
    return str(path)


@pytest.mark.parametrize("fields, named", [
    ({"lengths": "16"}, "lengths='16': expected a list of integers"),
    ({"lengths": [1.5]}, "found a list holding a number with a fraction"),
    ({"lengths": [True]}, "found a list holding a boolean"),
    ({"lengths": ["16"]}, "found a list holding a string"),
    ({"lengths": 16}, "lengths=16: expected a list of integers"),
    ({"layer": True}, "layer=True: expected an integer, found a boolean"),
    ({"input_seed": 1.5}, "input_seed=1.5: expected an integer, found a number with a fraction"),
    ({"weight_seed": "abc"}, "weight_seed='abc': expected an integer, found a string"),
    ({"decode_steps": "1", "plan": "decode"}, "decode_steps='1': expected an integer, found a string"),
    ({"compare_last": "x"}, "compare_last='x': expected an integer, found a string"),
    ({"padding": 1}, "padding=1: expected a string"),
    ({"lengths": [10_000_000]}, "longer than gpt-oss's context of 131072 positions"),
    ({"pad_to": 10_000_000}, "longer than gpt-oss's context of 131072 positions"),
    ({"depth": 1_000_000}, "go past the model's 36 layers"),
    ({"lengths": [1] * 65}, "at most 64 rows"),
])
def test_a_case_field_of_the_wrong_type_or_size_is_named(fields, named, tmp_path, capsys):
    with pytest.raises(ValueError, match="invalid case") as err:
        Case.from_dict(fields)
    assert named in str(err.value)
    started = time.monotonic()
    assert cli.main(["run", "--case-file", _case_file(tmp_path, fields)]) == 2
    err_text = capsys.readouterr().err
    assert named in err_text and "Traceback" not in err_text
    assert time.monotonic() - started < 5


def test_an_empty_case_file_is_an_error(tmp_path, capsys):
    assert cli.main(["run", "--case-file", _case_file(tmp_path, [])]) == 2
    assert "holds an empty list" in capsys.readouterr().err


def test_a_case_too_large_for_memory_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    # every one of 131,072 positions judged at full dims: the stage tensors alone need tens of GiB (a long row
    # is checked from its cache instead: plan from_cache, tests/test_long_context.py)
    def refuse(*args, **kwargs):
        raise AssertionError("the oracle ran before the size was checked")

    monkeypatch.setattr(harness.expected, "run_oracle", refuse)
    started = time.monotonic()
    fields = {"preset": "full", "layer": 1, "lengths": [131072]}
    assert cli.main(["run", "--case-file", _case_file(tmp_path, fields)]) == 2
    assert "this machine has available" in capsys.readouterr().err and time.monotonic() - started < 5
    with pytest.raises(harness.limits.CaseTooLarge):
        harness.expected.compute_expected(Case(preset="full", layer=1, lengths=(131072,)))


def test_memory_is_checked_against_what_the_machine_has(monkeypatch):
    case = Case(preset="full", lengths=(2000,), pad_to=4000)
    harness.limits.check_fits(case)  # fits this machine
    monkeypatch.setattr(harness.limits, "available_memory", lambda: 2**30)
    with pytest.raises(harness.limits.CaseTooLarge, match=r"need about .* GiB .* of the 1.0 GiB this machine has available"):
        harness.limits.check_fits(case)


def test_bad_files_and_options_are_usage_errors(tmp_path, capsys):
    bounds = tmp_path / "bounds.json"
    bounds.write_text(json.dumps({"candidates": {"x": 5}}))
    cases = _case_file(tmp_path, {"lengths": [8]})
    assert cli.main(["run", "--bounds", str(bounds), "--case-file", cases]) == 2
    assert "candidate 'x' must be an object" in capsys.readouterr().err
    assert cli.main(["run", "--max-ratio", "inf", "--case-file", cases]) == 2
    assert "--max-ratio must be a positive finite number" in capsys.readouterr().err
    results = tmp_path / "results.json"
    results.write_text(json.dumps({"cases": [{"id": "x", "verdict": "fail"}]}))
    assert cli.main(["report", str(results), "--out", str(tmp_path / "r")]) == 2
    assert "record 0: field 'candidate' must be a string" in capsys.readouterr().err
    results.write_text(json.dumps({"cases": [{"id": "x", "candidate": "c", "verdict": "fail"}]}))
    assert cli.main(["report", str(results), "--out", str(tmp_path / "r")]) == 0  # minimal records render
    existing = tmp_path / "a-file"
    existing.write_text("keep")
    assert cli.main(["report", str(results), "--out", str(existing)]) == 2
    assert "is a file" in capsys.readouterr().err and existing.read_text() == "keep"
    assert cli.main(["run", "--candidate", "harness.goldens:GoldenStore", "--case-file", cases]) == 2
    assert "cannot be built without arguments" in capsys.readouterr().err
    assert cli.main(["run", "--time-limit", "-1", "--case-file", cases]) == 2


def test_a_crashing_candidate_keeps_its_whole_traceback(tmp_path, capsys):
    cases = _case_file(tmp_path, {"lengths": [8]})
    json_out = tmp_path / "results.json"
    args = ["run", "--candidate", "tests.broken_candidates:raises_key_error", "--case-file", cases, "--json", str(json_out)]
    assert cli.main(args) == 1
    out = capsys.readouterr().out
    assert "raised KeyError: 'qkv'" in out and "-v prints it" in out and "in lookup" not in out
    (repro,) = (tmp_path / "failures").glob("*.json")
    saved = json.loads(repro.read_text())
    assert saved["verdict"] == "error" and "in lookup" in saved["traceback"] and "Traceback" in saved["traceback"]
    assert "in lookup" in json.loads(json_out.read_text())["cases"][0]["traceback"]
    assert cli.main(args + ["-v"]) == 1
    assert "in lookup" in capsys.readouterr().out
    assert cli.main(["replay", str(repro), "--trust-candidate", "-v"]) == 1  # it names a module of tests/
    assert "in lookup" in capsys.readouterr().out


def test_pytest_shows_a_crashing_candidates_traceback():
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--candidate",
                          "tests.broken_candidates:raises_key_error", "harness/pytest_plugin/suite.py::test_curated_sweep",
                          "-k", "n1-", "-x"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "PARITY_FAILURES_DIR": "/tmp/parity-test-failures"})
    assert out.returncode == 1 and "raised KeyError: 'qkv'" in out.stdout and "in lookup" in out.stdout, out.stdout[-3000:]


def test_a_hanging_candidate_times_out(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PARITY_TIME_LIMIT", "1")
    started = time.monotonic()
    cases = _case_file(tmp_path, {"lengths": [8]})
    assert cli.main(["run", "--candidate", "tests.broken_candidates:sleeps", "--case-file", cases, "--no-probes"]) == 1
    out = capsys.readouterr().out
    assert "TIMEOUT" in out and "ran past its time limit of 1 s" in out
    assert time.monotonic() - started < 30
    monkeypatch.delenv("PARITY_TIME_LIMIT")
    assert cli.main(["run", "--time-limit", "0.5", "--candidate", "tests.broken_candidates:sleeps", "--case-file",
                     cases, "--no-probes"]) == 1
    assert "time limit of 0.5 s" in capsys.readouterr().out


def test_a_candidate_stuck_in_native_code_ends_the_run_instead_of_hanging(tmp_path):
    cases = _case_file(tmp_path, {"lengths": [8]})
    env = {**os.environ, "PARITY_TIME_LIMIT": "1", "PARITY_TIME_LIMIT_GRACE": "2", "PYTHONPATH": str(ROOT)}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--candidate",
                          "tests.broken_candidates:stuck_in_native_code", "--case-file", cases, "--no-probes"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 124 and "does not return to Python" in out.stderr, out.stderr
    assert time.monotonic() - started < 60


def _checkpoint(directory: Path, case: Case, scale: float = 1.0) -> Path:
    """A small original-format checkpoint holding the case's layers (seeded weights, other seed)."""
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    specs = layer_specs(Case(preset=case.preset, layer=case.layer, weight_seed=99, depth=case.depth))
    tensors = {f"block.{s.layer_idx}.attn.{n}": (t.float() * scale).to(t.dtype) for s in specs for n, t in s.weights.items()}
    save_file(tensors, directory / "model.safetensors")
    return directory


def test_a_failure_found_with_a_checkpoint_replays_with_it(tmp_path, capsys):
    case = Case(lengths=(130,), input_seed=4)
    ckpt = _checkpoint(tmp_path / "ckpt", case)
    cases = _case_file(tmp_path, case.to_dict())
    assert cli.main(["run", "--candidate", "mutant:sinks_dropped", "--checkpoint", str(ckpt), "--case-file", cases,
                     "--no-probes"]) == 1
    (repro,) = (tmp_path / "failures").glob("*.json")
    recorded, name = load_failure(repro)
    assert recorded.checkpoint == str(ckpt.resolve()) and len(recorded.checkpoint_sha256) == 64
    assert recorded.id != case.id and "-ckpt-" in recorded.id
    saved_ratio = json.loads(repro.read_text())["worst_ratio"]
    (replayed,) = run_case(recorded, [load_candidate(name)])
    (seeded,) = run_case(case, [load_candidate(name)])
    assert replayed.worst_ratio == pytest.approx(saved_ratio) and seeded.worst_ratio != pytest.approx(saved_ratio)
    capsys.readouterr()
    assert cli.main(["replay", str(repro)]) == 1
    assert str(ckpt.resolve()) in capsys.readouterr().out
    _checkpoint(ckpt, case, scale=1.5)  # the checkpoint changes afterwards
    assert cli.main(["replay", str(repro)]) == 2
    assert "differ from those the case was recorded with" in capsys.readouterr().err
    assert cli.main(["run", "--goldens", "--checkpoint", str(ckpt), "--case-file", cases]) == 2


def test_float32_cases_hand_candidates_float32_weights(tmp_path):
    case = Case(lengths=(20,), dtype="float32")
    spec = layer_specs(case)[0]
    assert {n: t.dtype for n, t in spec.weights.items()} == {n: torch.float32 for n in spec.weights}
    (v,) = run_case(case, [load_candidate("tests.broken_candidates:readme_block")], probes=False)
    assert v.verdict == "pass", v.message
