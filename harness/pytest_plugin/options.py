"""The plugin's command-line options, ini settings, markers and hypothesis profiles."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, Phase, settings

from harness.neuron.config import HELP as NEURON_CONFIG_HELP

# dev: quick local runs. ci: derandomised, no example database, no deadline (timings are noisy on
# 2 cores), and no explain phase: after a failure hypothesis reruns the falsifying example under a
# line tracer to say which lines only failing examples ran, which took 37 s of a 48 s failure and
# names lines of the harness, not of the candidate. nightly: many more examples; the parity tests
# call target() on the worst ratio, which steers generation toward large ratios once there are
# hundreds of examples.
_common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile("dev", max_examples=12, **_common)
settings.register_profile("ci", max_examples=12, derandomize=True, database=None,
                          phases=[p for p in Phase if p is not Phase.explain], **_common)
settings.register_profile("nightly", max_examples=1000, **_common)
PROFILES = ("dev", "ci", "nightly")

MARKERS = (
    "parity: parity checks of candidates against the float64 oracle (run alone with `pytest -m parity`)",
    "slow: long checks (full dims, thousands of tokens); deselect with -m 'not slow'",
    "needs_reference: the check computes its expected tensors with the CPU reference; deselected under "
    "--no-reference",
)


def default_profile() -> str:
    return os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")


def load_default_profile(config: pytest.Config | None = None) -> None:
    """Load $HYPOTHESIS_PROFILE, else `ci` under $CI, else `dev`, unless --hypothesis-profile chose one."""
    if config is not None and config.getoption("hypothesis_profile", None):
        return
    name = default_profile()
    try:
        settings.load_profile(name)
    except Exception as exc:  # hypothesis's InvalidArgument for an unknown name
        raise pytest.UsageError(f"HYPOTHESIS_PROFILE={name!r}: {exc}; this plugin registers {', '.join(PROFILES)}") \
            from None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("parity", "gpt-oss attention parity (the gpt-oss-parity plugin)")
    group.addoption(
        "--candidate", action="append", default=None, metavar="NAME|MODULE:ATTR",
        help="candidate(s) for the parity tests: a built-in name (`parity run --help` lists them), neuron, "
             "neuron-block, neuron:MODULE:CLASS, or an import path MODULE:ATTR; repeatable. Default: every built-in. "
             "Also adds the parity suite to the run (see --parity-suite).",
    )
    group.addoption("--neuron-config", metavar="JSON_OR_FILE", default=None, help=NEURON_CONFIG_HELP)
    group.addoption("--neuron-mode", choices=("device", "cpu", "xla"), default=None,
                    help="run Neuron candidates in this mode (default $PARITY_NEURON_MODE, else by machine); xla: "
                         "traced by torch-xla on the CPU, with tracing checks")
    group.addoption("--parity-suite", action="store_true", default=False,
                    help="collect the shipped parity suite even when paths are given on the command line (without "
                         "paths it is collected when -m selects `parity`, --candidate is given, or the ini "
                         "setting parity_suite is true)")
    group.addoption("--parity-report", metavar="DIR", default=None,
                    help="write an HTML report (and a JSON record per check) of every parity check to DIR")
    group.addoption("--parity-json", metavar="PATH", default=None,
                    help="write every parity check's record as JSON (the format of `parity run --json`; input of "
                         "`parity summary` and `parity report`)")
    group.addoption("--parity-history", metavar="PATH", default=os.environ.get("PARITY_HISTORY") or None,
                    help="append every parity check to this SQLite history (default $PARITY_HISTORY; see "
                         "`parity history`)")
    group.addoption("--parity-bounds", metavar="FILE", default=None,
                    help="tolerance policy file (JSON, see harness/tolerances.py) for the parity checks")
    group.addoption("--strict-probes", action="store_true", default=False,
                    help="NaN in padding or outside the window reaching an output fails the check")
    group.addoption("--regen-goldens", action="store_true", default=False,
                    help="rewrite the goldens of checks judged from goldens (the curated cases, and your own with "
                         "parity.check(..., goldens=DIR)) before checking them, and report what changed (refused "
                         "when $CI is set: CI never writes goldens)")
    group.addoption("--goldens", action="store_true", default=False,
                    help="generated cases take their expected tensors from the golden stores, computing and caching "
                         "the missing ones ($PARITY_GOLDEN_CACHE)")
    group.addoption("--parity-time-limit", type=float, metavar="SECONDS", default=None,
                    help="time limit of each candidate call; past it the verdict is `timeout` (default: "
                         "$PARITY_TIME_LIMIT, else the candidate's time_limit attribute, else 600; 0: none)")
    group.addoption("--no-reference", action="store_true", default=False,
                    help="never run the CPU reference: checks judged from goldens run, checks that need the reference "
                         "(marked needs_reference) are deselected (device runners)")
    group.addoption("--require-neuron", action="store_true", default=False,
                    help="for a Neuron gate: refuse to start unless the Neuron SDK imports, and fail (not skip) every "
                         "test of a Neuron candidate that would be skipped")
    parser.addini("parity_suite", type="bool", default=False,
                  help="collect the shipped parity suite whenever no path is given on the command line")


def check_options(config: pytest.Config) -> None:
    """Refuse option values that cannot work, before anything is collected (pytest exit status 4)."""
    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    given, strict = neuron_config_given(config)
    if given:
        from harness.neuron import config as neuron_config

        try:  # refused before anything is collected
            neuron_config.expand(config.getoption("--candidate") or ["nxdi-emulation"], neuron_config.parse(given),
                                 strict=strict)
        except ValueError as exc:
            raise pytest.UsageError(f"{exc}" + ("" if strict else " ($PARITY_NEURON_CONFIG)")) from None
    limit = config.getoption("--parity-time-limit")
    if limit is not None:
        if not limit >= 0:
            raise pytest.UsageError(f"--parity-time-limit must be a number of seconds >= 0 (0: no limit), got {limit}")
        os.environ["PARITY_TIME_LIMIT"] = str(limit)  # read by harness/timelimit.py
    if config.getoption("--regen-goldens") and os.environ.get("CI"):
        raise pytest.UsageError("--regen-goldens writes the committed goldens and CI never writes them ($CI is set). "
                                "Regenerate locally (`pytest --regen-goldens` or `parity goldens regenerate`) and "
                                "commit cases/goldens")
    if config.getoption("--regen-goldens") and config.getoption("--no-reference"):
        raise pytest.UsageError("--regen-goldens computes goldens with the CPU reference, which --no-reference "
                                "forbids; give one of them")
    for option in ("--parity-report", "--parity-json", "--parity-history"):
        value = config.getoption(option)
        if value and os.path.isdir(value) != (option == "--parity-report") and os.path.exists(value):
            want = "a folder" if option == "--parity-report" else "a file"
            raise pytest.UsageError(f"{option} {value}: expected {want}, found "
                                    f"{'a file' if option == '--parity-report' else 'a folder'}; name another path")


def neuron_config_given(config: pytest.Config) -> tuple[str | None, bool]:
    """--neuron-config, else $PARITY_NEURON_CONFIG (harness/neuron/config.py `given`)."""
    from harness.neuron.config import given

    return given(config.getoption("--neuron-config"))
