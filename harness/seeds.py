"""Seeds for independent random streams, and random numbers that are the same on every machine.

Weights and inputs drawn from the same integer seed would be the same numbers (an input row equal to a
weight row gives q values 50x too large), so every stream is derived from its own tag.

torch.randn is not the same on every CPU: ATen fills large tensors with a vectorised Box-Muller
whose last bits depend on the instruction set (an AVX2 build and the scalar build give different
weights from the same seed). Here only integers come from the generator (Mersenne Twister, one
draw after another, identical everywhere); the normal deviates are computed from them in float64,
where a transcendental function that differs by one ulp between libraries changes a value by 2^-52
relative, which survives rounding to bfloat16 (2^-8) or float32 (2^-24) with a probability of
about 2^-44 or 2^-28 per element. Callers round to their dtype at the end.
"""

from __future__ import annotations

import hashlib
import math

import torch


def derive_seed(tag: str, *values: int) -> int:
    text = ":".join([tag, *map(str, values)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def generator(tag: str, *values: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(tag, *values))


def uniform(g: torch.Generator, n: int) -> torch.Tensor:
    """n float64 values in (0, 1), each a multiple of 2^-53 plus half of it (never 0 or 1)."""
    bits = torch.randint(0, 2**53, (n,), generator=g, dtype=torch.int64)
    return bits.double().add_(0.5).mul_(2.0**-53)


def normal(g: torch.Generator, *shape: int) -> torch.Tensor:
    """Standard normal deviates in float64 (Box-Muller from `uniform`), the same on every machine."""
    n = math.prod(shape)
    half = (n + 1) // 2
    u = uniform(g, 2 * half)
    radius = u[:half].log_().mul_(-2.0).sqrt_()
    angle = u[half:].mul_(2.0 * math.pi)
    out = torch.cat((angle.cos().mul_(radius), angle.sin_().mul_(radius)))
    return out[:n].reshape(shape)


def choice(g: torch.Generator, population: int, k: int) -> list[int]:
    """k distinct integers from range(population) (a partial Fisher-Yates shuffle of integer draws)."""
    if not 0 <= k <= population:
        raise ValueError(f"cannot choose k={k} distinct values from {population}")
    pool = list(range(population))
    draws = torch.randint(0, 2**62, (k,), generator=g, dtype=torch.int64).tolist()
    for i, r in enumerate(draws):
        j = i + r % (population - i)
        pool[i], pool[j] = pool[j], pool[i]
    return pool[:k]
