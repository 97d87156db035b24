"""Will a case fit this machine? Checked before anything is allocated, so that an oversized case is a
clear error in a second, not a swap storm or an out-of-memory kill minutes later.

Structural limits (no position beyond gpt-oss's context, no layer beyond the model) are part of the
case itself (harness/case.py). Here: the memory the expected tensors need, estimated from the case's
shape, against what this machine has available.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.case import Case
from harness.presets import preset

# The dense reference materialises (Hq, n, n) scores: about 6.6 GiB peak at 4096 tokens with 64 heads
# (measured; about 6.6 bytes per score element). Up to that many score elements it runs (OpenAI's block
# itself); beyond, the row-selective reference (reference/rows.py) computes the judged rows only.
DENSE_SCORE_LIMIT = 64 * 4096 * 4096
DENSE_BYTES_PER_SCORE = 7
SCORE_TAP_LIMIT = 1 << 24  # harness/stages.py: larger score taps are not produced
BUDGET_FRACTION = 0.8
PREFIX_CHUNK = 4096  # harness/prefix.py
ROW_SCORES = 1 << 24  # harness/produce.py  # of the memory available when the run starts


class CaseTooLarge(ValueError):
    """A case this machine cannot compute; the message says the limit and why."""


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation (Linux MemAvailable; physical memory elsewhere)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def dense_reference_runs(case: Case) -> bool:
    """Whether the dense bf16 reference runs the case (harness/produce.py), or the row-selective one."""
    c = preset(case.preset)
    return case.plan != "from_cache" and c.num_attention_heads * max(case.lengths) ** 2 <= DENSE_SCORE_LIMIT


def expected_bytes(case: Case) -> dict[str, int]:
    """The peak memory computing a case's expected tensors takes, by part (an estimate from its shape)."""
    c = preset(case.preset)
    h, hq, hkv, d = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    cached = case.plan == "from_cache"
    slots = case.pad_to or (case.decode_steps if cached else max(case.lengths))
    tokens = case.batch_size * slots
    longest = max(case.lengths)
    elem = 2 if case.dtype == "bfloat16" else 4
    keys = (longest if cached else 0) + slots
    per_token = 3 * h + 3 * hq * d + 3 * hkv * d  # normed, out_proj, output; q, q_rope, attn; k, v, k_rope
    score_taps = min(case.batch_size * hq * slots * (keys + 1), SCORE_TAP_LIMIT) * 2 * (8 + elem)
    kv = hkv * d * 2  # k_rope and v of one token
    parts = {
        "inputs": (PREFIX_CHUNK + tokens if cached else tokens) * h * (8 + elem),
        "stage tensors (oracle in float64, reference)": case.depth * tokens * per_token * (8 + elem) + score_taps,
    }
    if dense_reference_runs(case):
        parts["reference's dense scores"] = hq * longest * longest * DENSE_BYTES_PER_SCORE * (elem // 2)
    else:  # row-selective: the keys of a row, a block of query rows' scores and probabilities
        parts["reference's keys and row scores"] = longest * kv * elem * 2 + ROW_SCORES * 3 * elem
    if cached:  # the cache handed to candidates, the oracle's float64 keys, one chunk projected in float64
        parts["cache and the oracle's keys"] = case.batch_size * longest * kv * (elem + 8) + PREFIX_CHUNK * (2 * h + kv) * 8
    else:
        parts["oracle's working set"] = longest * (2 * h + (hq + 2 * hkv) * d) * 8 * 2
    return parts


def check_fits(case: Case, reference: bool = True) -> None:
    """CaseTooLarge unless computing the case's expected tensors (with the reference when `reference`)
    fits this machine's available memory."""
    parts = expected_bytes(case)
    if not reference:
        for name in ("reference's dense scores", "reference's keys and row scores"):
            parts.pop(name, None)
    need = sum(parts.values())
    have = available_memory()
    if have is not None and need > BUDGET_FRACTION * have:
        detail = ", ".join(f"{name} {size / 2**30:.1f} GiB" for name, size in parts.items())
        raise CaseTooLarge(
            f"case {case.id}: its expected tensors need about {need / 2**30:.1f} GiB ({detail}), more than "
            f"{BUDGET_FRACTION:.0%} of the {have / 2**30:.1f} GiB this machine has available; use fewer or shorter "
            "rows, a smaller pad_to or depth, or a machine with more memory")
