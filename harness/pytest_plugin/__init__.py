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

import pytest

# pytest finds hooks and fixtures by name on the plugin module: the imports below are the plugin.
from harness.pytest_plugin.checker import ParityChecker, parity_cases
from harness.pytest_plugin.collection import (  # noqa: F401
    add_suite,
    check_neuron_gate,
    pytest_collection_modifyitems,
    pytest_generate_tests,
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


def pytest_configure(config: pytest.Config) -> None:
    check_options(config)
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
