"""Pytest wiring for the parity harness: options, hypothesis profiles, and the session's report."""

import os

import pytest
from hypothesis import HealthCheck, settings

from harness.candidates import BUILTIN

# dev: quick local runs. ci: derandomised, no example database, no deadline (timings are noisy on
# 2 cores). nightly: many more examples; the parity tests call target() on the worst ratio, which
# steers generation toward large ratios once there are hundreds of examples.
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=12, **_common)
settings.register_profile("ci", max_examples=12, derandomize=True, database=None, **_common)
settings.register_profile("nightly", max_examples=1000, **_common)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_addoption(parser):
    group = parser.getgroup("parity")
    group.addoption(
        "--candidate", action="append", default=None, metavar="NAME|MODULE:ATTR",
        help=f"candidate(s) for the parity tests: built-in name ({', '.join(BUILTIN)}) or import path; "
        "repeatable. Default: every built-in.",
    )
    group.addoption("--parity-report", metavar="DIR", default=None,
                    help="write an HTML report (and a JSON record per case) of every parity check to DIR")
    group.addoption("--parity-bounds", metavar="FILE", default=None,
                    help="tolerance policy file (JSON, see harness/tolerances.py) for the parity checks")
    group.addoption("--strict-probes", action="store_true", default=False,
                    help="NaN in padding or outside the window reaching an output fails the check")
    group.addoption("--regen-goldens", action="store_true", default=False,
                    help="rewrite the curated cases' goldens from the reference before checking them, and report "
                         "what changed (refused when $CI is set: CI never writes goldens)")
    group.addoption("--goldens", action="store_true", default=False,
                    help="generated cases take their expected tensors from the golden stores, computing and caching "
                         "the missing ones ($PARITY_GOLDEN_CACHE)")
    group.addoption("--parity-time-limit", type=float, metavar="SECONDS", default=None,
                    help="time limit of each candidate call; past it the verdict is `timeout` (default: "
                         "$PARITY_TIME_LIMIT, else the candidate's time_limit attribute, else 600; 0: none)")
    group.addoption("--no-reference", action="store_true", default=False,
                    help="never run the CPU reference: curated cases are judged from their goldens, checks that need "
                         "the reference are skipped (device runners)")


def pytest_configure(config):
    limit = config.getoption("--parity-time-limit")
    if limit is not None:
        if not limit >= 0:
            raise pytest.UsageError(f"--parity-time-limit must be a number of seconds >= 0 (0: no limit), got {limit}")
        os.environ["PARITY_TIME_LIMIT"] = str(limit)  # read by harness/timelimit.py
    config._parity_records = ParityRecords()
    if config.getoption("--regen-goldens") and os.environ.get("CI"):
        raise pytest.UsageError("--regen-goldens writes the committed goldens and CI never writes them ($CI is set). "
                                "Regenerate locally (`pytest --regen-goldens` or `parity goldens regenerate`) and "
                                "commit cases/goldens")


def pytest_generate_tests(metafunc):
    if "candidate_name" in metafunc.fixturenames:
        names = metafunc.config.getoption("--candidate") or list(BUILTIN)
        metafunc.parametrize("candidate_name", names)


class ParityRecords:
    """The report's records: one per test item. Under hypothesis a test runs many examples and shrink
    steps; each replaces the item's previous record, so a failing test keeps its final falsifying
    example (hypothesis runs it last) and a passing one its last example."""

    def __init__(self):
        self.by_test: dict[str, dict] = {}
        self.current = "session"  # the running test item's node id (set by pytest_runtest_call)

    def add(self, record: dict) -> None:
        self.by_test[self.current] = record

    def __iter__(self):
        return iter(self.by_test.values())

    def __len__(self):
        return len(self.by_test)

    def __repr__(self):  # hypothesis prints fixture arguments with a falsifying example: keep it short
        return f"<{len(self)} parity records>"


class ParityOptions:
    """What every parity check in this session shares: bounds, strict probes, the report's records."""

    def __init__(self, bounds, strict_probes: bool, records: ParityRecords):
        self.bounds, self.strict_probes, self.records = bounds, strict_probes, records

    def __repr__(self):
        return f"ParityOptions(strict_probes={self.strict_probes}, {self.records!r})"


@pytest.fixture(scope="session")
def parity_options(pytestconfig):
    from harness.tolerances import Bounds, load_bounds

    path = pytestconfig.getoption("--parity-bounds")
    try:
        bounds = load_bounds(path) if path else Bounds()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    return ParityOptions(bounds, pytestconfig.getoption("--strict-probes"), pytestconfig._parity_records)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    item.config._parity_records.current = item.nodeid


@pytest.fixture(scope="session")
def curated_expected(pytestconfig):
    """Expected tensors of curated cases: their goldens in the committed store, nothing computed (a
    missing or stale golden fails the check with the regenerate command). Under --regen-goldens each
    case's golden is rewritten once first, and the change reported at the end of the session."""
    from harness.expected import compute_expected
    from harness.goldens import GoldenSource, GoldenStore

    store = GoldenStore.committed()
    source = GoldenSource([store], compute=False)
    changes = pytestconfig._golden_changes = {}

    def expected(case, checkpoint=None):
        if pytestconfig.getoption("--regen-goldens") and case.id not in changes:
            changes[case.id] = store.write(case, compute_expected(case))
        return source(case, checkpoint)

    return expected


@pytest.fixture(scope="session")
def generated_expected(pytestconfig):
    """Expected tensors of generated cases: computed, or through the golden cache under --goldens;
    under --no-reference such checks skip."""
    from harness.expected import compute_expected
    from harness.goldens import GoldenSource

    if pytestconfig.getoption("--no-reference"):
        pytest.skip("--no-reference: generated cases need the CPU reference (curated cases run from goldens)")
    if pytestconfig.getoption("--goldens"):
        return GoldenSource.stores()
    return compute_expected


def pytest_terminal_summary(terminalreporter, config):
    changes = getattr(config, "_golden_changes", None)
    if changes:
        terminalreporter.section("goldens regenerated")
        for case_id, change in changes.items():
            terminalreporter.write_line(f"{case_id}: {change.describe()}")


def pytest_sessionfinish(session):
    directory = session.config.getoption("--parity-report")
    records = getattr(session.config, "_parity_records", None)
    if directory and records is not None:
        from harness.environment import run_environment
        from harness.report import write_report

        index = write_report(list(records), directory, run_environment())
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter:
            reporter.write_line(f"parity report: {index}")
