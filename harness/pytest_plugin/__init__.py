"""gpt-oss attention parity as a pytest plugin, registered as `parity` through the `pytest11` entry
point of the installed package (`-p no:parity` turns it off).

In any repository where gpt-oss-parity is installed, `pytest -m parity --candidate mypkg.attn:MyBlock`
runs the shipped parity suite (suite.py: generated cases and stacks, the built-in sweep, the curated
cases judged from the goldens shipped in the package) with the options of options.py. Your own tests
use the `parity` fixture and `parity_cases`:

    import pytest
    from harness.pytest_plugin import parity_cases

    @pytest.mark.parity
    @pytest.mark.parametrize("case", parity_cases("cases/*.json"))
    def test_my_cases(parity, candidate_name, case):
        parity.check(case, candidate_name)

`candidate_name` is parametrized over --candidate. This module only gathers the hooks and fixtures of
its parts: options.py (options, markers, hypothesis profiles), collection.py (the suite, candidates,
--no-reference, --require-neuron), checker.py (one check), session.py (report, JSON, history,
pytest-xdist). Nothing here imports torch until a parity check runs.
"""

from __future__ import annotations

import os
import sys

import pytest

# pytest finds hooks and fixtures by name on the plugin module: the imports below are the plugin.
from harness.pytest_plugin.checker import ParityChecker, parity_cases
from harness.pytest_plugin.collection import (  # noqa: F401
    add_suite,
    check_neuron_gate,
    pytest_collection_modifyitems,
    pytest_collect_file,
    pytest_generate_tests,
    pytest_ignore_collect,
    pytest_pycollect_makemodule,
    pytest_runtest_makereport,
)
from harness.pytest_plugin.options import check_options, load_default_profile, pytest_addoption  # noqa: F401
from harness.pytest_plugin.session import (  # noqa: F401
    parity,
    pytest_runtest_call,
    pytest_sessionfinish,
    pytest_terminal_summary,
    pytest_testnodedown,
)

__all__ = ["ParityChecker", "parity_cases"]


SIGTERM_HANDLER = pytest.StashKey[object]()
STUCK_CALLBACK = pytest.StashKey[object]()


def pytest_configure(config: pytest.Config) -> None:
    from harness.interrupt import sigterm_as_interrupt

    results = config.getoption("--parity-json")
    if results and not hasattr(config, "workerinput") and not os.path.isdir(results):
        from harness.jsonfile import write_json

        # first of all: until the session finishes, the file says the run is incomplete, so neither a
        # usage error below nor a process that ends early (a native exit) leaves an older run's success
        # behind (`parity summary --require-complete`)
        write_json(results, {"cases": [], "summary": {"checks": 0, "failed": 0, "complete": False}})
    check_options(config)
    share_cores(config)
    mode = config.getoption("--neuron-mode")
    if mode:  # read where Neuron candidates are built; xdist workers inherit the environment
        os.environ["PARITY_NEURON_MODE"] = mode
    config.stash[SIGTERM_HANDLER] = sigterm_as_interrupt()  # a killed run still writes JUnit, JSON, report
    from harness import timelimit
    from harness.pytest_plugin.session import when_stuck

    config.stash[STUCK_CALLBACK] = when_stuck(config)
    timelimit.on_stuck.append(config.stash[STUCK_CALLBACK])
    if add_suite(config):
        load_default_profile(config)  # the profiles touch hypothesis globally: only for a parity run
    check_neuron_gate(config)
    history = config.getoption("--parity-history")
    if history and not hasattr(config, "workerinput"):
        from harness.history import History, HistoryError

        try:  # a history that cannot be written is said before the run, not after it
            History(history).check_writable()
        except (HistoryError, OSError) as exc:
            raise pytest.UsageError(f"--parity-history: {exc}") from None


def pytest_unconfigure(config: pytest.Config) -> None:
    from harness.interrupt import restore
    from harness.pytest_plugin.session import CHECKER

    if CHECKER in config.stash:
        config.stash[CHECKER].close()

    restore(config.stash.get(SIGTERM_HANDLER, None))
    from harness import timelimit

    if config.stash.get(STUCK_CALLBACK, None) in timelimit.on_stuck:
        timelimit.on_stuck.remove(config.stash[STUCK_CALLBACK])


def share_cores(config: pytest.Config) -> None:
    """Under pytest-xdist, give each worker its share of the cores for torch's threads. Each worker's
    torch otherwise starts one OpenMP thread per core: `-n 2` on 2 cores ran 4 spinning threads on 2
    cores, and the long-position checks took 115 s instead of 13 s (measured). An explicit
    $OMP_NUM_THREADS is kept."""
    workers = getattr(config, "workerinput", {}).get("workercount")
    if not workers or os.environ.get("OMP_NUM_THREADS"):
        return
    from harness.machine import usable_cpus

    threads = max(1, usable_cpus() // int(workers))
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read when torch is imported
    if "torch" in sys.modules:  # already imported (a conftest): set it directly
        sys.modules["torch"].set_num_threads(threads)

