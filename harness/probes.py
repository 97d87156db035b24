"""Tolerance-free probes: perturb what must not matter and demand bit-identical judged outputs.

Each probe keeps every shape (so a correct implementation takes the same code path and produces the
same bits) and changes only values a correct block must ignore:
- padding: padded slots get other (finite) hidden states;
- causality: each row's later tokens are replaced; outputs before them must not move;
- nan_padding / nan_outside_window: NaN in padded slots, or in tokens every judged query's window
  excludes. Dense implementations (OpenAI's reference included) multiply masked probabilities, which
  are exactly 0, by the values they read, and 0 x NaN is NaN; so these two only bind candidates that
  claim never to read masked memory (`skips_masked_memory = True`, flash/NKI-style kernels) or runs
  with strict probes. They are always reported.
A from_cache batch's prefix is in its cache, so there the probes perturb the cache: cache_padding (its
unused slots), cache_outside_window (on sliding layers, the keys and values every judged query's
window excludes: a window too wide reads them) and their NaN versions; causality replaces the
generated tokens after the first and judges the first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from harness.batch import Batch, BlockSpec
from harness.seeds import generator

BINDING = ("padding", "causality", "cache_padding", "cache_outside_window")
STRICT = ("nan_padding", "nan_outside_window", "nan_cache_padding", "nan_cache_outside_window")


@dataclass
class Probe:
    name: str
    batch: Batch  # the perturbed batch
    judged: torch.Tensor  # [B, S] slots whose outputs must equal the baseline


def _noise(batch: Batch, tag: str) -> torch.Tensor:
    g = generator("probe", hash(tag) & 0xFFFF)
    return (torch.randn(batch.hidden.shape, generator=g) * 3).to(batch.hidden.dtype)


def _cache_probes(spec: BlockSpec, batch: Batch) -> list[Probe]:
    cache = batch.cache
    regions = {"cache_padding": ~cache.valid}
    if spec.window:
        first_judged = torch.where(batch.compare, batch.positions, torch.iinfo(torch.long).max).amin(dim=1, keepdim=True)
        regions["cache_outside_window"] = cache.valid & (torch.arange(cache.slots)[None, :] <= first_judged - spec.window)
    probes = []
    for name, where in regions.items():
        if not where.any():
            continue
        w = where[:, :, None, None]
        # a block of deviates tiled over the cache: finite values no correct block reads, made in milliseconds
        g = generator("probe-cache", len(name))
        block = (torch.randn(4096, *cache.k_rope.shape[2:], generator=g) * 3).to(cache.k_rope.dtype)
        noise = block.repeat(-(-cache.slots // 4096), 1, 1)[None, : cache.slots].expand_as(cache.k_rope)
        nan = torch.full((), float("nan"), dtype=cache.k_rope.dtype)
        for label, fill in ((name, noise), (f"nan_{name}", nan)):
            changed = cache.with_values(torch.where(w, fill, cache.k_rope), torch.where(w, fill, cache.v))
            probes.append(Probe(label, replace(batch, cache=changed), batch.compare))
    return probes


def build_probes(spec: BlockSpec, batch: Batch) -> list[Probe]:
    probes = _cache_probes(spec, batch) if batch.cache is not None else []
    pads = ~batch.valid
    if pads.any():
        probes.append(Probe("padding", batch.with_hidden(torch.where(pads[..., None], _noise(batch, "pad"), batch.hidden)), batch.compare))
        nan = torch.full_like(batch.hidden, float("nan"))
        probes.append(Probe("nan_padding", batch.with_hidden(torch.where(pads[..., None], nan, batch.hidden)), batch.compare))
    # causality: replace each row's last third (of a from_cache batch: every generated token but the
    # first); judge the rows before the cut
    cut = torch.tensor([batch.first_position(r) + 1 if batch.cache is not None else max(1, (2 * n) // 3)
                        for r, n in enumerate(batch.lengths)])[:, None]
    later = batch.valid & (batch.positions >= cut)
    if later.any():
        hidden = torch.where(later[..., None], _noise(batch, "later"), batch.hidden)
        probes.append(Probe("causality", batch.with_hidden(hidden), batch.compare & batch.valid & ~later))
    # NaN in tokens outside every judged query's window (sliding layers only)
    if spec.window and batch.cache is None:
        first_judged = torch.where(batch.compare, batch.positions, torch.iinfo(torch.long).max).amin(dim=1, keepdim=True)
        outside = batch.valid & (batch.positions <= first_judged - spec.window) & (first_judged >= spec.window)
        if outside.any():
            hidden = torch.where(outside[..., None], torch.full_like(batch.hidden, float("nan")), batch.hidden)
            probes.append(Probe("nan_outside_window", batch.with_hidden(hidden), batch.compare & batch.valid & ~outside))
    return probes


def judge_probe(probe: Probe, baseline: torch.Tensor, output: torch.Tensor) -> dict:
    """{name, passed, binding, detail}: judged outputs must be bit-identical to the baseline run's."""
    a, b = baseline[probe.judged], output[probe.judged]
    nonfinite = int((~torch.isfinite(b)).any(dim=-1).sum())
    moved = int((a != b).any(dim=-1).sum()) if not nonfinite else nonfinite
    total = int(probe.judged.sum())
    if moved == 0:
        detail = f"{total} judged rows unchanged"
    elif nonfinite:
        detail = f"{nonfinite} of {total} judged rows became NaN/Inf"
    else:
        detail = f"{moved} of {total} judged rows changed (max {float((a.double() - b.double()).abs().max()):.3g})"
    return {"name": probe.name, "passed": moved == 0, "detail": detail}
