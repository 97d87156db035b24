"""The layer a Neuron candidate runs: RMSNorm, an NxDI attention module, the residual. Tensors in and
tensors out, so that the same module runs eagerly (CPU mode, the emulation) and traced on a device,
and so that the driver gets its stage taps without changing the attention module:

    forward(x, mask, position_ids[, k_cache, v_cache, active_mask])
        -> (output, normed, out_proj, k, v)

Context encoding passes no cache; token generation passes the cache and the active mask. `out_proj`
is the attention module's output (NxDI's o_proj with bias, no residual); k and v are its
present_key_value (after RoPE): the window or the whole context after context encoding, the step's
own keys after token generation.

EagerLayer runs one in this process (CPU mode, the emulation); harness/neuron/device.py compiles it
for a Neuron device. Both present the same two calls to the driver.
"""

from __future__ import annotations

import torch

from harness.batch import BlockSpec
from harness.neuron.bugs import Bugs
from harness.neuron.convert import check_loaded, nxdi_state_dict

NORM_EPS = 1e-5  # gpt-oss's RMSNorm


def unpack(result) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden_states, k, v) from NxDI's NeuronAttentionBaseOutput or the tuple older releases return."""
    hidden = getattr(result, "hidden_states", None)
    present = getattr(result, "present_key_value", None)
    if hidden is None:
        hidden, present = result[0], result[1]
    return hidden, present[0], present[1]


class NeuronLayer(torch.nn.Module):
    def __init__(self, attention: torch.nn.Module, hidden_size: int):
        super().__init__()
        self.norm_scale = torch.nn.Parameter(torch.ones(hidden_size, dtype=torch.float32))  # float32, as gpt-oss's
        self.attn = attention
        self.fed_normed: tuple[torch.Tensor, torch.Tensor] | None = None  # stage isolation (the emulation only)

    def forward(self, x, mask, position_ids, k_cache=None, v_cache=None, active_mask=None):
        t = x.float()
        normed = (t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + NORM_EPS) * self.norm_scale).to(x.dtype)
        if self.fed_normed is not None:
            fed, rows = self.fed_normed
            normed = torch.where(rows[..., None], fed.to(normed.dtype), normed)
        extra = {} if k_cache is None else {"past_key_value": (k_cache, v_cache), "active_mask": active_mask}
        hidden, k, v = unpack(self.attn(hidden_states=normed, attention_mask=mask, position_ids=position_ids, **extra))
        return x + hidden.to(x.dtype), normed, hidden, k, v


class EagerLayer:
    """A NeuronLayer run in this process (CPU mode and the emulation). Forward hooks on the attention
    module's submodules (harness/neuron/hooks.py) show what a real module computes without editing it:
    its q, k, v projections and o_proj's input; the emulation records its internals itself."""

    def __init__(self, module: NeuronLayer):
        from harness.neuron.hooks import Observed

        self.module = module
        self.observed = Observed(module.attn, _head_dim(module.attn))
        self.call: tuple = ()
        self.call_generation = False
        self.own_internals = getattr(module.attn, "records_internals", False)  # the emulation

    def keep_internals(self, keep: bool) -> tuple[str, ...]:
        """Ask for the attention module's internals, kept only where `keep` (they are large: the
        emulation's include scores); the stages that will come."""
        if self.own_internals:
            self.module.attn.keep_internals = keep
            return ("q", "k", "q_rope", "attn", "scores", "probs") if keep else ()
        return self.observed.ask(keep, sinks(self.module.attn) is not None)

    def internals(self) -> dict:
        """The last call's internals: the emulation's own record, or what the hooks saw (q, k, attn; v is
        tapped from the cache hand-over) and what is derived from it (harness/neuron/derived.py)."""
        if self.own_internals:
            return getattr(self.module.attn, "recorded", {})
        if not self.call:
            return {}
        return self.observed.stages(self._sinks(), *self.call)

    def _sinks(self):
        """The sinks the derived stages use: the module's own."""
        return sinks(self.module.attn, self.call_generation)

    def projected_values(self) -> torch.Tensor | None:
        """The last call's v projection [B, kv, S, d] (the hand-over check identifies keys by it)."""
        return self.observed.values.get("v")

    def set_feed(self, fed: dict) -> None:
        """Stage isolation: the next calls use these values (the emulation's module only)."""
        self.module.fed_normed = fed.get("normed")
        self.module.attn.fed = {k: v for k, v in fed.items() if k != "normed"}

    def context(self, x, mask, position_ids):
        self.observed.start_call()
        self.call, self.call_generation = (mask,), False  # what the derived stages need of the call
        with torch.no_grad():
            return self.module(x, mask, position_ids)

    def generation(self, x, mask, position_ids, k_cache, v_cache, active):
        self.observed.start_call()
        self.call, self.call_generation = (mask, k_cache, active), True
        with torch.no_grad():
            return self.module(x, mask, position_ids, k_cache, v_cache, active)


def sinks(attention: torch.nn.Module, generation: bool = False) -> torch.Tensor | None:
    """The module's learned sinks (token generation's own copy where it has one, as NxDI's)."""
    for name in (("tkg_learned_sinks", "learned_sinks") if generation else ("learned_sinks",)):
        sink = getattr(getattr(attention, name, None), "sink", None)
        if isinstance(sink, torch.Tensor):
            return sink.detach()
    return None


def _head_dim(attention: torch.nn.Module) -> int:
    """NeuronAttentionBase keeps head_dim; the emulation its config's."""
    head_dim = getattr(attention, "head_dim", None)
    return int(head_dim) if head_dim else attention.config.head_dim


def load_layer(module: NeuronLayer, spec: BlockSpec, bugs: Bugs = Bugs()) -> NeuronLayer:
    """Fill the layer with the case's weights (strict conversion, checked after loading)."""
    return load_state(module, nxdi_state_dict(spec.weights, spec.config, module.state_dict(), bugs=bugs))


def load_state(module: NeuronLayer, given: dict) -> NeuronLayer:
    """Load `given` strictly and check it arrived."""
    module.load_state_dict(given, strict=True)
    check_loaded(module, given)
    return module.eval()
