"""Deliberate changes of the reference's meaning, for tests that must see them as drift (never as
platform rounding). Each patches reference/gpt_oss.py's AttentionBlock in this process only; the
file, and so the fingerprint, stays as it is, so a golden is recomputed and compared, not called stale.

    python -c "import tests.semantic_changes as s; s.apply('window_plus_1'); ..."
"""

from __future__ import annotations

import reference.gpt_oss as gpt_oss

KINDS = ("window_plus_1", "sinks_scaled", "rope_no_concentration")


def apply(kind: str, setattr=setattr) -> None:
    """Patch the reference; pass pytest's monkeypatch.setattr to have the change undone after a test."""
    if kind not in KINDS:
        raise ValueError(f"unknown change {kind!r}; changes are {KINDS}")
    block = gpt_oss.AttentionBlock
    init, load = block.__init__, block.load_state_dict

    def patched_init(self, config, layer_idx=0, device=None):
        init(self, config, layer_idx, device)
        if kind == "window_plus_1" and self.sliding_window:
            self.sliding_window += 1  # W + 1 visible keys
        if kind == "rope_no_concentration":
            inner = self.rope._compute_concentration_and_inv_freq
            self.rope._compute_concentration_and_inv_freq = lambda: (1.0, inner()[1])

    def patched_load(self, state_dict, *args, **kwargs):
        if kind == "sinks_scaled":  # sinks 5% larger
            state_dict = {**state_dict, "sinks": (state_dict["sinks"].float() * 1.05).to(state_dict["sinks"].dtype)}
        return load(self, state_dict, *args, **kwargs)

    setattr(block, "__init__", patched_init)
    setattr(block, "load_state_dict", patched_load)
