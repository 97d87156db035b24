"""The self-test's tracing mutants (xla mode only): blocks whose numbers are right but whose traced graphs
are not what a compiled NxDI model needs, each the emulation with one real way to get tracing wrong, each
to be caught by the tracing check named for it (harness/neuron/tracing.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.case import Case
from harness.neuron.emulation import NxdiConventionAttention


class CacheSlicedByPythonInt(NxdiConventionAttention):
    """Counts the tokens it has seen in a Python int and slices the cache (and its mask) to it: the slots
    cut off are never visible, so the numbers do not change, but every step's graph has a new shape."""

    def forward(self, hidden_states, attention_mask, position_ids, past_key_value=None, active_mask=None):
        if past_key_value is None:
            self.tokens = hidden_states.shape[1]
        else:
            self.tokens = getattr(self, "tokens", 0) + hidden_states.shape[1]
            k, v = past_key_value
            keep = min(self.tokens, k.shape[2])
            past_key_value, attention_mask = (k[:, :, :keep], v[:, :, :keep]), attention_mask[..., :keep]
        return super().forward(hidden_states, attention_mask, position_ids, past_key_value, active_mask)


class ControlFlowOnTensor(NxdiConventionAttention):
    """Checks its position ids with a Python `if` on a tensor's value: the step is cut in two graphs."""

    def forward(self, hidden_states, attention_mask, position_ids, past_key_value=None, active_mask=None):
        if bool((position_ids < 0).any()):
            raise ValueError("negative position ids")
        return super().forward(hidden_states, attention_mask, position_ids, past_key_value, active_mask)


class BufferOnFirstForward(NxdiConventionAttention):
    """Creates a buffer on its first forward (as upstream's rotary embedding creates inv_freq): the first
    call traces the buffer's creation, later calls read it, so the first bucket compiles twice."""

    def forward(self, hidden_states, attention_mask, position_ids, past_key_value=None, active_mask=None):
        if not hasattr(self, "unit"):
            self.register_buffer("unit", torch.ones((), dtype=hidden_states.dtype, device=hidden_states.device))
        return super().forward(hidden_states * self.unit, attention_mask, position_ids, past_key_value, active_mask)


# name -> (the block, the check that must catch it)
TRACING_MUTANTS = {
    "xla_cache_sliced_by_python_int": (CacheSlicedByPythonInt, "tracing: no recompile across token generation"),
    "xla_control_flow_on_tensor": (ControlFlowOnTensor, "tracing: one execution per call"),
    "xla_buffer_on_first_forward": (BufferOnFirstForward, "tracing: first call traces the graph later calls use"),
}
# a full layer's decode whose cache (256 slots) is longer than its context bucket (128), so that a cache cut
# to the tokens seen changes shape per step, and a sliding layer's decode across its ring
CASES = (Case(layer=1, lengths=(130,), plan="decode", decode_steps=10, input_seed=1),
         Case(layer=0, lengths=(150,), plan="decode", decode_steps=3, input_seed=2))


@dataclass
class TracingMutantResult:
    name: str
    check: str  # the check that must catch it
    killed: bool
    detail: str  # what the check said, or what happened instead


def run(name: str, cases=CASES) -> TracingMutantResult:
    """Run the mutant in xla mode on `cases` until its check fails."""
    from harness.neuron.candidate import NxdiEmulation
    from harness.runner import run_case

    cls, check = TRACING_MUTANTS[name]
    candidate = NxdiEmulation(name=f"mutant:{name}")
    candidate.mode, candidate.attention_class = "xla", cls
    said = []
    for case in cases:
        (v,) = run_case(case, [candidate], probes=False, isolation=False)
        caught = [p for p in v.probes if p["name"] == check and not p["passed"]]
        if caught:
            return TracingMutantResult(name, check, True, caught[0]["detail"])
        said.append(f"{case.id}: {v.verdict}" + (f" ({v.first_divergent_stage})" if v.first_divergent_stage else ""))
    return TracingMutantResult(name, check, False, "survived: " + "; ".join(said))
