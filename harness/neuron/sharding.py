"""How NxDI shards gpt-oss attention over tp_degree NeuronCores, written here from its source (release
2.29: modules/attention/gqa.py, modules/attention/sink.py, NxD's ColumnParallelLinear and
RowParallelLinear), so that the emulation can run sharded without the SDK and the harness can name
which rank holds which head.

- GQA strategy (gqa.py determine_sharding_strategy): REPLICATE_TO_TP_DEGREE when tp is a multiple of
  the kv heads, else CONVERT_TO_MHA. The kv heads are then replicated (repeat_interleave on the head
  axis) to tp when tp exceeds them (REPLICATE), or to the query heads (CONVERT, a real conversion only
  when the kv heads do not divide tp); when tp divides the kv heads nothing changes.
- Query heads, their q projection rows, their o_proj columns and their learned sinks are split in
  contiguous blocks: rank r holds query heads [r*Hq/tp, (r+1)*Hq/tp) and the sinks of exactly those
  heads. The (possibly replicated) kv heads are split the same way, so rank r's local kv head j is the
  original kv head (r * kv_per_rank + j) // repeats, and every query head still reads the kv head
  h // (Hq / Hkv) of the unsharded block.
- o_proj is row-parallel: each rank multiplies its heads' slice, the partial sums are all-reduced,
  and the bias (not sharded) is added once after the reduction.
- q/k/v biases are sharded like their weights.

Layouts that upstream itself cannot shard are `ShardingUnsupported` (the verdict is `unsupported`,
never charged to the candidate): query heads not divisible by tp (LearnedSink divides the unpadded
head count), and a real CONVERT_TO_MHA conversion (the preshard hook pads the already replicated
K/V again; measured with NxDI 2.29). A tp larger than the query heads is impossible at all: a
ValueError before any process starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.neuron.bugs import Bugs

REPLICATE = "REPLICATE_TO_TP_DEGREE"
CONVERT = "CONVERT_TO_MHA"


class ShardingUnsupported(Exception):
    """A layout the SDK itself cannot shard (said as such, not charged to the candidate)."""


@dataclass(frozen=True)
class ShardPlan:
    tp: int
    strategy: str
    q_heads: int  # of the unsharded block
    kv_heads: int  # of the unsharded block
    repeats: int  # how many copies of each kv head exist after replication (1: none)

    @property
    def q_per_rank(self) -> int:
        return self.q_heads // self.tp

    @property
    def kv_per_rank(self) -> int:
        return self.kv_heads * self.repeats // self.tp

    def q_of(self, rank: int) -> range:
        """The query heads (of the unsharded block) rank `rank` holds."""
        return range(rank * self.q_per_rank, (rank + 1) * self.q_per_rank)

    def kv_of(self, rank: int) -> list[int]:
        """For each local kv head of `rank`, the kv head of the unsharded block it holds."""
        return [(rank * self.kv_per_rank + j) // self.repeats for j in range(self.kv_per_rank)]


def plan(q_heads: int, kv_heads: int, tp: int) -> ShardPlan:
    """NxDI's sharding of `q_heads` query and `kv_heads` kv heads over `tp` ranks."""
    if not isinstance(tp, int) or isinstance(tp, bool) or tp < 1:
        raise ValueError(f"tp_degree={tp!r} must be a positive integer")
    if tp > q_heads:
        raise ValueError(f"tp_degree={tp} is larger than the {q_heads} query heads: no rank would hold a head; "
                         f"use a tp_degree of at most {q_heads}")
    strategy = REPLICATE if tp % kv_heads == 0 else CONVERT
    if q_heads % tp:
        raise ShardingUnsupported(
            f"tp_degree={tp} does not divide the {q_heads} query heads: NxDI pads the query heads, but its "
            f"LearnedSink sizes the sinks from the unpadded count and fails (NxDI 2.29, modules/attention/sink.py)")
    if strategy == REPLICATE:
        repeats = tp // kv_heads
    elif kv_heads % tp == 0:
        repeats = 1  # CONVERT_TO_MHA chosen, but tp divides the kv heads: nothing is converted
    else:
        raise ShardingUnsupported(
            f"tp_degree={tp} and {kv_heads} kv heads: NxDI converts to multi-head attention (CONVERT_TO_MHA), "
            "whose preshard hook pads the already replicated K/V again and fails (NxDI 2.29, modules/attention/gqa.py)")
    return ShardPlan(tp, strategy, q_heads, kv_heads, repeats)


def _rows(weight: torch.Tensor, heads: list[int], head_dim: int) -> torch.Tensor:
    """The rows of a [heads * d, ...] projection (or a [heads * d] bias) that belong to `heads`."""
    return torch.cat([weight[h * head_dim:(h + 1) * head_dim] for h in heads]).clone()


def shard_state_dict(full: dict[str, torch.Tensor], p: ShardPlan, rank: int, head_dim: int,
                     prefix: str = "attn.", bugs: Bugs = Bugs()) -> dict[str, torch.Tensor]:
    """Rank `rank`'s share of an NxDI-named state dict of the unsharded block (the names of
    harness/neuron/convert.py: `{prefix}qkv_proj.{q,k,v}_proj.*`, `{prefix}o_proj.o_proj.*`, the
    learned sinks); any other entry (the norm) is kept whole. `bugs`: the self-test's sharding mistakes."""
    q_heads, kv_heads = list(p.q_of(rank)), p.kv_of(0 if bugs.same_kv_shard else rank)
    if bugs.kv_replicas_tiled:  # replica k of head j at k * kv_heads + j instead of j * repeats + k
        kv_heads = [(rank * p.kv_per_rank + j) % p.kv_heads for j in range(p.kv_per_rank)]
    sink_rank = p.tp - 1 - rank if bugs.sink_shards_reversed else 0 if bugs.sinks_of_first_rank else rank
    out = {}
    for name, value in full.items():
        local = name.removeprefix(prefix) if name.startswith(prefix) else None
        if local in ("qkv_proj.q_proj.weight", "qkv_proj.q_proj.bias"):
            out[name] = _rows(value, q_heads, head_dim)
        elif local in ("qkv_proj.k_proj.weight", "qkv_proj.k_proj.bias", "qkv_proj.v_proj.weight",
                       "qkv_proj.v_proj.bias"):
            out[name] = _rows(value, kv_heads, head_dim)
        elif local == "o_proj.o_proj.weight":  # row-parallel: the input columns of this rank's heads
            out[name] = _rows(value.t(), q_heads, head_dim).t().contiguous()
        elif local in ("learned_sinks.sink", "tkg_learned_sinks.sink"):
            out[name] = value[p.q_of(sink_rank).start:p.q_of(sink_rank).stop].clone()
        else:
            out[name] = value
    return out


def gather_heads(per_rank: list[torch.Tensor], axis: int) -> torch.Tensor:
    """Query-head tensors of every rank (each holding its block of heads on `axis`), in the unsharded
    block's head order."""
    return torch.cat(per_rank, dim=axis)


def gather_kv(per_rank: list[torch.Tensor], p: ShardPlan, axis: int) -> tuple[torch.Tensor, list[str]]:
    """The kv heads of the unsharded block from every rank's local ones (on `axis`), and, tolerance-free,
    every replica that disagrees with the first rank holding the same head ("kv head 1: rank 3 differs
    from rank 2"): a rank that loaded another rank's shard is named by head."""
    first: dict[int, tuple[int, torch.Tensor]] = {}
    mismatches = []
    for rank, local in enumerate(per_rank):
        for j, head in enumerate(p.kv_of(rank)):
            value = local.select(axis, j)
            if head not in first:
                first[head] = (rank, value)
            elif not torch.equal(value.nan_to_num(0), first[head][1].nan_to_num(0)):
                mismatches.append(f"kv head {head}: rank {rank} differs from rank {first[head][0]}")
    return torch.stack([first[h][1] for h in range(p.kv_heads)], dim=axis), mismatches
