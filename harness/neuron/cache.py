"""The KV cache as NxDI's caller keeps it (GptOssKVCacheManager), and the window a sliding layer's
context encoding hands over (attention/utils.py get_last_kv_window).

Full layers: a cache of L slots (the token-generation bucket); context encoding fills slots 0..S-1
(its bucket, padding included), each generated token is written at its position. Sliding layers:
a ring of R = W-1 slots (NxDI 2.29; the module's context encoding tells the size) in a cache of R
rounded up to a multiple of 128 slots; context encoding hands over the last R keys already in ring
order (position p in slot p % R), each generated token is written at pos % R. The module returns
keys after RoPE. `Bugs` (harness/neuron/bugs.py) holds the self-test's ways to get this wrong.
"""

from __future__ import annotations

import torch

from harness.neuron.bugs import Bugs


def round_up(n: int, multiple: int = 128) -> int:
    return -(-n // multiple) * multiple


def last_window(k: torch.Tensor, v: torch.Tensor, position_ids: torch.Tensor, ring: int,
                bugs: Bugs = Bugs()) -> tuple[torch.Tensor, torch.Tensor]:
    """The last `ring` keys and values of a context [B, kv, S, d] before the newest position (the
    largest position id of each row), in ring order: position p lands in slot p % ring. A context
    shorter than the ring is an error, as in NxDI (its buckets on sliding layers start at 128)."""
    ring += int(bugs.handover_one_long) - int(bugs.handover_one_short)
    b, heads, s, d = k.shape
    if s < ring:
        raise ValueError(f"a sliding layer's context of {s} tokens is shorter than its cache ring of {ring} "
                         f"(NxDI's get_last_kv_window fails the same way): use context buckets of at least {ring + 1}")
    newest = position_ids.amax(dim=1)  # padding has position 1, so this is the last real token
    end = (newest + 1).clamp(min=ring)
    first = end - ring
    order = first[:, None] + torch.arange(ring)[None, :]  # positions in position order
    if not bugs.seed_position_order:
        shift = (ring - end % ring) % ring
        order = torch.gather(order, 1, (torch.arange(ring)[None, :] + shift[:, None]) % ring)
    index = order[:, None, :, None].expand(b, heads, ring, d)
    return torch.gather(k, 2, index), torch.gather(v, 2, index)


class KVCache:
    """One layer's cache for a batch: k, v [B, kv, L, d]. `ring` is None on full layers."""

    def __init__(self, batch: int, heads: int, head_dim: int, slots: int, dtype: torch.dtype,
                 ring: int | None = None, window: int = 0, bugs: Bugs = Bugs()):
        self.k = torch.zeros(batch, heads, slots, head_dim, dtype=dtype)
        self.v = torch.zeros_like(self.k)
        self.ring, self.window, self.bugs = ring, window, bugs

    @property
    def slots(self) -> int:
        return self.k.shape[2]

    def fill_prefix(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """After context encoding: the module's present keys and values go to the first slots."""
        n = k.shape[2]
        if n > self.slots:
            raise ValueError(f"context of {n} keys does not fit a cache of {self.slots} slots: the token-generation "
                             "bucket must be at least the context-encoding bucket")
        self.k[:, :, :n] = k
        self.v[:, :, :n] = v

    def write(self, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, row: int = 0) -> None:
        """After a token-generation step: the step's keys [B, kv, q, d] at their slots (real tokens only).
        `row`: the cache row of the first of the B rows given (one row's keys written alone)."""
        if self.ring is None:
            slots = positions
        else:
            slots = positions % (self.window if self.bugs.write_modulus_w else self.ring)
        if bool((slots[valid] >= self.slots).any()):
            raise ValueError(f"position {int(positions[valid].max())} does not fit a cache of {self.slots} slots: "
                             "the token-generation bucket is too small")
        for r, col in valid.nonzero().tolist():
            self.k[row + r, :, slots[r, col]] = k[r, :, col]
            self.v[row + r, :, slots[r, col]] = v[r, :, col]
