"""A Neuron candidate's layer run sharded over tp_degree ranks, one process each (harness/neuron/
launcher.py), and its results put back together.

Each rank runs the whole serving plan through the same driver as at tp 1 (pure torch), with its own
module: its share of the weights (harness/neuron/sharding.py), its own KV cache of its kv heads, and
the all-reduce of o_proj's partial sums over gloo. What comes back is checked before anything is
judged, tolerance-free:
- every rank holds the same block output (o_proj's all-reduce reaches every rank), else the rank that
  differs is named;
- replicated kv heads hold the same keys and values on every rank that holds them, else the kv head
  and the ranks are named (a rank that loaded another rank's shard);
then the taps are gathered into the unsharded block's layout: query heads in rank order, each kv head
from the first rank that holds it, so the comparison names a wrong shard at its stage and head.
"""

from __future__ import annotations

import dataclasses

import torch

from harness.batch import Batch, BlockSpec
from harness.candidates.protocol import CandidateInconsistent
from harness.neuron.bugs import Bugs
from harness.neuron.sharding import ShardPlan, gather_heads, gather_kv, plan, shard_state_dict

# stage -> axis of its query heads (harness/stages.py layouts)
QUERY_AXIS = {"q": 2, "q_rope": 2, "attn": 2, "scores": 1, "probs": 1}
KV_AXIS = {"k": 2, "v": 2, "k_rope": 2}
WHOLE = ("normed", "out_proj", "output")  # the same on every rank


RANK_CHECK = "tolerance-free rank check"  # in every RanksDisagree message


class RanksDisagree(CandidateInconsistent):
    """Ranks hold different values where a correct sharded block holds the same (tolerance-free): a
    `fail` at the stage where they differ (out_proj: o_proj's all-reduce; k_rope / v: a kv shard)."""


@dataclasses.dataclass(frozen=True)
class RankInconsistent:
    """What a rank returns when one of the driver's tolerance-free checks failed in it (an exception
    with a stage does not survive the trip back from the rank's process)."""
    stage: str
    message: str


def rank_batch(batch: Batch, p: ShardPlan, rank: int) -> Batch:
    """The batch as rank `rank` sees it: a from_cache prefix holds only this rank's kv heads."""
    if batch.cache is None:
        return batch
    heads = p.kv_of(rank)
    cache = dataclasses.replace(batch.cache, k_rope=batch.cache.k_rope[:, :, heads].contiguous(),
                                v=batch.cache.v[:, :, heads].contiguous())
    return dataclasses.replace(batch, cache=cache)


def _all_reduce(partial: torch.Tensor) -> torch.Tensor:
    total = partial.clone()
    torch.distributed.all_reduce(total)  # SUM over the tensor-parallel group: every rank gets the whole
    return total


def run_rank(rank: int, world: int, spec: BlockSpec, batch: Batch, buckets, bugs: Bugs = Bugs()):
    """In rank `rank`'s process: build its share of the emulation's layer and run the batch through the
    driver. Returns (output, taps, info), or the reason when the module cannot run the plan."""
    from harness.neuron.convert import nxdi_state_dict
    from harness.neuron.driver import Driver, PlanUnsupported
    from harness.neuron.emulation import NxdiConventionAttention
    from harness.neuron.layer import EagerLayer, NeuronLayer, load_state

    c = spec.config
    p = plan(c.num_attention_heads, c.num_key_value_heads, world)
    full = NeuronLayer(NxdiConventionAttention(c, spec.layer_idx, spec.dtype, bugs), c.hidden_size)
    weights = nxdi_state_dict(spec.weights, c, full.state_dict(), bugs=bugs)
    local = dataclasses.replace(c, num_attention_heads=p.q_per_rank, num_key_value_heads=p.kv_per_rank)
    attention = NxdiConventionAttention(local, spec.layer_idx, spec.dtype, bugs)
    attention.reduce = (lambda partial: partial) if bugs.o_proj_not_reduced else _all_reduce
    layer = load_state(NeuronLayer(attention, c.hidden_size), shard_state_dict(weights, p, rank, c.head_dim,
                                                                               bugs=bugs))
    rank_spec = dataclasses.replace(spec, config=local)
    try:
        return Driver(EagerLayer(layer), rank_spec, buckets, bugs).run(rank_batch(batch, p, rank))
    except PlanUnsupported as exc:  # said as `unsupported` by the candidate, as at tp 1
        return str(exc)
    except CandidateInconsistent as exc:  # a tolerance-free check failed in this rank: a verdict, not a crash
        return RankInconsistent(exc.stage, str(exc))


def init_model_parallel(rank: int, world: int) -> None:
    """A rank's set-up for the SDK's modules, in NxD's order (application_base.py `to_cpu`): the gloo
    group is up (the launcher), then the model-parallel state, before any module is built (else
    LearnedSink starts a one-process fallback group of its own)."""
    from neuronx_distributed.parallel_layers import parallel_state

    parallel_state.initialize_model_parallel(tensor_model_parallel_size=world, skip_collective_init=True)


def run_rank_sdk(rank: int, world: int, spec: BlockSpec, batch: Batch, buckets, kind: str, class_path: str | None,
                 config: dict | None = None):
    """In rank `rank`'s process: the SDK's module built sharded (`tp_degree=world`), the whole block's
    weights sharded by NxD's own `get_sharded_checkpoint`, the batch run through the driver with the SDK's
    cache manager and mask builders (or the deployment's own) holding this rank's caches."""
    from neuronx_distributed.trace.trace import get_sharded_checkpoint

    from harness.neuron import nxdi
    from harness.neuron.config import deployment
    from harness.neuron.convert import nxdi_state_dict
    from harness.neuron.driver import Driver, PlanUnsupported
    from harness.neuron.emulation import NxdiConventionAttention
    from harness.neuron.layer import EagerLayer, NeuronLayer
    from harness.neuron.upstream import UpstreamServing

    c = spec.config
    p = plan(c.num_attention_heads, c.num_key_value_heads, world)
    config = config or {}
    layer = NeuronLayer(nxdi.build_attention(kind, class_path, spec, 1, on_cpu=True, tp_degree=world,
                                             flags=deployment(config)), c.hidden_size)
    # the unsharded block's state dict in NxDI's names (the emulation has the same names), then what this
    # module holds of it, sharded by the SDK
    whole = NeuronLayer(NxdiConventionAttention(c, spec.layer_idx, spec.dtype), c.hidden_size)
    full = nxdi_state_dict(spec.weights, c, whole.state_dict())
    wanted = layer.state_dict()
    given = {k: v.clone() for k, v in full.items() if k in wanted}
    if "attn.rank_util.rank" in wanted:
        given["attn.rank_util.rank"] = torch.arange(world, dtype=torch.int32)
    missing = sorted(set(wanted) - set(given))
    if missing:
        raise ValueError(f"rank {rank}: the module has state the harness cannot fill: {missing}")
    get_sharded_checkpoint(given, layer, rank, world)
    layer.load_state_dict(given, strict=True)
    layer = layer.eval()
    local = dataclasses.replace(c, num_attention_heads=p.q_per_rank, num_key_value_heads=p.kv_per_rank)
    rank_spec = dataclasses.replace(spec, config=local)
    # the manager is built for the whole block's heads: inside the model-parallel state it keeps this rank's share
    serving = UpstreamServing(spec, world, config.get("cache_manager"), config.get("mask_builder"))
    try:
        output, taps, info = Driver(EagerLayer(layer), rank_spec, buckets, serving=serving,
                                    adopt_ring=serving.manager_cls is None).run(rank_batch(batch, p, rank))
    except PlanUnsupported as exc:
        return str(exc)
    except CandidateInconsistent as exc:
        return RankInconsistent(exc.stage, str(exc))
    info["caller"] = serving.names
    return output, taps, info


def same_on_every_rank(per_rank: list[torch.Tensor], p: ShardPlan) -> torch.Tensor:
    """Rank 0's block output, after checking every rank holds the same bits."""
    for rank, out in enumerate(per_rank[1:], 1):
        if not torch.equal(out.nan_to_num(0), per_rank[0].nan_to_num(0)):
            raise RanksDisagree("out_proj", f"{RANK_CHECK}: rank {rank}'s block output differs from rank 0's (tp {p.tp}): "
                                "after o_proj's all-reduce every rank must hold the same output")
    return per_rank[0]


def gather_replicas(per_rank_taps: list[dict[str, torch.Tensor]], p: ShardPlan, axes: dict[str, int]) -> dict[str, torch.Tensor]:
    """Each kv stage in `axes` (name -> its head axis) in the unsharded block's layout, after checking
    that replicated kv heads hold the same bits on every rank that holds them."""
    gathered, problems = {}, []
    for name, axis in axes.items():
        gathered[name], wrong = gather_kv([t[name] for t in per_rank_taps], p, axis)
        problems += [(name, w) for w in wrong]
    if problems:
        raise RanksDisagree(problems[0][0], f"{RANK_CHECK}: replicated kv heads differ between ranks (tp {p.tp}, "
                            f"{p.strategy}, each kv head held by {p.repeats} ranks): "
                            + "; ".join(f"{name}: {w}" for name, w in problems))
    return gathered


def gather(results: list, p: ShardPlan) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
    """The ranks' (output, taps, info) as one block's, after the tolerance-free checks above."""
    output = same_on_every_rank([r[0] for r in results], p)
    names = results[0][1]
    kv = gather_replicas([r[1] for r in results], p, {n: KV_AXIS[n] for n in names if n in KV_AXIS})
    taps = {name: kv[name] if name in kv else
            gather_heads([r[1][name] for r in results], QUERY_AXIS[name]) if name in QUERY_AXIS else
            results[0][1][name] for name in names}
    info = dict(results[0][2])
    info.update(tp_degree=p.tp, gqa=p.strategy)
    return output, taps, info
