"""NeuronSet: normalisation, masks and counts, JSON file round trip, errors."""
import json

import pytest
import torch

from langneuron_ext.identify import IdentifyError, NeuronSet


def small_set(**kw):
    args = dict(method="lape", params={"top_rate": 0.1}, languages=["en", "fr", "zh"],
                num_layers=3, intermediate_size=8,
                neurons={"en": {0: [5, 1, 1], "2": [7]}, "fr": {1: [0, 3]}})
    args.update(kw)
    return NeuronSet(**args)


def test_normalises_every_language_and_layer_sorted_unique():
    ns = small_set()
    assert ns.neurons["en"] == {0: [1, 5], 1: [], 2: [7]}
    assert ns.neurons["zh"] == {0: [], 1: [], 2: []}       # empty language kept
    assert ns.languages == ["en", "fr", "zh"]


def test_mask_count_and_per_layer_counts_agree():
    ns = small_set()
    m = ns.mask("en")
    assert m.shape == (3, 8) and m.dtype == torch.bool
    assert m.nonzero().tolist() == [[0, 1], [0, 5], [2, 7]]
    assert ns.count("en") == 3 and ns.count("fr") == 2 and ns.count("zh") == 0
    assert ns.per_layer_counts().tolist() == [[2, 0, 1], [0, 2, 0], [0, 0, 0]]
    assert ns.mask("en", layers=[2]).nonzero().tolist() == [[2, 7]]
    assert ns.masks().sum().item() == 5
    assert ns.num_unique() == 5


def test_from_masks_round_trip():
    mask = torch.rand(4, 5, 30) < 0.2
    ns = NeuronSet.from_masks("x", {}, ["a", "b", "c", "d"], mask)
    assert torch.equal(ns.masks(), mask)
    assert ns.per_layer_counts().tolist() == mask.sum(dim=2).tolist()


def test_json_round_trip_and_layout(tmp_path):
    types = {t: torch.rand(3, 3, 8) < 0.3 for t in ("specific", "related", "general")}
    ns = NeuronSet.from_masks("ternary", {"lambda": 0.1}, ["en", "fr", "zh"],
                              types["specific"] | types["related"], types)
    ns.phases = [{"name": "understanding", "start": 0, "stop": 1}]
    path = ns.save(tmp_path / "n.json")
    raw = json.loads(path.read_text())
    assert set(raw) == {"method", "params", "languages", "num_layers", "intermediate_size",
                        "neurons", "types", "phases"}
    assert all(isinstance(k, str) for k in raw["neurons"]["en"])
    assert all(ids == sorted(ids) for layers in raw["neurons"].values() for ids in layers.values())
    back = NeuronSet.load(path)
    assert back == ns
    assert torch.equal(back.masks(), ns.masks())
    other = NeuronSet.from_dict({**raw, "neurons": {"en": {"0": [0]}}})
    assert other != ns


def test_without_types_file_has_no_types_key(tmp_path):
    raw = json.loads(small_set().save(tmp_path / "a.json").read_text())
    assert "types" not in raw and "phases" not in raw


def test_summary_lists_languages_and_totals():
    text = small_set().summary()
    for lang in ("en", "fr", "zh"):
        assert lang in text
    assert "5 distinct" in text
    assert text.startswith("NeuronSet (lape): 3 languages, 3 layers x 8 neurons")
    one = NeuronSet("lape", {}, ["en"], 1, 8, {"en": {0: [1]}}).summary()
    assert one.startswith("NeuronSet (lape): 1 language, 1 layer x 8 neurons")


@pytest.mark.parametrize("bad, match", [
    (dict(neurons={"de": {0: [1]}}), "not in the set's languages"),
    (dict(neurons={"en": {0: [8]}}), "outside 0..7"),
    (dict(neurons={"en": {3: [1]}}), "outside 0..2"),
    (dict(neurons={"en": {"x": [1]}}), "not an integer"),
    (dict(languages=["en", "en"], neurons={}), "repeat"),
    (dict(types={"odd": {}}), "unknown neuron type"),
])
def test_bad_content_is_rejected(bad, match):
    with pytest.raises(IdentifyError, match=match):
        small_set(**bad)


def test_unknown_language_query():
    with pytest.raises(IdentifyError, match="not in this neuron set"):
        small_set().mask("de")


def test_load_errors(tmp_path):
    with pytest.raises(IdentifyError, match="does not exist"):
        NeuronSet.load(tmp_path / "none.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(IdentifyError, match="not a neuron set"):
        NeuronSet.load(tmp_path / "list.json")
    (tmp_path / "partial.json").write_text('{"method": "lape"}')
    with pytest.raises(IdentifyError, match="lacks key"):
        NeuronSet.load(tmp_path / "partial.json")
