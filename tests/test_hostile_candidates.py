"""Hostile candidates (issue 20): a candidate that ends the process or writes to its inputs gets an
error verdict naming what it did; it never passes, never ends the run with a success status, and
never gets the correct candidate run after it blamed (tests/broken_candidates.py holds them)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness import cli
from harness.candidates import load_candidate
from harness.case import Case
from harness.runner import run_case

ROOT = Path(__file__).resolve().parent.parent
CASE = Case(layer=0, lengths=(20,))


def _hostile(name: str):
    return load_candidate(f"tests.broken_candidates:{name}")


@pytest.mark.parametrize("name, did", [("exits_0", "called sys.exit(0)"), ("exits_1", "called sys.exit(1)"),
                                       ("os_exits", "called os._exit(0)")])
def test_a_candidate_that_ends_the_process_gets_an_error_and_the_run_goes_on(name, did):
    hostile, reference = _hostile(name), load_candidate("reference")
    verdicts = run_case(CASE, [reference, hostile, reference])
    assert [v.verdict for v in verdicts] == ["pass", "error", "pass"]
    assert f"candidate {name} {did}" in verdicts[1].message and "may not end the process" in verdicts[1].message


@pytest.mark.parametrize("name, path", [("mutates_weights", "spec.weights['qkv.weight']"),
                                        ("mutates_hidden", "batch.hidden"),
                                        ("replaces_weights", "spec.weights"),
                                        ("retypes_hidden", "batch.hidden")])
def test_a_candidate_that_writes_to_its_inputs_is_named_and_nobody_else_is_blamed(name, path):
    """In either order: before, the mutator passed and the reference run after it failed at `normed`."""
    hostile, reference = _hostile(name), load_candidate("reference")
    for order in ([hostile, reference], [reference, hostile]):
        verdicts = {v.candidate: v for v in run_case(CASE, order)}
        assert verdicts["reference"].verdict == "pass", verdicts["reference"].message
        assert verdicts[name].verdict == "error"
        assert f"candidate {name} modified its input {path} in place" in verdicts[name].message


def test_a_candidate_that_leaves_the_check_by_a_pytest_outcome_gets_an_error():
    """pytest.xfail / skip are BaseExceptions: raised by a candidate they passed a pytest gate as
    'xfailed' with no check recorded."""
    try:
        (v,) = run_case(CASE, [_hostile("raises_xfail")])
    except BaseException as exc:  # noqa: BLE001 (escaped, it would xfail this very test: a pass)
        pytest.fail(f"the candidate's {type(exc).__name__} escaped the guard")
    assert v.verdict == "error" and "XFailed" in v.message and "which is not an error" in v.message


def test_a_candidate_that_misbehaves_only_in_a_probe_fails_the_check():
    """The NaN probes are not binding, but a candidate that ends the process on one is named and failed."""
    (v,) = run_case(Case(layer=0, lengths=(20, 7)), [load_candidate("tests.broken_candidates:exits_on_nan")])
    assert v.verdict == "error" and "called sys.exit(0)" in v.message, v.message


def test_a_candidate_that_ends_the_process_while_built_is_bad_input(capsys):
    assert cli.main(["run", "--candidate", "tests.broken_candidates:exits_on_build", "--candidate", "reference",
                     "--no-probes"]) == 2
    assert "while it was imported or built, called sys.exit(0)" in capsys.readouterr().err


def _run(*args, cwd=ROOT, **env):
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    full.pop("PYTEST_ADDOPTS", None)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=full, timeout=600,
                          check=False)


def test_os_exit_in_a_candidate_fails_parity_run_and_pytest(tmp_path):
    """In a child process: a guard that failed would end this test run itself with status 0."""
    case_file = tmp_path / "case.json"
    case_file.write_text(json.dumps(CASE.to_dict()))
    results = tmp_path / "r.json"
    run = _run("-m", "harness.cli", "run", "--candidate", "reference", "--candidate", "tests.broken_candidates:os_exits",
               "--case-file", str(case_file), "--json", str(results), PARITY_FAILURES_DIR=str(tmp_path / "f"))
    assert run.returncode == 1, run.stdout[-2000:] + run.stderr[-2000:]
    verdicts = {r["candidate"]: r["verdict"] for r in json.loads(results.read_text())["cases"]}
    assert verdicts == {"reference": "pass", "os_exits": "error"}
    under_pytest = _run("-m", "pytest", "-p", "no:cacheprovider", "-m", "parity", "--candidate",
                        "tests.broken_candidates:os_exits", "-k", "test_curated_sweep and small-L0-prefill-n128",
                        str(ROOT / "harness" / "pytest_plugin" / "suite.py"), cwd=tmp_path,
                        PARITY_FAILURES_DIR=str(tmp_path / "f"))
    assert under_pytest.returncode == 1, under_pytest.stdout[-3000:]
    assert "called os._exit(0)" in under_pytest.stdout and "1 failed" in under_pytest.stdout


def test_a_native_hang_under_pytest_says_why_and_leaves_junit_and_json(tmp_path):
    """The watchdog's message went to pytest's capture and the hard exit left nothing: now it reaches
    the real stderr, and JUnit XML and the JSON results (marked incomplete) hold what ran before."""
    tests = tmp_path / "test_hang.py"
    tests.write_text(
        "import pytest\nfrom harness.case import Case\n\n"
        "@pytest.mark.parity\ndef test_a_first(parity, candidate_name):\n"
        "    parity.check(Case(layer=0, lengths=(8,)), 'reference')\n\n"
        "@pytest.mark.parity\ndef test_b_stuck(parity, candidate_name):\n"
        "    parity.check(Case(layer=0, lengths=(8,)), candidate_name)\n")
    results, junit = tmp_path / "r.json", tmp_path / "j.xml"
    out = _run("-m", "pytest", "-p", "no:cacheprovider", str(tests), "--candidate",
               "tests.broken_candidates:stuck_in_native_code", "--parity-time-limit", "1", "--parity-json",
               str(results), "--junitxml", str(junit), cwd=tmp_path, PARITY_TIME_LIMIT_GRACE="2",
               PARITY_FAILURES_DIR=str(tmp_path / "f"))
    assert out.returncode == 124, out.stdout[-2000:] + out.stderr[-2000:]
    assert "does not return to Python" in out.stderr and "stuck_in_native_code" in out.stderr
    data = json.loads(results.read_text())
    assert data["summary"]["complete"] is False and [r["candidate"] for r in data["cases"]] == ["reference"]
    assert "test_a_first" in junit.read_text()


def test_a_terminated_parity_run_writes_what_ran_marked_incomplete(tmp_path):
    """SIGTERM (a cancelled job) ended `parity run` with no JSON; the file now exists from the start,
    grows after every case, and is marked incomplete, with exit status 130."""
    import signal
    import time

    case_file = tmp_path / "cases.json"
    case_file.write_text(json.dumps([{"lengths": [8]}, {"lengths": [20]}]))
    results = tmp_path / "r.json"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PARITY_FAILURES_DIR": str(tmp_path / "f")}
    proc = subprocess.Popen([sys.executable, "-m", "harness.cli", "run", "--candidate", "reference", "--candidate",
                             "tests.broken_candidates:sleeps_on_long_rows", "--case-file", str(case_file), "--json",
                             str(results), "--no-probes"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if results.exists() and len(json.loads(results.read_text() or "{}").get("cases", [])) == 2:
                break
            time.sleep(0.2)
        time.sleep(1)  # into the second case's hang
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    assert "INTERRUPTED" in out and "2 of 4 planned checks ran" in out
    data = json.loads(results.read_text())
    assert data["summary"]["complete"] is False and data["summary"]["planned"] == 4
    assert [r["verdict"] for r in data["cases"]] == ["pass", "pass"]


def test_a_native_exit_under_pytest_leaves_an_incomplete_record_that_fails_the_gate(tmp_path):
    """Native code can end the process with status 0 where no Python guard sees it: the results file,
    written at the start and completed at the end, then says incomplete, and the gate's
    `parity summary --require-complete` fails."""
    results = tmp_path / "r.json"
    out = _run("-m", "pytest", "-p", "no:cacheprovider", "-m", "parity", "--candidate",
               "tests.broken_candidates:native_exit", "-k", "test_curated_sweep and small-L0-prefill-n128",
               str(ROOT / "harness" / "pytest_plugin" / "suite.py"), "--parity-json", str(results), cwd=tmp_path,
               PARITY_FAILURES_DIR=str(tmp_path / "f"))
    assert out.returncode == 0 and "passed" not in out.stdout  # the process really ended with 0, mid-run
    assert json.loads(results.read_text())["summary"]["complete"] is False
    gate = _run("-m", "harness.cli", "summary", str(results), "--require-complete", cwd=tmp_path)
    assert gate.returncode == 1 and "INCOMPLETE" in gate.stderr


def test_sigterm_ends_a_run_stuck_in_native_code(tmp_path):
    """SIGTERM became KeyboardInterrupt, which Python raises only when the main thread returns to the
    interpreter: a run stuck in native code ignored it for ever. A thread on the signal's wakeup fd now
    ends the process (status 143) when the run has not unwound within the grace period."""
    import shutil
    import signal
    import time

    if shutil.which("gcc") is None:
        pytest.skip("no C compiler here to build a native loop")
    (tmp_path / "spin.c").write_text("void spin(void){ volatile unsigned long i = 0; for (;;) { i++; } }\n")
    lib = tmp_path / "libspin.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(lib), str(tmp_path / "spin.c")], check=True, timeout=60)
    code = ("import ctypes, sys\nimport harness.interrupt as i\ni.GRACE_SECONDS = 2\ni.sigterm_as_interrupt()\n"
            f"lib = ctypes.CDLL({str(lib)!r})\nprint('ready', flush=True)\nlib.spin()\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(0.5)  # inside the native loop
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    finally:
        proc.kill()
