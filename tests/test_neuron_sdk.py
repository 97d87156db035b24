"""The Neuron candidates with the SDK's own modules (CPU mode, or a device): skipped, with the install
line, where the SDK does not import. They run on a Neuron host and on any x86_64 box with the SDK."""

import pytest
import torch

from harness.batch import layer_specs
from harness.candidates import load_candidate
from harness.case import Case
from harness.neuron.convert import nxdi_state_dict
from harness.neuron.environment import detect
from harness.runner import run_case

ENV = detect()
pytestmark = pytest.mark.skipif(ENV.mode == "unavailable", reason=ENV.reason)

CASES = [
    Case(layer=0, lengths=(130, 20), plan="decode", decode_steps=3, sinks="dominant", input_seed=31),
    Case(layer=1, lengths=(200,), plan="chunked", chunk_offset=60, input_seed=32),
    Case(layer=0, lengths=(300,), plan="decode", decode_steps=2, input_seed=33, compare_last=8),
]


@pytest.mark.parametrize("name", ["neuron", "neuron-block"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_nxdis_modules_match_the_reference(name, case):
    (v,) = run_case(case, [load_candidate(name)], probes=False)
    assert v.verdict == "pass", v.message
    assert v.info["mode"] == ENV.mode and {"normed", "k_rope", "v", "out_proj"} <= {s.stage for s in v.stages}


@pytest.mark.parametrize("layer", [0, 1])
def test_conversion_fills_exactly_the_keys_of_nxdis_module(layer):
    from harness.neuron.layer import NeuronLayer
    from harness.neuron.nxdi import build_attention

    spec = layer_specs(Case(layer=layer, preset="full"))[0]
    module = NeuronLayer(build_attention("neuron", None, spec, 1, on_cpu=True), spec.config.hidden_size)
    state = module.state_dict()
    given = nxdi_state_dict(spec.weights, spec.config, state)
    assert set(given) == set(state)
    assert {k for k in state if k.startswith("attn.")} >= {
        "attn.learned_sinks.sink", "attn.o_proj.o_proj.weight", "attn.o_proj.o_proj.bias",
        *(f"attn.qkv_proj.{x}_proj.{t}" for x in "qkv" for t in ("weight", "bias"))}
    assert all(t.dtype == (torch.float32 if k == "norm_scale" else spec.dtype) for k, t in given.items() if "rank" not in k)


def test_a_class_that_is_not_neuron_attention_is_refused():
    (v,) = run_case(Case(lengths=(8,)), [load_candidate("neuron:harness.neuron.emulation:NxdiConventionAttention")],
                    probes=False)
    assert v.verdict == "error" and "is not a NeuronAttentionBase subclass" in v.message


def test_a_users_subclass_runs_through_the_same_driver():
    (v,) = run_case(CASES[0], [load_candidate("neuron:tests.neuron_user_block:MyGptOssAttention")], probes=False)
    assert v.verdict == "pass", v.message


@pytest.mark.skipif(ENV.mode == "device", reason="tensor parallelism runs in CPU mode only so far")
@pytest.mark.parametrize("tp_degree", [2, 8])
def test_nxdis_module_sharded_over_rank_processes_matches_the_reference(tp_degree):
    """NeuronGptOssAttention built at tp_degree N in NxD's model-parallel state, one process per rank,
    weights sharded by NxD's get_sharded_checkpoint: every rank's output equal, the gathered caches
    and output within the bounds (small dims: 8 query / 2 kv heads, replicated at tp 8)."""
    candidate = load_candidate(f"neuron@tp{tp_degree}")
    try:
        verdicts = run_case(CASES[0], [candidate], probes=False)
    finally:
        candidate.close()
    (v,) = verdicts
    assert v.verdict == "pass", v.message
    assert v.info["tp_degree"] == tp_degree and v.info["mode"] == "cpu"
