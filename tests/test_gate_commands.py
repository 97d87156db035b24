"""What a CI gate runs besides the checks: `parity doctor`, `parity summary`, `parity --version`, and
progress lines a CI log can show."""

import io
import json
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch

import harness.doctor
import harness.selftest
from harness import cli
from harness.console import Progress
from harness.goldens import GoldenStore
from harness.case import curated_cases
from harness.selftest import MutantResult

ROOT = Path(__file__).resolve().parent.parent


def _record(case_id, verdict="pass", ratio=1.0, info=None, message=""):
    return {"id": case_id, "candidate": "neuron", "verdict": verdict, "worst_ratio": ratio,
            "first_divergent_stage": None if verdict == "pass" else "probs", "message": message, "info": info or {}}


def test_version_names_the_installed_package(capsys):
    with pytest.raises(SystemExit) as done:
        cli.main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"parity (gpt-oss-parity) {version('gpt-oss-parity')}"


def test_progress_lines_under_ci_say_elapsed_and_left(monkeypatch):
    monkeypatch.setenv("CI", "true")
    stream = io.StringIO()
    progress = Progress(4, stream)
    for i in range(1, 4):
        progress.show(i, f"case {i}")
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("[1/4] case 1 (") and "elapsed)" in lines[0]  # nothing done yet: no estimate
    assert lines[2].startswith("[3/4] case 3 (") and "left)" in lines[2]


def test_selftest_prints_a_line_per_mutant_in_ci(monkeypatch, capsys):
    monkeypatch.setenv("CI", "true")
    # the hunt itself (tens of seconds a mutant, with its shrinking) is tested in tests/test_selftest.py
    monkeypatch.setattr(harness.selftest, "hunt", lambda name, drawn, cache, *hunted: MutantResult(name, True, 1, named=True))
    assert cli.main(["selftest", "--mutant", "sinks_dropped", "--mutant", "no_causal_mask", "--benign",
                     "softmax_float32", "--max-examples", "3", "--benign-examples", "2"]) == 0
    err = capsys.readouterr().err.splitlines()
    steps = [line.split(" (")[0] for line in err]
    assert steps[:2] == ["[1/2] mutant sinks_dropped", "[2/2] mutant no_causal_mask"], err
    assert [s.split(" benign")[0] for s in steps[2:]] == ["[1/2]", "[2/2]"], err
    assert all("elapsed" in line for line in err) and "left)" in err[1] and "left)" in err[3]


def test_summary_shows_each_check_with_bucket_and_compiles(tmp_path, monkeypatch, capsys):
    results = tmp_path / "r.json"
    device = {"mode": "device", "buckets": {"context": 256, "generation": 512, "batch": 2}, "builds": 3,
              "build_seconds": 41.2}
    results.write_text(json.dumps({"cases": [_record("ok-case", info=device),
                                             _record("bad-case", "fail", 64.2, device, "FAIL: sinks | dropped")],
                                   "summary": {"pytest": {"passed": 1, "failed": 1, "skipped": 2}}}))
    monkeypatch.delenv("GITHUB_STEP_SUMMARY", raising=False)
    assert cli.main(["summary", str(results)]) == 0
    text = capsys.readouterr().out
    lines = text.splitlines()
    assert lines[0] == "## ❌ gpt-oss attention parity: 1 checks passed, 1 failed"
    rows = [line for line in lines if line.startswith("| ") and not line.startswith(("| case ", "| ---"))]
    assert rows[0].startswith("| bad-case | neuron | ❌ fail | 64.2 | probs | device | context 256, generation 512, "
                              "batch 2 | 3 (41 s) |")
    assert rows[1].startswith("| ok-case | neuron | ✅ pass | 1 | - |")
    assert "**2 test(s) skipped**" in text and "FAIL: sinks \\| dropped" not in text  # messages stay verbatim
    assert "<summary>FAIL: bad-case / neuron</summary>" in text and "FAIL: sinks | dropped" in text

    step_summary = tmp_path / "step-summary.md"
    step_summary.write_text("earlier step\n")
    monkeypatch.setenv("GITHUB_STEP_SUMMARY", str(step_summary))
    assert cli.main(["summary", str(results)]) == 0
    assert step_summary.read_text().startswith("earlier step\n## ❌")  # appended, as GitHub expects


def test_summary_of_a_selftest_and_of_a_bad_file(tmp_path, capsys):
    matrix = tmp_path / "selftest.json"
    matrix.write_text(json.dumps({"mutants": [{"name": "sinks_dropped", "killed": True, "examples_to_kill": 1,
                                               "first_divergent_stage": "probs"}],
                                  "benign": [{"name": "softmax_float32", "examples": 5, "false_alarms": 0,
                                              "worst_ratio": 1.2}],
                                  "summary": {"ok": True, "killed": 1, "mutants": 1, "false_alarms": 0,
                                              "benign_examples": 5}}))
    assert cli.main(["summary", str(matrix), "--out", str(tmp_path / "s.md")]) == 0
    text = (tmp_path / "s.md").read_text()
    assert "parity self-test: 1 of 1 mutants killed" in text and "| sinks_dropped | yes | 1 | probs |" in text
    (tmp_path / "bad.json").write_text("[1, 2]")
    assert cli.main(["summary", str(tmp_path / "bad.json")]) == 2
    assert "expected a JSON object written by `parity run --json`" in capsys.readouterr().err


@pytest.fixture
def no_golden_check(monkeypatch):
    """The golden stores' state is tested below; here only the environment matters (saves 8 s a call)."""
    monkeypatch.setattr(harness.doctor, "golden_state", lambda store, curated: harness.doctor.StoreState(store.label))


def test_doctor_reports_this_machine(no_golden_check, capsys):
    from harness.neuron.environment import detect

    assert cli.main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"torch:" in out and torch.__version__ in out and f"{sys.version_info.major}.{sys.version_info.minor}" in out
    env = detect()
    assert f"neuron mode:" in out and f"{env.mode}: " in out
    for name in ("neuronx-distributed-inference", "torch-neuronx", "neuronx-cc"):
        line = next(line for line in out.splitlines() if line.startswith(name + ":"))
        assert line.split(":", 1)[1].strip() == (env.versions.get(name) or "absent")
    assert "compile cache:" in out and "neuron-ls:" in out


@pytest.mark.skipif(Path("/dev/neuron0").exists(), reason="a Neuron device is present")
def test_doctor_exits_1_naming_what_is_missing(no_golden_check, capsys):
    from harness.neuron.environment import INSTALL_LINE, detect

    sdk = detect().mode != "unavailable"
    assert cli.main(["doctor", "--require", "neuron"]) == (0 if sdk else 1)
    err = capsys.readouterr().err
    assert sdk or ("the Neuron SDK" in err and INSTALL_LINE in err)
    assert cli.main(["doctor", "--require", "device"]) == 1
    assert "a Neuron device: no /dev/neuron* here; run on a trn1 or trn2 instance" in capsys.readouterr().err


def test_doctor_checks_goldens_without_building_or_computing_anything(monkeypatch, capsys):
    """doctor ran for minutes rebuilding the 131,072-token prefixes of the long goldens: it now checks the
    stores from what they hold (hashes, fingerprint) and never builds weights, inputs or a reference."""
    import harness.batch
    import harness.expected
    import harness.goldens
    import harness.prefix
    import harness.produce

    def forbidden(*args, **kwargs):
        raise AssertionError("parity doctor built or computed a case")

    for module, name in ((harness.produce, "run_reference"), (harness.produce, "run_oracle"),
                         (harness.expected, "compute_expected"), (harness.goldens, "compute_expected"),
                         (harness.prefix, "prefix_pass"), (harness.batch, "make_batch"),
                         (harness.goldens, "make_batch"), (harness.goldens, "layer_specs"),
                         (harness.batch, "layer_specs")):
        monkeypatch.setattr(module, name, forbidden)
    assert cli.main(["doctor", "--require", "goldens"]) == 0
    out = capsys.readouterr().out
    assert f"{len(curated_cases())} golden(s)" in out and "all usable" in out
    monkeypatch.setattr(harness.goldens, "reference_fingerprint", lambda: "0123456789abcdef")
    assert cli.main(["doctor", "--require", "goldens"]) == 1
    out = capsys.readouterr().out
    assert f"{curated_cases()[0].id}: stale (" in out and "reference code is now 0123456789abcdef" in out


def test_doctor_prints_its_first_lines_before_importing_torch():
    """A line before anything slow: the versions come first, before torch is imported."""
    code = ("import sys\nfrom harness.doctor import gather\n"
            "gather(lambda label, value: print(label, 'torch' in sys.modules, flush=True))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    first = out.stdout.splitlines()[0].split()
    assert first == ["gpt-oss-parity", "False"], out.stdout[:500]


def test_doctor_finds_corrupt_and_missing_goldens(tmp_path, monkeypatch, capsys):
    kept = curated_cases()[0]
    store_dir = tmp_path / "goldens"
    shutil.copytree(ROOT / "cases" / "goldens", store_dir, ignore=shutil.ignore_patterns(".lock"))
    store = GoldenStore(store_dir)
    store.remove([c.id for c in curated_cases()[1:]])
    data = bytearray((store_dir / store.entries()[kept.id]["file"]).read_bytes())
    data[-5] ^= 0xFF
    (store_dir / store.entries()[kept.id]["file"]).write_bytes(bytes(data))
    monkeypatch.setenv("PARITY_GOLDEN_DIR", str(store_dir))
    monkeypatch.setenv("PARITY_GOLDEN_CACHE", str(tmp_path / "cache"))
    assert cli.main(["doctor", "--require", "goldens"]) == 1
    out = capsys.readouterr()
    n = len(curated_cases())
    assert f"1 golden(s)" in out.out and f"{n} missing, stale or corrupt" in out.out
    assert f"{kept.id}: corrupt (" in out.out and f"{curated_cases()[1].id}: missing" in out.out
    assert "usable goldens" in out.err


def test_summary_require_complete_fails_closed(tmp_path, capsys):
    """A gate is green only when every planned check ran: a results file whose run ended early (or that
    carries no completion record at all) fails `parity summary --require-complete`."""
    record = {"id": "c", "candidate": "x", "verdict": "pass", "worst_ratio": 1.0}
    for summary, status in (({"checks": 1, "failed": 0, "planned": 1, "complete": True}, 0),
                            ({"checks": 1, "failed": 0, "planned": 3, "complete": False}, 1),
                            ({"checks": 1, "failed": 0}, 1)):
        path = tmp_path / "r.json"
        path.write_text(json.dumps({"cases": [record], "summary": summary}))
        assert cli.main(["summary", str(path), "--require-complete"]) == status
        out = capsys.readouterr()
        assert ("INCOMPLETE" in out.err) == bool(status)
        assert cli.main(["summary", str(path)]) == 0  # without the option: the markdown, whatever it says
        assert ("INCOMPLETE: the run ended" in capsys.readouterr().out) == (summary.get("complete") is False)
