"""The CI workflows under .github/workflows: actionlint finds nothing wrong (with shellcheck on their
scripts), the README's example of calling the reusable gate is valid too, and every `parity` and
`pytest` command they run uses commands and options that exist."""

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from harness.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
BIN = Path(sys.executable).parent  # actionlint and shellcheck come with the dev extra
# values standing in for the expressions and variables the scripts use
PLACEHOLDERS = {"CANDIDATE": "neuron", "PARITY_HISTORY": "/tmp/history.sqlite", "HARNESS": "gpt-oss-parity[neuron]"}


def _actionlint() -> str:
    found = shutil.which("actionlint", path=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        pytest.fail("actionlint is not installed: `pip install -e '.[dev]'` installs it (README \"The gate in CI\")")
    return found


def _lint(folder: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}  # shellcheck beside it
    return subprocess.run([_actionlint(), "-no-color"], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=120)


def test_the_workflows_pass_actionlint():
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "neuron.yml", "parity-gate.yml"}
    out = _lint(ROOT)
    assert out.returncode == 0, out.stdout + out.stderr


def _copy_github(tmp_path: Path) -> Path:
    shutil.copytree(ROOT / ".github", tmp_path / ".github")
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)  # actionlint finds the project by .git
    return tmp_path


def test_actionlint_catches_a_broken_workflow(tmp_path):
    """The lint is live: an unknown runner label, a misspelt input and an unquoted variable are found."""
    repo = _copy_github(tmp_path)
    gate = repo / ".github" / "workflows" / "neuron.yml"
    gate.write_text(gate.read_text().replace("runner: [trn1, trn2]", "runner: [trn1, trn2]\n        extra: [x]")
                    .replace("candidate: ${{ matrix.candidate }}", "candidat: ${{ matrix.candidate }}"))
    ci = repo / ".github" / "workflows" / "ci.yml"
    ci.write_text(ci.read_text().replace("runs-on: ubuntu-latest", "runs-on: [self-hosted, trn3]", 1)
                  .replace('tail -n 1 out-tests.log', 'tail -n 1 $LOG'))
    out = _lint(repo)
    assert out.returncode == 1
    for problem in ('label "trn3" is unknown', 'input "candidat" is not defined', "SC2086"):
        assert problem in out.stdout, out.stdout


def test_the_readme_example_calls_the_gate_correctly(tmp_path):
    """The README's caller workflow, pointed at this checkout's reusable workflow, passes actionlint (its
    inputs are checked against the workflow's)."""
    readme = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```yaml\n(.*?)```", readme, re.S) if "parity-gate.yml@" in b]
    assert blocks, "README shows no workflow calling parity-gate.yml"
    repo = _copy_github(tmp_path)
    for i, block in enumerate(blocks):
        local = re.sub(r"uses: \S+/\.github/workflows/parity-gate\.yml@\S+", "uses: ./.github/workflows/parity-gate.yml",
                       block)
        (repo / ".github" / "workflows" / f"readme-{i}.yml").write_text(local)
    out = _lint(repo)
    assert out.returncode == 0, out.stdout + out.stderr


def _scripts() -> list[tuple[str, str]]:
    """(where, script) of every `run:` in the workflows."""
    found = []
    for path in WORKFLOWS:
        data = yaml.safe_load(path.read_text())
        for job_name, job in data.get("jobs", {}).items():
            for i, step in enumerate(job.get("steps") or []):
                if "run" in step:
                    found.append((f"{path.name} job {job_name} step {i + 1}", step["run"]))
    return found


OPERATORS = {";", "&&", "||", "|", "&", "(", ")", "then", "do", "else", "if", "!"}


def _commands(tool: str) -> list[tuple[str, list[str]]]:
    """Every invocation of `tool` (parity or pytest; `./dev parity`, `./dev pytest` and `./dev test`
    too) in command position in the scripts, as argument lists: continued lines joined, expressions and
    variables replaced by placeholders, redirections dropped."""
    out = []
    for where, script in _scripts():
        script = re.sub(r"\\\n\s*", " ", script)
        script = re.sub(r"\$\{\{[^}]*\}\}", "x", script)
        script = script.replace('"${extra[@]}"', "")
        for name, value in PLACEHOLDERS.items():
            script = script.replace(f'"${name}"', value).replace(f"${name}", value)
        for line in script.splitlines():
            line = re.sub(r"\s\d*>>?\s*(&\d+|\S+)", " ", line)
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|()")
            lexer.whitespace_split = True
            command: list[str] = []
            for token in [*lexer, ";"]:
                if token not in OPERATORS:
                    command.append(token)
                    continue
                if command[:1] == [tool]:
                    out.append((f"{where}: {line.strip()}", command[1:]))
                elif command[:2] in (["./dev", tool], ["./dev", "test"] if tool == "pytest" else None):
                    out.append((f"{where}: {line.strip()}", command[2:]))
                command = []
    return out


def test_every_parity_command_in_the_workflows_exists(capsys):
    found = _commands("parity")
    assert len(found) >= 6, found  # doctor, goldens verify, summary, history, selftest, --version
    for where, args in found:
        try:
            build_parser().parse_args(args)
        except SystemExit as exc:
            if args != ["--version"] or exc.code != 0:
                pytest.fail(f"{where}: `parity {' '.join(args)}` is not a valid command line: "
                            f"{capsys.readouterr().err.strip()}")


def test_every_pytest_option_in_the_workflows_exists(pytestconfig):
    found = _commands("pytest")
    assert any("--require-neuron" in args for _, args in found), found
    for where, args in found:
        for token in args:
            if not token.startswith("-"):
                continue
            name = token.split("=")[0] if token.startswith("--") else token[:2]
            try:
                pytestconfig.getoption(name)
            except ValueError:
                pytest.fail(f"{where}: pytest has no option {name}")
