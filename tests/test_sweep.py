"""The built-in sweep reaches every regime (issue 24): token generation with dominant and zero sinks on
both layer kinds, decode across the tile boundaries 512, 2048 and 4096, keys past 65,536 on a full
layer; and the self-test's mutant for each regime fails it, named at one stage."""

import pytest

from harness.candidates import load_candidate
from harness.expected import compute_expected
from harness.runner import run_case
from harness.sweep import default_cases

REGIME_MUTANTS = ("sinks_ignored_in_decode", "window_one_short_in_decode", "rope_table_wraps_at_8192",
                  "full_layers_keep_last_65536", "decode_rope_off_from_512")


def _generated_positions(case):
    """The positions the case's token-generation steps reach, per row."""
    if case.plan == "from_cache":
        return [range(n - case.decode_steps, n) for n in case.lengths]
    if case.plan == "decode":
        return [range(n - case.decode_steps, n) for n in case.lengths]
    return [range(0)]


def test_the_default_sweep_reaches_every_regime():
    cases = default_cases()
    generating = [c for c in cases if c.plan in ("decode", "from_cache") and c.preset == "small"]
    for layer in (0, 1):
        for sinks in ("dominant", "zero"):
            for plan in ("decode", "from_cache"):
                assert any(c.layer % 2 == layer and c.sinks == sinks and c.plan == plan for c in generating), \
                    (layer, sinks, plan)
        for boundary in (512, 2048, 4096):  # a step at boundary - 1 and one at the boundary
            assert any(c.layer % 2 == layer and any(boundary - 1 in r and boundary in r for r in _generated_positions(c))
                       for c in generating), (layer, boundary)
    assert any(c.layer % 2 == 1 and c.plan == "from_cache" and max(c.lengths) > 65536 for c in generating)


class _Expected(dict):
    """Each small-dims sweep case's oracle and reference, computed when first asked for."""

    def __missing__(self, case):
        self[case] = compute_expected(case)
        return self[case]


@pytest.fixture(scope="module")
def sweep_expected():
    return _Expected()


SMALL = [case for case in default_cases() if case.preset == "small"]


@pytest.mark.parametrize("name", REGIME_MUTANTS)
def test_each_regime_mutant_fails_the_default_sweep_named_at_one_stage(name, sweep_expected):
    """The sweep in its order, up to the first case the mutant fails (as `parity run` would show it)."""
    mutant = load_candidate(f"mutant:{name}")
    for case in SMALL:
        (v,) = run_case(case, [mutant], expected=lambda c, checkpoint=None: sweep_expected[c])
        if v.verdict != "pass":
            assert v.verdict == "fail" and len(v.divergent_stages) == 1, (v.case_id, v.verdict, v.divergent_stages)
            return
    pytest.fail(f"{name} passed the whole default sweep")


def test_the_correct_emulation_passes_every_small_case_of_the_sweep(sweep_expected):
    emulation = load_candidate("emulation")
    for case in SMALL:
        (v,) = run_case(case, [emulation], expected=lambda c, checkpoint=None: sweep_expected[c])
        assert v.verdict == "pass", v.message


def test_the_selftest_requires_each_regime_mutant_to_fail_the_sweep(monkeypatch, capsys):
    """The self-test runs the default sweep against each regime mutant: where it fails is reported, and
    a sweep that misses the regime fails the self-test even when generated cases kill the mutant."""
    import harness.sweep
    from harness.cli import main
    from harness.selftest import run_selftest

    result = run_selftest(("window_one_short_in_decode", "sinks_dropped"), benign=(), max_examples=5)
    regime, other = result.mutants
    assert regime.sweep_checked and regime.sweep_case.startswith("small-L0-decode") and regime.sweep_stage == "scores"
    assert not other.sweep_checked and result.ok
    # a sweep without token generation: the mutant still dies in generated cases, the self-test fails
    prefill_only = [c for c in default_cases() if c.plan == "prefill"]
    monkeypatch.setattr(harness.sweep, "default_cases", lambda *a, **k: prefill_only)
    assert main(["selftest", "--mutant", "window_one_short_in_decode", "--benign", "softmax_float32",
                 "--benign-examples", "1", "--max-examples", "5"]) == 1
    out = capsys.readouterr().out
    assert "default sweep vs window_one_short_in_decode: PASSED every case" in out
    assert "1 of 1 mutants killed" in out
