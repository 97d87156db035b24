"""The caller's side of a Neuron block (issue 22): the SDK's own KV-cache manager and mask builders drive
the SDK candidates, checked after every step against the harness's model of them without tolerance
(harness/neuron/upstream.py, crosscheck.py); the context encoding's hand-over checked by position; a
real module's q, k and attn seen through forward hooks (hooks.py); deployed NeuronConfig flags.
The SDK's parts are faked (tests/fake_serving.py, tests/fake_sdk.py): no SDK here."""

import pytest
import torch

from harness.case import Case
from harness.neuron import candidate as neuron_candidate
from harness.neuron import config as neuron_config
from harness.neuron import nxdi
from harness.neuron.bugs import Bugs
from harness.neuron.candidate import NeuronCandidate, NxdiEmulation
from harness.neuron.emulation import NxdiConventionAttention
from harness.neuron.environment import NeuronEnvironment
from harness.runner import run_case
from tests import fake_sdk, fake_serving

# a sliding layer whose ring has wrapped by the hand-over (context 148 > W-1 = 127: position 127 in slot 0),
# a full layer with two rows
SLIDING = Case(layer=0, lengths=(150,), plan="decode", decode_steps=2, input_seed=3)
FULL = Case(layer=1, lengths=(40, 9), plan="decode", decode_steps=2, input_seed=4)


def _sdk_candidate(monkeypatch, attention=fake_sdk.emulated_attention) -> NxdiEmulation:
    """An SDK candidate in CPU mode whose module is `attention` (the emulation by default)."""
    monkeypatch.setattr(nxdi, "build_attention", attention)
    candidate = NxdiEmulation(name="fake-sdk")
    candidate.kind, candidate.mode, candidate.class_path = "neuron", "cpu", None
    return candidate


def test_sdk_candidates_run_the_sdks_cache_manager_and_mask_builders(monkeypatch):
    calls = fake_serving.install(monkeypatch)
    candidate = _sdk_candidate(monkeypatch)
    for case, masks in ((SLIDING, {"_create_windowed_attn_mask_cte", "_create_windowed_attn_mask_tkg"}),
                        (FULL, {"_create_context_attn_mask", "_create_simple_attn_mask"})):
        calls.clear()
        (v,) = run_case(case, [candidate], probes=False)
        assert v.verdict == "pass", v.message
        assert {"__init__", "update_kv_by_layer_id", "get_kv_by_layer_id"} <= set(calls) and masks <= set(calls), calls
        assert v.info["caller"]["cache_manager"].endswith("FakeCacheManager"), v.info
        assert v.info["handover"] == "checked by position"
    # one update after context encoding and after each of the two steps, one read before each step
    calls.clear()
    run_case(SLIDING, [candidate], probes=False)
    assert calls.count("update_kv_by_layer_id") == 3 and calls.count("get_kv_by_layer_id") == 2, calls


def test_a_cache_manager_writing_the_ring_at_pos_mod_w_fails_naming_slot_and_position(monkeypatch):
    class RingOfW(fake_serving.FakeCacheManager):
        ring_modulus_offset = 0

    fake_serving.install(monkeypatch, manager=RingOfW)
    (v,) = run_case(SLIDING, [_sdk_candidate(monkeypatch)], probes=False)
    assert (v.verdict, v.first_divergent_stage) == ("fail", "k_rope"), v.message
    # position 148 written at 148 % 128 = 20, over position 147 (147 % 127 = 20)
    assert "row 0 slot 20 of the cache manager's cache holds position 148, expected position 147" in v.message, v.message
    assert "after the token-generation step at position(s) [148]" in v.message


def test_a_mask_builder_showing_the_never_written_slot_fails_at_scores(monkeypatch):
    monkeypatch.setattr(fake_serving.FakeModel, "window_offset", 1)
    fake_serving.install(monkeypatch)
    (v,) = run_case(SLIDING, [_sdk_candidate(monkeypatch)], probes=False)
    assert (v.verdict, v.first_divergent_stage) == ("fail", "scores"), v.message
    assert "key slot 127 is visible in the mask builder's mask, hidden in NxDI's layout" in v.message, v.message


@pytest.mark.parametrize("bugs, said", [
    (Bugs(handover_one_short=True), "handed over 126 keys per row to the sliding-window cache, whose ring holds 127 "
                                    "(the last W-1 positions, position p in slot p % 127): row 0 is missing slot 126 "
                                    "(position 126)"),
    (Bugs(handover_one_long=True), "handed over 128 keys per row to the sliding-window cache, whose ring holds 127 "
                                   "(the last W-1 positions, position p in slot p % 127): slot 127 lies outside the ring"),
    (Bugs(seed_position_order=True), "row 0 slot 0 holds position 21, expected position 127")])
def test_a_wrong_handover_fails_by_position_at_k_rope(bugs, said):
    """Planted in the emulation: one key too few or too many handed over (both passed before: the driver
    sized its ring from the hand-over), or the window in position order instead of ring order."""
    (v,) = run_case(SLIDING, [NxdiEmulation(bugs=bugs)], probes=False, isolation=False)
    assert (v.verdict, v.first_divergent_stage) == ("fail", "k_rope"), v.message
    assert said in v.message and "tolerance-free" in v.message, v.message


def test_the_sdk_candidate_without_the_fault_passes_with_the_emulations_ring():
    """The same emulation, correct: its hand-over passes the check (no false alarm) on both layer kinds."""
    for case in (SLIDING, FULL):
        (v,) = run_case(case, [NxdiEmulation()], probes=False)
        assert v.verdict == "pass" and v.info["handover"] == "checked by position", v.message


class _Opaque(NxdiConventionAttention):
    """The emulation seen as a real module is: no record of its own, only what hooks see. Its q
    projection is off by 0.25 (a bug that changes neither the keys nor the values)."""

    records_internals = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.qkv_proj.q_proj.register_forward_hook(lambda module, args, out: out + 0.25)


def test_a_real_modules_q_bug_is_named_at_q_through_forward_hooks(monkeypatch):
    fake_serving.install(monkeypatch)

    def opaque(kind, path, spec, batch, on_cpu, tp_degree=1, flags=None):
        return _Opaque(spec.config, spec.layer_idx, spec.dtype)

    (v,) = run_case(FULL, [_sdk_candidate(monkeypatch, opaque)], probes=False)
    assert (v.verdict, v.first_divergent_stage) == ("fail", "q"), v.message
    assert "q, k (before RoPE), attn" in v.info["observed"]


def test_a_correct_real_module_passes_with_its_q_k_attn_observed(monkeypatch):
    fake_serving.install(monkeypatch)

    class Correct(_Opaque):
        def __init__(self, *args, **kwargs):
            NxdiConventionAttention.__init__(self, *args, **kwargs)

    def correct(kind, path, spec, batch, on_cpu, tp_degree=1, flags=None):
        return Correct(spec.config, spec.layer_idx, spec.dtype)

    from harness.expected import compute_expected
    from harness.runner import run_candidate

    candidate = _sdk_candidate(monkeypatch, correct)
    expected = compute_expected(FULL)[0]
    result = run_candidate(candidate, expected.spec, expected.batch)
    assert {"q", "k", "attn", "k_rope", "v", "q_rope", "scores", "probs"} <= set(result.taps), sorted(result.taps)
    (v,) = run_case(FULL, [candidate], probes=False)
    assert v.verdict == "pass", v.message
    assert {"q", "k", "q_rope", "scores", "probs", "attn"} <= {s.stage for s in v.stages}
    assert "derived" in v.info["observed"]


class _WindowIgnored(_Opaque):
    """A real module whose own attention ignores the mask it is given (no sliding window)."""

    def __init__(self, *args, **kwargs):
        NxdiConventionAttention.__init__(self, *args, **kwargs)

    def _context(self, q, k, v, mask, scale):
        causal = torch.ones_like(mask).tril()
        return super()._context(q, k, v, causal, scale)


def test_a_real_modules_own_masking_bug_is_placed_after_the_derived_stages(monkeypatch):
    """q, k, q_rope, scores and probs (derived from its q, k, RoPE tables and the mask it was given) pass;
    its attention output fails: the bug is in its own masking or softmax, not on the q or k side."""
    fake_serving.install(monkeypatch)

    def window_ignored(kind, path, spec, batch, on_cpu, tp_degree=1, flags=None):
        return _WindowIgnored(spec.config, spec.layer_idx, spec.dtype)

    # a real SDK candidate cannot be entered at a stage: judged end to end, as here
    (v,) = run_case(Case(layer=0, lengths=(200,)), [_sdk_candidate(monkeypatch, window_ignored)], probes=False,
                    isolation=False)
    assert (v.verdict, v.first_divergent_stage) == ("fail", "attn"), v.message
    passed = {s.stage for s in v.stages if s.passed}
    assert {"q", "k", "q_rope", "scores", "probs"} <= passed, v.message


# -- deployed flags (--neuron-config) ------------------------------------------------------------------

def test_flags_and_own_parts_are_part_of_the_name_and_round_trip():
    config = neuron_config.parse('{"tp_degree": 8, "attn_kernel_enabled": true, "fused_qkv": false, '
                                 '"cache_manager": "mypkg.cache:Manager"}')[0]
    name = neuron_config.variant("neuron", config)
    assert name == "neuron@tp8+fused_qkv=false+attn_kernel_enabled+cache_manager=mypkg.cache:Manager"
    assert neuron_config.split(name) == ("neuron", config)
    assert neuron_config.variant("neuron", {"tp_degree": 1}) == "neuron"


@pytest.mark.parametrize("text, said", [
    ('{"attn_kernel_enabled": 1}', "attn_kernel_enabled is a flag: true or false, found 1"),
    ('{"cache_manager": "mypkg/cache.py"}', "cache_manager must be an import path MODULE:CLASS"),
    ('{"sequence_parallel_enabled": true}', "sequence_parallel_enabled is not supported: each rank would be given"),
    ('{"kernels": true}', "unknown NeuronConfig field(s) ['kernels']")])
def test_bad_deployments_are_refused_with_the_reason(text, said):
    with pytest.raises(ValueError, match=None) as caught:
        neuron_config.parse(text)
    assert said in str(caught.value)


def test_kernel_flags_are_refused_in_cpu_mode_before_anything_runs(monkeypatch):
    monkeypatch.setattr(neuron_candidate, "require", lambda: NeuronEnvironment("cpu", "no device"))
    with pytest.raises(ValueError, match="attn_kernel_enabled needs NKI kernels, which do not run in NxDI's CPU mode"):
        NeuronCandidate("neuron", config={"tp_degree": 1, "attn_kernel_enabled": True})
    monkeypatch.setattr(neuron_candidate, "require", lambda: NeuronEnvironment("device", "a device"))
    on_device = NeuronCandidate("neuron", config={"tp_degree": 1, "attn_kernel_enabled": True})
    assert on_device.config["attn_kernel_enabled"]
    with pytest.raises(ValueError, match="configure the SDK's modules"):
        NxdiEmulation().__class__.__mro__[1]("emulation", config={"tp_degree": 1, "fused_qkv": True})


def test_flags_reach_the_sdks_neuron_config_on_a_device(monkeypatch, tmp_path):
    built = fake_sdk.install(monkeypatch, tmp_path)
    seen = []

    def attention(kind, path, spec, batch, on_cpu, tp_degree=1, flags=None):
        seen.append((on_cpu, dict(flags or {})))
        return NxdiConventionAttention(spec.config, spec.layer_idx, spec.dtype)

    monkeypatch.setattr(nxdi, "build_attention", attention)
    monkeypatch.setattr(neuron_candidate, "require", lambda: NeuronEnvironment("device", "a device"))
    candidate = NeuronCandidate("neuron", name="fake-device", config={"tp_degree": 1, "attn_kernel_enabled": True})
    (v,) = run_case(Case(layer=1, lengths=(12,)), [candidate], probes=False)
    assert v.verdict == "pass", v.message
    assert (False, {"attn_kernel_enabled": True}) in seen  # the traced module, built for the device
    assert all(flags == {} for on_cpu, flags in seen if on_cpu)  # the checkpoint's module: no kernels on CPU
    assert v.info["neuron_config"] == {"tp_degree": 1, "attn_kernel_enabled": True}
    assert '"attn_kernel_enabled": true' in built.builds[0][3]["flags_json"]


def test_a_repro_file_naming_your_own_cache_manager_is_code_not_trusted():
    from harness.repro import shipped

    assert shipped("neuron@tp8+attn_kernel_enabled")
    assert not shipped("neuron@tp1+cache_manager=mypkg.cache:Manager")
    assert not shipped("neuron@tp2+mask_builder=mypkg.masks:Model")
