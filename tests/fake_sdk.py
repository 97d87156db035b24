"""NxDI's build_module faked (no Neuron device or SDK here), for the tests of the device path: it builds
the module it is given, loads the checkpoint it is given, and runs eagerly; the attention inside is
the harness's NxDI-convention emulation unless a test supplies another. The caller's side of the SDK
(its KV-cache manager and mask builders) is faked in tests/fake_serving.py.

At tp_degree N it stands in for one SPMD graph on N NeuronCores: N modules built with the keywords
given (each the emulation with one rank's share of the heads), each loading its shard of the FULL
checkpoint it is given (the harness's sharding standing in for NxD's get_sharded_checkpoint), run
side by side in threads by `nxd_model.forward_ranked(ranked_inputs)`, o_proj's partial sums
all-reduced between the threads. What the harness passed is kept in `Built` for the tests to check."""

import dataclasses
import sys
import threading
import types


from harness.neuron import nxdi
from harness.neuron.bugs import Bugs
from harness.neuron.device import spec_from_json
from harness.neuron.emulation import NxdiConventionAttention
from harness.neuron.sharding import plan, shard_state_dict


def emulated_attention(kind, path, spec, batch, on_cpu, tp_degree=1, flags=None):
    c = spec.config
    if tp_degree > 1:  # built inside the model-parallel state: this rank's share of the heads
        p = plan(c.num_attention_heads, c.num_key_value_heads, tp_degree)
        c = dataclasses.replace(c, num_attention_heads=p.q_per_rank, num_key_value_heads=p.kv_per_rank)
    return NxdiConventionAttention(c, spec.layer_idx, spec.dtype)


@dataclasses.dataclass
class Built:
    """Every build_module call and every ranked call the fake saw."""
    builds: list = dataclasses.field(default_factory=list)  # (module class name, input shapes, tp_degree, init kwargs)
    checkpoints: list = dataclasses.field(default_factory=list)  # the state dicts given
    ranked_calls: list = dataclasses.field(default_factory=list)  # per call: [rank][input]


class _AllReduce:
    """o_proj's all-reduce between rank threads: every rank gets the same sum, in rank order."""

    def __init__(self, world: int):
        self.barrier, self.parts = threading.Barrier(world, timeout=60), [None] * world

    def of(self, rank: int):
        def reduce(partial):
            self.parts[rank] = partial
            self.barrier.wait()
            total = sum(self.parts[1:], self.parts[0].clone())
            self.barrier.wait()  # all have read before any rank's next call writes again
            return total
        return reduce


class _Ranks:
    """What `build_module(...).nxd_model` offers at tp > 1 (NxD's forward_ranked: [rank][input] ->
    [rank][output])."""

    def __init__(self, modules, built: Built):
        self.modules, self.built = modules, built

    def forward_ranked(self, ranked):
        self.built.ranked_calls.append(ranked)
        outputs, errors = [None] * len(self.modules), []

        def run(rank):
            try:
                outputs[rank] = list(self.modules[rank](*ranked[rank]))
            except BaseException as exc:  # noqa: BLE001 (re-raised below, in the caller's thread)
                errors.append(exc)
                reducer.barrier.abort()

        reducer = self.reducer
        threads = [threading.Thread(target=run, args=(r,)) for r in range(len(self.modules))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        return outputs


def install(monkeypatch, tmp_path, on_build=lambda module_cls, example_inputs: None,
            build_attention=emulated_attention, shard_bugs: Bugs = Bugs()) -> Built:
    """Fake `neuronx_distributed_inference.utils.testing.build_module`; `on_build(module_cls,
    example_inputs)` is called on every build (to count them, or to log as NxD does). `shard_bugs`:
    sharding mistakes for the fake's own sharding (a device run that loaded its shards wrong)."""
    built = Built()

    def build_module(module_cls, example_inputs, module_init_kwargs, checkpoint_path, checkpoint_loader_fn,
                     tp_degree=1, **kw):
        on_build(module_cls, example_inputs)
        built.builds.append((module_cls.__name__, tuple(tuple(t.shape) for t in example_inputs[0]), tp_degree,
                             dict(module_init_kwargs)))
        state = checkpoint_loader_fn(checkpoint_path)
        built.checkpoints.append(state)
        if tp_degree == 1:
            module = module_cls(**module_init_kwargs)
            module.load_state_dict(state, strict=True)
            return module.eval()
        state = dict(state)
        state.pop("attn.rank_util.rank")  # the emulation has no SPMDRank: NxD drops what a module lacks
        modules = [module_cls(**module_init_kwargs) for _ in range(tp_degree)]
        cfg = spec_from_json(module_init_kwargs["spec_json"]).config
        p = plan(cfg.num_attention_heads, cfg.num_key_value_heads, tp_degree)
        reducer = _AllReduce(tp_degree)
        for rank, module in enumerate(modules):
            module.load_state_dict(shard_state_dict(state, p, rank, cfg.head_dim, bugs=shard_bugs), strict=True)
            # a module whose o_proj skipped the all-reduce keeps its own partial sum
            module.attn.reduce = (lambda partial: partial) if shard_bugs.o_proj_not_reduced else reducer.of(rank)
            module.eval()
        ranks = _Ranks(modules, built)
        ranks.reducer = reducer
        return types.SimpleNamespace(nxd_model=ranks)

    testing = types.ModuleType("neuronx_distributed_inference.utils.testing")
    testing.build_module = build_module
    for name in ("neuronx_distributed_inference", "neuronx_distributed_inference.utils"):
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    monkeypatch.setitem(sys.modules, "neuronx_distributed_inference.utils.testing", testing)
    monkeypatch.setattr(nxdi, "build_attention", build_attention)
    monkeypatch.setenv("PARITY_NEURON_CACHE", str(tmp_path / "cache"))
    return built
