"""Importers / exporters of the published artifacts, on the fixtures, with round trips."""
import json

import numpy as np
import pytest
import torch

from langneuron_ext.identify import (
    IdentifyError,
    NeuronSet,
    lape,
    load_lape_activations,
    load_lape_masks,
    load_njunlp_activations,
    load_njunlp_mask,
    save_lape_activations,
    save_lape_masks,
    save_njunlp_activations,
    save_njunlp_mask,
    ternary,
)
from langneuron_ext.stats import ActivationStats

LLAMA_LANGS = ["en", "zh", "fr", "es", "vi", "id", "ja"]
MGSM_LANGS = ["en", "ru", "es", "fr", "de", "zh", "ja", "bn", "th", "sw"]


def test_llama2_lape_file(fixtures_dir):
    ns = load_lape_masks(fixtures_dir / "lape_official" / "LLaMA-2-7B.neuron.pth", LLAMA_LANGS,
                         intermediate_size=11008)
    assert ns.method == "lape" and ns.num_layers == 32 and ns.intermediate_size == 11008
    assert {lg: ns.count(lg) for lg in LLAMA_LANGS} == dict(
        en=95, zh=583, fr=1022, es=838, vi=836, id=1068, ja=582)
    assert ns.num_unique() == 3523
    assert ns.neurons["zh"][4] == [6147, 9114, 9292]


@pytest.mark.parametrize("name, layers, counts", [
    ("Mistral-7B", 32, [76, 1190, 919, 838, 1554, 1445]),
    ("BLOOM-7B", 30, [445, 653, 680, 918, 551, 2823])])
def test_other_lape_files(fixtures_dir, name, layers, counts):
    langs = [f"lang{i}" for i in range(6)]
    ns = load_lape_masks(fixtures_dir / "lape_official" / f"{name}.neuron.pth", langs)
    assert ns.num_layers == layers
    assert [ns.count(lg) for lg in langs] == counts
    assert ns.params["intermediate_size_inferred"] is True
    assert ns.intermediate_size == 1 + max(max(ids, default=-1) for lang in langs
                                           for ids in ns.neurons[lang].values())


def test_wrong_number_of_names(fixtures_dir):
    with pytest.raises(IdentifyError, match="holds 6 language entries but 7 language names"):
        load_lape_masks(fixtures_dir / "lape_official" / "Mistral-7B.neuron.pth", LLAMA_LANGS)
    with pytest.raises(IdentifyError, match="too large for intermediate_size=100"):
        load_lape_masks(fixtures_dir / "lape_official" / "LLaMA-2-7B.neuron.pth", LLAMA_LANGS,
                        intermediate_size=100)


def test_not_a_mask_file(tmp_path):
    torch.save({"a": 1}, tmp_path / "x.pth")
    with pytest.raises(IdentifyError, match="not a LAPE mask"):
        load_lape_masks(tmp_path / "x.pth", ["a"])
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(IdentifyError, match="is not a torch"):
        load_njunlp_mask(tmp_path / "junk.pth", ["a"])
    with pytest.raises(IdentifyError, match="does not exist"):
        load_lape_masks(tmp_path / "missing.pth", ["a"])


def test_lape_round_trip(fixtures_dir, tmp_path):
    src = fixtures_dir / "lape_official" / "LLaMA-2-7B.neuron.pth"
    ns = load_lape_masks(src, LLAMA_LANGS, 11008)
    out = save_lape_masks(ns, tmp_path / "copy.neuron.pth")
    original, written = torch.load(src), torch.load(out)
    assert len(written) == len(original)
    for a, b in zip(original, written):
        assert [t.tolist() for t in a] == [t.tolist() for t in b]
        assert all(t.dtype == torch.long for t in b)
    assert load_lape_masks(out, LLAMA_LANGS, 11008).neurons == ns.neurons


def test_njunlp_mask_matches_released_json_and_round_trips(fixtures_dir, tmp_path):
    base = fixtures_dir / "njunlp_mistral_mgsm"
    path = next((base / "original").glob("mask.*"))
    ns = load_njunlp_mask(path, MGSM_LANGS, intermediate_size=14336)
    released = json.loads((base / "mask_released.json").read_text())
    assert ns.to_dict()["neurons"] == released
    out = save_njunlp_mask(ns, tmp_path / "mask.copy")
    assert [[t.tolist() for t in per] for per in torch.load(out)] == \
        [[t.tolist() for t in per] for per in torch.load(path)]
    # and through our own JSON format
    assert NeuronSet.load(ns.save(tmp_path / "n.json")) == ns


def test_njunlp_activation_files(fixtures_dir, tmp_path):
    base = fixtures_dir / "njunlp_mistral_mgsm"
    full = next((base / "original").glob("activation.en.*"))
    prefix = next((base / "original").glob("prefix.activation.en.*"))
    z = np.load(base / "counts.npz")
    stats = load_njunlp_activations({"en": full})
    assert stats.languages == ["en"]
    assert torch.equal(stats.counts[0], torch.from_numpy(z["over_zero_full"][0]).long())
    assert stats.n_tokens.tolist() == [int(z["total_tokens_full"][0])]
    resp = load_njunlp_activations({"en": full}, {"en": prefix})
    expected = (torch.from_numpy(z["over_zero_full"][0]).long()
                - torch.from_numpy(z["over_zero_prefix"][0]).long()).clamp(min=0)
    assert torch.equal(resp.counts[0], expected)
    assert resp.n_tokens.tolist() == [int(z["total_tokens_full"][0] - z["total_tokens_prefix"][0])]
    # two languages from per-language files: stacked in the given order
    other = tmp_path / "activation.xx.pt"
    torch.save({"total_tokens": 10, "over_zero": torch.ones(32, 14336, dtype=torch.long)}, other)
    two = load_njunlp_activations({"xx": other, "en": full})
    assert two.languages == ["xx", "en"] and two.counts.shape == (2, 32, 14336)
    with pytest.raises(IdentifyError, match="same languages"):
        load_njunlp_activations({"en": full}, {"xx": other})
    bad = tmp_path / "bad.pt"
    torch.save({"total_tokens": 3}, bad)
    with pytest.raises(IdentifyError, match="not an NJUNLP activation file"):
        load_njunlp_activations({"en": bad})
    small = tmp_path / "small.pt"
    torch.save({"total_tokens": 3, "over_zero": torch.ones(2, 5, dtype=torch.long)}, small)
    with pytest.raises(IdentifyError, match="disagree"):
        load_njunlp_activations({"en": full, "xx": small})


@pytest.fixture(scope="module")
def mgsm(fixtures_dir):
    z = np.load(fixtures_dir / "njunlp_mistral_mgsm" / "counts.npz")
    langs = [str(x) for x in z["languages"]]
    make = lambda part: ActivationStats(  # noqa: E731
        torch.from_numpy(z[f"over_zero_{part}"]).long(),
        torch.from_numpy(z[f"total_tokens_{part}"]), langs)
    return make("full"), make("prefix")


def test_njunlp_export_reproduces_the_published_file(fixtures_dir, mgsm, tmp_path):
    full, prefix = mgsm
    paths = save_njunlp_activations(full.select(["en"]), tmp_path, model="Mistral",
                                    prefix=prefix.select(["en"]))
    assert paths["en"].name == "activation.en.Mistral.pt"
    original = next((fixtures_dir / "njunlp_mistral_mgsm" / "original").glob("activation.en.*"))
    ours = torch.load(paths["en"], weights_only=True)
    theirs = torch.load(original, weights_only=True)
    assert ours["total_tokens"] == theirs["total_tokens"]
    assert ours["over_zero"].dtype == theirs["over_zero"].dtype
    assert torch.equal(ours["over_zero"], theirs["over_zero"])
    assert (tmp_path / "prefix.activation.en.Mistral.pt").exists()


def test_njunlp_round_trip_gives_the_same_mask(mgsm, tmp_path):
    full, prefix = mgsm
    paths = save_njunlp_activations(full, tmp_path, model="m", prefix=prefix)
    back = load_njunlp_activations(
        paths, {lg: p.with_name("prefix." + p.name) for lg, p in paths.items()})
    response = full.minus(prefix)
    assert back.languages == full.languages
    assert torch.equal(back.counts, response.counts)
    assert torch.equal(back.n_tokens, response.n_tokens)
    assert ternary(back).neurons == ternary(response).neurons


def test_lape_activation_round_trip(mgsm, tmp_path):
    full, _ = mgsm
    stats = full.select(["en", "zh", "ja"])
    paths = save_lape_activations(stats, tmp_path, model="mistral-7b")
    assert paths["zh"].name == "activation.zh.train.mistral-7b"
    raw = torch.load(paths["zh"], weights_only=True)
    assert set(raw) == {"n", "over_zero"} and raw["over_zero"].dtype == torch.int32
    back = load_lape_activations(paths)
    assert back.languages == ["en", "zh", "ja"] and back.sums is None
    assert torch.equal(back.counts, stats.counts) and torch.equal(back.n_tokens, stats.n_tokens)
    assert lape(back).neurons == lape(stats).neurons


def test_lape_activation_with_sums(tmp_path):
    g = torch.Generator().manual_seed(0)
    counts = torch.randint(0, 50, (2, 3, 8), generator=g)
    sums = torch.rand(2, 3, 8, generator=g, dtype=torch.float64)
    stats = ActivationStats(counts, torch.tensor([50, 60]), ["a", "b"], sums, sums * sums)
    back = load_lape_activations(save_lape_activations(stats, tmp_path))
    assert torch.equal(back.counts, counts)
    # LAPE stores float32 sums
    assert torch.equal(back.sums, sums.float().double())
    assert torch.equal(back.sumsq, (sums * sums).float().double())
    # a file as LAPE's activation.py writes it: sum1..sum4 and int32 over_zero
    f = tmp_path / "activation.c.train.llama-7b"
    torch.save({"n": 7, "sum1": torch.zeros(3, 8), "sum2": torch.zeros(3, 8),
                "sum3": torch.zeros(3, 8), "sum4": torch.zeros(3, 8),
                "over_zero": torch.ones(3, 8, dtype=torch.int32)}, f)
    one = load_lape_activations({"c": f})
    assert one.n_tokens.tolist() == [7] and one.counts.dtype == torch.int64


def test_lape_activation_bad_input(tmp_path):
    bad = tmp_path / "bad"
    torch.save({"total_tokens": 3, "over_zero": torch.ones(2, 5)}, bad)
    with pytest.raises(IdentifyError, match="not a LAPE activation file"):
        load_lape_activations({"en": bad})
    with pytest.raises(IdentifyError, match="no LAPE activation files"):
        load_lape_activations({})
    a, b = tmp_path / "a", tmp_path / "b"
    torch.save({"n": 3, "over_zero": torch.ones(2, 5, dtype=torch.int32)}, a)
    torch.save({"n": 3, "over_zero": torch.ones(2, 6, dtype=torch.int32)}, b)
    with pytest.raises(IdentifyError, match="disagree"):
        load_lape_activations({"a": a, "b": b})
    with pytest.raises(IdentifyError, match="does not exist"):
        load_lape_activations({"a": tmp_path / "missing"})
    stats = ActivationStats(torch.ones(1, 2, 3, dtype=torch.long), torch.tensor([4]), ["x"])
    (tmp_path / "file").write_text("")
    with pytest.raises(IdentifyError, match="is a file"):
        save_lape_activations(stats, tmp_path / "file")
