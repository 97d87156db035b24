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
from typing import Callable


from harness.batch import Batch, BlockSpec
from harness.candidates.protocol import CandidateInconsistent, CandidateResult, CandidateUnsupported
from harness.neuron.bugs import Bugs
from harness.neuron.config import DEFAULT, refused_in_cpu_mode
from harness.neuron.driver import Buckets, Driver, PlanUnsupported
from harness.neuron.emulation import NxdiConventionAttention
from harness.neuron import xla
from harness.neuron.environment import NeuronUnavailable, require
from harness.neuron.layer import EagerLayer, NeuronLayer, load_layer

KINDS = ("emulation", "neuron", "neuron-block", "class")


def configured_buckets() -> Buckets:
    return Buckets.parse(os.environ.get("PARITY_NEURON_BUCKETS", ""))


class NeuronCandidate:
    plans = ("prefill", "decode", "chunked", "from_cache")
    # from_cache: the driver writes the given cache into the caller's KV cache and runs token generation,
    # which NxDI's module takes as past_key_value (harness/neuron/driver.py)
    accepts_cache = True
    attention_class = NxdiConventionAttention  # the emulation's module (the self-test's tracing mutants subclass it)

    def __init__(self, kind: str = "neuron", class_path: str | None = None, name: str | None = None,
                 buckets: Buckets | None = None, bugs: Bugs = Bugs(), config: dict | None = None,
                 serving: Callable[[BlockSpec], object] | None = None):
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} must be one of {KINDS}")
        self.kind, self.class_path, self.bugs = kind, class_path, bugs
        self.config = dict(config or DEFAULT)  # the deployment (harness/neuron/config.py)
        self.bucket_config = buckets or configured_buckets()
        self.name = name or {"emulation": "nxdi-emulation", "class": f"neuron:{class_path}"}.get(kind, kind)
        # the caller's side: by default the SDK's code for SDK candidates, the harness's models for the
        # emulation (a test may give the emulation a cache manager of its own)
        self.serving = serving
        if kind == "emulation":
            self.mode = "emulation"
            if xla.requested():  # the emulation traced by torch-xla (harness/neuron/xla.py)
                problem = xla.xla_import_error()
                if problem:
                    raise NeuronUnavailable(f"candidate {self.name}: torch-xla does not import here ({problem}); "
                                            f"{xla.XLA_INSTALL}")
                self.mode = "xla"
            extra = sorted(set(self.config) - {"tp_degree"})
            if extra:
                raise ValueError(f"candidate {self.name}: {', '.join(extra)} configure the SDK's modules and caller "
                                 "(neuron, neuron-block, neuron:MODULE:CLASS); nxdi-emulation models NxDI's native path "
                                 "with the harness's own cache and masks")
        else:
            self.environment = require()  # NeuronUnavailable, with the install line, when the SDK is missing
            self.mode = self.environment.mode
            refused = refused_in_cpu_mode(self.config) if self.mode == "cpu" else None
            if refused:
                raise ValueError(f"candidate {self.name}: {refused}")
        self._built: tuple | None = None
        self.builds, self.build_seconds = 0, 0.0

    def __repr__(self):  # short: hypothesis prints candidates in failing examples
        return f"<{self.name} ({self.mode})>"

    def _layer(self, spec: BlockSpec, batch: Batch):
        key = (spec.layer_idx, spec.dtype, spec.config)
        if self._built and self._built[0] is spec.weights and self._built[1] == key:
            return self._built[2]
        if self.kind == "emulation":
            attention = self.attention_class(spec.config, spec.layer_idx, spec.dtype, self.bugs)
            layer = EagerLayer(load_layer(NeuronLayer(attention, spec.config.hidden_size), spec, self.bugs))
        elif self.mode == "device":
            from harness.neuron.device import DeviceLayer  # the SDK is imported only there and in nxdi

            layer = DeviceLayer(self, spec)
        else:
            from harness.neuron import nxdi

            layer = nxdi.make_layer(self, spec)
        if self.mode == "xla":
            layer.observed.remove()  # the traced copy must not carry the eager layer's hooks
            layer = xla.XlaLayer(layer.module)
        self._built = (spec.weights, key, layer)
        return layer

    def run(self, spec: BlockSpec, batch: Batch, *, taps: bool = False) -> CandidateResult:
        return self._drive(spec, batch, taps)

    def _serving(self, spec: BlockSpec, tp_degree: int = 1):
        """The caller's side for this run: the SDK's cache manager and mask builders (or the user's,
        from the deployment's config) for SDK candidates; None (the harness's models) for the emulation."""
        if self.serving is not None:
            return self.serving(spec)
        if self.kind == "emulation":
            return None
        from harness.neuron.upstream import UpstreamServing

        return UpstreamServing(spec, tp_degree, self.config.get("cache_manager"), self.config.get("mask_builder"))

    @property
    def fixed_weights(self) -> bool:
        """A device graph is compiled with its weights: a probe with weights of its own is not run there."""
        return self.mode == "device"

    @property
    def enters_stages(self) -> bool:
        """Whether stage isolation can enter it (a traced graph cannot be)."""
        return self.mode != "xla"

    def _drive(self, spec: BlockSpec, batch: Batch, taps: bool, feed: dict | None = None) -> CandidateResult:
        layer = self._layer(spec, batch)
        if self.mode == "xla":
            layer.tracing = xla.Tracing()  # this call's graphs only
        try:
            output, stage_taps, info = self._plan(layer, spec, batch, feed)
            if self.mode == "xla":  # the same case again, twice: a warm rerun compiles nothing
                for _ in range(2):
                    layer.rerun = 0
                    self._plan(layer, spec, batch, None)
                    layer.tracing.reruns.append(layer.rerun)
                    layer.rerun = None
                info["tracing"] = xla.report(layer.tracing)
        except PlanUnsupported as exc:
            raise CandidateUnsupported(str(exc)) from exc
        describe(info, self.last_serving, layer, self.config)
        info["mode"] = self.mode
        if self.mode == "device":
            info["observed"] = ("q, k (before RoPE), attn (o_proj's input) returned by the compiled graph (forward hooks "
                                "at trace time); k_rope, v from the cache hand-over")
            info.update(builds=self.builds, build_seconds=round(self.build_seconds, 1))
        return CandidateResult(output, stage_taps if taps else {}, info)

    def _plan(self, layer, spec: BlockSpec, batch: Batch, feed: dict | None):
        """The batch's serving plan through the driver, with this candidate's caller-side code."""
        self.last_serving = serving = self._serving(spec)
        return Driver(layer, spec, self.bucket_config, self.bugs, serving,
                      adopt_ring=adopts_ring(serving, self.kind)).run(batch, feed)


def adopts_ring(serving, kind: str) -> bool:
    """Whether the driver takes a sliding layer's ring from what the module hands over: an SDK candidate
    whose SDK has no gpt-oss cache manager (2.26's layout is W keys); never the emulation (NxDI 2.27+)."""
    return kind != "emulation" and (serving is None or serving.manager_cls is None)


def describe(info: dict, serving, layer, config: dict) -> None:
    """What ran on the caller's side, which stages the module showed, and the deployment, in `info`."""
    if serving is not None:
        info["caller"] = serving.names
    if not getattr(layer, "own_internals", True):
        info["observed"] = ("q, k (before RoPE), attn (o_proj's input) by forward hooks; k_rope, v from the cache "
                            "hand-over; q_rope, scores, probs derived from them, its RoPE tables and sinks, where it "
                            "has them")
    if config != DEFAULT:
        info["neuron_config"] = dict(config)


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
    through NxD's own `get_sharded_checkpoint`. On a Neuron device there are no rank processes: one SPMD
    graph per (phase, shape) runs every rank (harness/neuron/device.py), checked and gathered the same
    way. Like a real sharded module it cannot be entered at a stage (no `feed`): a failure is named
    from its taps."""

    def __init__(self, tp_degree: int, kind: str = "emulation", class_path: str | None = None,
                 name: str | None = None, bugs: Bugs = Bugs(), buckets: Buckets | None = None,
                 config: dict | None = None):
        from harness.neuron.config import variant

        config = {**(config or {}), "tp_degree": tp_degree}
        base = {"emulation": "nxdi-emulation", "class": f"neuron:{class_path}"}.get(kind, kind)
        super().__init__(kind, class_path=class_path, name=name or variant(base, config),
                         bugs=bugs, buckets=buckets, config=config)
        if self.mode == "xla":  # its ranks would run eagerly while the result said `xla`
            raise ValueError(f"candidate {self.name}: the xla mode traces one unsharded layer; tracing a sharded one "
                             "is not implemented: use tp_degree 1 with --neuron-mode xla, or another mode at tp "
                             f"{tp_degree}")
        self.tp_degree = tp_degree
        self._group = None

    def run(self, spec: BlockSpec, batch: Batch, *, taps: bool = False) -> CandidateResult:
        from harness.neuron.launcher import RankGroup, RankTimeout
        from harness.neuron.sharding import ShardingUnsupported, plan
        from harness.neuron.tp import RankInconsistent, gather
        from harness.timelimit import CandidateTimeout, limit_for

        c = spec.config
        try:
            p = plan(c.num_attention_heads, c.num_key_value_heads, self.tp_degree)
        except ShardingUnsupported as exc:  # upstream's limit, not the candidate's fault
            raise CandidateUnsupported(str(exc)) from None
        except ValueError as exc:  # more ranks than this case's heads (small dims have 8): this case only
            raise CandidateUnsupported(f"{exc} (this case's dims; gpt-oss's have 64)") from None
        if self.mode == "device":
            result = self._drive(spec, batch, taps)
            result.info.update(tp_degree=p.tp, gqa=p.strategy)
            return result
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
        failed = [(rank, r) for rank, r in enumerate(results) if isinstance(r, RankInconsistent)]
        if failed:
            rank, first = failed[0]
            raise CandidateInconsistent(first.stage, f"rank {rank}: {first.message}")
        output, stage_taps, info = gather(results, p)
        info["mode"] = self.mode
        info["neuron_config"] = dict(self.config)
        return CandidateResult(output, stage_taps if taps else {}, info)

    def rank_call(self) -> tuple:
        """What every rank runs per case: the function's import path and the arguments after
        (spec, batch, buckets)."""
        if self.kind == "emulation":
            return "harness.neuron.tp:run_rank", self.bugs
        return "harness.neuron.tp:run_rank_sdk", self.kind, self.class_path, self.config

    def close(self) -> None:
        if self._group is not None:
            group, self._group = self._group, None
            group.close()
