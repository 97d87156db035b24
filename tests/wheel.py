"""Build this project's wheel from its tracked files, as a user's `pip install` gets it, for the tests
that run the package from outside this checkout (tests/test_packaging.py, tests/test_pytest_plugin.py)."""

import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def tracked_files() -> list[str]:
    return subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=False).stdout.split()


def build_wheel(tmp: Path) -> Path:
    """The wheel built from a copy of the tracked files (never from the checkout itself, which would
    leave build/ and *.egg-info behind); skips where no wheel can be built."""
    try:
        import setuptools  # noqa: F401  (the build backend)
    except ImportError:
        pytest.skip("setuptools is not installed: no wheel can be built here")
    tracked = tracked_files()
    if not tracked:
        pytest.skip("not a git checkout")
    src = tmp / "src"
    for name in tracked:
        if (ROOT / name).is_file():
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, src / name)
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                            str(tmp / "dist"), str(src)], capture_output=True, text=True, timeout=600, check=False)
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("*.whl")
    return wheel


def venv_with_wheel(venv: Path, wheel: Path) -> Path:
    """A virtual environment at `venv` with the wheel installed in it, non-editable (unpacked into its
    site-packages, which is what pip does with a pure-Python wheel); its other dependencies (torch,
    pytest, ...) are this interpreter's, reached through a .pth line (no download, no second torch).
    Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    zipfile.ZipFile(wheel).extractall(site)
    # A path line (not `import site; addsitedir`): the .pth files of this interpreter's site-packages,
    # among them the checkout's editable install, stay inactive, so `import harness` finds the wheel's.
    (site / "zz-test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return python
