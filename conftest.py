"""Pytest wiring for the parity harness: the `--candidate` option and hypothesis profiles."""

import os

from harness.candidates import BUILTIN

from hypothesis import HealthCheck, settings

# dev: quick local runs. ci: derandomised, no example database, no deadline (timings are noisy on 2 cores).
settings.register_profile("dev", max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci", max_examples=12, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("nightly", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def pytest_addoption(parser):
    parser.addoption(
        "--candidate",
        action="append",
        default=None,
        metavar="NAME|MODULE:ATTR",
        help="candidate(s) for the parity tests: built-in name (reference, hf, emulation) or import path; repeatable. "
        "Default: every built-in.",
    )


def pytest_generate_tests(metafunc):
    if "candidate_name" in metafunc.fixturenames:
        names = metafunc.config.getoption("--candidate") or list(BUILTIN)
        metafunc.parametrize("candidate_name", names)
