"""Every independent divergence at once: stage isolation past the first failing stage, the operation
rule that keeps one bug at one stage, mask errors by rule, and what the messages tell a user."""

import json
from dataclasses import replace

import pytest
import torch

from harness.candidates.emulation import EmulatedBlock
from harness.case import Case
from harness.cli import main
from harness.expected import Expected, expected_for
from harness.masks import broken_rules
from harness.mutants import MULTI_BUG, MUTANTS, bug_classes, mutant_knobs, variant
from harness.runner import judge, run_case
from harness.stages import STAGES
from tests.broken_candidates import OutputOnly

# A short batch that reaches every bug class but the window ones (two rows, left padding, decode
# steps), one row past the window for those, and one decoded past it (a window wrong in decode only).
SMALL = Case(layer=0, lengths=(12, 5), padding="left", plan="decode", decode_steps=2)
LONG = Case(layer=0, lengths=(130,))
DECODED = Case(layer=0, lengths=(140,), plan="decode", decode_steps=3)
# A full layer's row at positions 65536-65537, from a cache: the long-context bugs (past 4096, 8192 and
# 32767, and keys past 65,536).
FAR = Case(layer=1, lengths=(65538,), plan="from_cache", decode_steps=2)
CASES = (SMALL, LONG, DECODED, FAR)
PORT = "norm_skipped+no_causal_mask+sinks_dropped+residual_missing"


@pytest.fixture(scope="module")
def diagnosed():
    """name -> (case, verdict): each mutant judged, with isolation, on the first of CASES on which it
    fails (every bug of it)."""
    expected = {case: expected_for(case) for case in CASES}
    done = {}

    def get(name):
        if name not in done:
            bugs = bug_classes(name)
            case = next(c for c in CASES if all(
                not judge(c, variant("mutant", b), expected[c], probes=False, isolation=False).passed for b in bugs))
            done[name] = case, judge(case, variant("mutant", name), expected[case], probes=False)
        return done[name]
    return get


@pytest.mark.parametrize("name", list(MUTANTS))
def test_a_single_bug_names_exactly_one_stage(diagnosed, name):
    _, v = diagnosed(name)
    assert v.verdict == "fail" and len(v.divergent_stages) == 1, v.message
    assert v.divergent_stages == [v.first_divergent_stage]


@pytest.mark.parametrize("name", list(MULTI_BUG))
def test_several_bugs_are_each_named_at_the_stage_they_name_alone(diagnosed, name):
    case, v = diagnosed(name)
    alone = []
    for bug in bug_classes(name):
        bug_case, single = diagnosed(bug)
        if bug_case != case:  # the bug alone on the multi-bug mutant's case
            single = judge(case, variant("mutant", bug), expected_for(case), probes=False)
        alone += single.divergent_stages
    assert len(set(alone)) == len(alone) == len(bug_classes(name))
    assert v.divergent_stages == sorted(alone, key=STAGES.index), v.message
    assert v.divergent_stages[0] == v.first_divergent_stage


def test_one_parity_run_names_all_four_bugs_of_the_port(tmp_path, capsys):
    case_file, results = tmp_path / "case.json", tmp_path / "r.json"
    case_file.write_text(json.dumps(SMALL.to_dict()))
    assert main(["run", "--candidate", f"mutant:{PORT}", "--case-file", str(case_file), "--json", str(results),
                 "--report", str(tmp_path / "rep")]) == 1
    out = capsys.readouterr().out
    (record,) = json.loads(results.read_text())["cases"]
    # norm skipped -> normed, causal mask missing -> scores, sinks dropped -> probs, residual -> output
    assert record["divergent_stages"] == ["normed", "scores", "probs", "output"]
    assert record["first_divergent_stage"] == "normed"
    assert "first divergent stage normed (4 divergent stages: normed, scores, probs, output)" in out
    for d in record["divergences"]:
        assert d["located_by"] == "tap" and not d["result"]["passed"]
        assert f"  stage {d['stage']}: " in record["message"]
    scores = record["divergences"][1]["result"]
    assert "causal" in scores["mask_rules"] and "causal mask broken" in out
    probs = record["divergences"][2]["result"]
    assert probs["split"]["sink column"]["max_ratio"] > 6 and "sink column" in out
    assert "normed, scores, probs, output" in out.splitlines()[1]  # the table's row names all four


def test_teacher_stacks_name_every_layer_free_stacks_the_first():
    teacher = Case(layer=0, lengths=(6,), depth=2)
    (v,) = run_case(teacher, [variant("mutant", "norm_skipped+residual_missing")], probes=False)
    assert v.divergent_stages == ["layer 0 / normed", "layer 0 / output", "layer 1 / normed", "layer 1 / output"]
    assert "divergent in other layers too" in v.message and v.layers[1]["divergent_stages"] == ["normed", "output"]
    (free,) = run_case(replace(teacher, stack_mode="free"), [variant("mutant", "norm_skipped+residual_missing")])
    assert free.divergent_stages == [free.first_divergent_stage] and free.first_divergent_stage.startswith("layer 0 / ")


def test_mask_errors_are_counted_by_rule():
    hq = expected_for(LONG).spec.config.num_attention_heads
    w = expected_for(LONG).spec.window
    n = LONG.lengths[0]

    def rules(bug, case=LONG, stage="scores", drop_scores=False):
        e = expected_for(case)
        if drop_scores:  # as from goldens: the mask is judged at probs
            e = Expected(e.spec, e.batch, {k: t for k, t in e.oracle.items() if k != "scores"},
                         {k: t for k, t in e.reference.items() if k != "scores"})
        v = judge(case, variant("mutant", bug), e, probes=False, isolation=False)
        return next(s for s in v.stages if s.stage == stage).mask_rules, v.message

    # each query at position p >= W sees one key too many (distance W)
    assert rules("window_w_plus_1")[0] == {"window": {"open": hq * (n - w)}}
    # each query at position p >= W - 1 loses the key at distance W - 1
    assert rules("window_w_minus_1")[0] == {"window": {"hidden": hq * (n - w + 1)}}
    # no mask at all: every later key open, and every key W or more back
    found, message = rules("no_causal_mask")
    assert found == {"causal": {"open": hq * n * (n - 1) // 2}, "window": {"open": hq * (n - w) * (n - w + 1) // 2}}
    assert "causal mask broken" in message and "window mask broken" in message
    # two mask bugs in one port: each rule named, with the count each bug has alone
    two = Case(layer=0, lengths=(130, 20))
    both, message = rules("window_w_plus_1+padding_not_masked", two)
    assert both == {**rules("window_w_plus_1", two)[0], **rules("padding_not_masked", two)[0]}
    assert set(both) == {"window", "padding"} and "padding mask broken" in message
    # without scores the probabilities show the same rules
    at_probs, message = rules("no_causal_mask", stage="probs", drop_scores=True)
    assert set(at_probs) == {"causal", "window"} and 0 < at_probs["causal"]["open"] <= found["causal"]["open"]
    assert "given non-zero probability" in message


def test_broken_rules_classifies_each_kind_of_pair():
    positions = torch.tensor([[0, 1, 2, 0]])  # three tokens and a padding slot
    valid = torch.tensor([[True, True, True, False]])
    pairs = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    opened, hidden = pairs.clone(), pairs.clone()
    opened[0, 0, 0, 1] = opened[0, 0, 0, 2] = True  # later keys
    opened[0, 0, 2, 0] = True  # an earlier key (masked only by a window)
    opened[0, 0, 1, 3] = True  # padding
    hidden[0, 0, 2, 2] = True  # the query's own key
    hidden[0, 0, 2, 1] = hidden[0, 0, 1, 0] = True  # earlier keys
    assert broken_rules(positions, positions, valid, opened, hidden) == {
        "causal": {"open": 2, "hidden": 1}, "window": {"open": 1, "hidden": 2}, "padding": {"open": 1}}
    assert broken_rules(positions, positions, valid, pairs) == {}


def test_an_operation_counts_once(diagnosed):
    """Plain RoPE fails q_rope and k_rope on its own, GQA tile order scores and attn: one bug each."""
    for name, stage, also in (("plain_rope_not_yarn", "q_rope", ["k_rope"]), ("gqa_tile_not_interleave", "scores", ["attn"])):
        _, v = diagnosed(name)
        assert [(d.stage, d.also) for d in v.divergences] == [(stage, also)], v.message
        assert f"{also[0]} also fails on its own" in v.message


def test_messages_say_what_the_candidate_needs_next():
    e = expected_for(SMALL)
    tapless = OutputOnly(sinks="dropped", residual=False)
    v = judge(SMALL, tapless, e, probes=False)
    assert "taps only its output" in v.message and "normed, q, k, v, q_rope" in v.message
    assert "only the last one is bracketed" in v.message and v.divergent_stages == ["output"]

    class NoFeed:  # taps every stage but cannot be entered
        name = "no_feed"

        def run(self, spec, batch, *, taps):
            return EmulatedBlock(**mutant_knobs(PORT)).run(spec, batch, taps=taps)

    v = judge(SMALL, NoFeed(), e, probes=False)
    assert v.divergent_stages == ["normed"] and "accepts feed=" in v.message and "taps only" not in v.message

    def plain(spec, batch):
        return EmulatedBlock(sinks="dropped").run(spec, batch).output

    from harness.candidates import as_candidate
    v = judge(SMALL, as_candidate(plain), e, probes=False)
    assert "taps only its output" in v.message and "accepts feed=" in v.message

    from harness.candidates.flash import FlashBlock  # never materialises scores or probabilities
    v = judge(SMALL, FlashBlock(name="flash_no_mask", causal=False), e, probes=False)
    assert v.divergent_stages == ["attn"] and "not tapped: scores, probs; an error that starts there" in v.message


def test_isolation_survives_a_candidate_that_cannot_be_entered_everywhere():
    class Picky(EmulatedBlock):
        def run(self, spec, batch, *, taps=False, feed=None):
            if feed and "probs" in feed:
                raise NotImplementedError("no entry after probs")
            return super().run(spec, batch, taps=taps, feed=feed)

    v = judge(SMALL, Picky(name="picky", **mutant_knobs("norm_skipped+sinks_dropped+residual_missing")),
              expected_for(SMALL), probes=False)
    assert v.divergent_stages == ["normed", "probs"]
    assert "stage isolation stopped early: entering the candidate at attn raised NotImplementedError" in v.message


def test_combined_mutant_names_are_checked():
    assert mutant_knobs("norm_skipped+residual_missing") == {"norm": False, "residual": False}
    with pytest.raises(ValueError, match="sets window_delta, which an earlier bug in it sets too"):
        mutant_knobs("window_w_plus_1+window_w_minus_1")
    with pytest.raises(ValueError, match="unknown mutant 'nope'"):
        variant("mutant", "norm_skipped+nope")
    with pytest.raises(ValueError, match="names a bug twice"):
        bug_classes("norm_skipped+norm_skipped")


def test_replay_prints_every_divergence(tmp_path, capsys):
    case_file = tmp_path / "case.json"
    case_file.write_text(json.dumps(Case(layer=1, lengths=(6,)).to_dict()))
    assert main(["run", "--candidate", f"mutant:{PORT}", "--case-file", str(case_file), "--no-probes"]) == 1
    replay = next(line.split("replay: ")[1] for line in capsys.readouterr().out.splitlines() if "replay: " in line)
    assert main(["replay", replay.split(" ", 2)[2]]) == 1
    out = capsys.readouterr().out
    assert "divergent stages normed, scores, probs, output; entered with the oracle's values" in out
    table = out.split("entered with the oracle's values of every earlier stage:\n")[1].splitlines()
    assert [line.split()[1] for line in table[1:5]] == ["normed", "scores", "probs", "output"]

