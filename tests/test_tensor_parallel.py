"""nxdi-emulation sharded over rank processes (nxdi-emulation@tpN: harness/neuron/launcher.py, sharding.py,
tp.py) as users reach it: `parity run --neuron-config`, the pytest plugin, repro files, and the self-test's
sharding mutants, each killed and named. Small dims (8 query, 2 kv heads), so tp 2, 4 and 8 all shard."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from harness import cli
from harness.candidates import load_candidate
from harness.case import Case
from harness.neuron.bugs import SHARDING_MUTANTS, Bugs
from harness.neuron.candidate import ShardedCandidate
from harness.neuron.sharding import plan
from harness.runner import run_case
from tests import fake_sdk

ROOT = Path(__file__).resolve().parent.parent
CASES = [Case(layer=0, lengths=(130,), plan="decode", decode_steps=3, sinks="dominant", input_seed=3),
         Case(layer=1, lengths=(129, 5), padding="left", input_seed=4),
         Case(layer=1, lengths=(65536,), plan="from_cache", decode_steps=1, input_seed=5)]


@pytest.fixture(scope="module")
def sharded():
    """tp 2 and tp 8, their rank processes started once for the module."""
    candidates = [load_candidate("nxdi-emulation@tp2"), load_candidate("nxdi-emulation@tp8")]
    yield candidates
    for c in candidates:
        c.close()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_the_sharded_emulation_passes_and_says_how_it_ran(sharded, case):
    for v in run_case(case, sharded):
        assert v.verdict == "pass", v.message
        assert v.info["tp_degree"] in (2, 8) and v.info["gqa"] == "REPLICATE_TO_TP_DEGREE"


@pytest.mark.parametrize("name", SHARDING_MUTANTS)
def test_every_sharding_mutant_is_killed_and_named(name):
    """On a context encoding with dominant sinks (sink mistakes barely show in late decode steps): each
    fails at one stage, found by the oracle or by the tolerance-free rank check naming the rank or kv head."""
    mutant = load_candidate(f"mutant:{name}")
    try:
        (v,) = run_case(Case(layer=0, lengths=(20,), sinks="dominant"), [mutant])
    finally:
        mutant.close()
    assert v.verdict == "fail", v.message
    assert len(v.divergent_stages) == 1, v.divergent_stages
    if "tolerance-free rank check" in v.message:  # named by the rank or kv head, at the stage they differ
        assert ("kv head" in v.message and v.first_divergent_stage in ("k_rope", "v")) or (
            "rank 1's" in v.message and v.first_divergent_stage == "out_proj"), v.message


def test_layouts_upstream_cannot_shard_and_too_few_heads_are_unsupported():
    three, sixteen = load_candidate("nxdi-emulation@tp3"), load_candidate("nxdi-emulation@tp16")
    (v,) = run_case(CASES[1], [three])
    assert v.verdict == "unsupported" and "does not divide the 8 query heads" in v.message
    (v,) = run_case(CASES[1], [sixteen])  # tp 16 is a real deployment: fine at full dims, impossible here
    assert v.verdict == "unsupported" and "larger than the 8 query heads" in v.message
    assert three._group is None and sixteen._group is None  # refused before any process started


def test_variants_are_separate_checks_and_a_repro_replays_the_same_variant(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PARITY_FAILURES_DIR", str(tmp_path / "f"))
    case_file = tmp_path / "case.json"
    case_file.write_text(json.dumps({"layer": 0, "lengths": [20], "sinks": "dominant"}))
    results = tmp_path / "r.json"
    assert cli.main(["run", "--candidate", "nxdi-emulation", "--candidate", "mutant:tp_sink_shards_reversed",
                     "--neuron-config", '[{"tp_degree": 1}, {"tp_degree": 2}]', "--case-file", str(case_file),
                     "--json", str(results), "--no-probes"]) == 1
    out = capsys.readouterr().out
    records = {r["candidate"]: r for r in json.loads(results.read_text())["cases"]}
    assert set(records) == {"nxdi-emulation", "nxdi-emulation@tp2", "mutant:tp_sink_shards_reversed"}
    assert records["nxdi-emulation@tp2"]["info"]["tp_degree"] == 2 and "tp_degree" not in records["nxdi-emulation"]["info"]
    assert "tp 2 (REPLICATE_TO_TP_DEGREE)" in out  # the table's run notes say the deployment
    from harness.summary import markdown

    assert "emulation, tp 2" in markdown(results)
    replay = next(line.split("replay: ", 1)[1] for line in out.splitlines() if "replay: " in line)
    assert cli.main(replay.split()[1:]) == 1
    assert "candidate mutant:tp_sink_shards_reversed: FAIL" in capsys.readouterr().out


def test_the_plugin_runs_each_variant(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PARITY_FAILURES_DIR": str(tmp_path / "f")}
    env.pop("PYTEST_ADDOPTS", None)
    out = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", "parity", "--candidate",
                          "nxdi-emulation", "--neuron-config", '{"tp_degree": 4}', "-k",
                          "test_curated_sweep and small-L0-decode3", "-rA", str(ROOT / "harness" / "pytest_plugin" / "suite.py")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert "test_curated_sweep[nxdi-emulation@tp4-small-L0-decode3" in out.stdout


def test_the_default_sweep_passes_at_tp_2_and_8(sharded):
    """Issue 21's bar for the emulation, small dims here (the full-dims cases: the slow test below)."""
    from harness.sweep import default_cases

    failed = [f"{v.case_id} {v.candidate}: {v.message[:200]}" for case in default_cases(quick=True)
              for v in run_case(case, sharded, probes=False) if v.verdict != "pass"]
    assert not failed, failed


@pytest.mark.slow
def test_the_full_dims_sweep_passes_at_tp_2_and_8(sharded):
    from harness.sweep import default_cases

    failed = [f"{v.case_id} {v.candidate}: {v.message[:200]}" for case in default_cases(long=True)
              if case.preset == "full" for v in run_case(case, sharded, probes=False) if v.verdict != "pass"]
    assert not failed, failed


def hang_on_rank_1(rank, world, spec, batch, buckets, bugs):
    import time

    if rank == 1:
        time.sleep(600)
    return "never judged"


def fail_on_rank_1(rank, world, spec, batch, buckets, bugs):
    if rank == 1:
        raise RuntimeError("rank 1 broke while building its shard")
    import time

    time.sleep(600)  # rank 0 waits in a collective that will never complete


@pytest.mark.parametrize("fn, verdict, said", [("hang_on_rank_1", "timeout", "rank(s) [1]"),
                                               ("fail_on_rank_1", "error", "rank 1 broke while building its shard")])
def test_a_rank_that_fails_or_hangs_ends_the_check_and_leaves_no_process(monkeypatch, fn, verdict, said):
    from harness.neuron.candidate import ShardedCandidate

    started = []

    class Broken(ShardedCandidate):
        def rank_call(self):
            started.extend(self._group.pids)  # the ranks of this candidate, before anything fails
            return f"tests.test_tensor_parallel:{fn}", self.bugs

    monkeypatch.setenv("PARITY_TIME_LIMIT", "8")
    candidate = Broken(2, name=f"broken-{fn}")
    (v,) = run_case(CASES[1], [candidate], probes=False)
    assert v.verdict in (verdict, "timeout" if verdict == "timeout" else "error"), v.message
    assert said in v.message or said in v.traceback, v.message
    assert candidate._group is None and len(started) == 2  # closed: every rank stopped
    for pid in started:
        assert not _alive(pid), f"rank process {pid} left behind"


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in state


# -- tp on a Neuron device (harness/neuron/device.py), with NxDI's build_module faked -----------------

def _on_a_fake_device(tp: int) -> ShardedCandidate:
    candidate = ShardedCandidate(tp, name=f"fake-device@tp{tp}")
    candidate.kind, candidate.mode = "neuron", "device"  # the SDK path, its build_module faked
    return candidate


@pytest.mark.parametrize("tp", [2, 8])
def test_on_a_device_one_graph_per_shape_serves_every_rank(monkeypatch, tmp_path, tp):
    """No rank processes: each (phase, shape) is built once at the candidate's tp from the whole layer's
    checkpoint (plus rank_util = arange(tp), as upstream's tp64 tests give it), every rank gets its own
    kv heads of the cache, and the ranks' outputs are checked and gathered as in CPU mode."""
    built = fake_sdk.install(monkeypatch, tmp_path)
    candidate = _on_a_fake_device(tp)
    p = plan(8, 2, tp)
    for case in (CASES[0], CASES[1], Case(layer=1, lengths=(40, 9), plan="from_cache", decode_steps=2, input_seed=6)):
        (v,) = run_case(case, [candidate], probes=False)
        assert v.verdict == "pass", v.message
        assert (v.info["mode"], v.info["tp_degree"], v.info["gqa"]) == ("device", tp, p.strategy)
        # the graph returns what hooks saw at trace time: q, k judged (attn too where o_proj is called as a
        # module: the emulation's ranks multiply by its weight directly), the hand-over checked by position
        assert {"q", "k", "q_rope", "scores", "probs"} <= {s.stage for s in v.stages}, [s.stage for s in v.stages]
        assert case.plan == "from_cache" or v.info["handover"] == "checked by position", v.info
    assert candidate._group is None  # nothing spawned
    assert {(b[2], b[3]["tp_degree"]) for b in built.builds} == {(tp, tp)}
    assert len(built.builds) == len({b[:2] for b in built.builds}) == candidate.builds  # once per (phase, shape)
    for checkpoint in built.checkpoints:
        assert torch.equal(checkpoint["attn.rank_util.rank"], torch.arange(tp, dtype=torch.int32))
        assert checkpoint["attn.qkv_proj.k_proj.weight"].shape[0] == 2 * 16  # unsharded: NxD shards it
    generation = [call for call in built.ranked_calls if len(call[0]) == 6]
    assert generation
    for call in generation:
        caches = [inputs[3] for inputs in call]
        assert {c.shape[1] for c in caches} == {p.kv_per_rank}
        for rank in range(1, tp):  # ranks holding the same kv head got the same keys, the others not
            assert torch.equal(caches[rank], caches[0]) == (p.kv_of(rank) == p.kv_of(0)), rank


@pytest.mark.parametrize("bugs, stage, said", [
    (Bugs(kv_replicas_tiled=True), "k_rope", "kv head 0: rank 1 differs from rank 0"),
    (Bugs(o_proj_not_reduced=True), "out_proj", "rank 1's block output differs from rank 0's")])
def test_on_a_device_ranks_that_disagree_fail_at_their_stage(monkeypatch, tmp_path, bugs, stage, said):
    """A device run whose shards were loaded wrong, or whose o_proj skipped its all-reduce: the
    tolerance-free rank check fails it at the stage, naming the ranks."""
    fake_sdk.install(monkeypatch, tmp_path, shard_bugs=bugs)
    (v,) = run_case(Case(layer=0, lengths=(20,), sinks="dominant"), [_on_a_fake_device(4)], probes=False)
    assert (v.verdict, v.first_divergent_stage) == ("fail", stage), v.message
    assert "tolerance-free rank check" in v.message and said in v.message, v.message


def test_a_tolerance_free_check_failing_inside_a_rank_is_a_fail_at_its_stage():
    """The hand-over check runs in every rank's driver; what fails there comes back as a verdict at its
    stage, naming the rank (it was an `error`: the exception did not survive the trip from the rank)."""
    candidate = ShardedCandidate(2, bugs=Bugs(handover_one_short=True))
    try:
        (v,) = run_case(Case(layer=0, lengths=(150,), plan="decode", decode_steps=1), [candidate], probes=False)
    finally:
        candidate.close()
    assert (v.verdict, v.first_divergent_stage) == ("fail", "k_rope"), v.message
    assert "rank 0: context encoding handed over 126 keys per row" in v.message, v.message
