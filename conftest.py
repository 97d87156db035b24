"""This project's pytest set-up. Options, fixtures, markers, the parity suite and the report come from
the package's pytest plugin (harness/pytest_plugin), which pytest loads through its entry point, as
in any repository where the package is installed.

The plugin loads its hypothesis profile only for runs that collect the parity suite; this project's
other hypothesis tests (tests/test_strategies.py) need it in every run, `pytest tests/FILE.py`
included. --hypothesis-profile still wins (hypothesis loads it after this file).
"""

from harness.pytest_plugin.options import load_default_profile

load_default_profile()
