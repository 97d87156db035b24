"""What an NxDI attention module shows of itself without being edited: forward hooks on its submodules.

- q, k, v: the projections' outputs, before RoPE. NxDI's `qkv_proj` (GroupQueryAttention_QKV) returns
  (Q, K, V, residual) whether fused (`Wqkv`) or not; modules whose `qkv_proj` is a plain container
  (the emulation) are seen through `qkv_proj.{q,k,v}_proj`.
- attn: the input of o_proj (the attention output, heads concatenated), from `o_proj` or `o_proj.o_proj`;
- cos, sin: the RoPE tables [B, S, d] the rotary submodule (`rotary_emb`) returns, from which
  harness/neuron/derived.py derives what a real module does not show.
Each is kept as [B, H, S, d] for the last call (references, not copies: the module is done with them).
Everything else a real module computes (RoPE'd q, scores, probabilities) is not a submodule's output,
so it is not observed; the driver says which stages were observed.
"""

from __future__ import annotations

import torch

from harness.neuron.derived import DERIVED, derive

OBSERVABLE = ("q", "k", "v", "attn", "cos", "sin")


def _heads(t: torch.Tensor, head_dim: int) -> torch.Tensor | None:
    """[B, S, H*d] -> [B, H, S, d]; None for anything else (a hook must never break the call)."""
    if not isinstance(t, torch.Tensor) or t.dim() != 3 or t.shape[-1] % head_dim:
        return None
    b, s, _ = t.shape
    return t.view(b, s, -1, head_dim).transpose(1, 2)


class Observed:
    """Forward hooks on `attention`'s submodules; `values` holds the last call's stages."""

    def __init__(self, attention: torch.nn.Module, head_dim: int):
        self.head_dim = head_dim
        self.values: dict[str, torch.Tensor] = {}
        # what is kept (references held until the next call: a 131,072-token call's q is a gigabyte):
        # v always (the hand-over check), the rest when the driver asks for internals
        self.want = {"v"}
        self.handles = []
        modules = dict(attention.named_modules())
        qkv = modules.get("qkv_proj")
        if qkv is not None:
            self.handles.append(qkv.register_forward_hook(self._qkv))
            for name in ("q", "k", "v"):
                proj = modules.get(f"qkv_proj.{name}_proj")
                if proj is not None:
                    self.handles.append(proj.register_forward_hook(self._one(name)))
        for path in ("o_proj", "o_proj.o_proj"):
            if path in modules:
                self.handles.append(modules[path].register_forward_pre_hook(self._attn, with_kwargs=True))
        rotary = modules.get("rotary_emb")
        if rotary is not None:
            self.handles.append(rotary.register_forward_hook(self._tables))
        # the stages hooks are placed for (a module may still not call a submodule it has)
        self.names = ((("q", "k", "v") if qkv is not None else ()) + (("attn",) if "o_proj" in modules else ())
                      + (("cos", "sin") if rotary is not None else ()))

    def _keep(self, name: str, t) -> None:
        if name not in self.want:
            return
        value = _heads(t, self.head_dim)
        if value is not None and name not in self.values:  # the outer module's view wins (both fire)
            self.values[name] = value

    def _qkv(self, module, args, output) -> None:
        if isinstance(output, (tuple, list)) and len(output) >= 3:
            for name, t in zip(("q", "k", "v"), output[:3]):
                self.values.pop(name, None)  # the projections' own hooks fired first: same values
                self._keep(name, t)

    def _one(self, name: str):
        def hook(module, args, output):
            self._keep(name, output)
        return hook

    def _attn(self, module, args, kwargs) -> None:
        given = args[0] if args else next(iter(kwargs.values()), None)  # o_proj(attention_output=...) too
        self._keep("attn", given)

    def _tables(self, module, args, output) -> None:
        if isinstance(output, (tuple, list)) and len(output) == 2 and "cos" in self.want and "cos" not in self.values:
            cos, sin = output
            if isinstance(cos, torch.Tensor) and cos.dim() == 3 and cos.shape[-1] == self.head_dim:
                self.values.update(cos=cos, sin=sin)

    def ask(self, keep: bool, has_sinks: bool) -> tuple[str, ...]:
        """Keep the stages (and the tables to derive from) only where `keep`; the stages that will come:
        observed, then derived where the RoPE tables and the sinks are there (harness/neuron/derived.py)."""
        if not keep:
            self.want = {"v"}
            return ()
        self.want = set(OBSERVABLE)
        observed = tuple(name for name in ("q", "k", "attn") if name in self.names)
        derivable = {"q", "k", "cos"} <= set(self.names) and has_sinks
        return observed + (DERIVED if derivable else ())

    def stages(self, sinks, mask, cache_k=None, active=None) -> dict[str, torch.Tensor]:
        """The last call's observed stages and those derived from them."""
        shown = {k: v for k, v in self.values.items() if k in ("q", "k", "attn")}
        return {**shown, **derive(self.values, mask, cache_k, active, sinks=sinks)}

    def start_call(self) -> None:
        self.values = {}

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles = []
