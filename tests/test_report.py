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
                        "--parity-report", str(tmp_path / "rep")], capture_output=True, text=True, env=env, cwd=tmp_path,
                       check=False)
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


# Issue 19: the page names what it sees, keeps the environment apart from the checks, shows Neuron
# columns only when a Neuron candidate ran, and escapes every value of the records file.

def _profile_record(case: Case, errors: list[float], rows: list[int] | None = None, positions=None) -> dict:
    """A failing record whose block-output error against position is `errors`; the reference's is 0.01."""
    positions = list(range(len(errors))) if positions is None else positions
    return {"id": case.id, "candidate": "port", "verdict": "fail", "case": case.to_dict(),
            "maps": {"positions": positions, "rows": rows or [0] * len(errors),
                     "output_position": {"candidate": errors, "reference": [0.01] * len(errors)}}}


def test_a_decaying_error_is_named_the_signature_of_sinks():
    decaying = [1.0 / (p + 1) + 0.01 for p in range(130)]
    (sentence,) = report.looks_like(_profile_record(Case(layer=1, lengths=(130,)), decaying))
    assert "largest at the first positions" in sentence and "sinks" in sentence
    assert "peak 1.01 at position 0" in sentence and "from position 4 on" in sentence


def test_a_flat_error_is_named_nothing():
    case = Case(layer=1, lengths=(130,))
    assert report.looks_like(_profile_record(case, [0.5] * 130)) == []  # wrong everywhere alike
    assert report.looks_like(_profile_record(case, [0.01] * 130)) == []  # no position beyond the reference
    assert report.looks_like({"id": "x", "candidate": "c", "verdict": "error"}) == []  # no maps


def test_errors_from_the_window_edge_are_named():
    errors = [0.01] * 131 + [0.5] * 69
    (sentence,) = report.looks_like(_profile_record(Case(layer=0, lengths=(200,)), errors))
    assert "start at position 131" in sentence and "W=128" in sentence and "131 judged positions" in sentence
    assert report.looks_like(_profile_record(Case(layer=1, lengths=(200,)), errors)) == []  # a full layer has no window


def test_errors_only_in_padded_rows_are_named():
    case = Case(layer=0, lengths=(130, 5, 64), padding="left")
    rows = [0] * 130 + [1] * 5 + [2] * 64
    positions = list(range(130)) + list(range(5)) + list(range(64))
    errors = [0.01] * 130 + [0.9] * 69
    (sentence,) = report.looks_like(_profile_record(case, errors, rows, positions))
    assert "only in padded rows (rows 1, 2" in sentence and "130 slots" in sentence and "left" in sentence


def test_errors_only_in_decode_steps_or_the_second_chunk_are_named():
    case = Case(layer=1, lengths=(40, 20), plan="decode", decode_steps=4)
    positions = list(range(40)) + list(range(20))
    errors = [0.9 if p >= n - 4 else 0.01 for n in (40, 20) for p in range(n)]
    (sentence,) = report.looks_like(_profile_record(case, errors, [0] * 40 + [1] * 20, positions))
    assert "only in the decode steps" in sentence and "last 4 positions" in sentence
    chunked = Case(layer=1, lengths=(60,), plan="chunked", chunk_offset=30)
    (sentence,) = report.looks_like(_profile_record(chunked, [0.01] * 30 + [0.9] * 30))
    assert "only in the second chunk (positions from 30 on)" in sentence


def test_real_sink_bug_is_named_and_a_mask_bug_is_not():
    from harness.candidates import load_candidate

    case = Case(layer=1, lengths=(130,))
    expected = expected_for(case)
    sinks = record_of(case, judge(case, load_candidate("mutant:sinks_dropped"), expected, probes=False))
    mask = record_of(case, judge(case, load_candidate("mutant:no_causal_mask"), expected, probes=False))
    assert ["sinks bug" in s for s in report.looks_like(sinks)] == [True]
    assert report.looks_like(mask) == []  # largest early too, but it does not die out: no sink signature


def test_page_says_what_a_failure_looks_like(tmp_path):
    decaying = [1.0 / (p + 1) + 0.01 for p in range(130)]
    page = write_report([_profile_record(Case(layer=1, lengths=(130,)), decaying)], tmp_path).read_text()
    assert "What this looks like:</b> The error is largest at the first positions" in page


def _section(page: str, name: str) -> str:
    return page.split(f'<section id="{name}">', 1)[1].split("</section>", 1)[0]


def test_environment_has_its_own_section_apart_from_the_checks(tmp_path, port_record):
    env = {"harness": "0.1.0", "torch": "9.9", "cpu_capability": "AVX512", "command": "parity run --candidate x"}
    page = write_report([port_record], tmp_path, env).read_text()
    environment, checks = _section(page, "environment"), _section(page, "checks")
    assert "<h2>Environment</h2>" in environment and "AVX512" in environment and "parity run --candidate x" in environment
    assert "<h2>Checks</h2>" in checks and port_record["id"] in checks and "AVX512" not in checks


def test_neuron_columns_only_when_a_neuron_candidate_ran(tmp_path, port_record):
    page = write_report([port_record], tmp_path).read_text()
    assert "Neuron" not in page and "<th>failed probes</th></tr>" in page
    neuron = {**port_record, "candidate": "nxdi-emulation", "info": {"mode": "emulation", "buckets": {"context": 16}}}
    page = write_report([port_record, neuron], tmp_path / "neuron").read_text()
    assert "<th>run (Neuron: mode, buckets, builds)</th>" in page and "<td>emulation, context 16</td>" in page


MARKUP = "<img src=x onerror=alert(1)><script>alert(2)</script>"


def test_every_value_of_the_records_file_is_escaped(tmp_path):
    """A crafted results file: markup in every field that reaches the page stays text."""
    m = MARKUP
    record = {"id": m, "candidate": m, "verdict": m, "message": m, "replay": m, "worst_ratio": 2.0,
              "first_divergent_stage": m, "divergent_stages": [m, m],
              "divergences": [{"stage": m, "result": None, "located_by": m, "also": [m], "layer": None}],
              "stages": [{"stage": m, "max_ratio": 2.0, "rms_ratio": 1.0},
                         {"stage": "probs", "max_ratio": 9.0, "rms_ratio": 1.0,
                          "split": {m: {"cand_max": 1.0, "ref_max": 0.1, "max_ratio": 10.0}}}],
              "probes": [{"name": m, "passed": False, "binding": True, "detail": m}],
              "info": {"mode": m, "buckets": {m: m}, "builds": 1, "build_seconds": 2.0},
              "case": {"preset": m, "lengths": [m]}, "bounds": {m: [3, 2]}}
    results = tmp_path / "r.json"
    results.write_text(json.dumps({"cases": [record, {**record, "verdict": "pass"}],
                                   "environment": {m: m, "command": m}}))
    assert main(["report", str(results), "--out", str(tmp_path / "rep")]) == 0
    page = (tmp_path / "rep" / "index.html").read_text()
    assert "<script" not in page.lower() and "<img src=x" not in page.lower()
    assert all(tag.startswith(' src="img/') for tag in page.split("<img")[1:])  # only the report's own pictures
    assert page.count("&lt;img src=x onerror=alert(1)&gt;") >= 10  # shown, as text


@pytest.mark.parametrize("field, value", [("worst_ratio", "<b>1</b>"), ("info", "<b>"), ("replay", ["x"])])
def test_a_record_field_of_the_wrong_type_is_named(tmp_path, field, value):
    results = tmp_path / "r.json"
    results.write_text(json.dumps({"cases": [{"id": "x", "candidate": "c", "verdict": "fail", field: value}]}))
    with pytest.raises(ValueError, match=f"record 0: field '{field}' must be"):
        report.load_results(results)
