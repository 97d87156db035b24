"""How much work checking one case is, so that progress lines estimate the time left from the work
left rather than from the number of cases left (issue 19: a run of small cases followed by one
131,072-token full-dims row claimed "about 34 s left" for 13 minutes).

The unit is one multiply-add; everything else is counted in multiply-adds of about the same time on a
CPU. The model is approximate but proportional: it need not predict seconds, only the ratio of one
case's time to another's. The constants below were measured on the built-in sweep (2 cores, AVX512
bf16, torch 2.13 CPU); each says where it comes from. Fitted together, they put every case of the
sweep within 2x of its share of the sweep's measured time (the 131,071 full-dims rows within 10%).
"""

from __future__ import annotations

from harness.case import Case
from harness.presets import PRESETS

# Drawing one float64 normal deviate (inputs, weights): the 131,071 full-dims row drew 377 million in
# 4.6 s (12 ns each) while its prefix pass ran about 7.7e11 multiply-adds in 18.5 s (24 ps each).
DEVIATE = 500
# One (query, key, head) element of the score and probability taps: masking, softmax, the float64
# metrics of the candidate and the reference against the oracle, the mask checks. Taps span the whole
# (padded) key axis, not only the visible keys. Fitted: a small-dims row of 257 tokens took twice as
# long as one of 128, whose projections cost about the same.
TAP_ELEMENT = 500
# Each element of a from_cache row's cache, spread to the query heads, per candidate call: the
# candidate reads it and the cache probes rewrite it. Measured: a sliding layer's 131,072-token row
# from a cache took 7.7 s at full dims against 0.5 s at small dims, although only W keys are visible.
CACHE_ELEMENT = 30
# The fixed cost of one candidate call and its comparison (small-dims cases: 10-20 ms per candidate
# whatever their length).
CALL = 3e8
# Candidate calls per check: the run itself and the probes' reruns.
CANDIDATE_PASSES = 2
# The bf16 reference and the float64 oracle.
REFERENCE_PASSES = 2


def case_work(case: Case, candidates: int = 1) -> float:
    """The work of checking `case` against `candidates` candidates, in multiply-adds (see the module
    doc), summed over the layers of the case."""
    return sum(_layer_work(case, layer % 2 == 0, candidates) for layer in range(case.layer, case.layer + case.depth))


def _layer_work(case: Case, sliding: bool, candidates: int) -> float:
    """One layer: every candidate call (`_candidate_work`), the reference's and the oracle's
    projections of every token whose keys they need (a from_cache row's whole prefix on full layers,
    its last 2W positions on sliding ones, harness/prefix.py) and their attention of each query they compute
    over the keys it can see (at most W on sliding layers, every earlier position on full ones), the
    inputs and the weights drawn."""
    c = PRESETS[case.preset]
    hq, d, hidden = c.num_attention_heads, c.head_dim, c.hidden_size
    window = c.sliding_window if sliding else 0
    kv = hidden * 2 * c.num_key_value_heads * d  # key and value projections of one token
    per_token = hidden * hq * d * 2 + kv  # and the query and output projections
    cached = case.plan == "from_cache"
    # the last query positions of each row they compute: all of them (the dense reference computes every
    # row, judged or not), or a from_cache row's generated ones
    queries = [case.decode_steps if cached else n for n in case.lengths]
    keyed = sum(_keyed_tokens(n, k, window, cached) for n, k in zip(case.lengths, queries))
    attention = sum(_visible_keys(n, k, window) for n, k in zip(case.lengths, queries)) * hq * 2 * d
    reference = keyed * kv + sum(queries) * (per_token - kv) + attention
    drawn = (keyed * hidden + per_token) * DEVIATE  # inputs and weights
    return candidates * CANDIDATE_PASSES * _candidate_work(case, per_token) + REFERENCE_PASSES * reference + drawn


def _candidate_work(case: Case, per_token: int) -> float:
    """One candidate call: projections of the tokens it is handed, scores and attention over the whole
    (padded) key axis and the comparison of those taps, the cache it is handed, and the call itself."""
    c = PRESETS[case.preset]
    hq, d = c.num_attention_heads, c.head_dim
    cached = case.plan == "from_cache"
    handed = [case.decode_steps if cached else n for n in case.lengths]
    slots = case.pad_to or max(handed)  # the padded length of the batch
    prefix = max(case.lengths) - case.decode_steps if cached else 0
    taps = case.batch_size * slots * (prefix + slots) * hq
    cache = case.batch_size * prefix * hq * d
    return sum(handed) * per_token + taps * (2 * d + TAP_ELEMENT) + cache * CACHE_ELEMENT + CALL


def _keyed_tokens(n: int, queries: int, window: int, cached: bool) -> int:
    """Tokens of a row of n whose keys the reference and the oracle compute: every token, except on a
    sliding layer's from_cache row, whose prefix pass computes only the last 2W before the generated
    ones (harness/prefix.py)."""
    if cached and window:
        return min(n, 2 * window + queries)
    return n


def _visible_keys(n: int, queries: int, window: int) -> int:
    """Keys seen by the last `queries` positions of a row of n, summed: position p sees p + 1 keys, at
    most W on a sliding layer."""
    return _keys_up_to(n, window) - _keys_up_to(n - queries, window)


def _keys_up_to(m: int, window: int) -> int:
    """Keys seen by positions 0 .. m - 1 together (in closed form: rows reach 131,072 positions)."""
    if not window or m <= window:
        return m * (m + 1) // 2
    return window * (window + 1) // 2 + (m - window) * window
