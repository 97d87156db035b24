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

Boundary probes (from_cache batches, where keys can be set) check the edges of what a query reads,
at the output, so they bind output-only blocks and real modules too: one cached key is made dominant
for each row's first generated token (its score above the sink and, by Cauchy-Schwarz, above every
other key's by DOMINANCE logits, for the query head of each kv group that has the longest query) and
given a one-hot value of ONE_HOT. A key the rule says is read then moves the output outright; a key it
says is not read must move nothing. Each names its rule:
- window_oldest_key (sliding layers): the key W - 1 positions back must be read (a window one key
  short drops it);
- window_outside_key (sliding layers): the key W positions back must not be read, by any generated
  token (a window one key too wide reads it);
- first_key (full layers): position 0 must be read by every generated token, however far back (a
  cache truncated at 4096 or 65,536 keys forgets it).
sink_over_masked_keys: the sinks raised (the probe's own weights) SINK_MARGIN logits above a bound on
every score (Cauchy-Schwarz over the reference's queries and every key), so that every key's
probability underflows to exactly 0, as if the whole row were masked: the sink must then take it all,
the attention output is exactly 0 and every judged output exactly x + out.bias, in any correct
implementation (0 x w sums to 0, and out.bias + 0 is out.bias). A block that drops the sink, anywhere,
attends as usual and misses that outright. It changes weights, so a candidate whose weights are
compiled in (`fixed_weights`, a device graph) is not given it.
Keys of tokens handed over as hidden states cannot be made dominant (the norm bounds them), so
first_after_padding (a left-padded row) replaces the hidden state of the first token after the
padding and demands that the next token's output move: placed only where the reference gives that
token at least AFTER_PADDING_SHARE of some head's probability, so that a correct block moves outright
(a mask off by one at the padding's edge does not move at all).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from harness.batch import Batch, BlockSpec
from harness.seeds import generator

BINDING = ("padding", "causality", "cache_padding", "cache_outside_window", "window_oldest_key", "window_outside_key",
           "first_key", "first_after_padding", "sink_over_masked_keys")
STRICT = ("nan_padding", "nan_outside_window", "nan_cache_padding", "nan_cache_outside_window")


DOMINANCE = 30.0  # logits by which a probe's key beats every other key and the sink: e^-30 is far below bf16's ulp
ONE_HOT = 64.0  # its value: moves the output by about ONE_HOT times an out-projection column
AFTER_PADDING_SHARE = 0.25
SINK_MARGIN = 110.0  # e^-110 underflows to exactly 0 in float32 and bfloat16


@dataclass
class Probe:
    name: str
    batch: Batch  # the perturbed batch
    judged: torch.Tensor  # [B, S] slots whose outputs must equal the baseline (must_change: must differ)
    must_change: bool = False
    rule: str = ""  # what a failure means, named
    change: str = ""  # what the probe did to the key it names (must_change)
    spec: BlockSpec | None = None  # the probe's own weights (None: the case's)
    expected: torch.Tensor | None = None  # the output the judged slots must equal (None: the baseline run's)


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


def _dominant_key(q: torch.Tensor, k_max: float, sinks: torch.Tensor, q_mult: int, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """k [Hkv, d] and a one-hot v [Hkv, d] for a key that dominates query q [Hq, d]: for each kv group, along
    its longest query head, long enough to beat any key no longer than k_max and the head's sink."""
    hkv = q.shape[0] // q_mult
    k, v = torch.zeros(hkv, d, dtype=torch.float64), torch.zeros(hkv, d, dtype=torch.float64)
    for g in range(hkv):
        heads = q[g * q_mult : (g + 1) * q_mult].double()
        h = int(heads.norm(dim=-1).argmax())
        qh, norm = heads[h], float(heads[h].norm())
        if norm == 0:
            continue
        # score = |q| |k| / sqrt(d): past every other key's bound |q| k_max / sqrt(d) and the sink by DOMINANCE
        length = k_max + (DOMINANCE + abs(float(sinks[g * q_mult + h]))) * d**0.5 / norm
        k[g] = qh / norm * length
        v[g, g % d] = ONE_HOT
    return k, v


def _boundary_probes(spec: BlockSpec, batch: Batch, reference: dict) -> list[Probe]:
    cache, c = batch.cache, spec.config
    q_mult, d, w = c.num_attention_heads // c.num_key_value_heads, c.head_dim, spec.window
    sinks = spec.weights["sinks"].double()
    edges = ((("window_oldest_key", w - 1, True), ("window_outside_key", w, False)) if w else
             (("first_key", None, True),))
    probes = []
    for name, back, read in edges:
        k, v = cache.k_rope.clone(), cache.v.clone()
        judged = torch.zeros_like(batch.compare)
        for row, cached in enumerate(cache.lengths):
            slots = batch.slots(row)
            key = 0 if back is None else cached - back  # counted back from the row's first generated position
            if not (0 <= key < cached and len(slots)):
                continue
            # every key the row's tokens can see: its cache and its own (the reference's) keys
            seen = torch.cat((cache.k_rope[row, :cached], reference["k_rope"][row, slots]))
            k_max = float(seen.double().norm(dim=-1).max())
            dominant, one_hot = _dominant_key(reference["q_rope"][row, slots[0]], k_max, sinks, q_mult, d)
            k[row, key], v[row, key] = dominant.to(k.dtype), one_hot.to(v.dtype)
            # dominant for the first generated token's query only: later ones must merely never read it
            judged[row, slots[:1] if read else slots] = True
        if judged.any():
            where = ("position 0" if back is None else f"the key {back} positions back")
            rule = (f"{where} is not attended" if read else f"{where} is attended (outside the window of {w} keys)")
            probes.append(Probe(name, replace(batch, cache=cache.with_values(k, v)), judged & batch.compare,
                                must_change=read, rule=rule, change="with it dominant and a one-hot value"))
    return probes


def _after_padding_probe(batch: Batch, probs: torch.Tensor) -> list[Probe]:
    judged = torch.zeros_like(batch.compare)
    first = torch.zeros_like(batch.valid)
    for row in range(len(batch.lengths)):
        slots = batch.slots(row)
        if len(slots) >= 2 and slots[0] > 0 and batch.compare[row, slots[1]] and \
                float(probs[row, :, slots[1], slots[0]].max()) >= AFTER_PADDING_SHARE:
            first[row, slots[0]], judged[row, slots[1]] = True, True
    if not judged.any():
        return []
    hidden = torch.where(first[..., None], _noise(batch, "after padding"), batch.hidden)
    return [Probe("first_after_padding", batch.with_hidden(hidden), judged, must_change=True,
                  rule="the first token after the padding is not attended by the next one",
                  change="with that token's hidden state replaced")]


def _sink_probe(spec: BlockSpec, batch: Batch, reference: dict) -> list[Probe]:
    q = reference["q_rope"][batch.compare].double()
    keys = [reference["k_rope"][batch.valid].double()]
    if batch.cache is not None:
        keys.append(batch.cache.k_rope[batch.cache.valid].double())
    k = torch.cat([t.reshape(-1, t.shape[-1]) for t in keys])
    if not len(q) or not bool(torch.isfinite(q).all() and torch.isfinite(k).all()):
        return []  # a row-selective reference leaves unjudged rows out: no bound on their keys
    bound = float(q.norm(dim=-1).max() * k.norm(dim=-1).max()) / spec.config.head_dim ** 0.5
    weights = {**spec.weights, "sinks": torch.full_like(spec.weights["sinks"], bound + SINK_MARGIN)}
    # the residual over an attention output of exactly 0: x + out.bias, rounded once to the model dtype
    expected = (batch.hidden.double() + spec.weights["out.bias"].double()).to(spec.dtype)
    return [Probe("sink_over_masked_keys", batch, batch.compare.clone(), spec=replace(spec, weights=weights),
                  expected=expected, rule=f"the sink does not take the probability: with every sink {bound + SINK_MARGIN:.0f} "
                  f"(every score at most {bound:.0f}), every key's probability is exactly 0, yet the output is not x + out.bias "
                  "(or something outside attention moves it)")]


def build_probes(spec: BlockSpec, batch: Batch, reference: dict | None = None) -> list[Probe]:
    """`reference`: the reference's stage tensors; its q_rope and k_rope place the boundary probes' keys
    (from_cache batches; left out where they are missing)."""
    probes = []
    placed = bool(reference) and {"q_rope", "k_rope"} <= set(reference)  # the reference's queries and keys
    if batch.cache is not None and placed:
        probes += _boundary_probes(spec, batch, reference)  # first: a failure names its rule
    if batch.cache is not None:
        probes += _cache_probes(spec, batch)
    elif batch.padding == "left" and reference and "probs" in reference:
        probes += _after_padding_probe(batch, reference["probs"])
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
    if placed:
        # last: any leak outside attention fails it too, and the probes above name those by their rule
        probes += _sink_probe(spec, batch, reference)
    return probes


def _where(probe: Probe, rows: torch.Tensor) -> str:
    """"row 0 at position 300, ...": the first few judged slots selected by `rows` (over the judged ones)."""
    row_of, _ = probe.judged.nonzero(as_tuple=True)
    positions = probe.batch.positions[probe.judged]
    return ", ".join(f"row {int(r)} at position {int(p)}" for r, p in zip(row_of[rows][:3], positions[rows][:3]))


def judge_probe(probe: Probe, baseline: torch.Tensor, output: torch.Tensor) -> dict:
    """{name, passed, detail}: judged outputs must be bit-identical to the baseline run's (must_change:
    every judged output must differ from it, and be finite)."""
    a, b = (baseline if probe.expected is None else probe.expected)[probe.judged], output[probe.judged]
    total = len(a)
    nonfinite = ~torch.isfinite(b).all(dim=-1)
    if probe.must_change:
        unchanged = (a == b).all(dim=-1) | nonfinite
        if not unchanged.any():
            return {"name": probe.name, "passed": True, "detail": f"{total} judged rows moved, as the rule says"}
        return {"name": probe.name, "passed": False,
                "detail": f"{probe.rule}: {probe.change}, the output of {_where(probe, unchanged)} "
                          f"did not move (or became NaN/Inf; {int(unchanged.sum())} of {total} judged rows)"}
    moved = (a != b).any(dim=-1) | nonfinite
    if not moved.any():
        detail = f"{total} judged rows unchanged"
    elif nonfinite.any():
        detail = f"{int(nonfinite.sum())} of {total} judged rows became NaN/Inf"
    else:
        detail = f"{int(moved.sum())} of {total} judged rows changed (max {float((a.double() - b.double()).abs().max()):.3g})"
    if moved.any() and probe.rule:
        detail = f"{probe.rule}: {detail}, first {_where(probe, moved)}"
        if probe.expected is not None:
            detail = detail.replace(" judged rows changed", " judged rows differ from it")
    return {"name": probe.name, "passed": not moved.any(), "detail": detail}
