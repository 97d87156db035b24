"""The golden-tensor store: round trips, every kind of damage detected with a message naming the file
and the fix, stale goldens never used, crash- and concurrency-safe writes, and runs from goldens alone."""

import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import harness.cli_goldens
import harness.expected
import harness.goldens
import harness.sweep
from harness import cli
from harness.candidates import load_candidate
from harness.case import Case, curated_cases
from harness.cli_goldens import verify_one
from harness.expected import compute_expected
from harness.golden_format import diff_tensors, reference_fingerprint
from harness.goldens import (COMMITTED_BUDGET, GoldenCorrupt, GoldenError, GoldenMissing, GoldenSource,
                             GoldenStale, GoldenStore)
from harness.jsonfile import write_json
from harness.runner import run_case

ROOT = Path(__file__).resolve().parent.parent
CASES = [
    Case(layer=0, lengths=(9,), input_seed=1),
    Case(layer=1, lengths=(12, 5), padding="left", plan="decode", decode_steps=2, input_seed=2),
    Case(layer=0, lengths=(20,), plan="chunked", chunk_offset=8, sinks="dominant", input_seed=3),
    Case(layer=0, lengths=(6, 4), depth=2, stack_mode="teacher", input_seed=4),
    # a sliding and a full layer from a cache each: two caches of the same inputs
    Case(layer=0, lengths=(300,), plan="from_cache", decode_steps=2, depth=2, stack_mode="same_input", input_seed=5),
]


@pytest.fixture
def case_file(tmp_path):
    return str(write_json(tmp_path / "cases.json", [c.to_dict() for c in CASES]))


@pytest.fixture
def store(tmp_path, case_file):
    """A store holding the goldens of CASES, written through the command line."""
    assert cli.main(["goldens", "regenerate", "--dir", str(tmp_path / "store"), "--case-file", case_file]) == 0
    return GoldenStore(tmp_path / "store")


def _file_of(store: GoldenStore, case: Case) -> Path:
    return store.root / store.entries()[case.id]["file"]


def test_regenerate_then_verify_round_trips(store, case_file, capsys):
    assert cli.main(["goldens", "verify", "--dir", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert out.count(": ok: bit-identical to the stored tensors") == len(CASES), out
    # loading gives back what was computed, at every judged position
    for case in CASES:
        loaded, fresh = store.load(case), compute_expected(case)
        assert len(loaded) == len(fresh) == case.depth
        for a, b in zip(loaded, fresh):
            rows = b.batch.compare
            assert torch.equal(a.batch.hidden, b.batch.hidden)
            if b.batch.cache is not None:  # each layer's own
                assert torch.equal(a.batch.cache.k_rope, b.batch.cache.k_rope)
            for stage, t in b.reference.items():
                sel = rows if stage not in ("scores", "probs") else rows[:, None, :].expand(t.shape[:3])
                assert torch.equal(a.reference[stage][sel], t[sel]), stage
                assert torch.allclose(a.oracle[stage][sel], b.oracle[stage][sel], rtol=2**-23, atol=0, equal_nan=True)
    # regenerating identical goldens rewrites nothing
    before = store.manifest_path.read_bytes()
    assert cli.main(["goldens", "regenerate", "--dir", str(store.root)]) == 0
    assert f"{len(CASES)} unchanged" in capsys.readouterr().out
    assert store.manifest_path.read_bytes() == before
    assert cli.main(["goldens", "list", "--dir", str(store.root)]) == 0
    listed = capsys.readouterr().out
    assert all(c.id in listed for c in CASES) and "stale" not in listed and "corrupt" not in listed


def test_manifest_describes_each_golden(store):
    entry = store.entries()[CASES[0].id]
    assert Case.from_dict(entry["case"]) == CASES[0]
    assert entry["fingerprint"] == reference_fingerprint()
    assert entry["versions"]["torch"] == torch.__version__ and entry["oracle_dtype"] == "float32"
    out = entry["tensors"]["layer0.reference.output"]
    assert out["dtype"] == "bfloat16" and out["shape"] == [9, 96] and len(out["sha256"]) == 64
    assert out["stats"]["finite"] == 9 * 96 and out["stats"]["rms"] > 0
    assert entry["tensors"]["layer0.oracle.output"]["dtype"] == "float32"
    assert entry["omitted"] == [] and "layer0.oracle.scores" in entry["tensors"]


def test_flipped_byte_is_detected(store, capsys):
    path = _file_of(store, CASES[1])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(GoldenCorrupt, match="does not match its sha256") as err:
        store.load(CASES[1])
    assert str(path) in str(err.value) and f"parity goldens regenerate --case {CASES[1].id} --dir" in str(err.value)
    assert cli.main(["goldens", "verify", "--dir", str(store.root)]) == 1
    out = capsys.readouterr().out
    assert "does not match its sha256" in out and f"{len(CASES) - 1} of {len(CASES)} golden(s) verified, 1 problem(s)" in out
    store.load(CASES[0])  # the others are untouched


def test_truncated_file_is_detected(store):
    path = _file_of(store, CASES[2])
    full = path.read_bytes()
    path.write_bytes(full[: len(full) - 100])
    with pytest.raises(GoldenCorrupt, match=rf"has {len(full) - 100} bytes, the manifest says {len(full)} \(truncated"):
        store.load(CASES[2])
    path.unlink()
    with pytest.raises(GoldenCorrupt, match="is missing"):
        store.load(CASES[2])


@pytest.mark.parametrize("edit", ["stats", "case", "sha256", "shape"])
def test_hand_edited_manifest_is_detected(store, edit):
    manifest = json.loads(store.manifest_path.read_text())
    entry = manifest["goldens"][CASES[0].id]
    if edit == "stats":
        entry["tensors"]["layer0.oracle.output"]["stats"]["max"] = 1.0
    elif edit == "case":
        entry["case"]["input_seed"] = 99
    elif edit == "sha256":
        entry["sha256"] = "0" * 64
    else:
        entry["tensors"]["layer0.oracle.output"]["shape"] = [9, 95]
    store.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(GoldenCorrupt, match="was edited") as err:
        store.load(CASES[0])
    assert str(store.manifest_path) in str(err.value) and "regenerate" in str(err.value)


def test_a_consistently_forged_entry_still_fails_on_the_file(store):
    """Someone who also fixes the entry's checksum is caught by the tensor file's own header."""
    manifest = json.loads(store.manifest_path.read_text())
    entry = manifest["goldens"][CASES[0].id]
    entry["tensors"]["layer0.oracle.output"]["shape"] = [9, 95]
    entry["checksum"] = harness.goldens._checksum(entry)
    store.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(GoldenCorrupt, match=r"tensor layer0.oracle.output is \(9, 96\) float32, the manifest says"):
        store.load(CASES[0])


def test_unreadable_manifest_is_reported_and_never_overwritten(store, capsys):
    store.manifest_path.write_text('{"format": "gpt-oss-parity golden", "goldens": {')
    with pytest.raises(GoldenCorrupt, match="is not valid JSON") as err:
        store.load(CASES[0])
    assert str(store.manifest_path) in str(err.value) and "restore it" in str(err.value)
    damaged = store.manifest_path.read_bytes()
    assert cli.main(["goldens", "regenerate", "--dir", str(store.root)]) == 2
    assert "is not valid JSON" in capsys.readouterr().err
    assert store.manifest_path.read_bytes() == damaged  # nothing was written over it


def test_missing_golden_names_the_exact_command(tmp_path, store, case_file, monkeypatch):
    empty = tmp_path / "empty"
    with pytest.raises(GoldenMissing) as err:
        GoldenStore(empty).load(CASES[0])
    command = f"parity goldens regenerate --case {CASES[0].id} --dir {empty}"
    assert f"`{command}`" in str(err.value)
    with pytest.raises(GoldenMissing) as err:
        GoldenSource([GoldenStore(empty)], compute=False, case_files={CASES[0].id: case_file})(CASES[0])
    assert f"`parity goldens regenerate --case-file {case_file} --dir {empty}`" in str(err.value)
    with pytest.raises(GoldenMissing, match=rf"create it with `parity goldens regenerate --case {curated_cases()[0].id}`"):
        monkeypatch.setenv("PARITY_GOLDEN_DIR", str(tmp_path / "no-goldens"))
        GoldenSource([GoldenStore.committed()], compute=False)(curated_cases()[0])
    # and the command it names creates exactly that golden
    assert cli.main(command.split()[1:] + ["--case-file", case_file]) == 0
    GoldenStore(empty).load(CASES[0])


def test_stale_goldens_are_reported_not_used(store, monkeypatch):
    monkeypatch.setattr(harness.goldens, "reference_fingerprint", lambda: "0123456789abcdef")
    with pytest.raises(GoldenStale, match="is stale: written by reference fingerprint") as err:
        store.load(CASES[0])
    assert "regenerate" in str(err.value)
    with pytest.raises(GoldenStale):
        GoldenSource([store], compute=False)(CASES[0])
    logged = []
    source = GoldenSource([store], compute=True, log=logged.append)
    layers = source(CASES[0])
    assert source.computed == 1 and source.loaded == 0 and "stale" in logged[0]
    assert torch.equal(layers[0].reference["output"], compute_expected(CASES[0])[0].reference["output"])


def test_generator_drift_makes_a_golden_stale(store, monkeypatch):
    real = harness.goldens.make_batch

    def drifted(case, spec):
        batch = real(case, spec)
        return batch.with_hidden(batch.hidden * 2)

    monkeypatch.setattr(harness.goldens, "make_batch", drifted)
    with pytest.raises(GoldenStale, match="inputs the case's seeds generate today differ"):
        store.load(CASES[0])


def test_dtype_and_shape_changes_fail_verify(store, monkeypatch):
    real = harness.cli_goldens.compute_expected

    def changed(case, checkpoint=None):
        layers = real(case, checkpoint)
        layers[0].reference["output"] = layers[0].reference["output"].float()
        return layers

    monkeypatch.setattr(harness.cli_goldens, "compute_expected", changed)
    ok, message = verify_one(store, CASES[0])
    assert not ok and "layer0.reference.output: dtype: dtype bfloat16 -> float32" in message
    old = {"t": torch.zeros(3, 4)}
    (d,) = diff_tensors(old, {"t": torch.zeros(4, 3)})
    assert d.change == "shape" and d.detail == "shape (3, 4) -> (4, 3)"


def test_value_drift_is_reported_in_units_of_the_reference_error(store, monkeypatch):
    real = harness.cli_goldens.compute_expected

    def drifted(case, checkpoint=None):
        layers = real(case, checkpoint)
        out = layers[0].reference["output"]
        out[0, 0, :3] = (out[0, 0, :3].float() + 0.5).to(out.dtype)
        return layers

    monkeypatch.setattr(harness.cli_goldens, "compute_expected", drifted)
    ok, message = verify_one(store, CASES[0])
    assert not ok and "DRIFT in 1 tensor(s)" in message
    assert "layer0.reference.output: values: 3 of 864 elements differ, max |diff| 0.5" in message
    assert "x the reference's own max error there" in message


def test_regenerate_reports_what_changed(store, monkeypatch, capsys):
    real = harness.cli_goldens.compute_expected

    def drifted(case, checkpoint=None):
        layers = real(case, checkpoint)
        layers[0].oracle["attn"] = layers[0].oracle["attn"] * 1.01
        return layers

    monkeypatch.setattr(harness.cli_goldens, "compute_expected", drifted)
    assert cli.main(["goldens", "regenerate", "--dir", str(store.root), "--case", CASES[0].id]) == 0
    out = capsys.readouterr().out
    assert f"{CASES[0].id}: changed: layer0.oracle.attn" in out and "elements differ" in out
    assert "1 changed" in out


def test_over_budget_goldens_are_refused_and_nothing_is_written(tmp_path):
    small = GoldenStore(tmp_path / "s", budget=100_000)
    small.write(CASES[0], compute_expected(CASES[0]))
    before = small.manifest_path.read_bytes()
    with pytest.raises(GoldenError, match="over its budget of 0 MiB") as err:
        small.write(CASES[1], compute_expected(CASES[1]))
    assert "Nothing was written" in str(err.value)
    assert small.manifest_path.read_bytes() == before and len(list(small.root.glob("*.safetensors"))) == 1


def test_committed_store_holds_every_curated_case_within_budget(capsys):
    store = GoldenStore.committed()
    entries = store.entries()
    assert {c.id for c in curated_cases()} <= set(entries), "run `parity goldens regenerate` and commit cases/goldens"
    assert store.size() <= COMMITTED_BUDGET
    assert sum(1 for c in curated_cases() if c.preset == "full") >= 3
    assert not store.stray_files()


def test_no_pickle_anywhere(store):
    """Goldens are safetensors (no code to run) and nothing in the harness unpickles."""
    data = _file_of(store, CASES[0]).read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    meta = json.loads(data[8 : 8 + n])["__metadata__"]
    assert set(meta) == {"golden"} and json.loads(meta["golden"])["format"] == "gpt-oss-parity golden"
    for path in [*(ROOT / "harness").rglob("*.py"), *(ROOT / "reference").rglob("*.py")]:
        text = path.read_text()
        assert "import pickle" not in text and "torch.load(" not in text and "weights_only=False" not in text, path


CANDIDATES = ["emulation", "flash", "mutant:window_w_plus_1", "mutant:sinks_dropped", "mutant:gqa_tile_not_interleave"]


def test_verdicts_from_goldens_match_computed_ones(store):
    for case in CASES:
        candidates = [load_candidate(c) for c in CANDIDATES]
        computed = run_case(case, candidates)
        golden = run_case(case, candidates, expected=GoldenSource([store], compute=False))
        for a, b in zip(computed, golden):
            assert a.verdict == b.verdict, (case.id, a.candidate, a.message, b.message)
            ratios = {(s.layer, s.stage): s for s in a.stages}
            assert {(s.layer, s.stage) for s in b.stages} == set(ratios)
            for s in b.stages:
                assert s.max_ratio == pytest.approx(ratios[s.layer, s.stage].max_ratio, rel=1e-3, abs=1e-6)


def test_run_with_the_reference_disabled_checks_curated_cases_from_goldens(monkeypatch, capsys, tmp_path):
    monkeypatch.setenv("PARITY_FAILURES_DIR", str(tmp_path / "failures"))

    def refuse(*args, **kwargs):
        raise AssertionError("the reference or oracle ran although --no-reference was given")

    for module, name in ((harness.expected, "run_reference"), (harness.expected, "run_oracle"),
                         (harness.goldens, "compute_expected")):
        monkeypatch.setattr(module, name, refuse)
    files = [str(p) for p in sorted((ROOT / "cases").glob("*.json"))]
    args = ["run", "--no-reference", "--candidate", "emulation", "--candidate", "mutant:no_window", "--no-probes"]
    rc = cli.main(args + [a for f in files for a in ("--case-file", f)])
    out = capsys.readouterr().out
    n = len(curated_cases())
    assert rc == 1 and f"expected tensors: {n} case(s) from goldens, 0 computed" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("small-", "full-"))]
    assert len(rows) == 2 * n
    assert all(r[2] == "PASS" for r in rows if r[1] == "emulation")
    assert any(r[2] == "FAIL" for r in rows if r[1] == "mutant:no_window")
    # and a failure replays from the goldens too
    repro = sorted((tmp_path / "failures").glob("*no_window*.json"))[0]
    assert cli.main(["replay", str(repro), "--no-reference"]) == 1
    assert "first divergent stage" in capsys.readouterr().out


def test_run_caches_goldens_for_cases_without_one(tmp_path, monkeypatch, case_file, capsys):
    monkeypatch.setenv("PARITY_GOLDEN_CACHE", str(tmp_path / "cache"))
    args = ["run", "--goldens", "--candidate", "emulation", "--no-probes", "--case-file", case_file]
    assert cli.main(args) == 0
    assert f"0 case(s) from goldens, {len(CASES)} computed and cached" in capsys.readouterr().out
    assert cli.main(args) == 0
    assert f"{len(CASES)} case(s) from goldens, 0 computed" in capsys.readouterr().out
    assert cli.main(["run", "--no-reference", "--checkpoint", str(tmp_path), "--case-file", case_file]) == 2


# -- crashes and concurrent writers (subprocesses) ---------------------------------------------------

def _regenerate(store_dir, case_file, pause="0"):
    env = {**os.environ, "PARITY_GOLDENS_PAUSE": pause, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "harness.cli", "goldens", "regenerate", "--dir", str(store_dir),
                             "--case-file", case_file], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _versions(store: GoldenStore) -> dict[str, str]:
    """Each golden's content: its tensors' hashes (file bytes also hold a header in no fixed order)."""
    return {cid: json.dumps({n: t["sha256"] for n, t in e["tensors"].items()}, sort_keys=True)
            for cid, e in store.entries().items()}


def _assert_valid(store: GoldenStore, allowed: dict[str, set[str]]) -> None:
    """Every golden loads cleanly and is one of the allowed versions (old or new)."""
    versions = _versions(store)
    assert set(versions) == set(allowed)
    for case in CASES[:3]:
        store.load(case)
        assert versions[case.id] in allowed[case.id]


@pytest.mark.slow
def test_killing_a_regenerate_never_leaves_a_half_written_golden(tmp_path, case_file):
    cases = CASES[:3]
    write_json(case_file, [c.to_dict() for c in cases])
    old = GoldenStore(tmp_path / "old")
    for case in cases:  # an older, different version of every golden
        layers = compute_expected(case)
        layers[0].reference["output"] = layers[0].reference["output"] * 2
        old.write(case, layers)
    old_sha = _versions(old)
    store = GoldenStore(tmp_path / "store")
    shutil.copytree(old.root, store.root)
    started = time.monotonic()
    proc = _regenerate(store.root, case_file, pause="0.05")
    assert proc.wait() == 0, proc.stderr.read()
    duration = time.monotonic() - started
    new_sha = _versions(store)
    assert all(new_sha[c] != old_sha[c] for c in new_sha)
    allowed = {cid: {old_sha[cid], new_sha[cid]} for cid in old_sha}
    rng = random.Random(5)
    outcomes = []
    for _ in range(20):
        shutil.rmtree(store.root)
        shutil.copytree(old.root, store.root)
        proc = _regenerate(store.root, case_file, pause="0.05")
        time.sleep(rng.uniform(0.3, duration))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _assert_valid(store, allowed)
        outcomes.append(sum(_versions(store)[c] == new_sha[c] for c in new_sha))
    assert len(set(outcomes)) > 1, f"every kill landed at the same point: {outcomes}"
    # the next regenerate finishes the job and removes what the killed writers left behind
    assert _regenerate(store.root, case_file).wait() == 0
    _assert_valid(store, {cid: {new_sha[cid]} for cid in new_sha})
    assert not store.stray_files()


@pytest.mark.slow
def test_concurrent_regenerates_leave_a_valid_store(tmp_path, case_file):
    a_file = str(write_json(tmp_path / "a.json", [c.to_dict() for c in CASES[:3]]))
    # the other order, so that different goldens are written at the same time; long pauses make the
    # writes overlap (without the lock, entries are lost and files collected under other writers)
    b_file = str(write_json(tmp_path / "b.json", [c.to_dict() for c in reversed(CASES[1:])]))
    store = GoldenStore(tmp_path / "store")
    procs = [_regenerate(store.root, f, pause="0.2") for f in (a_file, b_file, a_file)]
    for p in procs:
        assert p.wait() == 0, p.stderr.read()
    assert set(store.entries()) == {c.id for c in CASES}
    for case in CASES:
        store.load(case)
    assert not store.stray_files()
    assert cli.main(["goldens", "verify", "--dir", str(store.root)]) == 0


def test_ci_never_writes_goldens():
    env = {**os.environ, "CI": "1"}
    # collect only, and a test that writes nothing: were the option accepted, this would exit 0
    out = subprocess.run([sys.executable, "-m", "pytest", "--regen-goldens", "--collect-only", "-q", "-p",
                          "no:cacheprovider", "tests/test_goldens.py::test_fingerprint_ignores_comments_and_blank_lines_only"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 4 and "CI never writes" in out.stderr + out.stdout


def test_pytest_regen_goldens_rewrites_and_reports(tmp_path):
    shutil.copytree(ROOT / "cases" / "goldens", tmp_path / "goldens", ignore=shutil.ignore_patterns(".lock"))
    target = curated_cases()[1]
    GoldenStore(tmp_path / "goldens").remove([target.id])
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PARITY_GOLDEN_DIR"] = str(tmp_path / "goldens")
    run = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--candidate", "reference",
           f"harness/pytest_plugin/suite.py::test_curated_case_files[reference-{target.id}]"]
    missing = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True)
    assert missing.returncode == 1 and missing.stdout.count(f"parity goldens regenerate --case {target.id}") == 1, missing.stdout
    regen = subprocess.run(run + ["--regen-goldens"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert regen.returncode == 0, regen.stdout
    assert "goldens regenerated" in regen.stdout and f"{target.id}: new" in regen.stdout
    GoldenStore(tmp_path / "goldens").load(target)


def test_fingerprint_ignores_comments_and_blank_lines_only():
    from harness.golden_format import code_text

    source = "x = 1  # why\n\n# a note\ny = '# not a comment'\n"
    assert code_text(source) == "x = 1\ny = '# not a comment'"
    assert code_text(source.replace("# why", "# because")) == code_text(source)
    assert code_text(source.replace("x = 1", "x = 2")) != code_text(source)


def test_new_reference_code_with_the_same_tensors_only_restamps(store, monkeypatch, capsys):
    files = sorted(p.name for p in store.root.glob("*.safetensors"))
    monkeypatch.setattr(harness.goldens, "reference_fingerprint", lambda: "0123456789abcdef")
    assert cli.main(["goldens", "regenerate", "--dir", str(store.root)]) == 0
    out = capsys.readouterr().out
    assert f"{len(CASES)} re-stamped" in out and "now from reference fingerprint 0123456789abcdef" in out
    assert sorted(p.name for p in store.root.glob("*.safetensors")) == files  # the same bytes, nothing new for git
    store.load(CASES[0])


def test_bad_store_arguments_are_usage_errors(tmp_path, case_file, capsys):
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("keep me")
    assert cli.main(["goldens", "regenerate", "--dir", str(not_a_folder), "--case-file", case_file]) == 2
    assert "is a file, expected a folder" in capsys.readouterr().err and not_a_folder.read_text() == "keep me"
    assert cli.main(["goldens", "verify", "--dir", str(tmp_path / "none")]) == 2
    assert "nothing to verify" in capsys.readouterr().err
    assert cli.main(["goldens", "list", "--dir", "a", "--cache"]) == 2
    assert cli.main(["goldens", "verify", "--case", "no-such-case"]) == 2
    assert "no known case has that id" in capsys.readouterr().err


# -- a store that was tampered with or damaged: never fooled, never a traceback ----------------------

def _edit_entry(store: GoldenStore, case_id: str, edit) -> None:
    """Edit one manifest entry and recompute its checksum, as a careful hand edit would."""
    manifest = json.loads(store.manifest_path.read_text())
    entry = manifest["goldens"][case_id]
    edit(entry)
    entry["checksum"] = harness.goldens._checksum(entry)
    store.manifest_path.write_text(json.dumps(manifest))


@pytest.mark.parametrize("edit", ["alias", "seed"])
def test_an_entry_describing_another_case_is_corrupt_not_verified(store, edit, capsys):
    if edit == "alias":  # the entry of CASES[0] now describes CASES[2], which has a golden of its own
        _edit_entry(store, CASES[0].id, lambda e: e.__setitem__("case", CASES[2].to_dict()))
    else:  # another input seed: a case that has no golden at all
        _edit_entry(store, CASES[0].id, lambda e: e["case"].__setitem__("input_seed", 77))
    assert cli.main(["goldens", "verify", "--dir", str(store.root)]) == 1
    out = capsys.readouterr().out
    assert f"{CASES[0].id}: CORRUPT: its manifest entry describes case" in out and "not the case it is filed under" in out
    assert f"{len(CASES) - 1} of {len(CASES)} golden(s) verified, 1 problem(s)" in out
    assert "missing" not in out
    with pytest.raises(GoldenCorrupt, match="filed under another id"):
        store.load(CASES[0])
    assert cli.main(["goldens", "list", "--dir", str(store.root)]) == 0
    listed = [line for line in capsys.readouterr().out.splitlines() if line.startswith(CASES[0].id)]
    assert listed and "corrupt" in listed[0]


def _follow_the_advice(line: str) -> int:
    """Run the one command a CORRUPT line of `goldens verify` names, exactly as printed."""
    import shlex

    commands = re.findall(r"`(parity goldens [^`]*)`", line)
    assert len(commands) == 1, line
    return cli.main(shlex.split(commands[0])[1:])


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _alias_with_its_file_gone(store: GoldenStore) -> None:
    _file_of(store, CASES[0]).unlink()
    DAMAGES["alias and file"](store)


DAMAGES = {
    # the entry of CASES[0] made to describe CASES[2], checksum recomputed: only the alias is wrong
    "alias": lambda store: _edit_entry(store, CASES[0].id, lambda e: e.update(case=CASES[2].to_dict())),
    # its file pointed at CASES[2]'s too: only the tensor file no entry names says what CASES[0] was
    "alias and file": lambda store: _edit_entry(store, CASES[0].id, lambda e: e.update(
        case=CASES[2].to_dict(), file=store.entries()[CASES[2].id]["file"])),
    # and that file gone: nothing in the store says what CASES[0] was, and it cannot come back
    "alias, file gone": _alias_with_its_file_gone,
    # the file damaged under its own name: regenerate said "replaced" and kept the damaged file
    "flipped byte": lambda store: _flip_a_byte(_file_of(store, CASES[0])),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_the_advice_for_a_damaged_golden_repairs_the_store(store, damage, capsys):
    """verify's advice for a damaged golden, followed exactly as printed, leaves a store that verifies,
    with every case's golden in it that the store still knows (advice that exits 0 and leaves the store
    corrupt does not count), and nothing deleted."""
    DAMAGES[damage](store)
    files = {p.name: p.read_bytes() for p in store.root.glob("*.safetensors")}
    assert cli.main(["goldens", "verify", "--dir", str(store.root)]) == 1
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if x.startswith(f"{CASES[0].id}: ")]
    if damage.startswith("alias"):
        assert f"describes case {CASES[2].id}, not the case it is filed under" in line
        assert ("--rebuild" in line) == (damage == "alias, file gone"), line  # else regenerate --case CASES[0]
    assert _follow_the_advice(line) == 0, capsys.readouterr()
    capsys.readouterr()
    assert cli.main(["goldens", "verify", "--dir", str(store.root)]) == 0, capsys.readouterr().out
    known = CASES[1:] if damage == "alias, file gone" else CASES
    assert f"{len(known)} of {len(known)} golden(s) verified, 0 problem(s)" in capsys.readouterr().out
    assert sorted(store.entries()) == sorted(c.id for c in known)
    kept = {p.name: p.read_bytes() for p in store.root.rglob("*.safetensors")}  # moved aside by --rebuild, if so
    assert all(kept.get(name) == data for name, data in files.items() if damage != "flipped byte")


def test_the_fix_named_for_a_tampered_committed_golden_works(tmp_path, monkeypatch, capsys):
    shutil.copytree(ROOT / "cases" / "goldens", tmp_path / "goldens", ignore=shutil.ignore_patterns(".lock"))
    monkeypatch.setenv("PARITY_GOLDEN_DIR", str(tmp_path / "goldens"))
    store = GoldenStore.committed()
    target = curated_cases()[0]
    _edit_entry(store, target.id, lambda e: e["case"].__setitem__("input_seed", 77))
    assert cli.main(["goldens", "verify", "--case", target.id]) == 1
    assert cli.main(["goldens", "verify"]) == 1
    out = capsys.readouterr().out
    assert f"run `parity goldens regenerate --case {target.id}`" in out
    assert cli.main(["goldens", "regenerate", "--case", target.id]) == 0  # the advice, followed
    assert f"{target.id}: replaced" in capsys.readouterr().out
    assert cli.main(["goldens", "verify"]) == 0


def test_altered_tensor_values_are_caught_on_every_load(store, tmp_path, monkeypatch, capsys):
    """Someone who alters a tensor and recomputes the file's hash, its size and the entry checksum
    is caught by the per-tensor sha256, in runs as well as in verify."""
    from safetensors.torch import save

    path = _file_of(store, CASES[0])
    data = path.read_bytes()
    tensors = harness.golden_format.deserialise(data)
    tensors["layer0.oracle.output"] = tensors["layer0.oracle.output"] * 1.5
    forged = save(tensors, metadata=harness.golden_format.header_metadata(data))
    path.write_bytes(forged)
    import hashlib

    _edit_entry(store, CASES[0].id, lambda e: e.update(bytes=len(forged), sha256=hashlib.sha256(forged).hexdigest()))
    with pytest.raises(GoldenCorrupt, match="tensor layer0.oracle.output .* does not match its sha256"):
        store.load(CASES[0])
    with pytest.raises(GoldenCorrupt):
        GoldenSource([store], compute=False)(CASES[0])
    monkeypatch.setenv("PARITY_FAILURES_DIR", str(tmp_path / "f"))
    case_file = write_json(tmp_path / "one.json", CASES[0].to_dict())
    monkeypatch.setenv("PARITY_GOLDEN_DIR", str(store.root))
    assert cli.main(["run", "--no-reference", "--candidate", "emulation", "--case-file", str(case_file)]) == 2
    assert "does not match its sha256" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["version", "json"])
def test_an_unreadable_manifest_gets_a_working_fix(store, damage, capsys):
    files = sorted(p.name for p in store.root.glob("*.safetensors"))
    if damage == "version":
        manifest = json.loads(store.manifest_path.read_text())
        manifest["version"] = 1
        store.manifest_path.write_text(json.dumps(manifest))
    else:
        store.manifest_path.write_text('{"format": "gpt-oss-parity golden", "goldens": {')
    damaged = store.manifest_path.read_bytes()
    for command in (["regenerate"], ["verify"], ["list"]):
        assert cli.main(["goldens", *command, "--dir", str(store.root)]) == 2  # one message, no traceback
        err = capsys.readouterr().err
        assert err.count("parity goldens regenerate --rebuild --dir") == 1, err
    assert store.manifest_path.read_bytes() == damaged
    assert cli.main(["goldens", "regenerate", "--rebuild", "--dir", str(store.root)]) == 0  # the fix, followed
    out = capsys.readouterr().out
    (aside,) = store.root.glob("replaced-*")
    assert f"to {aside} (nothing deleted)" in out and f"{len(CASES)} new" in out
    assert (aside / "manifest.json").read_bytes() == damaged
    assert sorted(p.name for p in aside.glob("*.safetensors")) == files  # nothing lost
    assert cli.main(["goldens", "verify", "--dir", str(store.root)]) == 0


def test_leftovers_go_even_when_nothing_changes(store, capsys):
    (store.root / ".tmp-abc.safetensors").write_bytes(b"half a golden")
    (store.root / "orphan.0123456789ab.safetensors").write_bytes(b"an old golden")
    assert cli.main(["goldens", "list", "--dir", str(store.root)]) == 0
    assert "2 stray file(s)" in capsys.readouterr().out
    assert cli.main(["goldens", "regenerate", "--dir", str(store.root)]) == 0
    assert f"{len(CASES)} unchanged" in capsys.readouterr().out
    assert not store.stray_files()


def test_the_missing_golden_advice_of_an_installed_store_works_when_pasted(tmp_path, monkeypatch, capsys):
    """In a user's repository the committed store is the read-only installed copy: the advice for a
    missing golden named a command that was refused (the store is never written). It now names the
    golden cache, where --no-reference looks next: pasted as printed, the rerun passes."""
    import shlex

    monkeypatch.setattr(harness.goldens, "running_from_checkout", lambda: False)
    monkeypatch.delenv("PARITY_GOLDEN_DIR", raising=False)
    monkeypatch.setenv("PARITY_GOLDEN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PARITY_FAILURES_DIR", str(tmp_path / "failures"))
    assert GoldenStore.committed().read_only
    case_file = write_json(tmp_path / "mine.json", {"layer": 1, "lengths": [9]})
    run = ["run", "--no-reference", "--candidate", "emulation", "--case-file", str(case_file)]
    assert cli.main(run) == 2
    err = capsys.readouterr().err
    advice = err.split("create it with `")[1].split("`")[0]
    assert advice.endswith("--cache"), err
    assert cli.main(shlex.split(advice)[1:]) == 0, capsys.readouterr().err
    assert cli.main(run) == 0, capsys.readouterr()
    # a sweep case is named by id alone, and regenerate knows it
    sweep_case = harness.sweep.default_cases(quick=True)[0]
    with pytest.raises(GoldenMissing) as missing:
        GoldenSource.stores(compute=False)(sweep_case)
    advice = str(missing.value).split("create it with `")[1].split("`")[0]
    assert advice == f"parity goldens regenerate --case {sweep_case.id} --cache"
    assert cli.main(shlex.split(advice)[1:]) == 0
    assert GoldenSource.stores(compute=False)(sweep_case)
