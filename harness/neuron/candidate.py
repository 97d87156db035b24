"""The Neuron candidates behind the harness's one protocol, all run by the same driver:

- `nxdi-emulation`: NxDI's conventions in pure torch (harness/neuron/emulation.py), on every machine;
- `neuron`: upstream NxDI's NeuronGptOssAttention (SDK 2.27+);
- `neuron-block`: this project's gpt-oss block on NeuronAttentionBase (harness/neuron/block.py, SDK 2.26+);
- `neuron:package.module:Class`: a user's own NeuronAttentionBase subclass (constructor contract in
  README "Running on a Neuron host").
The SDK candidates run on a Neuron device when there is one (each bucket and phase traced and
compiled once), else eagerly in NxDI's CPU mode; without the SDK they cannot be built at all
(NeuronUnavailable, with the install line). Each result's `info` says the mode, the buckets that ran
and, on a device, the builds and their time.
"""

from __future__ import annotations

import os
import time

import torch

from harness.batch import Batch, BlockSpec
from harness.candidates.protocol import CandidateResult, CandidateUnsupported
from harness.neuron.bugs import Bugs
from harness.neuron.convert import check_loaded, nxdi_state_dict
from harness.neuron.driver import Buckets, Driver, PlanUnsupported
from harness.neuron.emulation import NxdiConventionAttention
from harness.neuron.environment import require
from harness.neuron.layer import NeuronLayer

KINDS = ("emulation", "neuron", "neuron-block", "class")


class EagerLayer:
    """A NeuronLayer run in this process (CPU mode and the emulation)."""

    def __init__(self, module: NeuronLayer):
        self.module = module

    def keep_internals(self, keep: bool) -> bool:
        """Ask the attention module to keep its internals (only the emulation can); whether it will."""
        if not hasattr(self.module.attn, "keep_internals"):
            return False
        self.module.attn.keep_internals = keep
        return keep

    def internals(self) -> dict:
        return getattr(self.module.attn, "recorded", {})

    def set_feed(self, fed: dict) -> None:
        """Stage isolation: the next calls use these values (the emulation's module only)."""
        self.module.fed_normed = fed.get("normed")
        self.module.attn.fed = {k: v for k, v in fed.items() if k != "normed"}

    def context(self, x, mask, position_ids):
        with torch.no_grad():
            return self.module(x, mask, position_ids)

    def generation(self, x, mask, position_ids, k_cache, v_cache, active):
        with torch.no_grad():
            return self.module(x, mask, position_ids, k_cache, v_cache, active)


def load_layer(module: NeuronLayer, spec: BlockSpec, bugs: Bugs = Bugs()) -> NeuronLayer:
    """Fill the layer with the case's weights (strict conversion, checked after loading)."""
    return load_state(module, nxdi_state_dict(spec.weights, spec.config, module.state_dict(), bugs=bugs))


def load_state(module: NeuronLayer, given: dict) -> NeuronLayer:
    """Load `given` strictly and check it arrived."""
    module.load_state_dict(given, strict=True)
    check_loaded(module, given)
    return module.eval()


def configured_buckets() -> Buckets:
    return Buckets.parse(os.environ.get("PARITY_NEURON_BUCKETS", ""))


class NeuronCandidate:
    plans = ("prefill", "decode", "chunked", "from_cache")
    # from_cache: the driver writes the given cache into the caller's KV cache and runs token generation,
    # which NxDI's module takes as past_key_value (harness/neuron/driver.py)
    accepts_cache = True

    def __init__(self, kind: str = "neuron", class_path: str | None = None, name: str | None = None,
                 buckets: Buckets | None = None, bugs: Bugs = Bugs()):
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} must be one of {KINDS}")
        self.kind, self.class_path, self.bugs = kind, class_path, bugs
        self.bucket_config = buckets or configured_buckets()
        self.name = name or {"emulation": "nxdi-emulation", "class": f"neuron:{class_path}"}.get(kind, kind)
        if kind == "emulation":
            self.mode = "emulation"
        else:
            self.environment = require()  # NeuronUnavailable, with the install line, when the SDK is missing
            self.mode = self.environment.mode
        self._built: tuple | None = None
        self.builds, self.build_seconds = 0, 0.0

    def __repr__(self):  # short: hypothesis prints candidates in failing examples
        return f"<{self.name} ({self.mode})>"

    def _layer(self, spec: BlockSpec, batch: Batch):
        key = (spec.layer_idx, spec.dtype, spec.config)
        if self._built and self._built[0] is spec.weights and self._built[1] == key:
            return self._built[2]
        if self.kind == "emulation":
            attention = NxdiConventionAttention(spec.config, spec.layer_idx, spec.dtype, self.bugs)
            layer = EagerLayer(load_layer(NeuronLayer(attention, spec.config.hidden_size), spec, self.bugs))
        else:
            from harness.neuron import nxdi  # the SDK is imported only here

            layer = nxdi.make_layer(self, spec)
        self._built = (spec.weights, key, layer)
        return layer

    def run(self, spec: BlockSpec, batch: Batch, *, taps: bool = False) -> CandidateResult:
        return self._drive(spec, batch, taps)

    def _drive(self, spec: BlockSpec, batch: Batch, taps: bool, feed: dict | None = None) -> CandidateResult:
        layer = self._layer(spec, batch)
        try:
            output, stage_taps, info = Driver(layer, spec, self.bucket_config, self.bugs).run(batch, feed)
        except PlanUnsupported as exc:
            raise CandidateUnsupported(str(exc)) from exc
        info["mode"] = self.mode
        if self.mode == "device":
            info.update(builds=self.builds, build_seconds=round(self.build_seconds, 1))
        return CandidateResult(output, stage_taps if taps else {}, info)


class NxdiEmulation(NeuronCandidate):
    """The `nxdi-emulation` built-in (a class built without arguments). Unlike a real NxDI module it
    can be entered at any stage (`feed`), so stage isolation names every stage that fails on its own."""

    # the driver taps k_rope and v from the same place, the keys and values the module hands over to the
    # cache, so a bug there fails both (stage isolation counts it once)
    operations = {("k_rope", "v"): "one KV-cache handover"}

    def __init__(self, name: str = "nxdi-emulation", bugs: Bugs = Bugs(), buckets: Buckets | None = None):
        super().__init__("emulation", name=name, bugs=bugs, buckets=buckets)

    def run(self, spec: BlockSpec, batch: Batch, *, taps: bool = False, feed: dict | None = None) -> CandidateResult:
        return self._drive(spec, batch, taps, feed)


class ShardedCandidate(NeuronCandidate):
    """A Neuron candidate at tp_degree N (`NAME@tpN`): one process per rank (harness/neuron/launcher.py,
    started once and reused), each running the plan through the driver with its own cache, the results
    checked and gathered (harness/neuron/tp.py). The emulation shards itself as NxDI does
    (harness/neuron/sharding.py), so CI exercises the launcher, the sharding and the gathering on every
    run without the SDK; the SDK's modules are built sharded in NxD's model-parallel state and loaded
    through NxD's own `get_sharded_checkpoint` (CPU mode; on a device: not yet). Like a real sharded
    module it cannot be entered at a stage (no `feed`): a failure is named from its taps."""

    def __init__(self, tp_degree: int, kind: str = "emulation", class_path: str | None = None,
                 name: str | None = None, bugs: Bugs = Bugs(), buckets: Buckets | None = None):
        from harness.neuron.config import variant

        base = {"emulation": "nxdi-emulation", "class": f"neuron:{class_path}"}.get(kind, kind)
        super().__init__(kind, class_path=class_path, name=name or variant(base, {"tp_degree": tp_degree}),
                         bugs=bugs, buckets=buckets)
        if self.mode == "device":
            raise ValueError(f"candidate {self.name}: tensor parallelism on a Neuron device is not implemented yet "
                             "(it runs in CPU mode: $PARITY_NEURON_MODE=cpu); README \"Tensor parallelism\"")
        self.tp_degree = tp_degree
        self._group = None

    def run(self, spec: BlockSpec, batch: Batch, *, taps: bool = False) -> CandidateResult:
        from harness.neuron.launcher import RankGroup, RankTimeout
        from harness.neuron.sharding import ShardingUnsupported, plan
        from harness.neuron.tp import gather
        from harness.timelimit import CandidateTimeout, limit_for

        c = spec.config
        try:
            p = plan(c.num_attention_heads, c.num_key_value_heads, self.tp_degree)
        except ShardingUnsupported as exc:  # upstream's limit, not the candidate's fault
            raise CandidateUnsupported(str(exc)) from None
        except ValueError as exc:  # more ranks than this case's heads (small dims have 8): this case only
            raise CandidateUnsupported(f"{exc} (this case's dims; gpt-oss's have 64)") from None
        emulated = self.kind == "emulation"
        limit, started = limit_for(self), time.monotonic()
        if self._group is None:
            self._group = RankGroup(self.tp_degree, setup=None if emulated else "harness.neuron.tp:init_model_parallel")
        call = self.rank_call()
        try:
            # a second inside what is left of the call's own limit (start-up included), so that a hang is
            # reported by the launcher, which names the ranks that did not answer
            left = limit - (time.monotonic() - started) - 1.0 if limit else None
            results = self._group.run(call[0], spec, batch, self.bucket_config, *call[1:],
                                      time_limit=max(0.5, left) if left is not None else None)
        except RankTimeout as exc:
            self.close()
            raise CandidateTimeout(str(exc)) from None
        except BaseException:  # a failed or interrupted rank: the group is not reused
            self.close()
            raise
        unsupported = [r for r in results if isinstance(r, str)]
        if unsupported:
            raise CandidateUnsupported(unsupported[0])
        output, stage_taps, info = gather(results, p)
        info["mode"] = self.mode
        return CandidateResult(output, stage_taps if taps else {}, info)

    def rank_call(self) -> tuple:
        """What every rank runs per case: the function's import path and the arguments after
        (spec, batch, buckets)."""
        if self.kind == "emulation":
            return "harness.neuron.tp:run_rank", self.bugs
        return "harness.neuron.tp:run_rank_sdk", self.kind, self.class_path

    def close(self) -> None:
        if self._group is not None:
            group, self._group = self._group, None
            group.close()
