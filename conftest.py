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


def pytest_generate_tests(metafunc):
    if "candidate_name" in metafunc.fixturenames:
        names = metafunc.config.getoption("--candidate") or list(BUILTIN)
        metafunc.parametrize("candidate_name", names)


@pytest.fixture(scope="session")
def parity_options(pytestconfig):
    """(bounds, strict_probes, records): what every parity check in this session shares."""
    from harness.tolerances import Bounds, load_bounds

    path = pytestconfig.getoption("--parity-bounds")
    try:
        bounds = load_bounds(path) if path else Bounds()
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    records = []
    pytestconfig._parity_records = records
    return bounds, pytestconfig.getoption("--strict-probes"), records


def pytest_sessionfinish(session):
    directory = session.config.getoption("--parity-report")
    records = getattr(session.config, "_parity_records", None)
    if directory and records is not None:
        from harness.report import write_report

        index = write_report(records, directory)
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter:
            reporter.write_line(f"parity report: {index}")
