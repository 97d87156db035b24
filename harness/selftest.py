"""The self-test: every mutant (one real bug class each) must be caught, every benign variant (a
correct implementation with other numerics) must pass, through the same case generators and the
same comparisons a user gets (harness/strategies.py, harness/runner.py).

Cases are drawn once from the generators (derandomised, as under the `ci` profile) and shared: every
mutant meets the same sequence, so "examples to kill" is comparable, and each case's oracle and
reference are computed once. With `seeds` > 1 the generators are also drawn under hypothesis seeds
1 .. seeds-1, and each mutant's examples to kill is counted on every draw (no shrinking there): a bug
that only steps after the first or long positions reach (FAST_BUGS) must die within KILL_WITHIN on
every seed. Each regime mutant (REGIME_MUTANTS) must also fail the default sweep (harness/sweep.py),
the first failing sweep case reported. A killed mutant's failing case is shrunk greedily over the case's fields
(fewer and shorter rows, plain prefill, right padding, simple regimes, seed 0) and the shrunk case is
diagnosed. Hypothesis's own shrinking serves the pytest runs; here it would keep exploring after the
first failure at 50 s a mutant. Benign variants run over the first `benign_examples` drawn cases.
Ablations remove one ingredient of the generators, to show that each earns its place: without it,
some mutant survives.

Diagnosis is tested too: on its shrunk case a single-bug mutant must name exactly one divergent stage,
and a multi-bug mutant (harness/mutants.py: MULTI_BUG) every one of its bugs, each at its own stage: the
stage its bug names alone on the same case. Its search looks for a case that reaches every bug (each
bug's own mutant fails there), and shrinks keeping that true.
"""

from __future__ import annotations

import contextlib

import statistics
from collections import OrderedDict
from dataclasses import asdict, dataclass, field, replace

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed

from harness.case import PLANS, Case
from harness.compare import Verdict
from harness.expected import Expected, compute_expected
from harness.mutants import (
    ALL_MUTANTS,
    BENIGN,
    OWN_CANDIDATE,
    FAST_BUGS,
    KILL_WITHIN,
    REGIME_MUTANTS,
    bug_classes,
    mutant_knobs,
    variant,
)
from harness.runner import run_case
from harness.stages import STAGES
from harness.strategies import W, cases

# Each ablation: the generator arguments that remove one ingredient, and the mutants it should let live.
ABLATIONS: dict[str, tuple[dict, tuple[str, ...]]] = {
    "decode_and_chunked_plans": ({"plans": ("prefill",)}, ("decode_positions_ignored",)),
    "long_positions_from_a_cache": ({"long_cache": False}, ("rope_table_wraps_at_4096", "full_layers_keep_last_4096")),
    "nonzero_sinks": ({"sinks": ("zero",)}, ("sinks_zeroed", "sinks_wrong_head_order", "sinks_per_kv_head")),
    "batches_with_padding": ({"max_batch": 1}, ("padding_not_masked", "batch_flattened")),
    "rows_past_the_window": ({"max_length": W, "long": False, "long_cache": False}, ("window_w_plus_1", "no_window", "window_on_odd_layers")),
    "sliding_layers": ({"parities": (1,)}, ("no_window", "window_w_plus_1", "window_w_minus_1")),
}


@dataclass
class MutantResult:
    name: str
    killed: bool
    examples_to_kill: int | None
    shrunk_case: dict | None = None
    first_divergent_stage: str | None = None
    message: str = ""
    # diagnosis on the shrunk case: every divergent stage; for each bug class, the stages it names alone
    divergent_stages: list[str] = field(default_factory=list)
    bug_stages: dict[str, list[str]] = field(default_factory=dict)
    # one stage per bug class, distinct, and exactly those named together (one stage for a single bug)
    named: bool = False
    # examples to kill on each seed the self-test drew (the first is `examples_to_kill`; None: survived)
    kills_by_seed: list = field(default_factory=list)
    must_be_fast: bool = False  # one of FAST_BUGS: must die within KILL_WITHIN on every seed
    # the default sweep (regime mutants only): the first sweep case it fails and where, or "" if it passed all
    sweep_checked: bool = False
    sweep_case: str = ""
    sweep_stage: str = ""

    @property
    def worst_kill(self) -> int | None:
        """The most examples it took on any seed (None when it survived one)."""
        kills = self.kills_by_seed or [self.examples_to_kill]
        return None if None in kills else max(kills)

    @property
    def fast_enough(self) -> bool:
        return not self.must_be_fast or (self.worst_kill is not None and self.worst_kill <= KILL_WITHIN)

    @property
    def sweep_ok(self) -> bool:
        return not self.sweep_checked or bool(self.sweep_case)


@dataclass
class BenignResult:
    name: str
    examples: int
    false_alarms: int
    worst_ratio: float = 0.0
    alarms: list[str] = field(default_factory=list)


@dataclass
class SelftestResult:
    mutants: list[MutantResult]
    benign: list[BenignResult]

    seeds: int = 1

    @property
    def ok(self) -> bool:
        return (all(m.killed and m.named and m.fast_enough and m.sweep_ok for m in self.mutants)
                and not any(b.false_alarms for b in self.benign))

    def to_dict(self) -> dict:
        kills = [m.examples_to_kill for m in self.mutants if m.killed]
        fast = [m for m in self.mutants if m.must_be_fast]
        swept = [m for m in self.mutants if m.sweep_checked]
        return {
            "mutants": [{**asdict(m), "worst_kill": m.worst_kill} for m in self.mutants],
            "benign": [asdict(b) for b in self.benign],
            "summary": {
                "mutants": len(self.mutants),
                "killed": len(kills),
                "named": sum(m.named for m in self.mutants),
                "median_examples_to_kill": statistics.median(kills) if kills else None,
                "seeds": self.seeds,
                "fast_bugs": len(fast),
                "fast_bugs_in_time": sum(m.fast_enough for m in fast),
                "fast_bug_worst_kill": max((m.worst_kill for m in fast if m.worst_kill is not None), default=None),
                "regime_mutants": len(swept),
                "regime_mutants_failing_the_sweep": sum(m.sweep_ok for m in swept),
                "benign_examples": sum(b.examples for b in self.benign),
                "false_alarms": sum(b.false_alarms for b in self.benign),
                "ok": self.ok,
            },
        }


class ExpectedCache:
    """Oracle and reference tensors per case (every layer): mutants and benign variants meet the same cases."""

    def __init__(self, size: int = 24):
        self.size, self.items = size, OrderedDict()

    def get(self, case: Case) -> list[Expected]:
        if case in self.items:
            self.items.move_to_end(case)
        else:
            self.items[case] = compute_expected(case)
            if len(self.items) > self.size:
                self.items.popitem(last=False)
        return self.items[case]


def judge_case(case: Case, candidate, cache: ExpectedCache, isolation: bool = True) -> Verdict:
    """The candidate's verdict on a case (a block, or a stack layer by layer), expected tensors from `cache`."""
    layers = cache.get(case)
    return run_case(case, [candidate], expected=lambda *_: layers, isolation=isolation)[0]


def _search_settings(max_examples: int, derandomize: bool = True) -> settings:
    return settings(max_examples=max_examples, derandomize=derandomize, database=None, deadline=None,
                    report_multiple_bugs=False, suppress_health_check=list(HealthCheck))


DENSE_SHRINK = 2 * W + 8  # longest row a from_cache case may be shrunk into a dense plan with


def simpler(case: Case):
    """Simpler neighbours of a case, simplest first: fewer rows, plain prefill, right padding, shorter
    rows, layer parity 0/1, simple regimes, seed 0. Invalid combinations are skipped."""
    def variants():
        if case.depth > 1:  # one layer of the stack, either parity
            for layer in range(case.layer, case.layer + case.depth):
                yield {"depth": 1, "stack_mode": "teacher", "layer": layer}
        if case.batch_size > 1:
            for n in sorted(set(case.lengths)):
                yield {"lengths": (n,), "pad_to": 0}
            yield {"lengths": case.lengths[:-1], "pad_to": 0}
        # a row handed over whole costs O(n^2): from a cache, only rows this short leave the cache
        if case.plan != "from_cache" or max(case.lengths) <= DENSE_SHRINK:
            yield {"plan": "prefill", "decode_steps": 0, "chunk_offset": 0}
            if case.plan == "from_cache":  # the same positions decoded after a prefill
                yield {"plan": "decode"}
        yield {"padding": "right"}
        yield {"layer": case.layer % 2}
        for field_name, simple in (("sinks", "small"), ("scale", "normal"), ("inputs", "normal"),
                                   ("weight_seed", 0), ("input_seed", 0), ("pad_to", 0)):
            yield {field_name: simple}
        if case.plan in ("decode", "from_cache"):
            yield {"decode_steps": 1}
        if case.plan == "chunked":
            yield {"chunk_offset": 1}
            yield {"chunk_offset": case.chunk_offset // 2}
        for i, n in enumerate(case.lengths):
            for shorter in (1, n // 2, (3 * n) // 4, n - 8, n - 1):
                if 0 < shorter < n:
                    yield {"lengths": case.lengths[:i] + (shorter,) + case.lengths[i + 1 :]}
        if case.compare_last and max(case.lengths) <= 2 * W + 8:
            yield {"compare_last": 0}

    for change in variants():
        try:
            c = replace(case, **change)
        except ValueError:
            continue
        if c != case:
            yield c


def shrink(case: Case, fails, budget: int = 200) -> Case:
    """Greedy: move to the first simpler neighbour that still fails, until none does."""
    while budget > 0:
        for c in simpler(case):
            budget -= 1
            if fails(c):
                case = c
                break
            if budget <= 0:
                break
        else:
            return case
    return case


def hunt(name: str, drawn: list[Case], cache: ExpectedCache, hunted: dict | None = None) -> MutantResult:
    with mutant(name) as candidate:
        return _hunt(name, candidate, drawn, cache, hunted)


def _hunt(name: str, candidate, drawn: list[Case], cache: ExpectedCache, hunted: dict | None) -> MutantResult:
    """Run the drawn cases in order until the mutant fails; then find a case that reaches every one of
    its bugs, shrink it keeping that true, and diagnose it (see the module docstring). `hunted`: results
    of single-bug mutants already hunted (name -> MutantResult), reused and extended here."""
    hunted = {} if hunted is None else hunted
    bugs = bug_classes(name)
    alone = {bug: variant("mutant", bug) for bug in bugs} if len(bugs) > 1 else {name: candidate}

    def fails(case: Case, c=candidate) -> bool:
        return not judge_case(case, c, cache, isolation=False).passed

    def reaches_every_bug(case: Case) -> bool:
        return all(fails(case, c) for c in alone.values())

    first = next((i for i, case in enumerate(drawn, 1) if fails(case)), None)
    if first is None:
        return MutantResult(name, False, None, message=f"survived {len(drawn)} examples", must_be_fast=name in FAST_BUGS)
    if len(bugs) == 1:
        start = drawn[first - 1]
    else:
        # Each bug's own shrunk case is small and often reaches the others too (a norm or residual bug
        # shows everywhere): try those first, then the drawn cases, which can be thousands of tokens.
        for bug in bugs:
            if bug not in hunted:
                hunted[bug] = hunt(bug, drawn, cache, hunted)
        seeds = [Case.from_dict(hunted[bug].shrunk_case) for bug in bugs if hunted[bug].shrunk_case]
        start = next((case for case in (*seeds, *drawn[first - 1 :]) if reaches_every_bug(case)), None)
        if start is None:
            return MutantResult(name, True, first, message=f"no case among {len(drawn)} examples reaches every one of its bugs")
    small = shrink(start, reaches_every_bug)
    final = judge_case(small, candidate, cache)
    bug_stages = {bug: (final if c is candidate else judge_case(small, c, cache)).divergent_stages
                  for bug, c in alone.items()}
    expected = sorted((st[0] for st in bug_stages.values() if len(st) == 1), key=_pipeline_order)
    # divergent stages are distinct, so two bugs naming the same stage can never match
    named = len(expected) == len(bugs) and final.divergent_stages == expected
    message = final.message
    if not named:
        alone_said = "; ".join(f"{bug} alone: {', '.join(st) or 'nothing'}" for bug, st in bug_stages.items())
        message = (f"diagnosis incomplete: named together {', '.join(final.divergent_stages)}; {alone_said}\n"
                   + message)
    result = MutantResult(name, True, first, small.to_dict(), final.first_divergent_stage, message,
                          final.divergent_stages, bug_stages, named, must_be_fast=name in FAST_BUGS)
    if len(bugs) == 1:
        hunted[name] = result
    return result


def _pipeline_order(stage: str) -> int:
    return STAGES.index(stage) if stage in STAGES else len(STAGES)


def draw_cases(strategy, n: int, seed: int | None = None) -> list[Case]:
    """n cases from the strategy: derandomised (as under the `ci` profile), or under a hypothesis seed."""
    drawn: list[Case] = []

    @_search_settings(n, derandomize=seed is None)
    @given(strategy)
    def collect(case):
        drawn.append(case)

    if seed is not None:
        collect = hypothesis_seed(seed)(collect)
    collect()
    return drawn


def examples_to_kill(name: str, drawn: list[Case], cache: ExpectedCache) -> int | None:
    """The 1-based index of the first drawn case the mutant fails, or None."""
    with mutant(name) as candidate:
        return next((i for i, case in enumerate(drawn, 1)
                     if not judge_case(case, candidate, cache, isolation=False).passed), None)


@contextlib.contextmanager
def mutant(name: str):
    """A fresh mutant, closed after use: a sharding mutant holds rank processes (harness/neuron/launcher.py),
    and a self-test over several seeds would otherwise keep a group of them per mutant and seed."""
    candidate = variant("mutant", name)
    try:
        yield candidate
    finally:
        getattr(candidate, "close", lambda: None)()


def sweep_kills(results: list[MutantResult], progress=None) -> None:
    """Run the default sweep (harness/sweep.py, in its order) against each regime mutant among
    `results` until its first failing case; record that case and stage. Each sweep case's expected
    tensors are computed once, when a mutant first needs them."""
    from harness.sweep import default_cases

    checked = [m for m in results if m.name in REGIME_MUTANTS]
    sweep = default_cases()
    cache = ExpectedCache(size=len(sweep))  # the whole sweep: every mutant walks it from the start
    for i, m in enumerate(checked, 1):
        if progress:
            progress(i, len(checked), f"default sweep: mutant {m.name}")
        m.sweep_checked = True
        with mutant(m.name) as candidate:
            for case in sweep:
                v = judge_case(case, candidate, cache, isolation=False)
                if not v.passed:
                    m.sweep_case, m.sweep_stage = case.id, v.first_divergent_stage or v.verdict
                    break


def run_benign(names, drawn: list[Case], cache: ExpectedCache, progress=None) -> list[BenignResult]:
    results = {name: BenignResult(name, 0, 0) for name in names}
    candidates = {name: variant("benign", name) for name in names}
    for i, case in enumerate(drawn, 1):
        if progress:
            progress(i, len(drawn), f"benign example {case.id}")
        for name, candidate in candidates.items():
            v = judge_case(case, candidate, cache, isolation=False)
            r = results[name]
            r.examples += 1
            r.worst_ratio = max(r.worst_ratio, v.worst_ratio or 0.0)
            if not v.passed:
                r.false_alarms += 1
                r.alarms.append(f"{case.id}: {v.message.splitlines()[0] if v.message else v.verdict}")
    return list(results.values())


def run_selftest(
    mutants=ALL_MUTANTS,
    benign=tuple(BENIGN),
    max_examples: int = 100,
    benign_examples: int = 100,
    without: tuple[str, ...] = (),
    progress=None,
    seeds: int = 1,
) -> SelftestResult:
    """`without`: ablation names (ABLATIONS) whose ingredient is removed from the generators.
    `progress(i, total, what)` is called as step i of total starts (mutants, then benign examples).
    `seeds`: draws to count examples to kill on (the derandomised one, then hypothesis seeds 1..)."""
    # Dense rows of 2047-4097 tokens cost seconds per dense candidate run and no bug class here needs
    # them; `pytest -m parity` still draws them (harness/strategies.py: long=True). Long positions come
    # from a cache, which every mutant and benign variant accepts.
    if seeds < 1:
        raise ValueError(f"seeds={seeds} must be at least 1")
    kwargs: dict = {"long": False, "plans": PLANS}
    for name in without:
        if name not in ABLATIONS:
            raise ValueError(f"unknown ablation {name!r}; ablations are: {', '.join(ABLATIONS)}")
        kwargs.update(ABLATIONS[name][0])
    for name in mutants:
        if name not in OWN_CANDIDATE:
            mutant_knobs(name)  # raises on an unknown name or bugs that cannot combine
    for name in benign:
        if name not in BENIGN:
            raise ValueError(f"unknown benign variant {name!r}; benign variants are: {', '.join(BENIGN)}")
    # One derandomised draw shared by every mutant and benign variant: each case's oracle and reference
    # are computed once, and "examples to kill" counts the same sequence for every mutant.
    drawn = draw_cases(cases(**kwargs), max(max_examples, benign_examples))
    cache = ExpectedCache()
    found, hunted = [], {}
    for i, name in enumerate(mutants, 1):
        if progress:
            progress(i, len(mutants), f"mutant {name}")
        found.append(hunted[name] if name in hunted else hunt(name, drawn[:max_examples], cache, hunted))
    for m in found:
        m.kills_by_seed = [m.examples_to_kill]
    for s in range(1, seeds):
        other = draw_cases(cases(**kwargs), max_examples, seed=s)
        for i, m in enumerate(found, 1):
            if progress:
                progress(i, len(found), f"seed {s}: mutant {m.name}")
            m.kills_by_seed.append(examples_to_kill(m.name, other, cache))
    sweep_kills(found, progress)
    benign_results = run_benign(benign, drawn[:benign_examples], cache, progress) if benign else []
    return SelftestResult(found, benign_results, seeds)
