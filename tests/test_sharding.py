"""NxDI's tensor-parallel sharding of gpt-oss attention as the harness writes it (harness/neuron/sharding.py),
the deployment option that selects it (harness/neuron/config.py), and the sharded pieces run in threads
(no processes: harness/neuron/tp.py's rank code with an in-process all-reduce), against the unsharded
emulation. The launcher's processes are tested in tests/test_launcher.py, the whole sharded candidate in
tests/test_tensor_parallel.py."""

import threading

import pytest
import torch

import harness.neuron.tp as tp
from harness import cli
from harness.batch import build
from harness.candidates import load_candidate
from harness.case import Case
from harness.neuron import config
from harness.neuron.driver import Buckets
from harness.neuron.sharding import CONVERT, REPLICATE, ShardingUnsupported, plan, shard_state_dict


@pytest.mark.parametrize("tp_degree, strategy, q, kv, source", [
    # gpt-oss: 64 query heads, 8 kv heads (as read from NxDI 2.29's gqa.py, and run: shared/notes/nxdi.md)
    (1, CONVERT, 64, 8, [0, 1, 2, 3, 4, 5, 6, 7]),
    (2, CONVERT, 32, 4, [0, 1, 2, 3]),
    (4, CONVERT, 16, 2, [0, 1]),
    (8, REPLICATE, 8, 1, [0]),
    (16, REPLICATE, 4, 1, [0]),
    (64, REPLICATE, 1, 1, [0]),
])
def test_the_plan_follows_nxdis_gqa_strategies(tp_degree, strategy, q, kv, source):
    p = plan(64, 8, tp_degree)
    assert (p.strategy, p.q_per_rank, p.kv_per_rank, p.kv_of(0)) == (strategy, q, kv, source)
    # every query head still reads the kv head it reads unsharded (h // 8)
    for rank in range(tp_degree):
        group = p.q_per_rank // p.kv_per_rank
        for i, h in enumerate(p.q_of(rank)):
            assert p.kv_of(rank)[i // group] == h // 8, (rank, h)


def test_layouts_upstream_cannot_shard_are_said_as_such():
    with pytest.raises(ShardingUnsupported, match="does not divide the 64 query heads"):
        plan(64, 8, 3)
    with pytest.raises(ShardingUnsupported, match="CONVERT_TO_MHA"):
        plan(48, 8, 6)  # 6 divides 48 query heads, not the 8 kv heads: a real conversion
    with pytest.raises(ValueError, match="larger than the 64 query heads"):
        plan(64, 8, 128)


def test_each_rank_holds_its_heads_sinks_and_o_proj_columns():
    case = Case(layer=0, lengths=(4,))
    spec, _ = build(case)
    c = spec.config
    from harness.neuron.candidate import NeuronLayer
    from harness.neuron.convert import nxdi_state_dict
    from harness.neuron.emulation import NxdiConventionAttention

    full = nxdi_state_dict(spec.weights, c, NeuronLayer(NxdiConventionAttention(c, 0, spec.dtype), c.hidden_size)
                           .state_dict())
    p = plan(c.num_attention_heads, c.num_key_value_heads, 4)  # small dims: 8 q, 2 kv -> kv replicated x2
    d = c.head_dim
    shards = [shard_state_dict(full, p, r, d) for r in range(4)]
    assert torch.equal(torch.cat([s["attn.learned_sinks.sink"] for s in shards]), full["attn.learned_sinks.sink"])
    assert torch.equal(torch.cat([s["attn.o_proj.o_proj.weight"] for s in shards], dim=1),
                       full["attn.o_proj.o_proj.weight"])
    assert all(torch.equal(s["attn.o_proj.o_proj.bias"], full["attn.o_proj.o_proj.bias"]) for s in shards)
    k = full["attn.qkv_proj.k_proj.weight"]
    assert [torch.equal(s["attn.qkv_proj.k_proj.weight"], k[h * d:(h + 1) * d]) for s, h in
            zip(shards, (0, 0, 1, 1))] == [True] * 4


def test_the_deployment_option_names_variants_and_refuses_nonsense(tmp_path):
    assert config.parse(None) == [{"tp_degree": 1}]
    listed = config.parse('[{"tp_degree": 1}, {"tp_degree": 2}, {"tp_degree": 8}]')
    assert config.expand(["reference", "nxdi-emulation"], listed) == \
        ["reference", "nxdi-emulation", "nxdi-emulation@tp2", "nxdi-emulation@tp8"]
    (tmp_path / "tp.json").write_text('{"tp_degree": 4}')
    assert config.parse(str(tmp_path / "tp.json")) == [{"tp_degree": 4}]
    assert config.split("neuron:pkg.mod:Cls@tp16") == ("neuron:pkg.mod:Cls", {"tp_degree": 16})
    for bad, said in (('{"tp": 2}', "unknown NeuronConfig field"), ('{"tp_degree": 0}', "integer from 1 to 128"),
                      ('{"tp_degree": "2"}', "integer from 1 to 128"), ("nowhere.json", "neither JSON nor a file"),
                      ("[]", "non-empty list")):
        with pytest.raises(ValueError, match=said):
            config.parse(bad)
    with pytest.raises(ValueError, match="none of the candidates given"):
        config.expand(["reference"], listed)
    with pytest.raises(ValueError, match="applies to Neuron candidates only"):
        load_candidate("reference@tp2")


def test_bad_deployment_options_are_usage_errors(capsys):
    assert cli.main(["run", "--candidate", "reference", "--neuron-config", '{"tp_degree": 2}']) == 2
    assert "none of the candidates given" in capsys.readouterr().err
    assert cli.main(["run", "--candidate", "nxdi-emulation", "--neuron-config", '{"tp_degre": 2}']) == 2
    assert "unknown NeuronConfig field(s) ['tp_degre']" in capsys.readouterr().err


def _in_threads(spec, batch, world, corrupt=None):
    """tp.run_rank on `world` threads with an all-reduce across them (the launcher's processes do the
    same over gloo); `corrupt(rank, result)` may change what a rank returns."""
    barrier, parts, results = threading.Barrier(world), [None] * world, [None] * world
    local = threading.local()

    def reduce(partial):
        parts[local.rank] = partial
        barrier.wait()
        total = torch.stack(parts).sum(0).to(partial.dtype)
        barrier.wait()
        return total

    def body(rank):
        local.rank = rank
        results[rank] = tp.run_rank(rank, world, spec, batch, Buckets())
        if corrupt:
            results[rank] = corrupt(rank, results[rank])

    original, tp._all_reduce = tp._all_reduce, reduce
    try:
        threads = [threading.Thread(target=body, args=(r,)) for r in range(world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        tp._all_reduce = original
    return tp.gather(results, plan(spec.config.num_attention_heads, spec.config.num_key_value_heads, world))


@pytest.mark.parametrize("case", [Case(layer=0, lengths=(130,), plan="decode", decode_steps=3, sinks="dominant"),
                                  Case(layer=1, lengths=(40, 7), padding="left"),
                                  Case(layer=1, lengths=(300,), plan="from_cache", decode_steps=2)],
                         ids=lambda c: c.id)
def test_sharded_ranks_give_the_unsharded_block(case):
    """The caches and every query-head tap are the unsharded emulation's exactly; the output differs only
    by the rounding of the all-reduced partial sums (one bf16 ulp of the output's scale)."""
    spec, batch = build(case)
    whole = load_candidate("nxdi-emulation").run(spec, batch, taps=True)
    for world in (2, 4, 8):
        output, taps, info = _in_threads(spec, batch, world)
        assert info["tp_degree"] == world and info["gqa"] == REPLICATE
        for name in ("k_rope", "v", "q_rope"):
            assert torch.equal(taps[name].nan_to_num(0), whole.taps[name].nan_to_num(0)), (world, name)
        scale = float(whole.output.nan_to_num(0).abs().max())
        assert float((output.double() - whole.output.double()).nan_to_num(0).abs().max()) <= scale * 2**-7


def test_ranks_that_disagree_are_named():
    spec, batch = build(Case(layer=0, lengths=(20,)))

    def rank2_loads_rank0s_kv(rank, result):
        output, taps, info = result
        if rank == 3:  # at tp 4 ranks 2 and 3 both hold kv head 1: rank 3 now holds head 0's values
            taps = dict(taps, k_rope=taps["k_rope"] + 1)
        return output, taps, info

    with pytest.raises(tp.RanksDisagree, match="k_rope: kv head 1: rank 3 differs from rank 2") as caught:
        _in_threads(spec, batch, 4, rank2_loads_rank0s_kv)
    assert caught.value.stage == "k_rope"

    def rank1_not_reduced(rank, result):
        output, taps, info = result
        return (output * 2 if rank == 1 else output), taps, info

    with pytest.raises(tp.RanksDisagree, match="rank 1's block output differs from rank 0's") as caught:
        _in_threads(spec, batch, 2, rank1_not_reduced)
    assert caught.value.stage == "out_proj"


def test_variants_of_sdk_candidates_still_need_the_sdk():
    """`--require-neuron` and its skip-to-failure rule must see neuron@tp8 as a Neuron candidate."""
    from harness.candidates.registry import needs_neuron_sdk

    assert needs_neuron_sdk("neuron@tp8") and needs_neuron_sdk("neuron:pkg.mod:Cls@tp2")
    assert not needs_neuron_sdk("nxdi-emulation@tp2") and not needs_neuron_sdk("reference")


def test_a_deployment_from_the_environment_applies_where_it_applies(monkeypatch, tmp_path, capsys):
    """$PARITY_NEURON_CONFIG does not turn a run of CPU candidates into a usage error, and never
    overrides the deployment a repro file names (only --neuron-config does)."""
    assert config.expand(["reference"], config.parse('{"tp_degree": 2}'), strict=False) == ["reference"]
    monkeypatch.setenv("PARITY_NEURON_CONFIG", '{"tp_degree": 2}')
    case_file = tmp_path / "c.json"
    case_file.write_text('{"lengths": [4]}')
    assert cli.main(["run", "--candidate", "reference", "--case-file", str(case_file), "--no-probes"]) == 0
    assert "reference" in capsys.readouterr().out
