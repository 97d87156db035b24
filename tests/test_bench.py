"""`parity bench`: figures measured in fresh processes, the overhead clock, and the command."""

import json

import pytest

from harness import timing
from harness.bench import measure, targets
from harness.case import Case
from harness.cli import main


def test_a_measurement_runs_in_a_fresh_process_and_reports_its_peak():
    case = Case(layer=1, lengths=(3000,), plan="from_cache", decode_steps=1)
    m = measure("check", case, candidate="emulation")
    assert m["verdict"] == "pass" and m["seconds"] > 0
    assert m["peak_bytes"] >= m["baseline_bytes"] > 0
    assert {"prefix", "inputs", "candidate", "oracle", "reference"} <= set(m["sections"])
    assert "error" in measure("check", case, candidate="no_such_module:X")


def test_the_clock_attributes_nested_sections_once():
    clock = timing.start()
    with timing.section("prefix"), timing.section("inputs"):
        pass
    timing.stop()
    with timing.section("oracle"):  # no clock: nothing counted, nothing raised
        pass
    assert set(clock.seconds) == {"prefix", "inputs"} and clock.forward() == clock.seconds["prefix"]
    assert clock.calls["inputs"] == 1


def test_targets_are_read_from_the_figures():
    row = {"seconds": 30.0, "peak_gib": 2.5}
    figures = {"row_131071": {"sliding": row, "full": {**row, "seconds": 61.0}},
               "oracle_prefill_8192": {"peak_gib": 3.0, "seconds": 9.0}, "overhead": {"ratio": 1.2},
               "default_sweep": {"wall_s": 59.0, "checks": 95, "failed": 0}, "tp8": {"seconds": 95.0}}
    t = targets(figures)
    assert list(t.values()) == [True, False, False, True, True]
    figures["default_sweep"] = {"error": "exit 1: a check failed", "wall_s": 20.0}
    assert list(targets(figures).values())[0] is False


@pytest.mark.slow
def test_bench_command_quick(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert main(["bench", "--quick", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "overhead: built-in sweep" in text and "growth with length" in text and "targets:" in text
    data = json.loads(out.read_text())
    assert {"default_sweep", "overhead", "memory", "row_131071", "hypothesis", "growth", "targets", "machine"} <= set(data)
    assert "default sweep (`parity run` --quick" in text and data["default_sweep"]["failed"] == 0
    assert data["row_131071"]["full"]["verdict"] == "pass"
    assert data["overhead"]["ratio"] > 1
