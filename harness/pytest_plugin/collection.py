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
        config.stash[SUITE_WANTED] = True
        return True
    if not wants_suite(config):
        return False
    config.args.append(str(SUITE))
    config.stash[SUITE_WANTED] = True
    return True


SUITE_WANTED = pytest.StashKey[bool]()
SUITE_CHAIN = pytest.StashKey[list]()


@pytest.hookimpl(tryfirst=True)
def pytest_ignore_collect(collection_path, config):
    """Let pytest reach the suite inside a virtual environment, and nothing else there.

    The package is usually installed in the user's repository (`./.venv/lib/.../site-packages/harness`),
    and pytest ignores virtual environments and folders matching `norecursedirs` (`.*`) even on the way
    to a path named on the command line: the run collected nothing and exited 5, a gate that silently
    ran nothing. So the folders leading to suite.py are never ignored, and inside the first of them
    that pytest would have ignored (the venv), everything off that path is ignored: neither the walk
    from the repository root nor the suite's own argument collects the venv's other files (numpy's and
    torch's tests would otherwise run)."""
    if not config.stash.get(SUITE_WANTED, False):
        return None
    path = Path(collection_path).absolute()
    chain = _suite_chain(config)
    if path == SUITE or path in chain:
        return False  # firstresult: pytest's own rules (venv, norecursedirs) are not consulted
    if any(path.is_relative_to(d) for d in chain[:1]):
        return True
    return None


def _suite_chain(config) -> list[Path]:
    """The folders from the first one pytest would ignore down to suite.py's folder (empty when none
    would be ignored, e.g. a checkout or a venv outside the repository)."""
    if SUITE_CHAIN not in config.stash:
        # from the repository root down to harness/pytest_plugin: folders above the root are never
        # walked (a repository inside ~/.work or /build/dist keeps its own tests)
        root = Path(config.rootpath).absolute()
        parents = [p for p in reversed(SUITE.parents) if p.is_relative_to(root) and p != root]
        chain: list[Path] = []
        for i, folder in enumerate(parents):
            if _pytest_ignores(folder, config):
                chain = parents[i:]
                break
        config.stash[SUITE_CHAIN] = chain
    return config.stash[SUITE_CHAIN]


def _pytest_ignores(folder: Path, config) -> bool:
    from _pytest.main import _in_venv  # pytest's own test for a virtual environment (pyvenv.cfg)
    from _pytest.pathlib import fnmatch_ex

    if not config.getoption("collect_in_virtualenv") and _in_venv(folder):
        return True
    return any(fnmatch_ex(pattern, folder) for pattern in config.getini("norecursedirs"))


def pytest_collect_file(file_path, parent):
    """suite.py reached by the walk from the repository root (the venv case above). pytest drops a
    command-line path that lies inside another one (the suite inside `.`), and its own collector takes
    only test_*.py files that were not named: so the suite is taken here, once."""
    if not parent.config.stash.get(SUITE_WANTED, False) or Path(file_path).absolute() != SUITE:
        return None
    if parent.session.isinitpath(file_path):
        return None  # named on the command line and kept: pytest's own collector takes it
    return pytest.Module.from_parent(parent, path=Path(file_path))


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
        from harness.pytest_plugin.options import neuron_config_given

        given, strict = neuron_config_given(metafunc.config)
        if given:  # each Neuron candidate once per configuration (checked in pytest_configure)
            from harness.neuron import config

            names = config.expand(names, config.parse(given), strict=strict)
        metafunc.parametrize("candidate_name", names)


@pytest.hookimpl(tryfirst=True)  # before -k / -m deselect: this asks what was found, not what was chosen
def pytest_collection_modifyitems(config, items):
    """A suite that was asked for and not found stops the run (a gate that silently runs nothing is
    worse than one that fails). --no-reference: checks that need the CPU reference are deselected
    (reported as such), not skipped, so that a gate can treat every skip as a failure."""
    if config.stash.get(SUITE_WANTED, False) and not config.getoption("lf", False) \
            and not any(Path(item.path).absolute() == SUITE for item in items):  # --lf may skip it on purpose
        raise pytest.UsageError(
            f"the parity suite was asked for (-m parity, --candidate or --parity-suite) but pytest collected none of "
            f"its tests from {SUITE}. Something in this run ignores that path (--ignore, collect_ignore in a "
            "conftest.py, --pyargs); run `pytest --collect-only -q -m parity` to see what is collected, or name the "
            f"suite's path on the command line")
    if config.stash.get(SUITE_WANTED, False):
        _drop_duplicates(items)
    if not config.getoption("--no-reference"):
        return
    keep, dropped = [], []
    for item in items:
        (dropped if item.get_closest_marker("needs_reference") else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


def _drop_duplicates(items: list) -> None:
    """The suite once. pytest 7.4 collects it twice when the venv holding it lies inside the repository
    under a name its norecursedirs does not match (`env`): once walking from `.`, which the ignore
    hook above lets through, and once as the argument the plugin added (pytest 8+ drops an argument
    inside another; 7.4 does not). Both copies have the same node id."""
    seen: set[str] = set()
    kept = []
    for item in items:
        if Path(item.path).absolute() == SUITE:
            if item.nodeid in seen:
                continue
            seen.add(item.nodeid)
        kept.append(item)
    items[:] = kept


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
