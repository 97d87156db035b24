"""The trace layer: a Neuron candidate's layer compiled by NxDI's `build_module` and run on a Neuron
device, one graph per (phase, shape), presenting the driver the same two calls as an eager layer
(harness/neuron/layer.py). Not runnable here (no device); tested against a faked build_module.

At tp_degree N (design read from NxDI 2.29's utils/testing.py `build_module`, NxD's ModelBuilder and
upstream's tp64 gpt-oss tests, test/integration/tp64/models/gptoss/):
- the module is built inside ModelBuilder's model-parallel state (N ranks), so `build_attention` gets
  the same tp_degree and never tears that state down; ONE SPMD graph serves every rank;
- the checkpoint is the whole unsharded layer plus `attn.rank_util.rank` = arange(N) (as upstream's
  tests give it): NxD shards it per rank with `get_sharded_checkpoint`, the same function CPU mode
  uses (harness/neuron/tp.py), so both modes hold the same shards by construction;
- every call goes through `nxd_model.forward_ranked`, as NxDI's model wrapper calls a sharded model:
  each rank gets the same tokens, mask and positions and, in token generation, the kv heads of the
  caller's cache that it holds (harness/neuron/sharding.py `kv_of`); every rank's outputs come back
  and are checked and gathered tolerance-free exactly as in CPU mode: the same block output on every
  rank, replicated kv heads identical, the kv heads put back in the unsharded block's order. The driver
  then sees one unsharded layer and runs the serving plan as at tp 1.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path

import torch

from harness.batch import BlockSpec
from harness.neuron import nxdi
from harness.neuron.config import deployment
from harness.neuron.derived import DERIVED, derive
from harness.neuron.hooks import OBSERVABLE, Observed
from harness.neuron.layer import NeuronLayer, load_layer
from harness.neuron.sharding import plan
from harness.quiet import third_party_output_to_stderr


class LayerModule(NeuronLayer):
    """A NeuronLayer built from keywords alone, as NxDI's build_module constructs what it traces. Forward
    hooks on the attention module's submodules (harness/neuron/hooks.py) run while it is traced, so what
    they see (q, k, v before RoPE, o_proj's input) becomes extra outputs of the compiled graph, after the
    layer's five, in `shown` order: the same way NxDI's tensor capture keeps intermediate tensors of a
    compiled model (forward hooks at trace time, the tensors appended to the outputs)."""

    def __init__(self, kind: str, class_path: str | None, spec_json: str, batch: int, tp_degree: int = 1,
                 flags_json: str = "{}"):
        spec = spec_from_json(spec_json)
        super().__init__(nxdi.build_attention(kind, class_path, spec, batch, on_cpu=False, tp_degree=tp_degree,
                                              flags=json.loads(flags_json)), spec.config.hidden_size)
        self.observed = Observed(self.attn, spec.config.head_dim)
        self.observed.want = set(OBSERVABLE)
        self.shown = shown(self.observed)

    def observing(self, outputs: tuple) -> tuple:
        """The layer's outputs and what the hooks saw (an empty tensor where a hook did not fire, so that
        the graph's outputs are the same on every call)."""
        return (*outputs, *(self.observed.values.get(name, torch.zeros(0)) for name in self.shown))


def shown(observed: Observed) -> tuple[str, ...]:
    return tuple(name for name in OBSERVABLE if name in observed.names)


class ContextModule(LayerModule):
    def forward(self, x, mask, position_ids):  # noqa: D102 (one traced signature per phase)
        self.observed.start_call()
        return self.observing(super().forward(x, mask, position_ids))


class GenerationModule(LayerModule):
    def forward(self, x, mask, position_ids, k_cache, v_cache, active):  # noqa: D102
        self.observed.start_call()
        return self.observing(super().forward(x, mask, position_ids, k_cache, v_cache, active))


def spec_to_json(spec: BlockSpec) -> str:
    return json.dumps({"config": dataclasses.asdict(spec.config), "layer": spec.layer_idx, "dtype": str(spec.dtype)[6:]})


def spec_from_json(text: str) -> BlockSpec:
    from reference.gpt_oss import ModelConfig

    data = json.loads(text)
    return BlockSpec(ModelConfig(**data["config"]), data["layer"], {}, getattr(torch, data["dtype"]))


def compile_cache_dir() -> Path:
    """Where traced modules and their checkpoints are kept: $PARITY_NEURON_CACHE, default
    ~/.cache/gpt-oss-parity/neuron. neuronx-cc keeps its compiled graphs in its own persistent cache
    ($NEURON_COMPILE_CACHE_URL, default /var/tmp/neuron-compile-cache), so an unchanged graph is not
    compiled again."""
    base = os.environ.get("PARITY_NEURON_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpt-oss-parity" / "neuron"
    return Path(base)


def _digest(state: dict[str, torch.Tensor]) -> str:
    return hashlib.sha256(b"".join(t.contiguous().view(torch.uint8).numpy().tobytes() for t in state.values())).hexdigest()[:16]


class DeviceLayer:
    """Compiles and runs one layer per (phase, shape) on the Neuron device; built once per shape, at the
    candidate's tp_degree (1 unless it is a ShardedCandidate)."""

    def __init__(self, candidate, spec: BlockSpec):
        from safetensors.torch import save_file

        self.candidate, self.spec = candidate, spec
        self.tp = getattr(candidate, "tp_degree", 1)
        c = spec.config
        self.plan = plan(c.num_attention_heads, c.num_key_value_heads, self.tp) if self.tp > 1 else None
        self.models: dict[tuple, object] = {}
        self.flags = deployment(getattr(candidate, "config", {}))  # passed through to NeuronConfig
        with third_party_output_to_stderr():  # the SDK's loggers print on stdout
            # the checkpoint's module: the same weights' names (fused_qkv changes them), no kernels (CPU)
            names = {k: v for k, v in self.flags.items() if k == "fused_qkv"}
            eager = NeuronLayer(nxdi.build_attention(candidate.kind, candidate.class_path, spec, 1, on_cpu=True,
                                                     flags=names), c.hidden_size)
        self.shown = shown(Observed(eager.attn, c.head_dim))  # as the traced module's (same class and build)
        self.seen: dict[str, torch.Tensor] = {}
        self.call: tuple = ()
        state = load_layer(eager, spec, candidate.bugs).state_dict()
        # the whole block's sinks (context encoding's; token generation's own copy where it has one)
        context_sinks = state.get("attn.learned_sinks.sink")
        self.sinks = {False: context_sinks, True: state.get("attn.tkg_learned_sinks.sink", context_sinks)}
        if self.tp > 1:
            # every rank's SPMDRank reads its rank from this buffer (upstream's tp64 tests give it so); a
            # module without one gets it dropped by NxD's sharding as a key it does not hold
            state["attn.rank_util.rank"] = torch.arange(self.tp, dtype=torch.int32)
        self.checkpoint = compile_cache_dir() / "weights" / f"{_digest(state)}.safetensors"
        if not self.checkpoint.exists():
            self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in state.items()}, str(self.checkpoint))

    def _model(self, phase: str, inputs: tuple):
        from neuronx_distributed_inference.utils.testing import build_module
        from safetensors.torch import load_file

        key = (phase, *(tuple(t.shape) for t in inputs))
        if key not in self.models:
            module_cls = ContextModule if phase == "context" else GenerationModule
            spec_json = spec_to_json(self.spec)
            flags_json = json.dumps(self.flags, sort_keys=True)
            tag = hashlib.sha256(json.dumps([self.candidate.kind, self.candidate.class_path, spec_json, key,
                                             self.tp, flags_json]).encode()).hexdigest()[:16]
            started = time.monotonic()
            with third_party_output_to_stderr():  # NxD logs about 15 INFO lines per build on stdout
                self.models[key] = build_module(
                    module_cls, [inputs], module_init_kwargs=dict(kind=self.candidate.kind,
                                                                  class_path=self.candidate.class_path,
                                                                  spec_json=spec_json, batch=inputs[0].shape[0],
                                                                  tp_degree=self.tp, flags_json=flags_json),
                    tp_degree=self.tp, compiler_args="--auto-cast=none" if self.spec.dtype == torch.float32 else None,
                    compiler_workdir=str(compile_cache_dir() / "work" / tag), checkpoint_path=str(self.checkpoint),
                    logical_nc_config=int(os.environ.get("NEURON_LOGICAL_NC_CONFIG", "1")),
                    checkpoint_loader_fn=lambda path: load_file(str(path)))
            self.candidate.builds += 1
            self.candidate.build_seconds += time.monotonic() - started
        return self.models[key]

    def keep_internals(self, keep: bool) -> tuple[str, ...]:
        """The stages the compiled graph returns beside the layer's (always: a graph's outputs are fixed
        when it is traced) and those derived from them (harness/neuron/derived.py); offered where `keep`."""
        if not keep:
            return ()
        observed = tuple(name for name in ("q", "k", "attn") if name in self.shown)
        derivable = {"q", "k", "cos"} <= set(self.shown) and self.sinks[False] is not None
        return observed + (DERIVED if derivable else ())

    def internals(self) -> dict:
        observed = {k: v for k, v in self.seen.items() if k in ("q", "k", "attn")}
        return {**observed, **derive(self.seen, *self.call, sinks=self.sinks[len(self.call) > 1])}

    def projected_values(self) -> torch.Tensor | None:
        """The last call's v projection (the hand-over check identifies keys by it)."""
        return self.seen.get("v")

    def _call(self, phase: str, per_rank: list[tuple]) -> tuple:
        """(output, normed, out_proj, k, v) of the unsharded layer, and what the hooks saw in `seen`.
        `per_rank`: each rank's inputs (one entry at tp 1)."""
        model = self._model(phase, per_rank[0])  # one SPMD graph: every rank's inputs have rank 0's shapes
        with torch.no_grad():
            if self.tp == 1:
                outs = [[t.cpu() for t in model(*per_rank[0])]]
            else:
                ranked = model.nxd_model.forward_ranked([list(inputs) for inputs in per_rank])
                outs = [[t.cpu() for t in rank_outputs] for rank_outputs in ranked]  # [rank][output]
        extra = [dict(zip(self.shown, o[5:])) for o in outs]
        extra = [{k: v for k, v in e.items() if v.numel()} for e in extra]  # a hook that did not fire
        if self.tp == 1:
            self.seen = extra[0]
            return tuple(outs[0][:5])
        from harness.neuron.sharding import gather_heads
        from harness.neuron.tp import gather_replicas, same_on_every_rank

        output = same_on_every_rank([o[0] for o in outs], self.plan)
        kv = gather_replicas([{"k_rope": o[3], "v": o[4]} for o in outs], self.plan, {"k_rope": 1, "v": 1})
        # the hooks' v is the handed-over v's source: both gathered by kv head; q and attn by query head
        self.seen = {k: v for k, v in extra[0].items() if k in ("cos", "sin")}  # the same tables on every rank
        for name in ("q", "attn"):
            if all(name in e for e in extra):
                self.seen[name] = gather_heads([e[name] for e in extra], 1)
        for name in ("k", "v"):
            if all(name in e for e in extra):
                self.seen[name] = gather_replicas([{name: e[name]} for e in extra], self.plan, {name: 1})[name]
        return output, outs[0][1], outs[0][2], kv["k_rope"], kv["v"]

    def context(self, x, mask, position_ids):
        self.call = (mask,)  # what the derived stages need of the call
        return self._call("context", [(x, mask, position_ids)] * self.tp)

    def generation(self, x, mask, position_ids, k_cache, v_cache, active):
        self.call = (mask, k_cache, active)
        if self.tp == 1:
            return self._call("generation", [(x, mask, position_ids, k_cache, v_cache, active)])
        shards = [self.plan.kv_of(rank) for rank in range(self.tp)]
        return self._call("generation", [(x, mask, position_ids, k_cache[:, heads].contiguous(),
                                          v_cache[:, heads].contiguous(), active) for heads in shards])
