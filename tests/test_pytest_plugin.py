"""The pytest plugin as a user meets it: a repository outside this checkout with only its own block
runs the shipped parity suite and its own parity tests, with the usual failure message and repro
file, under pytest-xdist, with --lf, JUnit XML, JSON results, the report and the history; and the
rules that make it a gate (--no-reference deselects, --require-neuron fails skips)."""

import json
import os
import subprocess
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import Phase, settings

from harness.history import History
from harness.pytest_plugin.checker import ParityChecker, ParityRecords
from harness.pytest_plugin.collection import SUITE, _selects_parity
from tests.wheel import build_wheel, venv_with_wheel

ROOT = Path(__file__).resolve().parent.parent
ONE_CURATED = "test_curated_case_files and small-L1-prefill-n130"  # one curated case, judged from its golden

BLOCKS = '''
import dataclasses

import torch

from harness import CandidateResult
from harness.produce import run_reference


class Block:
    """A correct block (it calls the reference: the point here is the plumbing, not the maths)."""
    name = "myblock"

    def run(self, spec, batch, *, taps):
        out = run_reference(spec, batch, taps=taps)
        return CandidateResult(out.pop("output"), out)


class BrokenBlock:
    """Sinks dropped: a sink of -inf adds nothing to the softmax's denominator."""
    name = "broken"

    def run(self, spec, batch, *, taps):
        weights = dict(spec.weights, sinks=torch.full_like(spec.weights["sinks"], -float("inf")))
        out = run_reference(dataclasses.replace(spec, weights=weights), batch, taps=taps)
        return CandidateResult(out.pop("output"), out)
'''

OWN_TESTS = '''
import pytest

from harness.pytest_plugin import parity_cases


@pytest.mark.parity
@pytest.mark.parametrize("case", parity_cases("cases/*.json"))
def test_my_cases(parity, candidate_name, case):
    parity.check(case, candidate_name)
'''


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> Path:
    """A user's repository: its own block, its own case file and parity test, nothing of this checkout."""
    repo = tmp_path_factory.mktemp("user-repo")
    (repo / "myblock").mkdir()
    (repo / "myblock" / "__init__.py").write_text("")
    (repo / "myblock" / "attn.py").write_text(BLOCKS)
    (repo / "tests" / "cases").mkdir(parents=True)
    (repo / "tests" / "test_mine.py").write_text(OWN_TESTS)
    (repo / "tests" / "cases" / "mine.json").write_text(json.dumps([{"layer": 0, "lengths": [12]}]))
    return repo


def _pytest(repo: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PARITY_HISTORY")}
    run_env = {**base, "PYTHONPATH": str(repo), "PARITY_FAILURES_DIR": str(repo / ".parity" / "failures"),
               **(env or {})}
    return subprocess.run([sys.executable, "-m", "pytest", *args], cwd=repo, env=run_env, capture_output=True,
                          text=True, timeout=900)


@pytest.mark.slow
def test_a_user_repository_runs_the_suite_and_its_own_tests_under_xdist(scratch, tmp_path):
    """-n 2: every check is in the JSON results, the report and the history (workers send their records
    to the controller), and JUnit XML names every test."""
    results, history, junit = tmp_path / "r.json", tmp_path / "h.sqlite", tmp_path / "j.xml"
    out = _pytest(scratch, "-m", "parity", "--candidate", "myblock.attn:Block", "-k", f"test_my_cases or ({ONE_CURATED})",
                  "-n", "2", "-p", "no:cacheprovider", "--parity-json", str(results), "--parity-history", str(history),
                  "--parity-report", str(tmp_path / "report"), "--junitxml", str(junit), "-rA")
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-2000:]
    assert f"{SUITE}::test_curated_case_files[myblock.attn:Block-small-L1-prefill-n130" in out.stdout, out.stdout[-3000:]
    assert "tests/test_mine.py::test_my_cases[myblock.attn:Block-small-L0-prefill-n12" in out.stdout
    records = json.loads(results.read_text())
    assert len(records["cases"]) == 2 and records["summary"]["pytest"]["passed"] == 2
    assert {r["candidate"] for r in records["cases"]} == {"myblock"}
    assert len(History(history).rows()) == 2 and len(History(history).runs()) == 1
    assert (tmp_path / "report" / "index.html").read_text().count("myblock") >= 2
    assert len(ET.parse(junit).getroot().findall(".//testcase")) == 2


def test_a_broken_block_fails_with_the_message_and_a_repro_file_and_lf_reruns_it(scratch):
    """Both the user's own test and the shipped suite's fail; --lf reruns both (the suite's test ids are
    absolute paths, which pytest's --lf needs for a file outside the rootdir)."""
    failures = scratch / ".parity" / "failures"
    args = ("-m", "parity", "--candidate", "myblock.attn:BrokenBlock", "-k", f"test_my_cases or ({ONE_CURATED})")
    first = _pytest(scratch, *args)
    assert first.returncode == 1, first.stdout[-3000:]
    assert "first divergent stage probs" in first.stdout and "would have passed" in first.stdout
    assert "replay: parity replay" in first.stdout and "2 failed" in first.stdout
    assert len(list(failures.glob("*--myblock.attn_BrokenBlock.json"))) == 2
    rerun = _pytest(scratch, *args, "--lf")
    assert rerun.returncode == 1 and "2 failed" in rerun.stdout.splitlines()[-1], rerun.stdout[-2000:]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("wheel"))


@pytest.fixture(scope="module")
def repo_with_venv(tmp_path_factory, wheel) -> Path:
    """The most common layout: `python -m venv .venv` inside the repository, the harness `pip install`ed
    there (non-editable), the user's block in the repository. The venv also holds a test file of
    another package, which must never be collected."""
    repo = tmp_path_factory.mktemp("venv-repo")
    (repo / "myblock").mkdir()
    (repo / "myblock" / "__init__.py").write_text("")
    (repo / "myblock" / "attn.py").write_text(BLOCKS)
    python = venv_with_wheel(repo / ".venv", wheel)
    site = Path(subprocess.run([str(python), "-c", "import harness, pathlib; print(pathlib.Path(harness.__file__)"
                                ".parents[1])"], capture_output=True, text=True, check=True, cwd=repo).stdout.strip())
    assert site.is_relative_to(repo / ".venv"), f"the wheel's harness is not the one imported: {site}"
    (site / "otherpkg" / "tests").mkdir(parents=True)
    (site / "otherpkg" / "tests" / "test_other.py").write_text("def test_not_ours():\n    raise AssertionError\n")
    return repo


def _venv_pytest(repo: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PARITY_HISTORY", "PYTHONPATH")}
    env["PARITY_FAILURES_DIR"] = str(repo / ".parity" / "failures")
    return subprocess.run([str(repo / ".venv" / "bin" / "python"), "-m", "pytest", "-p", "no:cacheprovider", *args],
                          cwd=repo, env=env, capture_output=True, text=True, timeout=600)


def test_the_suite_is_collected_from_a_venv_inside_the_repository(repo_with_venv):
    """pytest ignores virtual environments and dot-folders even on the way to a path it was given: the
    suite installed in ./.venv was never collected (exit 5, no hint). Now it is, and nothing else of
    the venv is."""
    listed = _venv_pytest(repo_with_venv, "-m", "parity", "--candidate", "myblock.attn:Block", "--collect-only", "-q")
    assert listed.returncode == 0, listed.stdout[-3000:] + listed.stderr[-2000:]
    tests = [line for line in listed.stdout.splitlines() if "::" in line]
    assert tests and all("harness/pytest_plugin/suite.py::" in t for t in tests), listed.stdout[-3000:]
    assert len(tests) == len(set(tests)), "the suite was collected twice"
    assert {"test_curated_case_files", "test_generated_cases", "test_curated_sweep"} <= \
        {t.split("::")[1].split("[")[0] for t in tests}
    assert "test_not_ours" not in listed.stdout
    broken = _venv_pytest(repo_with_venv, "-m", "parity", "--candidate", "myblock.attn:BrokenBlock", "-k", ONE_CURATED)
    assert broken.returncode == 1 and "1 failed" in broken.stdout.splitlines()[-1], broken.stdout[-3000:]
    assert "first divergent stage probs" in broken.stdout


def test_a_repository_inside_a_dot_folder_keeps_its_own_tests(tmp_path, wheel):
    """The venv's chain starts below the repository root: a repository under ~/.work (a folder pytest
    would ignore) still collects its own tests beside the suite."""
    repo = tmp_path / ".work" / "repo"
    (repo / "tests").mkdir(parents=True)
    (repo / "tests" / "test_own.py").write_text("import pytest\n\n@pytest.mark.parity\ndef test_own():\n    pass\n")
    venv_with_wheel(repo / ".venv", wheel)
    listed = _venv_pytest(repo, "-m", "parity", "--candidate", "reference", "--collect-only", "-q")
    assert listed.returncode == 0, listed.stdout[-2000:] + listed.stderr[-2000:]
    assert "tests/test_own.py::test_own" in listed.stdout and "suite.py::test_curated_sweep" in listed.stdout


def test_a_suite_that_is_asked_for_and_not_collected_stops_the_run():
    """Whatever else keeps the suite out (--pyargs, a conftest's hook), the run stops with a usage error
    instead of passing with nothing run; a run that collected it goes on."""
    from types import SimpleNamespace

    from harness.pytest_plugin.collection import SUITE_WANTED, pytest_collection_modifyitems

    config = SimpleNamespace(stash=pytest.Stash(), getoption=lambda name, default=None: False)
    config.stash[SUITE_WANTED] = True
    mine = SimpleNamespace(path=Path("tests/test_mine.py").absolute(), nodeid="tests/test_mine.py::test_mine")
    with pytest.raises(pytest.UsageError, match="the parity suite was asked for .* collected none of its tests"):
        pytest_collection_modifyitems(config, [mine])
    # pytest 7.4 collects the suite twice from a venv named `env` inside the repository: kept once
    suite_test = SimpleNamespace(path=SUITE, nodeid="env/lib/harness/pytest_plugin/suite.py::test_x")
    items = [mine, suite_test, SimpleNamespace(path=SUITE, nodeid=suite_test.nodeid)]
    pytest_collection_modifyitems(config, items)
    assert items == [mine, suite_test]
    config.stash[SUITE_WANTED] = False
    pytest_collection_modifyitems(config, [mine])  # not asked for: nothing to say


def test_a_missing_golden_under_no_reference_names_one_flag_that_fixes_it(scratch, tmp_path):
    """The user's own case has no golden: --no-reference fails with the fix, and the fix (one pytest run
    with --goldens) makes the same --no-reference run pass."""
    env = {"PARITY_GOLDEN_CACHE": str(tmp_path / "cache")}
    args = ("tests/test_mine.py", "--candidate", "myblock.attn:Block", "-p", "no:cacheprovider")
    first = _pytest(scratch, *args, "--no-reference", env=env)
    assert first.returncode == 1 and "no golden for case small-L0-prefill-n12" in first.stdout, first.stdout[-3000:]
    assert "run the same pytest command once with --goldens instead of --no-reference" in first.stdout
    fixed = _pytest(scratch, *args, "--goldens", env=env)
    assert fixed.returncode == 0, fixed.stdout[-3000:]
    again = _pytest(scratch, *args, "--no-reference", env=env)
    assert again.returncode == 0 and "1 passed" in again.stdout, again.stdout[-3000:]


def test_a_terminated_run_still_writes_junit_and_json_of_what_ran(scratch, tmp_path):
    """SIGTERM (a cancelled CI job) ended pytest without JUnit XML or JSON results; now it unwinds as
    Ctrl-C does and both hold the check that ran, the JSON marked incomplete."""
    import signal
    import time

    started = tmp_path / "started"
    (scratch / "tests" / "test_slow_mine.py").write_text(textwrap.dedent(f"""
        import pathlib
        import time

        import pytest
        from harness.case import Case

        @pytest.mark.parity
        def test_a_first(parity, candidate_name):
            parity.check(Case(layer=0, lengths=(8,)), candidate_name)

        @pytest.mark.parity
        def test_b_hangs(candidate_name):
            pathlib.Path({str(started)!r}).write_text("x")
            time.sleep(120)
    """))
    results, junit = tmp_path / "r.json", tmp_path / "j.xml"
    env = {**os.environ, "PYTHONPATH": str(scratch), "PARITY_FAILURES_DIR": str(tmp_path / "f")}
    env.pop("PYTEST_ADDOPTS", None)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "tests/test_slow_mine.py", "--candidate",
                             "myblock.attn:Block", "-p", "no:cacheprovider", "--parity-json", str(results),
                             "--junitxml", str(junit)], cwd=scratch, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not started.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert started.exists(), proc.communicate(timeout=60)[0][-3000:]
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    (scratch / "tests" / "test_slow_mine.py").unlink()
    assert proc.returncode == 2, out[-3000:]  # pytest's "interrupted"
    data = json.loads(results.read_text())
    assert [r["candidate"] for r in data["cases"]] == ["myblock"] and data["summary"]["complete"] is False
    names = [t.get("name") for t in ET.parse(junit).getroot().iter("testcase")]
    assert "test_a_first[myblock.attn:Block]" in names, names


def test_the_suite_is_added_only_when_a_run_asks_for_parity(scratch):
    def collected(*args):
        out = _pytest(scratch, "--collect-only", "-q", "-p", "no:cacheprovider", *args)
        assert out.returncode in (0, 5), out.stdout[-2000:] + out.stderr[-2000:]
        return out.stdout

    own_only = collected("tests/test_mine.py", "--candidate", "myblock.attn:Block")
    assert "test_my_cases" in own_only and str(SUITE) not in own_only  # paths named: those run
    assert str(SUITE) in collected("tests/test_mine.py", "--candidate", "myblock.attn:Block", "--parity-suite")
    assert str(SUITE) not in collected()  # a plain `pytest` in a user's repository is left alone
    device = collected("-m", "parity", "--candidate", "myblock.attn:Block", "--no-reference")
    suite_tests = [line for line in device.splitlines() if line.startswith(str(SUITE))]
    assert suite_tests and all("test_curated_case_files" in line for line in suite_tests), device[-2000:]
    assert "deselected" in device.splitlines()[-1]


def test_require_neuron_turns_a_skipped_neuron_test_into_a_failure(scratch, tmp_path):
    repo = tmp_path / "neuron-repo"
    (repo / "tests").mkdir(parents=True)
    # pretend the SDK imports (this machine has none), so that the gate's start-up check passes
    (repo / "conftest.py").write_text(textwrap.dedent('''
        import harness.neuron.environment as environment
        environment.detect = lambda: environment.NeuronEnvironment("cpu", "pretended by the test")
    '''))
    (repo / "tests" / "test_gate.py").write_text(textwrap.dedent('''
        import pytest

        @pytest.mark.parity
        def test_cannot_run_here(candidate_name):
            pytest.skip("the module does not support this plan")
    '''))
    plain = _pytest(repo, "-p", "no:cacheprovider", "tests", "--candidate", "neuron", "-rs")
    assert plain.returncode == 0 and "1 skipped" in plain.stdout, plain.stdout[-2000:]
    gate = _pytest(repo, "-p", "no:cacheprovider", "tests", "--candidate", "neuron", "--require-neuron")
    assert gate.returncode == 1 and "1 failed" in gate.stdout, gate.stdout[-2000:]
    assert "--require-neuron: this test of Neuron candidate neuron would have been skipped" in gate.stdout
    assert "the module does not support this plan" in gate.stdout


@pytest.mark.skipif(os.path.exists("/dev/neuron0"), reason="a Neuron device is present")
def test_require_neuron_refuses_to_start_without_the_sdk(scratch):
    from harness.neuron.environment import detect

    if detect().mode != "unavailable":
        pytest.skip("the Neuron SDK imports here")
    out = _pytest(scratch, "-p", "no:cacheprovider", "-m", "parity", "--candidate", "neuron", "--require-neuron")
    assert out.returncode == 4 and "--require-neuron: the Neuron SDK does not import here" in out.stderr, out.stderr
    assert "pip install --extra-index-url https://pip.repos.neuron.amazonaws.com" in out.stderr
    cpu_only = _pytest(scratch, "-p", "no:cacheprovider", "-m", "parity", "--candidate", "reference", "--require-neuron")
    assert cpu_only.returncode == 4 and "--require-neuron needs a Neuron candidate" in cpu_only.stderr


def test_marker_expressions_that_ask_for_parity():
    assert _selects_parity("parity") and _selects_parity("parity and not slow") and _selects_parity("slow or parity")
    assert not _selects_parity("not parity") and not _selects_parity("slow") and not _selects_parity("")


def test_the_ci_profile_skips_the_explain_phase():
    """After a failure, hypothesis's explain phase reran the example under a line tracer: 37 s of 48."""
    phases = settings.get_profile("ci").phases
    assert Phase.explain not in phases and Phase.shrink in phases


def test_session_records_keep_a_short_repr(pytestconfig):
    """Hypothesis prints fixture arguments with a falsifying example; the records went with them (2 MB)."""
    checker = ParityChecker(pytestconfig)
    for i in range(500):
        checker.records.current = f"test_{i}"
        checker.records.add({"id": f"case-{i}", "candidate": "c", "message": "x" * 1000}, in_hypothesis=False)
    assert len(checker.records) == 500 and len(repr(checker)) < 60


def test_records_keep_one_per_hypothesis_test_and_one_per_check_otherwise():
    records = ParityRecords()
    records.current = "suite.py::test_generated_cases[x]"
    for i in range(3):
        records.add({"id": f"case-{i}", "candidate": "x"}, in_hypothesis=True)
    records.current = "tests/test_mine.py::test_loop"
    for i in range(3):
        records.add({"id": f"case-{i}", "candidate": "x"}, in_hypothesis=False)
    assert [r["id"] for r in records] == ["case-2", "case-0", "case-1", "case-2"]


def test_parity_cases_names_a_missing_file(tmp_path):
    from harness.pytest_plugin import parity_cases

    with pytest.raises(FileNotFoundError, match="no case file at .*nowhere.json .*relative paths are taken from"):
        parity_cases("nowhere.json")
    (tmp_path / "a.json").write_text(json.dumps({"lengths": [4]}))
    (params,) = parity_cases(tmp_path / "*.json")
    assert params.id == params.values[0].id


def test_a_candidate_holding_processes_is_loaded_once_per_session(pytestconfig):
    """nxdi-emulation@tpN holds rank processes: every test of the session reuses one (each test loading
    its own left a group of ranks per test until the session ended), and the session's end stops them."""
    checker = ParityChecker(pytestconfig)
    first = checker.load("nxdi-emulation@tp2")
    assert checker.load("nxdi-emulation@tp2") is first and checker.load("reference") is not checker.load("reference")
    closed = []
    first.close = lambda: closed.append(True)
    checker.close()
    assert closed == [True] and checker.load("nxdi-emulation@tp2") is not first


def test_each_xdist_worker_gets_its_share_of_the_cores(monkeypatch):
    """Two workers with torch's default one OpenMP thread per core spun 4 threads on 2 cores (the
    long-position checks: 115 s instead of 13 s); each worker now gets cores // workers, and an
    explicit $OMP_NUM_THREADS is kept."""
    from types import SimpleNamespace

    import torch

    import harness.machine
    from harness.pytest_plugin import share_cores

    monkeypatch.setattr(harness.machine, "usable_cpus", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: seen.append(n))
    seen = []
    share_cores(SimpleNamespace(workerinput={"workercount": 2}))
    assert os.environ["OMP_NUM_THREADS"] == "4" and seen == [4]
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    share_cores(SimpleNamespace(workerinput={"workercount": 2}))
    assert os.environ["OMP_NUM_THREADS"] == "3" and seen == [4]
    share_cores(SimpleNamespace())  # not a worker: left alone
