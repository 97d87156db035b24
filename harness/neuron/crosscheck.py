"""Tolerance-free checks of the caller's side of a Neuron block: what the context encoding hands over to
the KV cache, what the cache manager holds after every step, and the masks. Positions and bits are
compared, never values within a tolerance, so each failure names the slot, the position and the row.

A key is identified by its value vector `v` (RoPE does not touch values): the v projection's output for
position p, seen by a forward hook in the same call (harness/neuron/hooks.py), is bit-identical to
what a correct hand-over puts in the slot of p. Each failure is a CandidateInconsistent at `k_rope`
(the cache is the keys' and values' home; a real module's k_rope and v taps come from there) or, for
masks, at `scores`.
"""

from __future__ import annotations

import torch

from harness.candidates.protocol import CandidateInconsistent


def _find(vector: torch.Tensor, table: torch.Tensor, labels: torch.Tensor) -> int | None:
    """The label of the first entry of `table` [kv, N, d] equal to `vector` [kv, d] bit for bit."""
    same = (table == vector[:, None, :]).all(dim=2).all(dim=0)
    hits = same.nonzero()
    return int(labels[hits[0, 0]]) if len(hits) else None


def _say(position: int | None) -> str:
    return "no position of this row" if position is None else "nothing (never written)" if position < 0 else f"position {position}"


def check_handover(v: torch.Tensor, projected: torch.Tensor | None, lengths: list[int], ring: int | None) -> None:
    """After context encoding: the module's present values `v` [rows, kv, slots, d] must hold, for each
    real row of `lengths` tokens, the last `ring` positions with position p in slot p % ring (a sliding
    layer), or every position p in slot p (`ring` None, a full layer). `projected` [rows, kv, S, d]: the
    v projection's output of the same call (None where unseen, e.g. a compiled module: then only the
    number of keys handed over is checked)."""
    if ring is not None and v.shape[2] != ring:
        given = v.shape[2]
        if given < ring:  # the slots never handed over, and the positions they should hold (the first row)
            n = lengths[0]
            wanted = {p % ring: p for p in range(max(0, n - ring), n)}
            said = "; ".join(f"slot {s} (position {wanted[s]})" if s in wanted else f"slot {s}" for s in range(given, ring))
            detail = f"row 0 is missing {said}"
        else:
            extra = list(range(ring, given))
            detail = f"slot {extra[0]} lies outside the ring" if len(extra) == 1 else \
                f"slots {', '.join(map(str, extra))} lie outside the ring"
        raise CandidateInconsistent("k_rope", (
            f"context encoding handed over {given} keys per row to the sliding-window cache, whose ring holds {ring} "
            f"(the last W-1 positions, position p in slot p % {ring}): {detail}; tolerance-free"))
    if projected is None:
        return
    for row, n in enumerate(lengths):
        positions = torch.arange(n)
        if ring is None:
            expected = positions
        else:
            expected = torch.full((ring,), -1)
            last = positions[-ring:]
            expected[last % ring] = last
        for slot, want in enumerate(expected.tolist()):
            if want < 0 or torch.equal(v[row, :, slot], projected[row, :, want]):
                continue
            got = _find(v[row, :, slot], projected[row, :, :n], positions)
            layout = ("the last W-1 positions in ring order" if ring is not None else "every position p in slot p")
            raise CandidateInconsistent("k_rope", (
                f"context encoding's hand-over to the KV cache: row {row} slot {slot} holds {_say(got)}, expected "
                f"position {want} ({layout}; identified by the values, bit for bit; tolerance-free)"))


def check_cache(what: str, k: torch.Tensor, v: torch.Tensor, want_k: torch.Tensor, want_v: torch.Tensor,
                held: torch.Tensor, rows: int) -> None:
    """`k`, `v` [rows, kv, slots, d]: what the cache manager holds; `want_k`, `want_v`: what the harness's
    model of it holds (the same keys and values at the slots NxDI's layout puts them, poison where never
    written); `held` [rows, slots]: the position each slot holds in that model (-1: never written).
    Only the first `rows` rows are real."""
    if k.shape != want_k.shape or v.shape != want_v.shape:
        raise CandidateInconsistent("k_rope", f"{what}: the cache manager's cache is {list(k.shape)}, expected "
                                    f"{list(want_k.shape)} [rows, kv heads, slots, head_dim]; tolerance-free")
    for row in range(rows):
        if torch.equal(k[row], want_k[row]) and torch.equal(v[row], want_v[row]):
            continue
        differs = ((k[row] != want_k[row]) | (v[row] != want_v[row])).any(dim=2).any(dim=0)
        slot = int(differs.nonzero()[0, 0])
        got = _find(v[row, :, slot], want_v[row], held[row])
        if got is not None and got == int(held[row, slot]):  # the right values, other keys
            said = f"the values of position {got} but other keys"
        else:
            said = _say(got) if got is not None else "values the harness never wrote there"
        raise CandidateInconsistent("k_rope", (
            f"{what}: row {row} slot {slot} of the cache manager's cache holds {said}, expected "
            f"{_say(int(held[row, slot]))} (tolerance-free: bits compared with the harness's model of the cache)"))


def check_mask(what: str, theirs: torch.Tensor, ours: torch.Tensor, rows: int, positions: torch.Tensor) -> None:
    """`theirs` (the mask builder's) against `ours` (the harness's model of NxDI's), for the first `rows`
    rows; `positions` [rows, q]: each query's position, for the message."""
    if theirs.shape[-1] != ours.shape[-1] or theirs.shape[0] < rows:
        raise CandidateInconsistent("scores", f"{what}: the mask builder gave a mask of shape {list(theirs.shape)}, "
                                    f"expected {list(ours.shape)}; tolerance-free")
    theirs, ours = theirs[:rows].expand(ours[:rows].shape).bool(), ours[:rows]
    if torch.equal(theirs, ours):
        return
    row, _, query, slot = (theirs != ours).nonzero()[0].tolist()
    seen = "visible" if bool(theirs[row, 0, query, slot]) else "hidden"
    should = "visible" if bool(ours[row, 0, query, slot]) else "hidden"
    raise CandidateInconsistent("scores", (
        f"{what}: row {row}, query at position {int(positions[row, query])}: key slot {slot} is {seen} in the mask "
        f"builder's mask, {should} in NxDI's layout (tolerance-free)"))
