"""Loading candidates by name and import path, and the HF wrapper's mandatory settings."""

import pytest
import torch

from harness.candidates import as_candidate, load_candidate
from harness.candidates.hf import _hf_config
from harness.batch import build
from harness.case import Case


def test_builtins_and_paths():
    assert load_candidate("reference").name == "reference"
    assert load_candidate("hf").name == "hf"
    fn = load_candidate("tests.broken_candidates:nan_output")
    assert fn.name == "tests.broken_candidates:nan_output"


@pytest.mark.parametrize("spec, message", [
    ("nonsense", "unknown candidate 'nonsense'"),
    ("no.such.module:x", "cannot import module 'no.such.module'"),
    ("tests.broken_candidates:missing", "has no attribute 'missing'"),
])
def test_bad_candidate_specs(spec, message):
    with pytest.raises(ValueError, match=message):
        load_candidate(spec)


def test_not_a_candidate():
    with pytest.raises(TypeError, match="is not a candidate"):
        as_candidate(42, name="x")


def test_hf_config_is_eager_yarn_untruncated_eps_1e5():
    spec, _ = build(Case())
    cfg = _hf_config(spec)
    assert cfg._attn_implementation == "eager"
    rope = getattr(cfg, "rope_parameters", None) or cfg.rope_scaling
    assert rope["truncate"] is False and rope["rope_type"] == "yarn"
    assert cfg.rms_norm_eps == 1e-5


@pytest.mark.parametrize("layer", [0, 1])
def test_hf_taps_match_reference_where_bf16_ops_are_the_same(layer):
    """The projections are the same bf16 ops in both, so those taps are bit-identical."""
    spec, batch = build(Case(layer=layer, lengths=(9, 4), padding="left"))
    ref = load_candidate("reference").run(spec, batch, taps=True)
    hf = load_candidate("hf").run(spec, batch, taps=True)
    for stage in ("normed", "q", "k", "v"):
        assert torch.equal(hf.taps[stage][batch.valid], ref.taps[stage][batch.valid]), stage


@pytest.mark.parametrize("case", [Case(lengths=(6,)), Case(lengths=(6,), depth=2, stack_mode="teacher"),
                                  Case(lengths=(6,), depth=2, stack_mode="free")], ids=lambda c: c.id)
def test_a_candidate_that_contradicts_itself_fails_at_its_stage(case):
    """CandidateInconsistent (e.g. two ranks of a sharded block disagreeing): a `fail` at the stage it
    names, with its message, in single blocks and stacks alike; never an `error`."""
    from harness.candidates import CandidateInconsistent
    from harness.runner import run_case

    class Disagrees:
        name = "disagrees"

        def run(self, spec, batch, *, taps):
            raise CandidateInconsistent("k_rope", "kv head 1: rank 3 differs from rank 2")

    (v,) = run_case(case, [as_candidate(Disagrees())])
    assert v.verdict == "fail" and "k_rope" in v.first_divergent_stage, v.message
    assert "failed at k_rope: kv head 1: rank 3 differs from rank 2" in v.message
