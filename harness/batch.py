"""Build the batch a candidate receives from a case: padded hidden states, positions, validity, plan."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.case import Case
from harness.presets import preset
from harness.seeds import generator
from harness.weights import config_from_checkpoint, load_layer_weights, make_weights
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

    def sequence(self, row: int) -> torch.Tensor:
        """The unpadded (n_tokens, hidden) sequence of one row."""
        return self.hidden[row, self.slots(row)]


def make_inputs(case: Case, config: ModelConfig) -> list[torch.Tensor]:
    """One float32 sequence per row, from the case's input seed; independent of padding side."""
    out = []
    for row, n in enumerate(case.lengths):
        g = generator("inputs", case.input_seed, row)
        x = torch.randn(n, config.hidden_size, generator=g)
        if case.inputs == "large":
            # Residual-stream magnitudes grow with depth; a few tokens far larger than the rest.
            x *= 1.0 + 30.0 * torch.rand(n, 1, generator=g) ** 4
        elif case.inputs == "outliers":
            channels = torch.randperm(config.hidden_size, generator=g)[:4]
            x[:, channels] *= 50.0
        out.append(x)
    return out


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


def build(case: Case, checkpoint: str | None = None) -> tuple[BlockSpec, Batch]:
    """Spec and batch of a case. With `checkpoint` (a safetensors directory), the weights are layer
    `case.layer` of that checkpoint and the dims come from its config.json when it has one."""
    if checkpoint is None:
        config = preset(case.preset)
        weights = make_weights(config, case.weight_seed, case.sinks, case.scale)
    else:
        config = config_from_checkpoint(checkpoint, preset(case.preset))
        weights, _ = load_layer_weights(checkpoint, case.layer, config)
    spec = BlockSpec(config, case.layer, weights)
    seqs = make_inputs(case, config)
    b, s = case.batch_size, max(case.lengths)
    hidden = torch.zeros(b, s, config.hidden_size, dtype=spec.dtype)
    positions = torch.zeros(b, s, dtype=torch.long)
    valid = torch.zeros(b, s, dtype=torch.bool)
    compare = torch.zeros(b, s, dtype=torch.bool)
    for row, x in enumerate(seqs):
        n = len(x)
        lo = s - n if case.padding == "left" else 0
        hidden[row, lo : lo + n] = x.to(spec.dtype)
        positions[row, lo : lo + n] = torch.arange(n)
        valid[row, lo : lo + n] = True
        first = n - case.compare_last if case.compare_last else 0
        compare[row, lo + max(first, 0) : lo + n] = True
    batch = Batch(hidden, positions, valid, compare, case.lengths, case.padding, plan_steps(case))
    return spec, batch
