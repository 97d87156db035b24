"""Expected tensors: what the float64 oracle and the bf16 reference produce for a case, layer by layer.

They come either from computing both producers on the CPU (`compute_expected`) or from the golden
store (harness/goldens.py), which holds the same thing; the runner takes either through one callable,
`ExpectedFn(case, checkpoint) -> list[Expected]`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from collections.abc import Callable

import torch

from harness.batch import Batch, BlockSpec, layer_specs, make_batch
from harness.case import Case
from harness.limits import check_fits
from harness.produce import run_oracle, run_reference


@dataclass
class Expected:
    """One layer's expected tensors. batch.hidden is the layer's input as the candidate gets it in a
    single block or a teacher-forced stack (a free-running stack feeds each candidate its own output)."""

    spec: BlockSpec
    batch: Batch
    oracle: dict[str, torch.Tensor]
    reference: dict[str, torch.Tensor]

    @functools.cached_property
    def probes(self) -> list:
        """The tolerance-free probes of this layer's batch (harness/probes.py), built once for every candidate."""
        from harness.probes import build_probes

        return build_probes(self.spec, self.batch, self.reference)


ExpectedFn = Callable[[Case, "str | None"], "list[Expected]"]


def produce_expected(spec: BlockSpec, batch: Batch, prefix=None) -> Expected:
    """`prefix`: a from_cache batch's prefix pass (harness/prefix.py), whose oracle keys the oracle reads."""
    return Expected(spec, batch, run_oracle(spec, batch, taps=True, prefix=prefix), run_reference(spec, batch, taps=True))


def expected_for(case: Case, checkpoint: str | None = None) -> Expected:
    """The first layer's expected tensors."""
    return compute_expected(case, checkpoint)[0]


def _from_cache(case: Case, spec: BlockSpec) -> Expected:
    """One pass over the prefix's inputs makes the cache (the reference's keys) and the oracle's keys."""
    from harness.prefix import prefix_pass

    prefix = prefix_pass(case, spec)
    return produce_expected(spec, make_batch(case, spec, cache=prefix.cache), prefix)


def next_input(output: torch.Tensor, batch: Batch, dtype: torch.dtype) -> torch.Tensor:
    """A layer's output as the next layer's input: padding back to zeros (producers leave NaN there)."""
    return torch.where(batch.valid[..., None], output, torch.zeros((), dtype=output.dtype)).to(dtype)


def compute_expected(case: Case, checkpoint: str | None = None) -> list[Expected]:
    """Every layer's expected tensors, computed. In a stack, teacher mode runs both producers on the
    oracle's previous output rounded to the model dtype (what every candidate is fed); free mode lets
    the oracle (in float64) and the reference (in its dtype) each run on their own previous output;
    same_input runs every layer on the case's own inputs."""
    check_fits(case)  # before anything is allocated
    specs = layer_specs(case, checkpoint)
    if case.plan == "from_cache":  # each layer (same_input) its own cache of the case's inputs
        return [_from_cache(case, spec) for spec in specs]
    batch = make_batch(case, specs[0])
    if case.depth == 1 or case.stack_mode == "same_input":
        return [produce_expected(spec, batch) for spec in specs]
    dtype = specs[0].dtype
    layers = []
    oracle_in = ref_in = batch.hidden
    for spec in specs:
        if case.stack_mode == "teacher":
            e = produce_expected(spec, batch.with_hidden(ref_in))
            ref_in = next_input(e.oracle["output"], batch, dtype)
        else:
            e = Expected(spec, batch.with_hidden(ref_in), run_oracle(spec, batch.with_hidden(oracle_in), taps=True),
                         run_reference(spec, batch.with_hidden(ref_in), taps=True))
            oracle_in = next_input(e.oracle["output"], batch, torch.float64)
            ref_in = next_input(e.reference["output"], batch, dtype)
        layers.append(e)
    return layers
