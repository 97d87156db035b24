"""What the plugin adds to collection: the shipped suite, the candidates, and the gate's rules.

The suite (suite.py) lives in the installed package, outside the user's repository, so pytest never
finds it by walking folders: the plugin appends its path to the run's arguments when the run asks for
parity checks and names no paths of its own (a run that names paths runs those; `--parity-suite`
adds the suite to them). Its test ids are then the file's absolute path, because pytest's --lf finds
the files of last failures as `rootdir / test id`, which an id relative to some other folder breaks.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().with_name("suite.py")


def _selects_parity(markexpr: str) -> bool:
    """Whether a -m expression names the parity marker other than negated ("parity", "parity and not
    slow", "slow or parity"; not "not parity")."""
    words = re.findall(r"[\w-]+", markexpr or "")
    return any(w == "parity" and (i == 0 or words[i - 1] != "not") for i, w in enumerate(words))


def wants_suite(config: pytest.Config) -> bool:
    if config.getoption("--parity-suite"):
        return True
    if config.args_source == pytest.Config.ArgsSource.ARGS:  # the user named what to run
        return False
    return bool(config.getoption("--candidate")) or _selects_parity(config.getoption("markexpr")) \
        or bool(config.getini("parity_suite"))


def _names_suite(config: pytest.Config) -> bool:
    here = Path(config.invocation_params.dir)
    return any((here / str(arg).split("::")[0]).resolve() == SUITE for arg in config.args)


def add_suite(config: pytest.Config) -> bool:
    """Append the suite to the run's paths when it is wanted; whether the run collects it."""
    if _names_suite(config):
        return True
    if not wants_suite(config):
        return False
    config.args.append(str(SUITE))
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_pycollect_makemodule(module_path, parent):
    if Path(module_path).resolve() != SUITE:
        return None
    try:
        SUITE.relative_to(parent.config.rootpath)
        return None  # inside the rootdir (this project's checkout): pytest's own id is right
    except ValueError:
        return pytest.Module.from_parent(parent, path=Path(module_path), nodeid=str(SUITE))


def pytest_generate_tests(metafunc):
    if "candidate_name" in metafunc.fixturenames:
        from harness.candidates.registry import BUILTIN

        names = metafunc.config.getoption("--candidate") or list(BUILTIN)
        metafunc.parametrize("candidate_name", names)


def pytest_collection_modifyitems(config, items):
    """--no-reference: checks that need the CPU reference are deselected (reported as such), not
    skipped, so that a gate can treat every skip as a failure."""
    if not config.getoption("--no-reference"):
        return
    keep, dropped = [], []
    for item in items:
        (dropped if item.get_closest_marker("needs_reference") else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def candidate_of(item) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("candidate_name") if callspec else None


def check_neuron_gate(config: pytest.Config) -> None:
    """--require-neuron: a Neuron candidate must be selected and the Neuron SDK must import here."""
    if not config.getoption("--require-neuron"):
        return
    from harness.candidates.registry import needs_neuron_sdk

    names = config.getoption("--candidate") or []
    if not any(needs_neuron_sdk(n) for n in names):
        raise pytest.UsageError(f"--require-neuron needs a Neuron candidate (--candidate neuron, neuron-block or "
                                f"neuron:MODULE:CLASS); the candidates given are {names or 'the CPU built-ins'}")
    if hasattr(config, "workerinput"):
        return  # the controller checked already
    from harness.neuron.environment import detect

    env = detect()
    if env.mode == "unavailable":
        raise pytest.UsageError(f"--require-neuron: {env.reason}. `parity doctor --require neuron` shows what is "
                                "installed")


@pytest.hookimpl(hookwrapper=True)  # the old style: pytest 7.4 (supported here) has no wrapper=True
def pytest_runtest_makereport(item, call):
    """--require-neuron: a Neuron test that skipped (SDK missing, a case unsupported by the module) fails,
    with the skip's reason: a gate that silently skips is not a gate."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and item.config.getoption("--require-neuron"):
        from harness.candidates.registry import needs_neuron_sdk

        name = candidate_of(item)
        if name and needs_neuron_sdk(name) and not hasattr(report, "wasxfail"):
            reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
            report.outcome = "failed"
            report.longrepr = (f"--require-neuron: this test of Neuron candidate {name} would have been skipped "
                               f"({reason}); on a Neuron gate every Neuron test must run. Fix the cause, or "
                               "deselect the test explicitly (-k / --deselect) if it cannot apply to your module")
