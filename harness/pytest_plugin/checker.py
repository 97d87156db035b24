"""One parity check inside a pytest test: `parity.check(case, candidate_name)`, and `parity_cases(...)`
to parametrize a test over case files. The shipped suite (suite.py) and users' own tests use both.

A check runs the case through harness.runner with the session's options (bounds, strict probes,
where the expected tensors come from), records the result for the report, the JSON results and the
history, and fails the test with the usual message and repro file. Skips are said, never passed: a
Neuron candidate that cannot run here, or a case the candidate reports unsupported.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

__all__ = ["ParityChecker", "ParityRecords", "parity_cases"]


class ParityRecords:
    """The session's check records (report, JSON results, history). Under hypothesis a test runs many
    examples and shrink steps; each replaces the test item's previous record, so a failing test keeps its
    final falsifying example (hypothesis runs it last) and a passing one its last example. Outside
    hypothesis every (test item, case, candidate) keeps its own record, so a test looping over cases
    records each."""

    def __init__(self):
        self.by_key: dict = {}
        self.current = "session"  # the running test item's node id (set by the plugin before each call)

    def add(self, record: dict, in_hypothesis: bool | None = None) -> None:
        if in_hypothesis is None:
            from hypothesis.control import currently_in_test_context

            in_hypothesis = currently_in_test_context()
        key = self.current if in_hypothesis else (self.current, record["id"], record["candidate"])
        self.by_key.pop(key, None)  # re-added last: records keep the order checks finished in
        self.by_key[key] = record

    def extend(self, records: list[dict]) -> None:
        """Records of another process (a pytest-xdist worker), kept as they came."""
        for i, r in enumerate(records):
            self.by_key[("worker", len(self.by_key), i)] = r

    def __iter__(self):
        return iter(self.by_key.values())

    def __len__(self):
        return len(self.by_key)

    def __repr__(self):  # hypothesis prints fixture arguments with a falsifying example: keep it short
        return f"<{len(self)} parity records>"


class ParityChecker:
    """The `parity` fixture: checks cases against candidates with this session's options."""

    def __init__(self, config: pytest.Config):
        from harness.tolerances import Bounds, load_bounds

        path = config.getoption("--parity-bounds")
        try:
            self.bounds = load_bounds(path) if path else Bounds()
        except ValueError as exc:
            raise pytest.UsageError(str(exc)) from None
        self.config = config
        self.strict_probes = config.getoption("--strict-probes")
        self.regen_goldens = config.getoption("--regen-goldens")
        self.no_reference = config.getoption("--no-reference")
        self.records = ParityRecords()
        self.golden_changes: dict[str, str] = {}  # case id -> what --regen-goldens did to its golden
        self._default_source = None
        self._held: dict = {}  # candidate name -> a candidate holding processes, reused by every test

    def __repr__(self):  # short, for the same reason as ParityRecords
        return f"<parity checker: {len(self.records)} records>"

    def load(self, candidate_name: str):
        """The candidate, or a skip when it cannot run here (a Neuron candidate without the SDK)."""
        from harness.candidates import load_candidate
        from harness.neuron.environment import NeuronUnavailable

        if candidate_name in self._held:
            return self._held[candidate_name]
        try:
            candidate = load_candidate(candidate_name)
        except NeuronUnavailable as exc:
            pytest.skip(str(exc))
        except (ValueError, TypeError) as exc:  # an unknown name or a class that cannot be built
            pytest.fail(str(exc), pytrace=False)
        if hasattr(candidate, "close"):  # holds processes (NAME@tpN): one per session, closed at its end
            self._held[candidate_name] = candidate
        return candidate

    def close(self) -> None:
        """Stop what the session's candidates hold (rank processes)."""
        held, self._held = self._held, {}
        for candidate in held.values():
            candidate.close()

    def expected_source(self, goldens: str | Path | None = None):
        """Where a check's expected tensors come from. `goldens`: judged from that store alone (a missing
        or stale golden fails with the command that fixes it), rewritten first under --regen-goldens.
        Otherwise: computed by the CPU reference; under --goldens the stores first (committed, then the
        cache, where computed ones go); under --no-reference the stores only."""
        from harness.expected import compute_expected
        from harness.goldens import GoldenError, GoldenSource, GoldenStore

        if goldens is not None:
            store = goldens if isinstance(goldens, GoldenStore) else GoldenStore(goldens)
            if not store.root.is_dir():
                pytest.fail(f"golden store {store.root} does not exist; create it with `parity goldens regenerate "
                            f"--dir {store.root} --case-file <your case file>`", pytrace=False)
            source = GoldenSource([store], compute=False)
            if not self.regen_goldens:
                return source

            def regenerated(case, checkpoint=None):
                if case.id not in self.golden_changes:
                    try:
                        self.golden_changes[case.id] = store.write(case, compute_expected(case)).describe()
                    except GoldenError as exc:
                        self.golden_changes[case.id] = f"NOT WRITTEN: {exc}"
                return source(case, checkpoint)

            return regenerated
        if self._default_source is None:
            if self.no_reference:
                self._default_source = GoldenSource.stores(compute=False)
            elif self.config.getoption("--goldens"):
                self._default_source = GoldenSource.stores()
            else:
                self._default_source = compute_expected
        return self._default_source

    @staticmethod
    def _pytest_fix(exc, goldens) -> str:
        """The one-flag fix inside pytest, next to the `parity goldens` command of the message."""
        from harness.goldens import GoldenMissing, GoldenStale

        if not isinstance(exc, (GoldenMissing, GoldenStale)):
            return ""
        if goldens is not None:
            root = getattr(goldens, "root", goldens)
            return (f"\nor rerun this test with --regen-goldens (without --no-reference): it writes the golden into "
                    f"{root}, then checks it")
        return ("\nor, where the CPU reference can run, run the same pytest command once with --goldens instead of "
                "--no-reference: it computes the missing goldens into the golden cache ($PARITY_GOLDEN_CACHE), which "
                "--no-reference reads")

    def check(self, case, candidate_name: str, *, candidate=None, goldens: str | Path | None = None):
        """Check `case` against the candidate named `candidate_name` (a built-in, neuron..., or
        MODULE:ATTR) and fail the test with the verdict's message and a repro file unless it passes.
        `candidate`: that candidate already loaded (`parity.load`), to build it once per test.
        `goldens`: a golden store folder holding the case's golden (harness/goldens.py), to judge it
        without the CPU reference; a relative path is taken from the folder of the calling test module.
        Returns the verdict."""
        __tracebackhide__ = True
        if isinstance(goldens, (str, Path)):
            goldens = _from_caller(goldens, inspect.stack()[1].filename)
        from hypothesis import target
        from hypothesis.control import current_build_context, currently_in_test_context

        from harness.goldens import GoldenError
        from harness.report import record_of
        from harness.repro import replay_command, save_failure
        from harness.runner import run_case

        candidate = candidate or self.load(candidate_name)
        in_hypothesis = currently_in_test_context()
        # Stage isolation costs a run per stage; while hypothesis searches and shrinks, only the final
        # falsifying example (the one reported) needs it.
        isolation = not in_hypothesis or current_build_context().is_final
        try:
            (verdict,) = run_case(case, [candidate], self.bounds, strict_probes=self.strict_probes,
                                  expected=self.expected_source(goldens), isolation=isolation)
        except GoldenError as exc:  # missing, stale or corrupted: the message says how to fix it
            problem = str(exc) + self._pytest_fix(exc, goldens)
        else:
            problem = None
        if problem:  # failed outside the except block, so that pytest prints the message once
            pytest.fail(problem, pytrace=False)
        if verdict.verdict == "unsupported":  # the candidate cannot run this case (e.g. its plan): said, not passed
            pytest.skip(verdict.message)
        replay = None if verdict.passed else replay_command(save_failure(case, candidate_name, verdict))
        self.records.add(record_of(case, verdict, self.bounds.for_candidate(candidate), replay), in_hypothesis)
        if verdict.worst_ratio is not None and in_hypothesis:  # nightly: steer toward large ratios
            target(min(verdict.worst_ratio, 1e6), label="worst ratio")
        if not verdict.passed:
            trace = f"\n\nthe candidate's traceback:\n{verdict.traceback}" if verdict.traceback else ""
            pytest.fail(f"{verdict.verdict.upper()}: {verdict.message}\nreplay: {replay}{trace}", pytrace=False)
        return verdict


def parity_cases(*paths: str | Path) -> list:
    """Cases of JSON case files (README "Cases") as pytest parameters with the case id as test id:

        @pytest.mark.parity
        @pytest.mark.parametrize("case", parity_cases("cases/*.json"))
        def test_my_cases(parity, candidate_name, case):
            parity.check(case, candidate_name)

    Each path is a file or a glob; a relative one is taken from the folder of the test module that
    calls this (so the test runs from any working directory). A pattern matching nothing, or a file
    that is not a valid case file, is an error naming it."""
    from harness.case import load_case_file

    caller_file = inspect.stack()[1].filename
    caller = Path(caller_file).resolve().parent
    params = []
    for pattern in paths:
        base = _from_caller(pattern, caller_file)
        files = sorted(base.parent.glob(base.name)) if any(ch in base.name for ch in "*?[") else [base]
        if not files or not all(f.is_file() for f in files):
            raise FileNotFoundError(f"parity_cases({str(pattern)!r}): no case file at {base} (relative paths are "
                                    f"taken from {caller}, the folder of the calling test module)")
        for f in files:
            params += [pytest.param(c, id=c.id) for c in load_case_file(f)]
    return params


def _from_caller(path: str | Path, caller_file: str) -> Path:
    """`path`, a relative one taken from the folder of the module calling (not the working directory,
    which is wherever pytest was started)."""
    p = Path(path)
    return p if p.is_absolute() else Path(caller_file).resolve().parent / p
