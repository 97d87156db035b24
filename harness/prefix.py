"""The prefix pass: one chunked walk over the inputs of every row's prefix, for a from_cache plan.

A from_cache case hands the candidate the KV cache of positions [0, C) of each row (harness/batch.py:
CachedPrefix). Its inputs are generated PREFIX_CHUNK tokens at a time (harness/batch.py:input_tokens,
the same values whatever the chunking), rounded to the model dtype as every batch is, and each chunk
feeds, while it exists:
- the bf16 reference's keys and values (reference/rows.py: project_keys): the cache, every position;
- the float64 oracle's own keys and values (reference/oracle.py: project), only for the positions the
  judged rows can see (the last W on sliding layers);
- a sha256 of the inputs, which a golden stores instead of the inputs themselves.
No chunk outlives its step, so memory is the cache plus one chunk: a 131,072-token row never holds its
hidden states, let alone in float64.

On sliding layers no query reads a key W or more positions back, so only the last SLIDING_EXACT
positions before the generated tokens (2W: a window a few keys too wide still reads true keys) are
computed; older slots hold filler, finite noise that no correct block reads. Its values cannot matter:
the cache_outside_window probe (harness/probes.py) replaces them and demands bit-identical outputs,
and a block that reads them fails loudly. A sliding layer's long row so costs O(W), a full layer's O(n).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from harness.batch import BlockSpec, CachedPrefix, input_tokens, new_tokens
from harness.case import Case
from harness.produce import reference_block
from harness.seeds import generator, normal
from harness.timing import section
from reference import oracle as oracle_math
from reference.rows import project_keys

PREFIX_CHUNK = 4096
SLIDING_EXACT = 2  # windows of the sliding layers' cache computed exactly, before the generated tokens


@dataclass
class OracleKeys:
    """The oracle's float64 k_rope and v [n, Hkv, d] of positions first .. first + n - 1 of one row: the
    prefix pass fills the cached positions, the oracle the generated ones (no copy of a long prefix)."""

    first: int
    k_rope: torch.Tensor
    v: torch.Tensor

    def covering(self, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
        """k_rope and v of positions [lo, hi), which must lie inside what is held."""
        if lo < self.first or hi > self.first + len(self.k_rope):
            raise ValueError(f"the oracle's prefix holds positions [{self.first}, {self.first + len(self.k_rope)}), "
                             f"not [{lo}, {hi})")
        return self.k_rope[lo - self.first : hi - self.first], self.v[lo - self.first : hi - self.first]


@dataclass
class Prefix:
    cache: CachedPrefix
    oracle: list[OracleKeys] | None
    inputs_sha256: str


def exact_first(case: Case, spec: BlockSpec, row: int) -> int:
    """The first cached position whose keys are the reference's (0 on full layers; see the module doc)."""
    generated = case.lengths[row] - new_tokens(case)[row]
    return max(0, generated - SLIDING_EXACT * spec.window) if spec.window else 0


def filler(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """Finite noise for cache slots no correct block reads: one block of deviates, tiled."""
    block = (normal(generator("cache-filler"), 4096, *shape[1:]) * 3).to(dtype)
    return block.repeat(-(-shape[0] // 4096), *([1] * (len(shape) - 1)))[: shape[0]]


def oracle_first(case: Case, spec: BlockSpec, row: int) -> int:
    """The first prefix position the row's judged (generated) tokens can see."""
    first_judged = case.lengths[row] - new_tokens(case)[row]
    return max(0, first_judged - spec.window + 1) if spec.window else 0


def cache_for(case: Case, spec: BlockSpec) -> CachedPrefix:
    """The case's cache alone (the reference's keys and values; no oracle), kept for the last two cases:
    every candidate judged from a golden needs the same cache, and a 131,072-token one takes seconds."""
    weights = tuple((name, tuple(t.shape), float(t.double().sum())) for name, t in sorted(spec.weights.items()))
    key = (case, spec.layer_idx, spec.dtype, weights)
    if key not in _CACHES:
        _CACHES[key] = prefix_pass(case, spec, oracle=False).cache
        while len(_CACHES) > 2:
            _CACHES.pop(next(iter(_CACHES)))
    return _CACHES[key]


_CACHES: dict = {}


def prefix_pass(case: Case, spec: BlockSpec, oracle: bool = True, chunk: int = PREFIX_CHUNK,
                progress=None, reference: bool = True) -> Prefix:
    """The cache (the reference's keys and values of every prefix position), the oracle's keys and
    values where the judged rows can see them (with `oracle`), and the inputs' hash.
    `progress(done, total)` is called after each chunk, in tokens. reference=False (to measure the
    oracle alone, `parity bench`): the cache's values are left out (zeros, allocated as one element)."""
    if case.plan != "from_cache":
        raise ValueError(f"case {case.id}: only a from_cache plan has a prefix handed over as a cache")
    c, dt = spec.config, spec.dtype
    hkv, d = c.num_key_value_heads, c.head_dim
    lengths = tuple(n - k for n, k in zip(case.lengths, new_tokens(case)))
    shape = (len(lengths), max(lengths), hkv, d)
    k_cache = torch.zeros(shape, dtype=dt) if reference else torch.zeros((), dtype=dt).expand(shape)
    v_cache = torch.zeros_like(k_cache) if reference else k_cache
    block = reference_block(spec)
    digest = hashlib.sha256()
    keys: list[OracleKeys] = []
    total, done = sum(lengths), 0
    with torch.no_grad(), section("prefix"):
        for row, n in enumerate(lengths):
            first = oracle_first(case, spec, row)
            o_k = torch.empty(case.lengths[row] - first, hkv, d, dtype=torch.float64) if oracle else None
            o_v = torch.empty_like(o_k) if oracle else None
            exact = exact_first(case, spec, row)
            if exact and reference:
                k_cache[row, :exact], v_cache[row, :exact] = filler((exact, hkv, d), dt), filler((exact, hkv, d), dt)
            digest.update(f"row {row}:{n} from {exact}\n".encode())
            for a in range(exact, n, chunk):
                b = min(n, a + chunk)
                with section("inputs"):
                    x = input_tokens(case, c, row, a, b).to(torch.bfloat16).to(dt)  # as make_batch rounds them
                    digest.update(x.contiguous().view(torch.uint8).numpy().tobytes())
                positions = torch.arange(a, b)
                if reference:
                    k_cache[row, a:b], v_cache[row, a:b] = project_keys(block, x, positions)
                if oracle and b > first:
                    lo = max(a, first)
                    o = oracle_math.project(spec.weights, c, x[lo - a :], positions[lo - a :], queries=False)
                    o_k[lo - first : b - first], o_v[lo - first : b - first] = o["k_rope"], o["v"]
                done += b - a
                if progress:
                    progress(done, total)
            if oracle:
                keys.append(OracleKeys(first, o_k, o_v))
    digest_hex = digest.hexdigest()
    return Prefix(CachedPrefix(k_cache, v_cache, lengths, digest_hex), keys if oracle else None, digest_hex)
