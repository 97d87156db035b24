"""The `parity` command line, run as a user runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from harness.candidates import BUILTIN
from harness.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "harness.cli", *args], capture_output=True, text=True, env=env, cwd=ROOT)


def test_run_quick_passes_and_writes_json(tmp_path):
    out = tmp_path / "r.json"
    r = _cli("run", "--quick", "--json", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    assert "verdict" in r.stdout and "0 failed" in r.stdout
    data = json.loads(out.read_text())
    rows = data["cases"]
    assert {row["candidate"] for row in rows} == set(BUILTIN)
    assert all({"id", "candidate", "verdict", "worst_ratio", "first_divergent_stage"} <= set(row) for row in rows)
    # the sweep decodes position 131,071 from a cache, which hf (no accepts_cache) cannot take
    assert all(row["verdict"] == "pass" or (row["verdict"] == "unsupported" and row["candidate"] == "hf"
                                            and "-cache" in row["id"]) for row in rows)
    from harness.sweep import default_cases

    from_cache = [c for c in default_cases(quick=True) if c.plan == "from_cache"]
    assert sum(row["verdict"] == "unsupported" for row in rows) == len(from_cache) >= 2


def test_broken_candidate_fails_and_says_where(tmp_path):
    case = tmp_path / "case.json"
    case.write_text(json.dumps({"layer": 0, "lengths": [130]}))
    r = _cli("run", "--candidate", "tests.broken_candidates:no_sinks", "--case-file", str(case))
    assert r.returncode == 1
    assert "FAIL" in r.stdout and "first divergent stage probs" in r.stdout and "would have passed" in r.stdout


@pytest.mark.parametrize("content, message", [
    ("{not json", "is not valid JSON"),
    ('{"lengths": [3], "sinks": "loud"}', "sinks='loud' must be one of"),
    ('[{"layer": 0}, {"lenghts": [2]}]', "(case 1): unknown field"),
])
def test_bad_case_files(tmp_path, capsys, content, message):
    f = tmp_path / "bad.json"
    f.write_text(content)
    assert main(["run", "--case-file", str(f)]) == 2
    err = capsys.readouterr().err
    assert message in err and str(f) in err


def test_bad_candidate_and_bound(capsys):
    assert main(["run", "--candidate", "nope"]) == 2
    assert "unknown candidate 'nope'" in capsys.readouterr().err
    assert main(["run", "--max-ratio", "0"]) == 2
    assert "--max-ratio must be a positive finite number" in capsys.readouterr().err


def test_checkpoint_weights(tmp_path, capsys):
    from safetensors.torch import save_file

    from harness.presets import preset
    from harness.weights import NAMES, make_weights

    w = make_weights(preset("small"), 9, sinks="dominant")
    save_file({f"block.1.attn.{n}": w[n] for n in NAMES}, str(tmp_path / "model.safetensors"))
    case = tmp_path / "case.json"
    case.write_text(json.dumps({"layer": 1, "lengths": [20]}))
    assert main(["run", "--checkpoint", str(tmp_path), "--case-file", str(case), "--candidate", "reference"]) == 0
    case.write_text(json.dumps({"layer": 2, "lengths": [20]}))
    assert main(["run", "--checkpoint", str(tmp_path), "--case-file", str(case)]) == 2
    assert "layer 2 is incomplete" in capsys.readouterr().err


# A candidate that behaves like NxD: a logging handler on sys.stdout made when it is imported, INFO lines
# and a print while it is built and run (issue 19: about 15 such lines per module build landed in the table).
NOISY_CANDIDATE = '''
import logging
import sys

from harness.produce import run_reference

log = logging.getLogger("fake_third_party")
log.setLevel(logging.INFO)
log.addHandler(logging.StreamHandler(sys.stdout))
log.info("NOISE logged at import")


class Noisy:
    name = "noisy"

    def __init__(self):
        log.info("NOISE logged at build")

    def run(self, spec, batch, *, taps=False):
        logging.basicConfig(stream=sys.stdout, level=logging.INFO)
        logging.getLogger("fake_third_party.compiler").info("NOISE logged through the root logger")
        log.info("NOISE logged at run")
        print("NOISE printed at run")
        return run_reference(spec, batch)["output"]
'''


def _user_cli(cwd, *args, pythonpath=None):
    """`parity` as a user runs it: the installed console script, from `cwd`."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    parity = Path(sys.executable).with_name("parity")
    return subprocess.run([str(parity), *args], capture_output=True, text=True, env=env, cwd=cwd, check=False)


def test_third_party_logging_stays_out_of_the_table(tmp_path):
    (tmp_path / "noisy_candidate.py").write_text(NOISY_CANDIDATE)
    case = tmp_path / "case.json"
    case.write_text(json.dumps({"layer": 0, "lengths": [8]}))
    r = _user_cli(tmp_path, "run", "--candidate", "noisy_candidate:Noisy", "--case-file", str(case), "--no-probes",
                  pythonpath=f"{tmp_path}{os.pathsep}{ROOT}")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [line for line in r.stdout.splitlines() if line.strip()]
    assert lines[0].split()[:3] == ["case", "candidate", "verdict"], r.stdout
    assert "noisy" in lines[1] and "PASS" in lines[1]
    assert lines[2].startswith("1 checks passed, 0 failed") and len(lines) == 3, r.stdout
    for noise in ("logged at import", "logged at build", "logged at run", "printed at run",
                  "logged through the root logger"):
        assert noise in r.stderr


def test_stdout_handlers_are_moved_to_stderr(capsys):
    import logging

    from harness.quiet import stdout_handlers_to_stderr

    logger = logging.getLogger("fake_third_party.made_earlier")
    handler = logging.StreamHandler(sys.stdout)
    logger.addHandler(handler)
    try:
        stdout_handlers_to_stderr()
        logger.warning("NOISE from a handler made before the harness ran")
    finally:
        logger.removeHandler(handler)
    out, err = capsys.readouterr()
    assert "NOISE" not in out and "NOISE from a handler made before" in err


def _walk(parser):
    yield parser
    for action in parser._actions:
        if isinstance(action.choices, dict):  # a subparsers action: name -> parser
            for sub in action.choices.values():
                yield from _walk(sub)


def test_no_parser_takes_abbreviations():
    from harness.cli import build_parser

    parsers = list(_walk(build_parser()))
    assert len(parsers) > 10  # run, replay, ..., goldens and its regenerate, verify, list
    assert [p.prog for p in parsers if p.allow_abbrev] == []


@pytest.mark.parametrize("args, typo, meant", [
    (["run", "--candidtae", "reference", "--case-file", "missing.json"], "--candidtae", "--candidate"),
    (["run", "--candidat", "reference", "--case-file", "missing.json"], "--candidat", "--candidate"),
    (["run", "--quick", "--candidat=reference", "--case-file", "missing.json"], "--candidat", "--candidate"),
    (["replay", "--candidat", "reference", "missing.json"], "--candidat", "--candidate"),
    (["history", "--history", "missing.db", "--candidtae", "x"], "--candidtae", "--candidate"),
    (["goldens", "verify", "--case-fil", "missing.json"], "--case-fil", "--case-file"),
])
def test_option_typos_are_errors_that_name_the_option(capsys, args, typo, meant):
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"unrecognized option {typo}; did you mean {meant}?" in err, err


def test_unknown_option_without_a_near_one(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--zzzzzz"])
    err = capsys.readouterr().err
    assert "unrecognized option --zzzzzz" in err and "parity run --help" in err and "did you mean" not in err


def _package(root: Path, source: str) -> None:
    (root / "mypkg").mkdir()
    (root / "mypkg" / "__init__.py").write_text("")
    (root / "mypkg" / "attn.py").write_text(source)


BLOCK_MODULE = '''
from harness.produce import run_reference


class MyBlock:
    def run(self, spec, batch, *, taps=False):
        return run_reference(spec, batch)["output"]


def helper(spec, batch):
    return run_reference(spec, batch)["output"]


def _private():
    pass
'''


def test_candidate_given_as_a_file_path(tmp_path, capsys):
    _package(tmp_path, BLOCK_MODULE)
    for spec in ("mypkg/attn.py:MyBlock", "mypkg\\attn.py:MyBlock", "mypkg.attn.py:MyBlock"):
        assert main(["run", "--candidate", spec]) == 2
        err = capsys.readouterr().err
        assert "expected a dotted module path" in err and "found" in err and "--candidate mypkg.attn:MyBlock" in err, err
        assert "pip install -e ." in err and "PYTHONPATH=." in err


def test_candidate_module_not_on_the_path(tmp_path):
    _package(tmp_path, BLOCK_MODULE)
    r = _user_cli(tmp_path, "run", "--candidate", "mypkg.attn:MyBlock")
    assert r.returncode == 2
    assert "no module named 'mypkg'" in r.stderr and "searched" in r.stderr, r.stderr
    assert "current folder holds mypkg but is not searched" in r.stderr and "python -m" in r.stderr
    assert "PYTHONPATH=." in r.stderr and "pip install -e ." in r.stderr
    assert r.stdout == ""  # nothing ran


def test_candidate_module_that_fails_to_import(tmp_path, capsys, monkeypatch):
    root = tmp_path / "broken"
    root.mkdir()
    (root / "attn_raises.py").write_text("import no_such_dependency_xyz\n")
    (root / "attn_syntax.py").write_text("def run(:\n")
    monkeypatch.syspath_prepend(str(root))
    assert main(["run", "--candidate", "attn_raises:MyBlock"]) == 2
    err = capsys.readouterr().err
    assert "module 'attn_raises' was found but failed to import" in err, err
    assert "ModuleNotFoundError: No module named 'no_such_dependency_xyz'" in err and "attn_raises.py" in err
    assert "searched" not in err
    assert main(["run", "--candidate", "attn_syntax:run"]) == 2
    err = capsys.readouterr().err
    assert "module 'attn_syntax' was found but failed to import" in err and "SyntaxError" in err, err


def test_candidate_attribute_misspelt(tmp_path):
    _package(tmp_path, BLOCK_MODULE)
    r = _user_cli(tmp_path, "run", "--candidate", "mypkg.attn:MyBlok", pythonpath=".")
    assert r.returncode == 2
    assert ("module 'mypkg.attn' has no attribute 'MyBlok'; did you mean 'MyBlock'? It defines: MyBlock, helper"
            in r.stderr), r.stderr
    assert "run_reference" not in r.stderr and "_private" not in r.stderr
    r = _user_cli(tmp_path, "run", "--candidate", "mypkg.atn:MyBlock", pythonpath=".")
    assert r.returncode == 2
    assert "package 'mypkg'" in r.stderr and "has no module 'atn'; did you mean mypkg.attn?" in r.stderr, r.stderr


def test_native_writes_to_stdout_reach_stderr_not_the_table(tmp_path):
    """A library writing to file descriptor 1 from native code (torch 2.9's gloo prints "[Gloo] Rank 0 is
    connected ..." there when NxD starts its fallback group) must not reach the table."""
    (tmp_path / "noisy.py").write_text(
        "import os\n"
        "from harness.candidates import load_candidate\n"
        "class Noisy:\n"
        "    name = 'noisy'\n"
        "    def run(self, spec, batch, *, taps):\n"
        "        os.write(1, b'NATIVE-NOISE\\n')\n"
        "        return load_candidate('reference').run(spec, batch, taps=taps)\n")
    (tmp_path / "case.json").write_text(json.dumps({"lengths": [5]}))
    r = subprocess.run([sys.executable, "-m", "harness.cli", "run", "--candidate", "noisy:Noisy", "--case-file",
                        str(tmp_path / "case.json"), "--no-probes"], cwd=ROOT, capture_output=True, text=True,
                       timeout=300, env={**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"})
    assert r.returncode == 0, r.stdout + r.stderr
    assert "NATIVE-NOISE" not in r.stdout and "NATIVE-NOISE" in r.stderr, (r.stdout, r.stderr[-500:])
    assert "1 checks passed" in r.stdout


def test_neuron_module_builds_log_to_stderr(monkeypatch, tmp_path, capsys):
    """NxD makes its stdout handler when it is imported, inside the first build, and logs while it builds:
    both the eager (CPU mode) and the compiled (device) build keep that off stdout, for any caller."""
    import logging

    from harness.batch import build
    from harness.case import Case
    from harness.neuron.candidate import NxdiEmulation
    from harness.neuron.emulation import NxdiConventionAttention
    from tests import fake_sdk

    made = []

    def imported_and_logs(what):
        logger = logging.getLogger(f"fake_nxd.{what}")  # one per build step: each makes its own handler
        if not logger.handlers:  # as NxD's logger: a handler on sys.stdout, made on import
            logger.setLevel(logging.INFO)
            logger.addHandler(logging.StreamHandler(sys.stdout))
            made.append(logger)
        logger.info(f"NOISE {what}")

    def build_attention(kind, path, spec, batch, on_cpu, tp_degree=1, flags=None):
        imported_and_logs("building the attention")
        return NxdiConventionAttention(spec.config, spec.layer_idx, spec.dtype)

    fake_sdk.install(monkeypatch, tmp_path, on_build=lambda module_cls, inputs: imported_and_logs("compiling the module"),
                     build_attention=build_attention)
    spec, batch = build(Case(layer=0, lengths=(6,)))
    for mode in ("cpu", "device"):
        candidate = NxdiEmulation(name=f"fake-{mode}")
        candidate.kind, candidate.mode, candidate.class_path = "neuron", mode, None
        candidate.run(spec, batch)
        out, err = capsys.readouterr()
        assert "NOISE" not in out and "NOISE building the attention" in err, (mode, out, err)
        assert mode == "cpu" or "NOISE compiling the module" in err
        for logger in made:
            logger.handlers.clear()
