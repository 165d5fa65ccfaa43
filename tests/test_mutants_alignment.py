"""Tests that fail for one-line changes of the alignment comparison and the scan's resume that
the other tests let pass: group sums of the *before* counts, Jaccard over kept + gained + lost,
values (not only keys) of the JSON, a CLI alignment of two different scans, and a resumed scan
with sums of squares."""
import json

import pytest
import torch
from test_scan import OPTS, Interrupt, _interrupt_after, tiny_llama, write_corpus

from langneuron_ext.alignment import compare
from langneuron_ext.cli import main
from langneuron_ext.models.toy import byte_tokenizer
from langneuron_ext.scan import scan
from langneuron_ext.stats import ActivationStats

LANGS = ["en", "fr", "zh", "ru"]


def stats(seed, L=4, width=64):
    g = torch.Generator().manual_seed(seed)
    n = torch.tensor([4000, 4100, 4200, 4300])
    p = torch.rand(len(LANGS), L, width, generator=g) ** 3
    return ActivationStats((p * n[:, None, None]).long(), n, list(LANGS), model_type="llama")


@pytest.fixture(scope="module")
def pair():
    """Two different scans of one model shape: every count table differs between them."""
    return compare(stats(0), stats(1), trained=["fr", "zh"], top_rate=0.05)


def test_group_sums_use_each_models_own_counts(pair):
    d = pair.to_dict()
    summary = d["summary"]
    for group, langs in (("trained", ["fr", "zh"]), ("untrained", ["en", "ru"])):
        for t in ("specific", "related"):
            before = sum(d["before"][lg][t] for lg in langs)
            after = sum(d["after"][lg][t] for lg in langs)
            assert summary[group][f"{t}_before"] == before
            assert summary[group][f"{t}_after"] == after
    assert any(summary[g][f"{t}_before"] != summary[g][f"{t}_after"]
               for g in ("trained", "untrained") for t in ("specific", "related")), \
        "the fixture must tell before from after"
    assert summary["trained"]["languages"] == 2
    assert summary["general"] == {"before": d["before"]["en"]["general"],
                                  "after": d["after"]["en"]["general"]}


@pytest.fixture(scope="module")
def altered():
    """A scan and the same scan with layer 1's neurons shifted by one: each language keeps its
    neurons of the other layers and loses and gains some in layer 1."""
    before = stats(0, L=4, width=64)
    counts = before.counts.clone()
    counts[:, 1] = counts[:, 1].roll(1, dims=-1)
    after = ActivationStats(counts, before.n_tokens, list(LANGS), model_type="llama")
    return compare(before, after, trained=["fr", "zh"], top_rate=0.05)


def test_jaccard_is_kept_over_kept_gained_and_lost(altered):
    pair = altered
    d = pair.to_dict()
    checked = 0
    for k, lang in enumerate(LANGS):
        b = pair.before.masks()[k]
        a = pair.after.masks()[k]
        o = d["overlap_detail"][lang]
        assert (o["kept"], o["gained"], o["lost"]) == (int((a & b).sum()), int((a & ~b).sum()),
                                                       int((b & ~a).sum()))
        union = int((a | b).sum())
        assert o["jaccard"] == pytest.approx(o["kept"] / union if union else 1.0)
        assert d["overlap"][lang] == o["jaccard"]
        assert (o["before"], o["after"]) == (int(b.sum()), int(a.sum()))
        checked += o["kept"] > 0 and o["lost"] > 0 and o["gained"] > 0
    assert checked, "some language must keep, lose and gain neurons"
    means = {g: sum(d["overlap"][lg] for lg in langs) / 2
             for g, langs in (("trained", ["fr", "zh"]), ("untrained", ["en", "ru"]))}
    assert d["summary"]["trained"]["mean_jaccard"] == pytest.approx(means["trained"])
    assert d["summary"]["untrained"]["mean_jaccard"] == pytest.approx(means["untrained"])


def test_per_layer_shared_by_and_activation_change_values(pair):
    d = pair.to_dict()
    for model, ns in (("before", pair.before), ("after", pair.after)):
        for t in ("specific", "related"):
            per_language = torch.zeros(len(LANGS), ns.num_layers, ns.intermediate_size,
                                       dtype=torch.bool)
            for k, lang in enumerate(LANGS):
                for layer, ids in ns.types[t].get(lang, {}).items():
                    per_language[k, int(layer), ids] = True
            assert d["per_layer"][model][t] == per_language.any(0).sum(1).tolist()
        assert sum(n * c for n, c in enumerate(d["shared_by"][model], 1)) == sum(
            ns.count(lang) + sum(len(v) for v in ns.types["general"].get(lang, {}).values())
            for lang in LANGS)
    k = LANGS.index("fr")
    union = pair.before.masks()[k] | pair.after.masks()[k]
    p_b = stats(0).counts[k].double() / 4100
    p_a = stats(1).counts[k].double() / 4100
    for layer, value in enumerate(d["activation_change"]["fr"]):
        ids = union[layer]
        if not ids.any():
            assert value is None
        else:
            assert value == pytest.approx(float((p_a[layer] - p_b[layer])[ids].mean()))


def test_cli_alignment_of_two_different_scans(tmp_path, capsys):
    stats(0).save(tmp_path / "b.safetensors")
    stats(1).save(tmp_path / "a.safetensors")
    code = main(["alignment", str(tmp_path / "b.safetensors"), str(tmp_path / "a.safetensors"),
                 "--trained", "fr,zh", "--top-rate", "0.05", "--json", "--out",
                 str(tmp_path / "x.json")])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    expected = json.loads(json.dumps(compare(stats(0), stats(1), trained=["fr", "zh"],
                                             top_rate=0.05).to_dict()))
    assert printed == expected == json.loads((tmp_path / "x.json").read_text())
    assert any(v != 1.0 for v in printed["overlap"].values())     # not a scan with itself


def test_resume_with_sums_of_squares_equals_one_shot(tmp_path):
    model, tok = tiny_llama(), byte_tokenizer()
    corpus = write_corpus(tmp_path)
    opts = dict(OPTS, track_sums=True, track_sumsq=True)
    one_shot = scan(model, tok, corpus, progress=False, **opts)
    ckpt = tmp_path / "scan.partial"
    hook, _ = _interrupt_after(model, 5)
    with pytest.raises(Interrupt):
        scan(model, tok, corpus, progress=False, checkpoint=ckpt, checkpoint_every=2, **opts)
    hook.remove()
    partial = ActivationStats.load(ckpt)
    assert partial.sumsq is not None and 0 < int(partial.n_tokens.sum())
    resumed = scan(model, tok, corpus, progress=False, checkpoint=ckpt, checkpoint_every=2,
                   **opts)
    assert torch.equal(resumed.counts, one_shot.counts)
    torch.testing.assert_close(resumed.sums, one_shot.sums, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(resumed.sumsq, one_shot.sumsq, rtol=1e-12, atol=1e-9)
    assert not torch.allclose(resumed.sumsq, resumed.sums)       # squares, not the sums
