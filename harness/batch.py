"""Build the batch a candidate receives from a case: padded hidden states, positions, validity, plan."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import torch

from harness.case import Case
from harness.presets import preset
from harness.seeds import choice, generator, normal, uniform
from harness.weights import config_from_checkpoint, load_layer_weights, make_weights, weights_sha256
from reference.gpt_oss import ModelConfig


@dataclass(frozen=True)
class BlockSpec:
    """What a candidate needs to build its block: dims, which layer, weights (gpt-oss layout), dtype."""

    config: ModelConfig
    layer_idx: int
    weights: dict[str, torch.Tensor]
    dtype: torch.dtype = torch.bfloat16

    @property
    def window(self) -> int:
        """Keys a query sees on this layer, itself included; 0 = full causal."""
        return self.config.sliding_window if self.layer_idx % 2 == 0 else 0


@dataclass(frozen=True)
class CachedPrefix:
    """The KV cache a from_cache plan hands the candidate: k_rope and v [B, C, Hkv, d] in the case's
    dtype, as the bf16 reference computed them; slot j of row b holds position j for j < lengths[b]
    (C is the longest row's prefix), later slots are zeros and must never be read. On sliding layers
    only the last 2W positions before the generated tokens are the reference's; older slots hold
    filler no correct block reads (harness/prefix.py)."""

    k_rope: torch.Tensor
    v: torch.Tensor
    lengths: tuple[int, ...]
    inputs_sha256: str = ""  # of the prefix's inputs, as the prefix pass generated them (goldens check it)

    @property
    def slots(self) -> int:
        return self.k_rope.shape[1]

    @property
    def valid(self) -> torch.Tensor:
        """[B, C]: True where a slot holds a position."""
        return torch.arange(self.slots)[None, :] < torch.tensor(self.lengths)[:, None]

    def with_values(self, k_rope: torch.Tensor, v: torch.Tensor) -> "CachedPrefix":
        return replace(self, k_rope=k_rope, v=v)


@dataclass(frozen=True)
class Batch:
    """hidden [B, S, H] in spec.dtype, zeros in padding; positions [B, S] (0 in padding);
    valid [B, S] False in padding; compare [B, S] marks the rows that are judged.
    steps: the serving plan; steps[i][b] = (start, stop) positions of row b processed in step i
    (start == stop when row b has nothing in that step). Every step attends to all earlier positions.
    cache (plan from_cache): the KV cache of every position before the first step; the slots then
    hold only the generated tokens, at their absolute positions.

    Keys: a query attends over the batch's key axis, the cache's C slots (if any) then the S slots.
    Score and probability taps are [B, Hq, S, keys] in that order (harness/stages.py)."""

    hidden: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor
    compare: torch.Tensor
    lengths: tuple[int, ...]
    padding: str
    steps: tuple[tuple[tuple[int, int], ...], ...]
    cache: CachedPrefix | None = None

    @property
    def cached(self) -> int:
        """Slots of the cache before the batch's own slots on the key axis (0 without a cache)."""
        return 0 if self.cache is None else self.cache.slots

    @property
    def key_positions(self) -> torch.Tensor:
        """[B, keys]: the position each entry of the key axis holds."""
        if self.cache is None:
            return self.positions
        own = torch.arange(self.cache.slots).expand(self.positions.shape[0], -1)
        return torch.cat((own, self.positions), dim=1)

    @property
    def key_valid(self) -> torch.Tensor:
        """[B, keys]: False for padding (and the cache's unused slots)."""
        if self.cache is None:
            return self.valid
        return torch.cat((self.cache.valid, self.valid), dim=1)

    def key_index(self, row: int, positions: torch.Tensor) -> torch.Tensor:
        """Where positions of row `row` sit on the key axis."""
        if self.cache is None:
            return self.slots(row)[positions]
        start = self.cache.lengths[row]
        inside = positions < start
        own = self.slots(row)[(positions - start).clamp(min=0)] + self.cache.slots
        return torch.where(inside, positions, own)

    def first_position(self, row: int) -> int:
        """The position of the row's first slot (0, or the cache's length)."""
        return 0 if self.cache is None else self.cache.lengths[row]

    def slots(self, row: int) -> torch.Tensor:
        """Slot indices of row `row`'s tokens, in position order."""
        return self.valid[row].nonzero().squeeze(1)

    def with_hidden(self, hidden: torch.Tensor) -> "Batch":
        """The same batch with other hidden states (the next layer's input in a stack)."""
        return replace(self, hidden=hidden)

    def sequence(self, row: int) -> torch.Tensor:
        """The unpadded (n_tokens, hidden) sequence of one row."""
        return self.hidden[row, self.slots(row)]


# Inputs are drawn in blocks of this many tokens, each block from its own stream: a token's values
# depend only on (input seed, row, position), so any stretch of a row can be made alone.
INPUT_BLOCK = 256


def input_tokens(case: Case, config: ModelConfig, row: int, start: int, stop: int) -> torch.Tensor:
    """Float64 hidden states of positions [start, stop) of one row, the same on every machine."""
    h = config.hidden_size
    blocks = []
    for block in range(start // INPUT_BLOCK, (stop + INPUT_BLOCK - 1) // INPUT_BLOCK):
        g = generator("inputs", case.input_seed, row, block)
        x = normal(g, INPUT_BLOCK, h)
        if case.inputs == "large":
            # Residual-stream magnitudes grow with depth; a few tokens far larger than the rest.
            x *= 1.0 + 30.0 * uniform(g, INPUT_BLOCK)[:, None] ** 4
        blocks.append(x)
    lo = (start // INPUT_BLOCK) * INPUT_BLOCK
    x = torch.cat(blocks)[start - lo : stop - lo]
    if case.inputs == "outliers":
        x[:, choice(generator("inputs-outliers", case.input_seed, row), h, 4)] *= 50.0
    return x


def make_inputs(case: Case, config: ModelConfig) -> list[torch.Tensor]:
    """One float64 sequence per row, from the case's input seed; independent of padding side."""
    return [input_tokens(case, config, row, 0, n) for row, n in enumerate(case.lengths)]


def plan_steps(case: Case) -> tuple[tuple[tuple[int, int], ...], ...]:
    if case.plan == "from_cache":  # the prefix is in the cache: one generation step per new token
        k = case.decode_steps
        return tuple(tuple((n - k + i, n - k + i + 1) for n in case.lengths) for i in range(k))
    if case.plan == "prefill":
        return (tuple((0, n) for n in case.lengths),)
    if case.plan == "decode":
        k = case.decode_steps
        steps = [tuple((0, n - k) for n in case.lengths)]
        steps += [tuple((n - k + i, n - k + i + 1) for n in case.lengths) for i in range(k)]
        return tuple(steps)
    off = case.chunk_offset
    return (tuple((0, min(off, n)) for n in case.lengths), tuple((min(off, n), n) for n in case.lengths))


def layer_specs(case: Case, checkpoint: str | None = None) -> list[BlockSpec]:
    """One spec per layer of the case (one unless depth > 1). With a checkpoint (a safetensors
    directory: `checkpoint`, else the case's own), weights are those layers of the checkpoint and the
    dims come from its config.json when it has one; otherwise each layer has its own seeded weights.
    Weights are in the case's dtype (norm.scale always float32), the reference's values either way."""
    dtype = getattr(torch, case.dtype)
    checkpoint = checkpoint or case.checkpoint or None
    config = preset(case.preset)
    if checkpoint is not None:
        config = config_from_checkpoint(checkpoint, config)
    specs = []
    for i in range(case.depth):
        layer = case.layer + i
        if checkpoint is None:
            weights = make_weights(config, case.weight_seed + 7919 * i, case.sinks, case.scale)
        else:
            weights, _ = load_layer_weights(checkpoint, layer, config)
        weights = {n: t if n == "norm.scale" else t.to(dtype) for n, t in weights.items()}
        specs.append(BlockSpec(config, layer, weights, dtype))
    if case.checkpoint_sha256 and checkpoint_sha256(specs) != case.checkpoint_sha256:
        raise ValueError(f"checkpoint {checkpoint}: the weights of layers {case.layer}..{case.layer + case.depth - 1} "
                         f"differ from those the case was recorded with (sha256 {case.checkpoint_sha256[:12]}..., now "
                         f"{checkpoint_sha256(specs)[:12]}...): the checkpoint changed since")
    return specs


def checkpoint_sha256(specs: list[BlockSpec]) -> str:
    """One hash of every layer's weights, as recorded in a case taken from a checkpoint."""
    return hashlib.sha256("".join(weights_sha256(s.weights) for s in specs).encode()).hexdigest()


def with_checkpoint(case: Case, checkpoint: str) -> Case:
    """The case with its weights from `checkpoint`, recorded by path and hash so that a repro file
    rebuilds exactly these weights (and says so if the checkpoint changed)."""
    from pathlib import Path

    path = str(Path(checkpoint).resolve())
    return replace(case, checkpoint=path, checkpoint_sha256=checkpoint_sha256(layer_specs(case, path)))


def build(case: Case, checkpoint: str | None = None) -> tuple[BlockSpec, Batch]:
    """The first layer's spec and the batch of a case (see layer_specs for the weights)."""
    spec = layer_specs(case, checkpoint)[0]
    return spec, make_batch(case, spec)


def new_tokens(case: Case) -> tuple[int, ...]:
    """Tokens of each row the candidate is handed: the whole row, or the generated ones (from_cache)."""
    return tuple(case.decode_steps for _ in case.lengths) if case.plan == "from_cache" else case.lengths


def make_batch(case: Case, spec: BlockSpec, cache: CachedPrefix | None = None) -> Batch:
    """The case's batch. A from_cache plan's cache is the reference's keys and values of the prefix,
    computed here in one chunked pass over the inputs (harness/prefix.py) unless `cache` is given."""
    config = spec.config
    if case.plan == "from_cache" and cache is None:
        from harness.prefix import cache_for

        cache = cache_for(case, spec)
    first = [n - k for n, k in zip(case.lengths, new_tokens(case))]
    from harness.timing import section

    with section("inputs"):
        seqs = [input_tokens(case, config, row, a, n) for row, (a, n) in enumerate(zip(first, case.lengths))]
    b, s = case.batch_size, case.pad_to or max(new_tokens(case))
    hidden = torch.zeros(b, s, config.hidden_size, dtype=spec.dtype)
    positions = torch.zeros(b, s, dtype=torch.long)
    valid = torch.zeros(b, s, dtype=torch.bool)
    compare = torch.zeros(b, s, dtype=torch.bool)
    for row, x in enumerate(seqs):
        n = len(x)
        lo = s - n if case.padding == "left" else 0
        # rounded through bf16 first so that bf16 and float32 cases see the same input values
        hidden[row, lo : lo + n] = x.to(torch.bfloat16).to(spec.dtype)
        positions[row, lo : lo + n] = torch.arange(first[row], first[row] + n)
        valid[row, lo : lo + n] = True
        judged = n - case.compare_last if case.compare_last else 0
        compare[row, lo + max(judged, 0) : lo + n] = True
    return Batch(hidden, positions, valid, compare, case.lengths, case.padding, plan_steps(case), cache)
