"""Cases validate their fields, serialise losslessly and build the batch a candidate receives."""

import pytest
import torch

from harness.batch import build
from harness.case import Case


def test_roundtrip_and_stable_id():
    c = Case(layer=1, lengths=(5, 9), padding="left", plan="decode", decode_steps=2, sinks="dominant", input_seed=3)
    again = Case.from_dict(c.to_dict())
    assert again == c and again.id == c.id
    assert c.id.startswith("small-L1-decode2-n5x9-dominant-")
    assert Case(lengths=(5,)).id != Case(lengths=(6,)).id


@pytest.mark.parametrize("fields, message", [
    ({"lengths": []}, "lengths=\\[\\] must be a non-empty list"),
    ({"plan": "decode", "decode_steps": 5, "lengths": (5,)}, "decode_steps=5 must be >= 1 and below the shortest row"),
    ({"plan": "chunked", "chunk_offset": 0}, "chunk_offset=0 must be >= 1"),
    ({"padding": "middle"}, "padding='middle' must be one of"),
    ({"preset": "huge"}, "preset='huge' must be one of"),
    ({"decode_steps": 2}, "must be 0 with plan 'prefill'"),
])
def test_invalid_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        Case(**fields)


def test_from_dict_names_source_and_unknown_fields():
    with pytest.raises(ValueError, match=r"cases/x.json: unknown field\(s\) \['lenghts'\]"):
        Case.from_dict({"lenghts": [3]}, source="cases/x.json")
    with pytest.raises(ValueError, match="expected a JSON object"):
        Case.from_dict([1], source="f")


@pytest.mark.parametrize("padding", ["left", "right"])
def test_batch_layout(padding):
    spec, batch = build(Case(lengths=(3, 6), padding=padding, plan="decode", decode_steps=2))
    assert batch.hidden.shape == (2, 6, spec.config.hidden_size) and batch.hidden.dtype == torch.bfloat16
    assert batch.valid.sum(1).tolist() == [3, 6]
    assert batch.sequence(0).shape == (3, spec.config.hidden_size)
    assert batch.positions[0, batch.valid[0]].tolist() == [0, 1, 2]
    pads = ~batch.valid
    assert torch.all(batch.hidden[pads] == 0)
    assert batch.steps == (((0, 1), (0, 4)), ((1, 2), (4, 5)), ((2, 3), (5, 6)))
    # a row's tokens do not depend on the padding side
    other = build(Case(lengths=(3, 6), padding="right" if padding == "left" else "left", plan="decode", decode_steps=2))[1]
    assert torch.equal(batch.sequence(0), other.sequence(0))


def test_compare_last_and_chunked_steps():
    _, batch = build(Case(lengths=(10, 4), plan="chunked", chunk_offset=6, compare_last=2))
    assert batch.compare[0].nonzero().squeeze(1).tolist() == [8, 9]
    assert batch.compare[1].nonzero().squeeze(1).tolist() == [2, 3]
    assert batch.steps == (((0, 6), (0, 4)), ((6, 10), (4, 4)))


def test_case_files(tmp_path):
    from harness.case import curated_cases, load_case_file

    assert len(curated_cases()) >= 10
    (tmp_path / "a.json").write_text('{"lengths": [4], "plan": "decode", "decode_steps": 9}')
    with pytest.raises(ValueError, match=r"a.json \(case 0\): invalid case: decode_steps=9"):
        load_case_file(tmp_path / "a.json")
    with pytest.raises(ValueError, match="does not exist"):
        load_case_file(tmp_path / "missing.json")


def test_json_writes_are_atomic(tmp_path):
    from harness.jsonfile import read_json, write_json

    f = write_json(tmp_path / "out.json", {"ok": 1})
    with pytest.raises(TypeError):
        write_json(f, {"bad": object()})  # fails half-way through serialising
    assert read_json(f, "results file") == {"ok": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
    (tmp_path / "d.json").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        read_json(tmp_path / "d.json", "case file")


def test_a_from_cache_stack_feeds_each_layer_the_same_inputs_and_its_own_cache():
    from harness.expected import compute_expected

    with pytest.raises(ValueError, match="from_cache stack .* must have stack_mode 'same_input'"):
        Case(layer=0, lengths=(300,), plan="from_cache", decode_steps=2, depth=2)
    case = Case(layer=0, lengths=(300,), plan="from_cache", decode_steps=2, depth=2, stack_mode="same_input")
    assert "-stack2s-" in case.id
    sliding, full = compute_expected(case)
    assert (sliding.spec.layer_idx, full.spec.layer_idx) == (0, 1)
    assert torch.equal(sliding.batch.hidden, full.batch.hidden)
    # each layer's keys from its own weights; the full layer's exact from position 0 (the sliding one's filler)
    (alone,) = compute_expected(Case(layer=1, lengths=(300,), plan="from_cache", decode_steps=2, weight_seed=7919))
    assert torch.equal(full.batch.cache.k_rope, alone.batch.cache.k_rope)
    assert not torch.equal(sliding.batch.cache.k_rope[0, 200:298], full.batch.cache.k_rope[0, 200:298])
