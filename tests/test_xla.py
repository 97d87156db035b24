"""The xla mode (issue 23): a Neuron candidate traced by public torch-xla on the CPU, with tracing checks.

The rules (harness/neuron/tracing.py) and how they reach a verdict are tested everywhere, on counts
written here; the tests marked `xla` trace for real and run only where torch-xla imports (the xla tier
of CI, in its own venv: `PARITY_XLA=1 ./dev test -m xla`), skipping with that reason elsewhere."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.case import Case
from harness.compare import Verdict
from harness.neuron.environment import NeuronUnavailable
from harness.neuron.tracing import Tracing
from harness.runner import apply_checks

ROOT = Path(__file__).resolve().parent.parent
CONTEXT, GENERATION = ("context", (1, 128, 96)), ("generation", (1, 1, 96))


def _traced(calls, reruns=(0, 0)) -> Tracing:
    """calls: (key, compiles, executions) in order."""
    t = Tracing()
    for i, (key, compiles, executions) in enumerate(calls):
        t.note(key, compiles, executions, f"call {i}")
    t.reruns = list(reruns)
    return t


def _failed(t: Tracing, strict: bool = False) -> dict[str, dict]:
    return {c["name"].removeprefix("tracing: "): c for c in t.checks(strict) if not c["passed"]}


def test_a_static_graph_per_phase_passes_every_rule():
    t = _traced([(CONTEXT, 1, 1), (GENERATION, 1, 1), (GENERATION, 0, 1), (GENERATION, 0, 1)])
    assert _failed(t) == {}
    assert t.graphs() == {"the context graph [1x128x96]": 1, "the generation graph [1x1x96]": 1}


def test_a_recompile_at_every_step_fails_naming_the_steps():
    t = _traced([(CONTEXT, 1, 1), (GENERATION, 1, 1), (GENERATION, 1, 1), (GENERATION, 1, 1)], reruns=(3, 3))
    failed = _failed(t)
    assert set(failed) == {"no recompile across token generation", "warm rerun compiles nothing"}, failed
    assert "the generation graph [1x1x96] at call 2: 1 compile(s)" in failed["no recompile across token generation"]["detail"]


def test_a_graph_break_fails_one_execution_per_call():
    failed = _failed(_traced([(CONTEXT, 2, 2), (GENERATION, 1, 1)]))
    assert "context: 2 executions" not in str(failed)  # steps are named by the driver's words
    assert "call 0: 2 executions" in failed["one execution per call"]["detail"]
    assert "compiled more than once on its first call" in failed["one compile per graph"]["detail"]


def test_a_first_call_that_traces_another_graph_warns_unless_strict():
    lazy = _traced([(CONTEXT, 1, 1), (GENERATION, 1, 1), (GENERATION, 1, 1), (GENERATION, 0, 1)], reruns=(1, 0))
    warned = _failed(lazy)
    assert set(warned) == {"first call traces the graph later calls use"} and not warned[
        "first call traces the graph later calls use"]["binding"]
    assert _failed(lazy, strict=True)["first call traces the graph later calls use"]["binding"]


def test_failing_tracing_checks_fail_the_verdict_naming_the_rule():
    v = Verdict("case-1", "cand", "pass")
    apply_checks(v, _traced([(CONTEXT, 1, 2)]).checks())
    assert v.verdict == "fail" and v.first_divergent_stage == "tracing: one execution per call"
    assert "tracing: one execution per call failed: 1 call(s)" not in v.message and "2 executions" in v.message
    kept = Verdict("case-1", "cand", "pass")
    apply_checks(kept, _traced([(CONTEXT, 1, 1)], reruns=(1, 0)).checks())  # a warning only
    assert kept.verdict == "pass" and any(not p["passed"] for p in kept.probes)


def test_the_xla_mode_is_never_chosen_silently_and_says_how_to_get_it(monkeypatch):
    pytest.importorskip("torch")
    from harness.neuron import xla
    from harness.neuron.candidate import NxdiEmulation

    if xla.xla_import_error() is None:
        pytest.skip("torch-xla is installed here: the refusal is for machines without it")
    assert NxdiEmulation().mode == "emulation"
    monkeypatch.setenv("PARITY_NEURON_MODE", "xla")
    with pytest.raises(NeuronUnavailable, match=r"torch-xla does not import here .*PARITY_XLA=1 ./dev"):
        NxdiEmulation()
    out = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--candidate", "nxdi-emulation", "--neuron-mode",
                          "xla", "--quick"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PARITY_NEURON_MODE": ""})
    assert out.returncode == 2 and "torch-xla does not import here" in out.stderr, out.stderr[-2000:]


# -- traced for real: only where torch-xla imports ------------------------------------------------------

def _xla():
    os.environ.setdefault("PJRT_DEVICE", "CPU")
    pytest.importorskip("torch_xla", reason="torch-xla is not installed here (the xla tier: PARITY_XLA=1 ./dev test -m xla)")
    from harness.neuron.candidate import NxdiEmulation

    candidate = NxdiEmulation(name="nxdi-emulation")
    candidate.mode = "xla"
    return candidate


XLA_CASES = [Case(layer=0, lengths=(20,), input_seed=1),  # prefill, bucket 128
             Case(layer=1, lengths=(200,), input_seed=2),  # prefill, bucket 256
             Case(layer=0, lengths=(150,), plan="decode", decode_steps=3, input_seed=3),  # decode across the ring
             Case(layer=1, lengths=(300,), plan="from_cache", decode_steps=2, input_seed=4)]


@pytest.mark.xla
def test_the_emulation_traced_passes_with_one_graph_per_phase_and_bucket():
    from harness.runner import run_case

    candidate = _xla()
    for case in XLA_CASES:
        (v,) = run_case(case, [candidate], probes=False)
        assert v.verdict == "pass", v.message
        tracing = v.info["tracing"]
        assert all(c["passed"] for c in tracing["checks"]), tracing["checks"]
        assert tracing["reruns"] == [0, 0]
        phases = {name.split()[1] for name in tracing["graphs"]}
        assert phases == ({"generation"} if case.plan == "from_cache" else
                          {"context", "generation"} if case.plan == "decode" else {"context"}), tracing["graphs"]
        assert all(n <= 1 for n in tracing["graphs"].values()), tracing["graphs"]
        assert tracing["eager_max_ulps"] <= 4, tracing  # traced against eager: a few units in the last place


@pytest.mark.xla
@pytest.mark.parametrize("name", ["xla_cache_sliced_by_python_int", "xla_control_flow_on_tensor",
                                  "xla_buffer_on_first_forward"])
def test_each_tracing_mutant_is_caught_by_the_check_named_for_it(name):
    _xla()
    from harness.neuron import tracing_mutants

    result = tracing_mutants.run(name)
    assert result.killed, result.detail


DEBUG_OUTPUT = """Compilation Analysis: ================================================================================
Compilation Analysis: Compilation Cause
Compilation Analysis:   most likely user code trying to access tensor value before torch_xla.sync
Compilation Analysis: Graph Info:
Compilation Analysis:   Graph Hash: 20c4ea62728eab26227aa9b376ae82c6
Compilation Analysis: Python Frame Triggered Execution:
Compilation Analysis:   forward (/home/me/mypkg/attn.py:37)
Compilation Analysis:   _call_impl (/venv/lib/python3.11/site-packages/torch/nn/modules/module.py:1786)
Compilation Analysis: --------------------------------------------------------------------------------
Compilation Analysis: Compilation Cause
Compilation Analysis:   user torch_xla.sync
Compilation Analysis: Python Frame Triggered Execution:
Compilation Analysis:   sync (/venv/lib/python3.11/site-packages/torch_xla/torch_xla.py:87)
Compilation Analysis:   _traced (/work/harness/neuron/xla.py:120)
Compilation Analysis:   context (/work/harness/neuron/xla.py:150)
"""


def test_the_line_that_cut_a_graph_is_taken_from_torch_xlas_debug_output():
    pytest.importorskip("torch")
    from harness.neuron.xla import triggers

    assert triggers(DEBUG_OUTPUT) == ["forward (/home/me/mypkg/attn.py:37)"]  # the harness's own sync is no cut
    t = Tracing()
    t.note(CONTEXT, 2, 2, "context encoding", triggers(DEBUG_OUTPUT))
    detail = {c["name"]: c for c in t.checks()}["tracing: one execution per call"]["detail"]
    assert "the graph was cut at forward (/home/me/mypkg/attn.py:37)" in detail


@pytest.mark.parametrize("tracing", [{"checks": [{"name": "tracing: x", "passed": "yes"}]}, {"checks": "all good"},
                                     [1, 2], {"checks": [{"name": 1, "passed": True, "detail": "", "binding": True}]}])
def test_a_candidates_malformed_tracing_report_is_an_error_not_a_pass(tracing):
    """The checks come from the candidate's own info: a malformed report is refused, never applied."""
    import torch

    from harness.candidates import CandidateResult, as_candidate
    from harness.runner import run_case

    class Reports:
        name = "reports"

        def run(self, spec, batch, *, taps):
            from harness.candidates import load_candidate

            out = load_candidate("reference").run(spec, batch, taps=taps)
            return CandidateResult(torch.as_tensor(out.output), out.taps, {"tracing": tracing})

    (v,) = run_case(Case(lengths=(5,)), [as_candidate(Reports())], probes=False)
    assert v.verdict == "error" and "info['tracing']['checks'] is not a list" in v.message, v.message


def test_xla_mode_at_tp_above_1_is_refused_not_run_eagerly(monkeypatch):
    pytest.importorskip("torch")
    from harness.neuron import xla
    from harness.neuron.candidate import ShardedCandidate

    monkeypatch.setenv("PARITY_NEURON_MODE", "xla")
    monkeypatch.setattr(xla, "xla_import_error", lambda: None)  # as where torch-xla is installed
    with pytest.raises(ValueError, match="tracing a sharded one is not implemented"):
        ShardedCandidate(2)
