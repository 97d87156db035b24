"""What the installed package carries: every package folder, the curated cases and their goldens
(package data), and a wheel that runs the curated parity checks with no checkout in sight."""

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import harness.locations
from harness.locations import cases_dir
from tests.wheel import build_wheel, tracked_files

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10 (Neuron venvs)
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed():
    """pyproject.toml lists its packages (a find cannot ship cases/ as harness.curated): a new package
    folder left out of the list would be missing from every wheel."""
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for top in ("harness", "reference")
             for p in (ROOT / top).rglob("__init__.py")}
    assert found <= listed, f"add {sorted(found - listed)} to [tool.setuptools] packages in pyproject.toml"
    assert PYPROJECT["tool"]["setuptools"]["package-dir"]["harness.curated"] == "cases"


def test_package_data_covers_every_committed_case_file():
    tracked = subprocess.run(["git", "ls-files", "cases"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout")
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["harness.curated"]
    as_regex = [re.compile(re.escape(p).replace(r"\*", "[^/]*") + "$") for p in patterns]
    left_out = [f for f in tracked if not any(r.match(f.removeprefix("cases/")) for r in as_regex)]
    assert not left_out, f"not shipped in the wheel: {left_out}; add a pattern to package-data in pyproject.toml"


def test_outside_a_checkout_the_installed_copy_is_used(monkeypatch):
    assert cases_dir() == ROOT / "cases"  # this checkout
    monkeypatch.setattr(harness.locations, "CHECKOUT_DIR", ROOT / "not-a-checkout")
    assert cases_dir() == harness.locations.PACKAGE_DIR / "curated"


@pytest.mark.slow
def test_a_wheel_runs_the_curated_cases_from_its_own_goldens(tmp_path):
    """Build a wheel from the tracked files, unpack it as site-packages would hold it, and from an empty
    folder run a curated parity check through the plugin: cases and goldens come from the wheel."""
    wheel = build_wheel(tmp_path)
    tracked = tracked_files()
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    shipped = site / "harness" / "curated"
    assert sorted(p.name for p in shipped.glob("*.json")) == sorted(p.name for p in (ROOT / "cases").glob("*.json"))
    assert sorted(p.name for p in (shipped / "goldens").iterdir()) == \
        sorted(n.removeprefix("cases/goldens/") for n in tracked if n.startswith("cases/goldens/"))

    user = tmp_path / "user"
    user.mkdir()
    # the unpacked wheel comes first on the path, before this checkout's editable install
    env = {**os.environ, "PYTHONPATH": str(site), "PARITY_FAILURES_DIR": str(user / "failures")}
    env.pop("PARITY_GOLDEN_DIR", None)
    out = subprocess.run([sys.executable, "-m", "pytest", "-m", "parity", "--candidate", "reference", "-k",
                          "test_curated_case_files and small-L1-prefill-n130", "-p", "no:cacheprovider", "-rA"],
                         cwd=user, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert f"{site / 'harness' / 'pytest_plugin' / 'suite.py'}::test_curated_case_files[reference-small-L1" in out.stdout
    regen = subprocess.run([sys.executable, "-m", "harness.cli", "goldens", "regenerate"], cwd=user, env=env,
                           capture_output=True, text=True, timeout=300)
    assert regen.returncode == 2 and "is the copy installed with the package" in regen.stderr, regen.stderr


def test_the_dependencies_users_need_are_declared_and_torch_is_left_open():
    """`-n 2` (README) needs pytest-xdist in a user's plain install, not only in the dev extra; torch has
    no upper pin or exact version (Neuron venvs bring their own 2.8/2.9), and the Neuron SDK is never a
    resolved dependency (its names on the default index are placeholders)."""
    deps = {re.split(r"[<>=!~\[ ;]", d, maxsplit=1)[0].lower(): d for d in PYPROJECT["project"]["dependencies"]}
    assert "pytest-xdist" in deps
    assert re.fullmatch(r"torch>=[\d.]+", deps["torch"]), deps["torch"]
    assert not {"torch-neuronx", "neuronx-distributed", "neuronx-distributed-inference", "neuronx-cc"} & set(deps)
