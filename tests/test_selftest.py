"""The self-test: every mutant killed, no benign variant flagged; each generator ingredient earns
its place (removing it lets a mutant survive)."""

import json

import pytest

from harness.candidates import load_candidate
from harness.cli import main
from harness.mutants import BENIGN, MUTANTS
from harness.selftest import ABLATIONS, ExpectedCache, draw_cases, hunt, run_selftest
from harness.strategies import cases


@pytest.mark.slow
def test_full_selftest_kills_every_mutant_without_false_alarms(tmp_path):
    result = run_selftest(benign_examples=100)
    summary = result.to_dict()["summary"]
    survivors = [m.name for m in result.mutants if not m.killed]
    alarms = [a for b in result.benign for a in b.alarms]
    assert not survivors, survivors
    assert summary["median_examples_to_kill"] <= 10
    assert summary["benign_examples"] >= 500 and not alarms, alarms


@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_each_generator_ingredient_earns_its_place(ablation):
    """Without the ingredient, at least one mutant that needs it survives; with it, that mutant dies."""
    kwargs, needy = ABLATIONS[ablation]
    cache = ExpectedCache()
    without = [hunt(name, draw_cases(cases(**{"long": False, **kwargs}), 25), cache) for name in needy]
    survivors = [m.name for m in without if not m.killed]
    assert survivors, f"removing {ablation} let no mutant survive"
    assert hunt(survivors[0], draw_cases(cases(long=False), 25), cache).killed


def test_selftest_command(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert main(["selftest", "--mutant", "sinks_dropped", "--mutant", "gqa_tile_not_interleave",
                 "--benign", "flash_tiles_online_softmax", "--benign-examples", "6", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "2 of 2 mutants killed" in text and "0 false alarms in 6 benign examples" in text
    data = json.loads(out.read_text())
    assert [m["name"] for m in data["mutants"]] == ["sinks_dropped", "gqa_tile_not_interleave"]
    assert all({"name", "killed", "examples_to_kill"} <= set(m) for m in data["mutants"])
    assert data["benign"][0] == {**data["benign"][0], "name": "flash_tiles_online_softmax", "examples": 6, "false_alarms": 0}


def test_surviving_mutant_fails_the_command(capsys):
    assert main(["selftest", "--mutant", "sinks_zeroed", "--benign", "softmax_float32", "--benign-examples", "1",
                 "--without", "nonzero_sinks", "--max-examples", "10"]) == 1
    assert "0 of 1 mutants killed" in capsys.readouterr().out


def test_bad_selftest_arguments(capsys):
    assert main(["selftest", "--mutant", "nope"]) == 2
    assert "unknown mutant 'nope'" in capsys.readouterr().err
    assert main(["selftest", "--without", "nothing"]) == 2
    assert main(["selftest", "--list"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in list(MUTANTS) + list(BENIGN) + list(ABLATIONS))


def test_variants_by_name():
    assert load_candidate("mutant:residual_missing").name == "mutant:residual_missing"
    assert load_candidate("benign:flash_tiles_online_softmax").name == "benign:flash_tiles_online_softmax"
    with pytest.raises(ValueError, match="unknown mutant 'x'; mutants are: no_causal_mask"):
        load_candidate("mutant:x")
