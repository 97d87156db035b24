"""Goldens hold on every CPU: the committed goldens verify, and the curated cases pass from them,
under kernel settings that reproduce other CPUs on this one (ATEN_CPU_CAPABILITY, ONEDNN_MAX_CPU_ISA),
while a change of the reference's meaning is drift under each. Settings this CPU cannot run, or that
select no other kernel here, are skipped with the reason."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import harness.cli_goldens
from harness import cli, cpu
from harness.case import Case, curated_cases
from harness.cli_goldens import verify_one
from harness.goldens import GoldenStore
from harness.rounding import ELEMENT_ULPS, check
from tests import semantic_changes

ROOT = Path(__file__).resolve().parent.parent
SETTINGS = [
    ("", ""),  # this process's own kernels
    ("ATEN_CPU_CAPABILITY", "avx2"),
    ("ATEN_CPU_CAPABILITY", "avx512"),
    ("ONEDNN_MAX_CPU_ISA", "AVX2"),
    ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE"),
    ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16"),
]
# a sliding layer judged beyond the window (W+1 shows), with non-zero sinks, on both presets
SENSITIVE = ("small-L0-prefill-n130", "full-L0-chunk")


def _env(variable: str, value: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    env.update({variable: value} if variable else {})
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _python(code: str, variable: str, value: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=_env(variable, value), capture_output=True,
                          text=True, timeout=900)


def _setting_id(setting):
    return f"{setting[0]}={setting[1]}" if setting[0] else "this-process"


# ATen's scalar kernels (what a CPU without AVX2, or an Arm one, differs like) change the rounding on
# every x86 box, so that setting runs in the fast tier; the others only where their kernels exist.
@pytest.mark.parametrize("setting", [("ATEN_CPU_CAPABILITY", "default")]
                         + [pytest.param(s, marks=pytest.mark.slow) for s in SETTINGS], ids=_setting_id)
def test_goldens_hold_under_other_kernels(setting, tmp_path):
    """In one child process under the setting: every committed golden verifies, the curated cases pass
    from their goldens, and a reference whose window is one key wider is then drift."""
    variable, value = setting
    if variable:
        reason = cpu.why_no_effect(variable, value)
        if reason:
            pytest.skip(reason)
    files = [a for f in sorted((ROOT / "cases").glob("*.json")) for a in ("--case-file", str(f))]
    run = ["run", "--no-reference", "--no-probes", "--candidate", "emulation", "--candidate", "flash", *files]
    code = f"""
import os
os.environ["PARITY_FAILURES_DIR"] = {str(tmp_path / "failures")!r}
from harness import cpu
from harness.cli import main
print("KERNELS", cpu.summary(cpu.describe()))
print("RC verify", main(["goldens", "verify"]))
print("RC run", main({run!r}))
import tests.semantic_changes as s
s.apply("window_plus_1")
print("RC changed", main(["goldens", "verify", "--case", {SENSITIVE[0]!r}]))
"""
    child = _python(code, variable, value)
    out = child.stdout
    assert child.returncode == 0, out[-3000:] + child.stderr[-3000:]
    n = len(curated_cases())
    assert "RC verify 0" in out and f"{n} of {n} golden(s) verified" in out, out[-4000:]
    assert "RC run 0" in out and f"{2 * n} checks passed, 0 failed" in out, out[-4000:]
    assert "RC changed 1" in out and "DRIFT" in out and "not platform rounding" in out, out[-3000:]
    if variable == "ATEN_CPU_CAPABILITY":  # the setting really took effect in the child
        assert f"ATen {value.upper()}" in out.split("KERNELS", 1)[1].splitlines()[0]


def _committed(prefix: str) -> Case:
    return next(c for c in curated_cases() if c.id.startswith(prefix))


@pytest.mark.parametrize("kind", semantic_changes.KINDS)
@pytest.mark.parametrize("prefix", SENSITIVE)
def test_a_change_of_meaning_is_drift_not_rounding(kind, prefix, monkeypatch):
    semantic_changes.apply(kind, monkeypatch.setattr)
    ok, message = verify_one(GoldenStore.committed(), _committed(prefix))
    assert not ok and "DRIFT" in message and "not platform rounding" in message, message


def test_committed_goldens_verify_bit_identically_or_within_rounding(capsys):
    """The drift pin, here: every committed golden verifies, and says which of the two it was."""
    assert cli.main(["goldens", "verify"]) == 0, capsys.readouterr().out
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith(("small-", "full-"))]
    assert len(lines) == len(curated_cases())
    assert all(": ok: bit-identical" in line or ": ok: within platform rounding" in line for line in lines), out


def _golden(prefix="small-L0-prefill-n130"):
    store = GoldenStore.committed()
    tensors, _, _ = store.check(_committed(prefix))
    return tensors


def test_one_ulp_moves_are_rounding_and_the_report_counts_them():
    t = _golden()
    old, oracle = t["layer0.reference.output"], t["layer0.oracle.output"]
    new = old.clone()
    idx = torch.arange(0, new.numel(), 97)
    new.view(-1).view(torch.int16)[idx] += 1  # exactly one bf16 ulp further from zero
    r = check("layer0.reference.output", old, new, oracle)
    assert r.accepted and r.differ == idx.numel() and 0 < r.max_ulps <= 1.01, r
    assert "elements moved by at most" in r.describe()


def test_many_small_moves_in_one_direction_are_not_rounding():
    """Every element one ulp up is within the per-element bound but adds error to every row."""
    t = _golden()
    old, oracle = t["layer0.reference.q"], t["layer0.oracle.q"]
    new = (old.float() + old.float().abs() * 2**-7).to(old.dtype)
    r = check("layer0.reference.q", old, new, oracle)
    assert not r.accepted and r.max_ulps <= ELEMENT_ULPS["q"] and "RMS error" in r.reason, r


def test_a_few_large_moves_are_not_rounding():
    t = _golden()
    old, oracle = t["layer0.reference.attn"], t["layer0.oracle.attn"]
    new = old.clone()
    new.view(-1)[:3] = (new.view(-1)[:3].float() * 1.5 + 0.5).to(old.dtype)
    r = check("layer0.reference.attn", old, new, oracle)
    assert not r.accepted and "ulps of its magnitude" in r.reason, r


def test_an_opened_mask_is_not_rounding():
    t = _golden()
    old, oracle = t["layer0.reference.probs"], t["layer0.oracle.probs"]
    masked = (oracle == 0).nonzero()[0]
    new = old.clone()
    new[tuple(masked)] = 1e-3
    r = check("layer0.reference.probs", old, new, oracle)
    assert not r.accepted and "masked keys are no longer 0" in r.reason, r


def test_nan_in_new_places_is_not_rounding():
    t = _golden()
    old = t["layer0.reference.k"]
    new = old.clone()
    new.view(-1)[5] = float("nan")
    assert not check("layer0.reference.k", old, new, t["layer0.oracle.k"]).accepted


def test_regenerate_keeps_goldens_that_differ_by_rounding_only(tmp_path, monkeypatch, capsys):
    case = Case(layer=0, lengths=(130,), input_seed=3)
    store = GoldenStore(tmp_path / "store")
    assert cli.main(["goldens", "regenerate", "--dir", str(store.root), "--case-file",
                     str(_case_file(tmp_path, case))]) == 0
    before = store.manifest_path.read_bytes()
    real = harness.cli_goldens.compute_expected

    def rounded(c, checkpoint=None):  # what another CPU computes: a few outputs one ulp away
        layers = real(c, checkpoint)
        out = layers[0].reference["output"]
        out[0, -1, :2] = (out[0, -1, :2].float() * (1 + 2**-8)).to(out.dtype)
        return layers

    monkeypatch.setattr(harness.cli_goldens, "compute_expected", rounded)
    assert cli.main(["goldens", "regenerate", "--dir", str(store.root)]) == 0
    assert "within rounding: kept as stored" in capsys.readouterr().out
    assert store.manifest_path.read_bytes() == before
    ok, message = verify_one(store, case)
    assert ok and "within platform rounding" in message, message
    assert cli.main(["goldens", "regenerate", "--dir", str(store.root), "--force"]) == 0
    assert "changed: layer0.reference.output" in capsys.readouterr().out


def _case_file(tmp_path, *cases):
    path = tmp_path / "cases.json"
    path.write_text(json.dumps([c.to_dict() for c in cases]))
    return path


def test_manifest_records_the_platform_and_list_shows_it(capsys):
    entry = next(iter(GoldenStore.committed().entries().values()))
    p = entry["platform"]
    assert {"machine", "aten_capability", "onednn_isa", "onednn_bf16_matmul", "threads", "torch"} <= set(p)
    assert cli.main(["goldens", "list"]) == 0
    out = capsys.readouterr().out
    assert f"{p['aten_capability']}/{p['onednn_isa']}" in out and "here: " in out


def test_a_verification_on_other_kernels_says_so(monkeypatch):
    case = _committed(SENSITIVE[0])
    monkeypatch.setattr(cpu, "describe", lambda: {**GoldenStore.committed().entries()[case.id]["platform"],
                                                  "aten_capability": "OTHER"})
    ok, message = verify_one(GoldenStore.committed(), case)
    assert ok and "written on" in message and "verified on" in message and "ATen OTHER" in message, message


def test_seeded_tensors_do_not_depend_on_the_cpu():
    """Weights and inputs come from integer draws and float64 maths (harness/seeds.py), so ATen's
    scalar kernels give the same bytes as this process's vectorised ones."""
    code = ("from harness.batch import layer_specs, make_batch; from harness.case import Case; "
            "from harness.golden_format import weights_sha256, tensor_sha256; "
            "c = Case(preset='full', lengths=(300,), inputs='large'); s = layer_specs(c); "
            "print(weights_sha256(s[0].weights), tensor_sha256(make_batch(c, s[0]).hidden))")
    here = _python(code, "", "")
    scalar = _python(code, "ATEN_CPU_CAPABILITY", "default")
    assert here.returncode == 0 and scalar.returncode == 0, here.stderr + scalar.stderr
    assert here.stdout == scalar.stdout
