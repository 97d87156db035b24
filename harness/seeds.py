"""Seeds for independent random streams. Weights and inputs drawn from the same integer seed would be
the same numbers (an input row equal to a weight row gives q values 50x too large), so every stream
is derived from its own tag."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(tag: str, *values: int) -> int:
    text = ":".join([tag, *map(str, values)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(tag: str, *values: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(tag, *values))
