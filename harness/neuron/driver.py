"""The driver: a case's serving plan run the way NxDI's model calls its attention, for every Neuron
candidate and the emulation alike (pure torch; the layer it calls may run eagerly or on a device).

- prefill: one context-encoding call (CTE). decode: CTE of each row's prefix, then one token-generation
  call (TKG) per step. chunked: CTE of the first chunk, then one TKG call with the rest of each row
  (several tokens per step, as speculation runs). from_cache: no CTE; the batch's cache is written into
  the caller's KV cache as NxDI's cache manager would hold it after serving the prefix (slot = position
  on full layers, the last W-1 positions at pos % (W-1) on sliding ones), then one TKG call per token.
- buckets: NxDI pads each phase to the first bucket larger than the input (the largest bucket when
  the input fills it exactly; models/model_wrapper.py); padding is on the right and its tokens get
  position 1. The batch is padded to a batch bucket with one-token rows, a step's tokens to a power of
  two; outputs are sliced back. Which buckets ran is reported in the result's info.
- masks (harness/neuron/masks.py) and the caller's KV cache (harness/neuron/cache.py), written after
  each step; the module returns keys after RoPE.
- taps, without changing the module: normed and the residual output from the layer, out_proj from
  the attention's output, k_rope and v from its present_key_value (a stage is tapped only where every
  judged position was seen, since a sliding layer's context hands over only its last window). A layer
  that can show its internals gives them: the emulation q, k, q_rope, attn, and the scores and
  probabilities over the keys it read, each key placed at the position the driver believes its cache
  slot holds (a key from the wrong slot then shows at the scores, where it is plain to see); a real
  module what forward hooks see (harness/neuron/hooks.py): q and k before RoPE, and attn.
- checks without tolerance (harness/neuron/crosscheck.py): the context encoding's hand-over holds the
  right positions in the right slots; with the SDK's cache manager and masks driving (`serving`), its
  caches equal the harness's model of them after every step, and its masks the harness's.
- memory the module must never read is poisoned: a bucket's padding tokens and the cache's
  never-written slots hold large finite values (NxDI has zeros there). A correct module gives them
  probability exactly 0 and is bit-for-bit unaffected; one that reads them is loudly wrong.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from harness.batch import Batch, BlockSpec
from harness.neuron.bugs import Bugs
from harness.neuron.cache import KVCache, round_up
from harness.neuron.crosscheck import check_cache, check_handover, check_mask
from harness.neuron.masks import active_mask, context_mask, generation_mask, ring_positions
from harness.seeds import generator, normal
from harness.stages import score_taps_fit

POWERS_OF_TWO = tuple(2**i for i in range(18))
POISON = 64.0  # scale of the values in memory that must never be read
POISON_BLOCK = 1 << 16  # deviates drawn once and tiled: a 131,072-slot cache is poisoned in milliseconds
DEFAULT_BUCKETS = (128, 256, 512, 1024, 2048, 4096, 8192)
# cache lengths of full layers: up to gpt-oss's context, for from_cache plans at long positions
DEFAULT_GENERATION = DEFAULT_BUCKETS + (16384, 32768, 65536, 131072)


class BucketError(ValueError):
    """The case needs a bucket the candidate was not configured with."""


class PlanUnsupported(Exception):
    """The module cannot run a step the plan needs (e.g. several tokens in one generation step)."""


@dataclass(frozen=True)
class Buckets:
    """Padded sizes each phase is compiled for. Context buckets on sliding layers must exceed W-1:
    NxDI's context encoding hands over the last W-1 keys and fails on a shorter context."""

    context: tuple[int, ...] = DEFAULT_BUCKETS
    generation: tuple[int, ...] = DEFAULT_GENERATION  # cache length of full layers (max_length)
    batch: tuple[int, ...] = (1, 2, 4)

    @classmethod
    def parse(cls, text: str) -> "Buckets":
        """'context=128,256;generation=512;batch=1,4' (any part may be left out)."""
        values = {}
        for part in filter(None, (p.strip() for p in text.split(";"))):
            name, _, numbers = part.partition("=")
            if name.strip() not in ("context", "generation", "batch"):
                raise BucketError(f"bucket spec {text!r}: unknown phase {name.strip()!r}; expected context=..., "
                                  "generation=..., batch=... separated by ';'")
            try:
                sizes = tuple(sorted({int(n) for n in numbers.split(",") if n.strip()}))
            except ValueError:
                raise BucketError(f"bucket spec {text!r}: {name.strip()} must be a comma-separated list of integers") from None
            if not sizes or sizes[0] < 1:
                raise BucketError(f"bucket spec {text!r}: {name.strip()} needs positive sizes")
            values[name.strip()] = sizes
        return cls(**values)


def pick(buckets: tuple[int, ...], n: int, what: str) -> int:
    """NxDI's first-fit: the first bucket larger than n, or the largest when n fills it exactly."""
    for size in buckets:
        if n < size:
            return size
    if n == buckets[-1]:
        return n
    raise BucketError(f"{what} of {n} does not fit the configured buckets {list(buckets)}: add a larger one "
                      "($PARITY_NEURON_BUCKETS, README \"Running on a Neuron host\")")


def poison(*shape: int, dtype: torch.dtype) -> torch.Tensor:
    n = math.prod(shape)
    block = normal(generator("neuron-poison", min(n, POISON_BLOCK)), min(n, POISON_BLOCK)) * POISON
    return block.to(dtype).repeat(-(-n // len(block)))[:n].reshape(shape)


def at_least(sizes: tuple[int, ...], n: int, what: str) -> int:
    """The first size >= n (batch rows, tokens of a generation step)."""
    for size in sizes:
        if n <= size:
            return size
    raise BucketError(f"{what} of {n} does not fit the configured sizes {list(sizes)}: add a larger one "
                      "($PARITY_NEURON_BUCKETS, README \"Running on a Neuron host\")")


class Driver:
    """Runs one batch through `layer`, an object with
        context(x, mask, position_ids) and generation(x, mask, position_ids, k_cache, v_cache, active_mask),
    each returning (output, normed, out_proj, k, v) (harness/neuron/layer.py), and optionally
    projected_values() (the last call's v projection, harness/neuron/hooks.py).

    `serving`: the SDK's cache manager and mask builders (harness/neuron/upstream.py). With one, they
    make the masks and hold the caches the module reads, and the harness's own models of them are the
    expectation, checked after every step (harness/neuron/crosscheck.py); without (the emulation), the
    harness's models feed the module. `adopt_ring`: a sliding layer's ring is as long as what the
    module's context encoding hands over (the SDK 2.26 layout, W keys, where no manager says otherwise);
    else W-1 (2.27+) or the manager's."""

    def __init__(self, layer, spec: BlockSpec, buckets: Buckets = Buckets(), bugs: Bugs = Bugs(), serving=None,
                 adopt_ring: bool = False):
        self.layer, self.spec, self.buckets, self.bugs = layer, spec, buckets, bugs
        self.serving, self.adopt_ring = serving, adopt_ring
        self.managed = False  # the serving's manager holds this batch's caches
        c = spec.config
        self.window = spec.window
        self.heads, self.kv_heads, self.head_dim, self.hidden = c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.hidden_size

    def run(self, batch: Batch, feed: dict | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
        """The output [B, S, hidden], the taps and what ran. `feed` (stage isolation; a layer with
        set_feed, the emulation): {stage: tensor in the layout of harness/stages.py} replaces the
        layer's own value of each stage at the judged positions."""
        self.feed, self.batch = feed or {}, batch
        clear = getattr(self.layer, "set_feed", None)
        if self.feed and clear is None:
            raise ValueError("this layer cannot be entered at a stage (only the emulation's can)")
        try:
            return self._run(batch)
        finally:
            if clear:
                clear({})

    def _run(self, batch: Batch) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict]:
        b, s = batch.valid.shape
        rows = at_least(self.buckets.batch, b, "a batch of rows")
        dt = self.spec.dtype
        seen = {name: torch.zeros(b, s, dtype=torch.bool) for name in ("normed", "out_proj", "output", "k_rope", "v")}
        out = {name: torch.full((b, s, self.hidden), float("nan"), dtype=dt) for name in ("normed", "out_proj", "output")}
        out.update({name: torch.full((b, s, self.kv_heads, self.head_dim), float("nan"), dtype=dt) for name in ("k_rope", "v")})
        slots = [batch.slots(r) for r in range(b)]  # slot of each position, per row
        keep = getattr(self.layer, "keep_internals", None)
        keys = batch.cached + s
        self.internal = tuple(keep(score_taps_fit(b, self.heads, s, keys))) if keep else ()
        for name, heads in (("q", self.heads), ("k", self.kv_heads), ("q_rope", self.heads), ("attn", self.heads)):
            if name in self.internal:
                out[name] = torch.full((b, s, heads, self.head_dim), float("nan"), dtype=dt)
                seen[name] = torch.zeros(b, s, dtype=torch.bool)
        if "scores" in self.internal:
            out["scores"] = torch.full((b, self.heads, s, keys), -float("inf"), dtype=dt)
            out["probs"] = torch.zeros((b, self.heads, s, keys + 1), dtype=dt)
            seen["scores"] = seen["probs"] = torch.zeros(b, s, dtype=torch.bool)
        self.out, self.seen, self.slots = out, seen, slots

        def record(name, row, positions, values):
            at = slots[row][positions - batch.first_position(row)]
            out[name][row, at] = values.to(dt)
            seen[name][row, at] = True

        if batch.cache is not None:
            info = {"buckets": {"batch": rows}, "steps": []}
            cache = self._cache_from(batch, rows, info)
            for step in batch.steps:
                self._generate(batch, step, rows, 0, cache, info, record)
            return self._finish(batch, out, seen, info)

        # context encoding: positions [0, n0) of every row, right-padded to the context bucket
        n0 = [stop for (_, stop) in batch.steps[0]]
        if any(start for (start, _) in batch.steps[0]):
            raise ValueError("a plan's first step must start at position 0 (context encoding)")
        length = pick(self.buckets.context, max(n0), "a context of tokens")
        x = poison(rows, length, self.hidden, dtype=dt)  # padding: never to be read
        pos = torch.arange(length).repeat(rows, 1)
        for r in range(rows):
            n = n0[r] if r < b else 1
            if r < b:
                x[r, :n] = batch.hidden[r, slots[r][:n]]
            if not self.bugs.count_padding_positions:
                pos[r, n:] = 1  # NxDI pads position ids with 1 (model_wrapper.py)
        info = {"buckets": {"batch": rows, "context": length}, "steps": ["context"]}
        later = batch.steps[1:]
        if later and not self.window:
            total = max(stop for step in batch.steps for (_, stop) in step)
            info["buckets"]["generation"] = pick(self.buckets.generation, total, "a sequence (the cache) of tokens")
        mask = context_mask(rows, length, self.window)
        if self.serving is not None:
            self.managed = self.serving.start(rows, info["buckets"].get("generation", length))
            real = (torch.arange(length)[None, :] < torch.tensor(n0 + [1] * (rows - b))[:, None]).long()
            theirs = self.serving.context_mask(real)
            if theirs is not None:
                check_mask("context encoding's mask", theirs, mask, b, pos)
                mask = theirs
        if self.feed:
            tokens = torch.full((rows, length), -1)
            for r in range(b):
                tokens[r, : n0[r]] = torch.arange(n0[r])
            self._set_feed(tokens, [torch.where(torch.arange(length) < (n0[r] if r < b else 0), torch.arange(length), -1)
                                    for r in range(rows)])
        output, normed, out_proj, k, v = self.layer.context(x, mask, pos)
        ring = self._ring(k.shape[2])
        projected = getattr(self.layer, "projected_values", lambda: None)()
        # fed stages replace the module's own values: the hand-over then holds the oracle's, not its projection's
        check_handover(v, None if self.feed else projected, n0, ring)
        info["handover"] = "checked by position" if projected is not None and not self.feed else "count checked"
        held = ring_positions(torch.tensor(n0 + [1] * (rows - b)), ring, ring) if ring else None
        for r in range(b):
            p = torch.arange(n0[r])
            for name, t in (("output", output), ("normed", normed), ("out_proj", out_proj)):
                record(name, r, p, t[r, : n0[r]])
            kp = held[r][held[r] >= 0] if ring else p
            src = torch.nonzero(held[r] >= 0).squeeze(1) if ring else p
            record("k_rope", r, kp, k[r, :, src].transpose(0, 1))
            record("v", r, kp, v[r, :, src].transpose(0, 1))
            if self.internal:
                self._record_internals(r, p, torch.arange(n0[r]), torch.arange(n0[r]))

        if later:
            if ring:
                cache = KVCache(rows, self.kv_heads, self.head_dim, round_up(ring), dt, ring, self.window, self.bugs)
            else:
                cache = KVCache(rows, self.kv_heads, self.head_dim, info["buckets"]["generation"], dt)
            cache.k.copy_(poison(*cache.k.shape, dtype=dt))  # slots never written must never be read
            cache.v.copy_(poison(*cache.v.shape, dtype=dt) * 0.5)
            if self.managed:
                self.serving.hold(cache.k, cache.v)
                self.serving.after_context(k, v, pos)
            cache.fill_prefix(k, v)
            self._cross_check(cache, "after context encoding", torch.tensor(n0 + [1] * (rows - b)), b)
            for step in later:
                self._generate(batch, step, rows, length, cache, info, record)
        return self._finish(batch, out, seen, info)

    def _ring(self, handed_over: int) -> int | None:
        """The sliding ring the caller keeps (None on a full layer): the manager's, else W-1 (NxDI 2.27+),
        or what the module hands over where the driver adopts it (SDK 2.26, no manager)."""
        if not self.window:
            return None
        if self.managed and self.serving.ring is not None:
            return self.serving.ring
        return handed_over if self.adopt_ring else self.window - 1

    def _cross_check(self, cache: KVCache, when: str, next_start: torch.Tensor, rows: int) -> None:
        """The manager's cache against the harness's model of it, bit for bit (real rows only)."""
        if not self.managed:
            return
        if cache.ring is None:
            slots = torch.arange(cache.slots)[None, :]
            held = torch.where(slots < next_start[:, None], slots, -1)
        else:
            held = ring_positions(next_start, cache.ring, cache.slots)
        check_cache(f"{self.serving.names['cache_manager']}, {when}", *self.serving.held(), cache.k, cache.v, held, rows)

    @staticmethod
    def _finish(batch, out, seen, info):
        taps = {name: t for name, t in out.items() if bool(seen[name][batch.compare].all())}
        output = taps.pop("output")
        return output, taps, info

    def _cache_from(self, batch: Batch, rows: int, info: dict) -> KVCache:
        """The caller's KV cache after serving each row's cached prefix (plan from_cache); a manager is
        given the same (what it would hold after serving the prefix)."""
        cache = self._prefix_cache(batch, rows, info)
        if self.serving is not None:
            self.managed = self.serving.start(rows, cache.slots)
            if self.managed:
                self.serving.hold(cache.k, cache.v)
        return cache

    def _prefix_cache(self, batch: Batch, rows: int, info: dict) -> KVCache:
        given, dt = batch.cache, self.spec.dtype
        total = max(stop for step in batch.steps for (_, stop) in step)
        if self.window:
            ring = self.window - 1  # NxDI 2.29's sliding ring (its context encoding hands over W-1 keys)
            cache = KVCache(rows, self.kv_heads, self.head_dim, round_up(ring), dt, ring, self.window, self.bugs)
            cache.k.copy_(poison(*cache.k.shape, dtype=dt))
            cache.v.copy_(poison(*cache.v.shape, dtype=dt) * 0.5)
            for r, n in enumerate(given.lengths):  # written as generation steps wrote them: pos % ring
                p = torch.arange(max(0, n - ring), n)
                cache.write(given.k_rope[r : r + 1, p].transpose(1, 2), given.v[r : r + 1, p].transpose(1, 2),
                            p[None], torch.ones(1, len(p), dtype=torch.bool), row=r)
            return cache
        size = pick(self.buckets.generation, total, "a sequence (the cache) of tokens")
        info["buckets"]["generation"] = size
        cache = KVCache(rows, self.kv_heads, self.head_dim, size, dt)
        for r in range(rows):
            n = given.lengths[r] if r < len(given.lengths) else 0
            cache.k[r, :, n:] = poison(self.kv_heads, size - n, self.head_dim, dtype=dt)
            cache.v[r, :, n:] = poison(self.kv_heads, size - n, self.head_dim, dtype=dt) * 0.5
            if n:
                cache.k[r, :, :n] = given.k_rope[r, :n].transpose(0, 1)
                cache.v[r, :, :n] = given.v[r, :n].transpose(0, 1)
        return cache

    def _record_internals(self, row: int, positions: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor) -> None:
        """Place the layer's internals for one row of the last call: `queries` index its query axis
        (at `positions`), `keys` give the position each entry of its key axis holds (-1: none)."""
        got = self.layer.internals()
        dt, out, seen, slots = self.spec.dtype, self.out, self.seen, self.slots[row]
        q_slots = slots[positions - self.batch.first_position(row)]
        for name in ("q", "k", "q_rope", "attn"):
            if name in self.internal and name in got:
                out[name][row, q_slots] = got[name][row][:, queries].transpose(0, 1).to(dt)
                seen[name][row, q_slots] = True
        if "scores" not in self.internal or "scores" not in got:
            return
        real = (keys >= 0).nonzero().squeeze(1)
        k_slots = self.batch.key_index(row, keys[real])
        scores = got["scores"][row][:, queries]  # [H, q, keys]
        probs = got["probs"][row][:, queries]
        out["scores"][row][:, q_slots[:, None], k_slots[None, :]] = scores[:, :, real].to(dt)
        out["probs"][row][:, q_slots[:, None], k_slots[None, :]] = probs[:, :, real].to(dt)
        out["probs"][row][:, q_slots, -1] = probs[:, :, -1].to(dt)
        seen["scores"][row, q_slots] = True

    def _feed_cache(self, cache: KVCache, row: int, held: torch.Tensor) -> None:
        """Entering after k_rope (or v) means the cached keys (values) are the oracle's too: overwrite
        the slots whose judged position the driver believes they hold."""
        if row >= self.batch.valid.shape[0]:
            return
        slots, compare = self.batch.slots(row), self.batch.compare[row]
        first = self.batch.first_position(row)
        for name, store in (("k_rope", cache.k), ("v", cache.v)):
            if name not in self.feed:
                continue
            for s in (held >= first).nonzero().squeeze(1).tolist():  # a cached prefix is never judged
                slot = slots[held[s] - first]
                if compare[slot]:
                    store[row, :, s] = self.feed[name][row, slot].to(store.dtype)

    def _set_feed(self, tokens: torch.Tensor, keys: list[torch.Tensor]) -> None:
        """Map the fed stages onto the next call: `tokens` [rows, T] are the positions of its query tokens
        (-1: padding), keys[r] the position each entry of row r's key axis holds (-1: none). Only judged
        positions are fed (the oracle computed nothing else)."""
        batch, dt = self.batch, self.spec.dtype
        b = batch.valid.shape[0]
        rows, count = tokens.shape
        where = torch.zeros(rows, count, dtype=torch.bool)
        slot = torch.zeros(rows, count, dtype=torch.long)
        for r in range(b):
            real = tokens[r] >= 0
            slot[r, real] = batch.slots(r)[tokens[r, real] - batch.first_position(r)]
            where[r, real] = batch.compare[r, slot[r, real]]
        fed: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for stage, value in self.feed.items():
            if stage in ("normed", "out_proj"):
                t = torch.zeros(rows, count, value.shape[-1], dtype=dt)
                t[:b] = value[torch.arange(b)[:, None], slot[:b]].to(dt)
            elif stage in ("q", "k", "v", "q_rope", "k_rope", "attn"):
                t = torch.zeros(rows, value.shape[2], count, value.shape[3], dtype=dt)
                t[:b] = value[torch.arange(b)[:, None], slot[:b]].transpose(1, 2).to(dt)
            elif stage in ("scores", "probs"):
                width = max(len(k) for k in keys) + (stage == "probs")
                t = torch.full((rows, value.shape[1], count, width), -float("inf") if stage == "scores" else 0.0, dtype=dt)
                for r in range(b):
                    known = (keys[r] >= 0).nonzero().squeeze(1)
                    k_slots = batch.key_index(r, keys[r][known])
                    rows_r = value[r][:, slot[r]]  # [H, T, S (+1)]
                    t[r][:, :, known] = rows_r[:, :, k_slots].to(dt)
                    if stage == "probs":
                        t[r][:, :, -1] = rows_r[:, :, -1].to(dt)
            else:
                continue  # the output is not an entry point
            fed[stage] = (t, where)
        self.layer.set_feed(fed)

    def _generate(self, batch, step, rows, context_length, cache, info, record):
        b = len(step)
        counts = [stop - start for (start, stop) in step]
        q = at_least(POWERS_OF_TWO, max(counts), "a generation step")
        dt = self.spec.dtype
        start = torch.tensor([st for (st, _) in step] + [0] * (rows - b))
        pos = start[:, None] + torch.arange(q)[None, :]
        valid = torch.zeros(rows, q, dtype=torch.bool)
        x = poison(rows, q, self.hidden, dtype=dt)
        for r, (st, stop) in enumerate(step):
            valid[r, : stop - st] = True
            first = batch.first_position(r)
            x[r, : stop - st] = batch.hidden[r, batch.slots(r)[st - first : stop - first]]
        mask = generation_mask(pos, start, cache.slots, self.window, cache.ring, self.bugs.expose_last_slot)
        if self.bugs.padding_visible and cache.ring is None:
            mask = mask | (torch.arange(cache.slots) < context_length)[None, None, None, :]
        info["steps"].append(f"generation x{q}")
        if self.managed and q > 1:
            # NxDI serves several tokens per step only through speculation, whose caches and masks differ:
            # the harness's models run such a step, and the manager is not driven after it
            self.managed = False
            info["cache_manager_stopped"] = f"a step of {q} tokens ran on the harness's cache and mask model"
        if self.managed:
            theirs = self.serving.generation_mask((torch.arange(cache.slots)[None, :] < start[:, None]).long(), pos)
            if theirs is not None:
                check_mask(f"token generation's mask at position(s) {start[:b].tolist()}", theirs, mask, b, pos)
                mask = theirs
        if self.feed:
            keys = []
            for r in range(rows):
                held = _held(cache, int(start[r]))
                keys.append(torch.cat((held, torch.where(valid[r], pos[r], -1))))
                self._feed_cache(cache, r, held)
            self._set_feed(torch.where(valid, pos, -1), keys)
        k_cache, v_cache = self.serving.cache() if self.managed else (cache.k, cache.v)
        try:
            output, normed, out_proj, k, v = self.layer.generation(x, mask, pos, k_cache, v_cache,
                                                                   active_mask(pos, valid, self.window))
        except Exception as exc:
            if q > 1:
                raise PlanUnsupported(f"the module failed on a token-generation step of {q} tokens per row "
                                      f"({type(exc).__name__}: {exc}); chunked plans need several tokens per step "
                                      "(NxDI's native path supports them with an active mask)") from exc
            raise
        for r, (st, stop) in enumerate(step):
            p = torch.arange(st, stop)
            n = stop - st
            for name, t in (("output", output), ("normed", normed), ("out_proj", out_proj)):
                record(name, r, p, t[r, :n])
            record("k_rope", r, p, k[r, :, :n].transpose(0, 1))
            record("v", r, p, v[r, :, :n].transpose(0, 1))
            if self.internal:
                keys = torch.cat((_held(cache, st), torch.where(valid[r], pos[r], -1)))
                self._record_internals(r, p, torch.arange(n), keys)
        cache.write(k, v, pos, valid)
        if self.managed:
            self.serving.after_generation(k, v, pos)
            stops = torch.tensor([stop for (_, stop) in step] + [0] * (rows - b))
            self._cross_check(cache, f"after the token-generation step at position(s) {start[:b].tolist()}", stops, b)


def _held(cache: KVCache, start: int) -> torch.Tensor:
    """The position each cache slot holds when a generation step starts at `start` (-1: none yet)."""
    if cache.ring is None:
        slots = torch.arange(cache.slots)
        return torch.where(slots < start, slots, -1)
    return ring_positions(torch.tensor([start]), cache.ring, cache.slots)[0]
