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
class Batch:
    """hidden [B, S, H] in spec.dtype, zeros in padding; positions [B, S] (0 in padding);
    valid [B, S] False in padding; compare [B, S] marks the rows that are judged.
    steps: the serving plan; steps[i][b] = (start, stop) positions of row b processed in step i
    (start == stop when row b has nothing in that step). Every step attends to all earlier positions."""

    hidden: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor
    compare: torch.Tensor
    lengths: tuple[int, ...]
    padding: str
    steps: tuple[tuple[tuple[int, int], ...], ...]

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


def make_batch(case: Case, spec: BlockSpec) -> Batch:
    config = spec.config
    seqs = make_inputs(case, config)
    b, s = case.batch_size, case.pad_to or max(case.lengths)
    hidden = torch.zeros(b, s, config.hidden_size, dtype=spec.dtype)
    positions = torch.zeros(b, s, dtype=torch.long)
    valid = torch.zeros(b, s, dtype=torch.bool)
    compare = torch.zeros(b, s, dtype=torch.bool)
    for row, x in enumerate(seqs):
        n = len(x)
        lo = s - n if case.padding == "left" else 0
        # rounded through bf16 first so that bf16 and float32 cases see the same input values
        hidden[row, lo : lo + n] = x.to(torch.bfloat16).to(spec.dtype)
        positions[row, lo : lo + n] = torch.arange(n)
        valid[row, lo : lo + n] = True
        first = n - case.compare_last if case.compare_last else 0
        compare[row, lo + max(first, 0) : lo + n] = True
    return Batch(hidden, positions, valid, compare, case.lengths, case.padding, plan_steps(case))
