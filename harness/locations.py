"""Where the curated cases and their committed goldens are.

In a source checkout of this project (an editable install included) they are the checkout's cases/
and cases/goldens/: that is where `parity goldens regenerate` writes and what git commits. An
installed package (a wheel, `pip install gpt-oss-parity`) carries a copy of them as package data in
harness/curated/ (pyproject.toml maps cases/ there), so that `pytest -m parity` in a user's own
repository runs the curated cases against the goldens shipped with the version installed. That copy
is read-only by intent: goldens are regenerated in a checkout and shipped with a release.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CHECKOUT_DIR = PACKAGE_DIR.parent
INSTALLED_CASES_DIR = PACKAGE_DIR / "curated"
PROJECT_NAME = "gpt-oss-parity"


def running_from_checkout() -> bool:
    """True when harness/ sits in a checkout of this project (its pyproject.toml next to cases/), not in
    site-packages; a site-packages folder that happens to hold a `cases` folder does not count."""
    pyproject = CHECKOUT_DIR / "pyproject.toml"
    if not (pyproject.is_file() and (CHECKOUT_DIR / "cases").is_dir()):
        return False
    try:
        return f'name = "{PROJECT_NAME}"' in pyproject.read_text()
    except OSError:
        return False


def cases_dir() -> Path:
    """The curated cases: the checkout's cases/, else the copy installed with the package."""
    return CHECKOUT_DIR / "cases" if running_from_checkout() else INSTALLED_CASES_DIR
