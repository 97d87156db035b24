"""The self-test: every mutant killed, no benign variant flagged; each generator ingredient earns
its place (removing it lets a mutant survive)."""

import json

import pytest

from harness.candidates import load_candidate
from harness.case import PLANS
from harness.cli import main
from harness.mutants import BENIGN, MULTI_BUG, MUTANTS
from harness.selftest import ABLATIONS, ExpectedCache, draw_cases, hunt, run_selftest
from harness.strategies import cases


@pytest.mark.slow
def test_full_selftest_kills_every_mutant_without_false_alarms(tmp_path):
    result = run_selftest(benign_examples=100)
    summary = result.to_dict()["summary"]
    survivors = [m.name for m in result.mutants if not m.killed]
    alarms = [a for b in result.benign for a in b.alarms]
    assert not survivors, survivors
    unnamed = [m.message for m in result.mutants if not m.named]
    assert not unnamed, unnamed  # each single bug at exactly one stage, each of several at its own
    assert {m.name for m in result.mutants} >= set(MULTI_BUG) and summary["named"] == summary["mutants"]
    assert summary["median_examples_to_kill"] <= 10
    assert summary["benign_examples"] >= 500 and not alarms, alarms


@pytest.mark.slow
@pytest.mark.parametrize("ablation", list(ABLATIONS))
def test_each_generator_ingredient_earns_its_place(ablation):
    """Without the ingredient, at least one mutant that needs it survives; with it, that mutant dies."""
    kwargs, needy = ABLATIONS[ablation]
    cache = ExpectedCache()
    without = [hunt(name, draw_cases(cases(**{"long": False, "plans": PLANS, **kwargs}), 25), cache) for name in needy]
    survivors = [m.name for m in without if not m.killed]
    assert survivors, f"removing {ablation} let no mutant survive"
    assert hunt(survivors[0], draw_cases(cases(long=False, plans=PLANS), 100), cache).killed


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
    # head order cannot matter when every sink is equal (zero in every case drawn, one value in the sink probe)
    assert main(["selftest", "--mutant", "sinks_wrong_head_order", "--benign", "softmax_float32", "--benign-examples", "1",
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


def test_a_multi_bug_mutant_has_every_bug_named(tmp_path, capsys):
    out = tmp_path / "s.json"
    port = "norm_skipped+no_causal_mask+sinks_dropped+residual_missing"
    assert main(["selftest", "--mutant", port, "--benign", "softmax_float32", "--benign-examples", "1",
                 "--json", str(out)]) == 0
    assert "1 of 1 mutants killed (median 1 examples to kill), 1 with every bug named" in capsys.readouterr().out
    (m,) = json.loads(out.read_text())["mutants"]
    assert m["named"] and list(m["bug_stages"]) == port.split("+")
    assert m["divergent_stages"] == [stage for (stage,) in m["bug_stages"].values()]


def test_bugs_not_named_each_at_their_own_stage_fail_the_selftest(capsys):
    """Both bugs break the scores: one stage cannot name two bugs apart, and the self-test says so."""
    assert main(["selftest", "--mutant", "no_causal_mask+softmax_scale_multiplied", "--benign", "softmax_float32",
                 "--benign-examples", "1"]) == 1
    text = capsys.readouterr().out
    assert "0 with every bug named" in text
    assert "diagnosis incomplete: named together scores; no_causal_mask alone: scores; softmax_scale_multiplied alone: scores" in text
