"""Boundary probes (issue 24): a dominant key with a one-hot value at the window's edges and at
position 0, tolerance-free at the output, so that they bind output-only blocks whose numbers pass."""

from dataclasses import replace

import pytest
import torch

from harness.candidates import load_candidate
from harness.case import Case
from harness.expected import compute_expected
from harness.mutants import BENIGN, variant
from harness.produce import run_reference
from harness.runner import run_case
from harness.tolerances import Bounds

SLIDING = Case(layer=0, lengths=(300, 200), plan="from_cache", decode_steps=3, weight_seed=5, input_seed=5)
FULL = Case(layer=1, lengths=(65538,), plan="from_cache", decode_steps=2, weight_seed=6, input_seed=6)
# numbers never decide here: only the probes can fail a check
LOOSE = Bounds().overridden(max_ratio=1e9, rms_ratio=1e9)


class OutputOnly:
    """A block that shows nothing but its output (a real module without taps)."""

    accepts_cache = True
    plans = ("prefill", "decode", "chunked", "from_cache")

    def __init__(self, inner):
        self.inner, self.name = inner, f"output-only:{inner.name}"

    def run(self, spec, batch, *, taps=False):
        return self.inner.run(spec, batch, taps=False).output


@pytest.mark.parametrize("mutant, case, probe, rule", [
    ("window_one_short_in_decode", SLIDING, "window_oldest_key", "the key 127 positions back is not attended"),
    ("window_w_plus_1", SLIDING, "window_outside_key", "the key 128 positions back is attended"),
    ("full_layers_keep_last_65536", FULL, "first_key", "position 0 is not attended"),
])
def test_each_boundary_probe_fails_its_bug_naming_the_rule(mutant, case, probe, rule):
    (v,) = run_case(case, [OutputOnly(variant("mutant", mutant))], bounds=LOOSE)
    assert v.verdict == "fail" and v.first_divergent_stage == f"probe {probe}", (v.verdict, v.first_divergent_stage)
    assert rule in v.message and "row 0 at position" in v.message, v.message
    assert "ratio" not in v.message


@pytest.mark.parametrize("sinks", ("small", "dominant", "zero"))
@pytest.mark.parametrize("scale", ("normal", "sharp"))
def test_correct_blocks_pass_every_boundary_probe(sinks, scale):
    candidates = [load_candidate(n) for n in ("reference", "emulation", "flash", "nxdi-emulation")]
    candidates += [variant("benign", name) for name in BENIGN]
    for base in (SLIDING, Case(layer=1, lengths=(700, 300), plan="from_cache", decode_steps=2)):
        case = Case(**{**base.to_dict(), "sinks": sinks, "scale": scale})
        wanted = {"window_oldest_key", "window_outside_key"} if case.layer % 2 == 0 else {"first_key"}
        wanted.add("sink_over_masked_keys")
        for v in run_case(case, [OutputOnly(c) for c in candidates], bounds=LOOSE):
            ran = {p["name"]: p for p in v.probes}
            assert wanted <= set(ran), (v.candidate, sorted(ran))
            assert v.verdict == "pass", v.message


@pytest.mark.parametrize("case", (SLIDING, FULL), ids=("sliding", "full"))
def test_the_probe_key_takes_the_first_generated_token_whole(case):
    """For every kv group, one query head puts all but a rounding's worth of its probability on the key."""
    (e,) = compute_expected(case)
    for probe in (p for p in e.probes if p.must_change):
        probs = run_reference(e.spec, probe.batch, taps=True)["probs"].double()
        for row, cached in enumerate(probe.batch.cache.lengths):
            back = case.lengths[row] - case.decode_steps  # the first generated position
            key = 0 if probe.name == "first_key" else back - (e.spec.window - 1)
            slot = int(probe.batch.slots(row)[0])
            heads = probs[row, :, slot, key].view(e.spec.config.num_key_value_heads, -1)
            assert bool((heads.max(dim=1).values > 0.99).all()), (probe.name, row, heads)
            assert torch.isfinite(probs[row, :, slot]).all()


def test_a_cache_stack_judges_each_layer_with_its_probes():
    """A long draw (a sliding and a full layer, each from its own cache): the full layer's probe fails the
    stack, named with its layer; the sliding layer's probes ran and passed."""
    case = Case(layer=0, lengths=FULL.lengths, plan="from_cache", decode_steps=2, depth=2, stack_mode="same_input")
    (v,) = run_case(case, [OutputOnly(variant("mutant", "full_layers_keep_last_65536"))], bounds=LOOSE)
    assert v.verdict == "fail" and v.first_divergent_stage == "layer 1 / probe first_key", v.first_divergent_stage
    assert {(p["layer"], p["name"], p["passed"]) for p in v.probes} >= {
        (0, "window_oldest_key", True), (0, "window_outside_key", True), (1, "first_key", False)}


class FirstAfterPaddingMasked:
    """The reference, except that no token reads the first token after a row's left padding (a padding
    mask off by one): that token's own output is left correct, so only the probe can see it."""

    name = "first-after-padding-masked"

    def run(self, spec, batch, *, taps=False):
        reference = load_candidate("reference")
        whole = reference.run(spec, batch, taps=False).output
        valid = batch.valid.clone()
        firsts = [(row, int(batch.slots(row)[0])) for row in range(len(batch.lengths))]
        for row, slot in firsts:
            valid[row, slot] = False
        blind = reference.run(spec, replace(batch, valid=valid), taps=False).output
        for row, slot in firsts:
            blind[row, slot] = whole[row, slot]
        return blind


LEFT = Case(layer=1, lengths=(12, 3), padding="left", weight_seed=2, input_seed=2)


def test_the_first_token_after_padding_must_be_read():
    (v,) = run_case(LEFT, [FirstAfterPaddingMasked()], bounds=LOOSE)
    assert v.verdict == "fail" and v.first_divergent_stage == "probe first_after_padding", v.message
    assert "the first token after the padding is not attended by the next one" in v.message
    assert "row 1 at position 1" in v.message, v.message
    for c in ("reference", "emulation", "flash", "nxdi-emulation"):
        (ok,) = run_case(LEFT, [load_candidate(c)])
        assert ok.verdict == "pass" and any(p["name"] == "first_after_padding" for p in ok.probes), ok.message


def test_the_padding_probe_is_placed_only_where_the_reference_reads_the_token():
    """Dominant sinks leave the first token a sliver of the next one's probability: no probe there (a
    correct block could round the change away), rather than a false alarm."""
    from harness.probes import AFTER_PADDING_SHARE

    seen = set()
    for sinks in ("small", "dominant"):
        (e,) = compute_expected(Case(**{**LEFT.to_dict(), "sinks": sinks}))
        placed = [p for p in e.probes if p.name == "first_after_padding"]
        slots = e.batch.slots(1)  # the padded row
        share = float(e.reference["probs"][1, :, slots[1], slots[0]].max())
        judged = bool(placed and placed[0].judged[1, slots[1]])
        assert judged == (share >= AFTER_PADDING_SHARE), (sinks, share)
        seen.add(judged)
    assert seen == {True, False}  # both sides of the rule met


@pytest.mark.parametrize("mutant, case", [("sinks_ignored_in_decode", SLIDING), ("sinks_dropped", LEFT),
                                          ("sinks_ignored_in_decode", FULL)])
def test_the_sink_must_take_a_row_whose_keys_it_outweighs(mutant, case):
    (v,) = run_case(case, [OutputOnly(variant("mutant", mutant))], bounds=LOOSE)
    assert v.verdict == "fail" and v.first_divergent_stage == "probe sink_over_masked_keys", v.message
    assert "the sink does not take the probability: with every sink" in v.message and "x + out.bias" in v.message


def test_with_the_sink_over_every_score_each_key_gets_exactly_nothing():
    """The probe's premise, in the reference: every key's probability exactly 0, the output x + out.bias."""
    for case in (SLIDING, LEFT):
        (e,) = compute_expected(Case(**{**case.to_dict(), "scale": "sharp"}))
        (probe,) = [p for p in e.probes if p.name == "sink_over_masked_keys"]
        ref = run_reference(probe.spec, probe.batch, taps=True)
        probs = ref["probs"].double()
        judged = probe.judged
        assert bool((probs[..., :-1].permute(0, 2, 1, 3)[judged] == 0).all())
        assert bool((probs[..., -1].permute(0, 2, 1)[judged] == 1).all())
        assert torch.equal(ref["output"][judged], probe.expected[judged])


def test_a_candidate_with_weights_compiled_in_is_not_given_other_weights():
    class Compiled(OutputOnly):
        fixed_weights = True

        def run(self, spec, batch, *, taps=False):
            assert spec.weights["sinks"].max() < 100, "run with the probe's weights"
            return super().run(spec, batch, taps=taps)

    (v,) = run_case(SLIDING, [Compiled(load_candidate("reference"))])
    assert v.verdict == "pass" and "sink_over_masked_keys" not in {p["name"] for p in v.probes}, v.message
