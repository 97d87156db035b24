"""The HTML report: what a user needs next is on the page (replay, command line, environment), every
divergent stage is marked, both bounds are drawn, each heatmap panel has its own scale, the probs
error is split into the sink and key columns, and absent pictures are explained."""

import json

import pytest

from harness import report
from harness.candidates.emulation import EmulatedBlock
from harness.case import Case
from harness.cli import main
from harness.expected import expected_for
from harness.mutants import mutant_knobs
from harness.report import record_of, write_report
from harness.runner import judge
from tests.broken_candidates import OutputOnly

CASE = Case(layer=0, lengths=(12, 5), padding="left", plan="decode", decode_steps=2)


@pytest.fixture(scope="module")
def port_record():
    block = EmulatedBlock(name="port", **mutant_knobs("norm_skipped+no_causal_mask+sinks_dropped+residual_missing"))
    return record_of(CASE, judge(CASE, block, expected_for(CASE), probes=False), replay="parity replay x.json")


@pytest.fixture
def figures(monkeypatch):
    """The figures the report draws, by file name, kept open for inspection."""
    drawn = {}
    monkeypatch.setattr(report, "_save", lambda fig, img, name: drawn.setdefault(name, fig) and name)
    return drawn


def test_stage_chart_marks_every_divergence_and_both_bounds(tmp_path, port_record, figures):
    write_report([port_record], tmp_path)
    (fig,) = [f for n, f in figures.items() if n.endswith("-stages.png")]
    ax = fig.axes[0]
    red = [t.get_text() for t in ax.get_xticklabels() if t.get_color() == "tab:red"]
    assert red == port_record["divergent_stages"] == ["normed", "scores", "probs", "output"]
    markers = [line for line in ax.get_lines() if line.get_marker() == "v"]
    assert len(markers) == 4
    rms_bounds = sorted({line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == ":"})
    assert rms_bounds == sorted({b[1] for b in port_record["bounds"].values()})


def test_heatmap_panels_have_their_own_scales(tmp_path, port_record, figures):
    write_report([port_record], tmp_path)
    (fig,) = [f for n, f in figures.items() if n.endswith("-heatmap.png")]
    cand, ref = (ax.get_images()[0].get_clim()[1] for ax in fig.axes[:2])
    maps = port_record["maps"]["attn_token_head"]
    assert cand == pytest.approx(max(map(max, maps["candidate"])))
    assert ref == pytest.approx(max(map(max, maps["reference"]))) and ref < cand / 10


def test_page_has_replay_environment_and_probs_split(tmp_path, port_record):
    env = {"harness": "0.1.0", "torch": "9.9", "cpu_capability": "AVX512", "command": "parity run --candidate x"}
    page = write_report([port_record], tmp_path, env).read_text()
    assert "parity replay x.json" in page and "parity run --candidate x" in page and "AVX512" in page
    assert "<td>sink column</td>" in page and "<td>key columns</td>" in page
    assert "normed, scores, probs, output" in page  # the summary table lists every divergent stage
    assert "environment: not recorded" in write_report([port_record], tmp_path / "old").read_text()


def test_absent_pictures_are_explained(tmp_path):
    v = judge(CASE, OutputOnly(residual=False), expected_for(CASE), probes=False)
    page = write_report([record_of(CASE, v)], tmp_path).read_text()
    assert "No per-stage chart: the candidate tapped only its output" in page
    assert "No token x head heatmap: the candidate did not tap attn" in page
    assert not any(p.name.endswith("-stages.png") for p in (tmp_path / "img").iterdir())


def test_run_saves_the_environment_and_report_shows_it(tmp_path, capsys):
    case_file, results = tmp_path / "case.json", tmp_path / "r.json"
    case_file.write_text(json.dumps({"layer": 1, "lengths": [4]}))
    assert main(["run", "--candidate", "mutant:residual_missing", "--case-file", str(case_file), "--no-probes",
                 "--json", str(results)]) == 1
    data = json.loads(results.read_text())
    env = data["environment"]
    assert {"harness", "torch", "python", "cpu_capability", "command"} <= set(env)
    assert env["command"].startswith("parity run --candidate mutant:residual_missing")
    assert data["cases"][0]["replay"].startswith("parity replay ")
    assert main(["report", str(results), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    assert env["cpu_capability"] in page and data["cases"][0]["replay"] in page


FAKE_TESTS = '''
from hypothesis import given, strategies as st


@given(x=st.integers(0, 1000))
def test_fails_from_ten(x, parity):
    parity.records.add({"id": f"x={x}", "candidate": "fake", "verdict": "fail" if x >= 10 else "pass"})
    assert x < 10


@given(x=st.integers(0, 5))
def test_passes(x, parity):
    parity.records.add({"id": f"y={x}", "candidate": "fake", "verdict": "pass"})
'''


def test_pytest_keeps_one_record_per_test(tmp_path):
    """Each hypothesis example and shrink step replaced the test's record: a failing test keeps its
    final falsifying example, and the records never show up in hypothesis's printout."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    shutil.copy(root / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_fake.py").write_text(FAKE_TESTS)
    env = {**os.environ, "HYPOTHESIS_PROFILE": "ci"}
    r = subprocess.run([sys.executable, "-m", "pytest", str(tmp_path), "-p", "no:cacheprovider", "-q",
                        "--parity-report", str(tmp_path / "rep")], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert "1 failed, 1 passed" in r.stdout, r.stdout + r.stderr
    records = sorted(p.name for p in (tmp_path / "rep" / "records").iterdir())
    # the failing test's shrunk example, and one (the last) of the passing test's examples
    assert len(records) == 2 and records[0] == "x_10--fake.json" and records[1].startswith("y_"), records
    assert "1 passed, 1 failed" in (tmp_path / "rep" / "index.html").read_text()
    assert "parity=<parity checker: 1 records>" in r.stdout and "'candidate': 'fake'" not in r.stdout


def test_page_says_how_a_neuron_candidate_ran(tmp_path):
    """Issue 11: the mode, the buckets and (on a device) the builds are in the report's table too."""
    from harness.candidates import load_candidate

    v = judge(CASE, load_candidate("nxdi-emulation"), expected_for(CASE), probes=False)
    assert v.info["mode"] == "emulation" and v.info["buckets"]["context"] >= 12
    page = write_report([record_of(CASE, v)], tmp_path).read_text()
    assert f"<td>emulation, context {v.info['buckets']['context']}" in page
    v.info.update(mode="device", builds=3, build_seconds=41.0)
    page = write_report([record_of(CASE, v)], tmp_path / "device").read_text()
    assert "3 builds 41 s" in page
