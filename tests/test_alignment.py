"""`ln.alignment.compare` on the published NJUNLP counts: a copy altered in known languages and
layers shows its changes exactly there; equal inputs show none; bad pairs get clear errors."""
import json

import numpy as np
import pytest
import torch

import langneuron_ext as ln
from langneuron_ext.alignment import AlignmentError, compare
from langneuron_ext.cli import main as cli_main
from langneuron_ext.stats import ActivationStats

ZH_LAYER, RU_LAYER, N_NEW = 5, 20, 50


@pytest.fixture(scope="module")
def response(fixtures_dir):
    z = np.load(fixtures_dir / "njunlp_mistral_mgsm" / "counts.npz")
    langs = [str(x) for x in z["languages"]]
    make = lambda part: ActivationStats(  # noqa: E731
        torch.from_numpy(z[f"over_zero_{part}"]).long(),
        torch.from_numpy(z[f"total_tokens_{part}"]), langs, model_type="mistral")
    return make("full").minus(make("prefix"))


@pytest.fixture(scope="module")
def altered(response):
    """A copy where zh gains N_NEW neurons in layer ZH_LAYER (neurons of no language and not
    general, made to fire on every zh token and never otherwise) and ru loses its neurons in
    layer RU_LAYER (their ru counts set to 0)."""
    before = ln.identify.ternary(response)
    langs = response.languages
    zh, ru = langs.index("zh"), langs.index("ru")
    taken = before.masks().any(dim=0)                       # specific or related, any language
    general = torch.zeros_like(taken)
    for layer, ids in before.types["general"][langs[0]].items():
        general[layer, ids] = True
    free = (~(taken | general))[ZH_LAYER].nonzero().flatten()
    chosen = free[torch.randperm(free.numel(), generator=torch.Generator().manual_seed(0))
                  [:N_NEW]].sort().values
    counts = response.counts.clone()
    counts[:, ZH_LAYER, chosen] = 0
    counts[zh, ZH_LAYER, chosen] = response.n_tokens[zh]
    ru_ids = torch.tensor(before.neurons["ru"][RU_LAYER])
    assert ru_ids.numel() > 0
    counts[ru, RU_LAYER, ru_ids] = 0
    after = ActivationStats(counts, response.n_tokens.clone(), list(langs), model_type="mistral")
    return compare(response, after, trained=["zh", "ru"]), chosen, ru_ids


def test_changes_are_found_where_they_were_put(altered):
    cmp, chosen, ru_ids = altered
    d = cmp.to_dict()
    assert d["trained"] == ["zh", "ru"] and "en" in d["untrained"]
    # zh: every planted neuron is a new zh-specific neuron of that layer
    specific_zh = set(cmp.after.types["specific"]["zh"][ZH_LAYER])
    assert set(chosen.tolist()) <= specific_zh
    assert not set(chosen.tolist()) & set(cmp.before.neurons["zh"][ZH_LAYER])
    assert d["overlap_detail"]["zh"]["gained"] >= N_NEW
    # ru: its neurons of that layer are lost
    assert not set(ru_ids.tolist()) & set(cmp.after.neurons["ru"][RU_LAYER])
    assert d["overlap_detail"]["ru"]["lost"] >= ru_ids.numel()
    # the per-layer specific count moves most in the planted layer
    diff = np.array(d["per_layer"]["after"]["specific"]) - d["per_layer"]["before"]["specific"]
    assert int(np.argmax(diff)) == ZH_LAYER and diff[ZH_LAYER] >= N_NEW - 5
    # activation probability: changed exactly in (zh, ZH_LAYER) and (ru, RU_LAYER), 0 elsewhere
    change = d["activation_change"]
    assert change["zh"][ZH_LAYER] > 0.1
    assert change["ru"][RU_LAYER] < -0.1
    for lang, per_layer in change.items():
        for layer, v in enumerate(per_layer):
            if (lang, layer) not in {("zh", ZH_LAYER), ("ru", RU_LAYER)}:
                assert v is None or v == 0.0, (lang, layer, v)
    # the json form has the documented keys and shapes
    K, L = len(d["languages"]), d["num_layers"]
    for model in ("before", "after"):
        assert set(d[model]) == set(d["languages"])
        assert all(set(v) == {"specific", "related", "general"} for v in d[model].values())
        assert len(d["shared_by"][model]) == K
        assert all(len(v) == L for v in d["per_layer"][model].values())
        assert len(d["phases"][model]) == 4
    assert set(d["overlap"]) == set(d["languages"])
    json.dumps(d)   # serialisable


def test_shared_by_counts_every_member_neuron(altered):
    cmp, _, _ = altered
    d = cmp.to_dict()
    for model, ns in (("before", cmp.before), ("after", cmp.after)):
        member = torch.stack([ns.mask(lg) for lg in ns.languages])          # specific + related
        general = torch.zeros(ns.num_layers, ns.intermediate_size, dtype=torch.bool)
        for layer, ids in ns.types["general"][ns.languages[0]].items():
            general[layer, ids] = True
        n = member.sum(dim=0) + general.long() * len(ns.languages)
        expected = [int((n == k).sum()) for k in range(1, len(ns.languages) + 1)]
        assert d["shared_by"][model] == expected
        assert d["shared_by"][model][-1] == d[model]["en"]["general"]


def test_equal_inputs_give_no_change(response):
    d = compare(response, response, trained=["zh"]).to_dict()
    assert d["before"] == d["after"]
    assert all(v == {"specific": 0, "related": 0, "general": 0} for v in d["change"].values())
    assert d["shared_by"]["before"] == d["shared_by"]["after"]
    assert all(v == 1.0 for v in d["overlap"].values())
    assert all(o["gained"] == 0 and o["lost"] == 0 for o in d["overlap_detail"].values())
    assert all(v is None or v == 0.0 for vals in d["activation_change"].values() for v in vals)
    assert d["phases"]["before"] == d["phases"]["after"]


def small(langs=("en", "fr", "zh"), L=4, width=32, model_type="llama", seed=0):
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, 100, (len(langs), L, width), generator=g)
    return ActivationStats(counts, torch.full((len(langs),), 100), list(langs),
                           model_type=model_type)


def test_language_order_does_not_matter():
    a = small()
    b = a.select(["zh", "en", "fr"])
    d = compare(a, b, trained=["fr"]).to_dict()
    assert all(v == 1.0 for v in d["overlap"].values())


@pytest.mark.parametrize("after, match", [
    (small(L=5), "different shapes"),
    (small(width=16), "different shapes"),
    (small(langs=("en", "fr", "ja")), "different languages.*only before: \\['zh'\\]"),
    (small(model_type="gemma3_text"), "different model types"),
])
def test_mismatches_are_clear_errors(after, match):
    with pytest.raises(AlignmentError, match=match):
        compare(small(), after, trained=["fr"])


def test_bad_trained_and_inputs():
    with pytest.raises(AlignmentError, match="not among the scanned"):
        compare(small(), small(), trained=["de"])
    with pytest.raises(AlignmentError, match="ActivationStats or a stats file"):
        compare(small(), 3, trained=[])


def test_cli_json_and_report(tmp_path, capsys):
    before, after = small(seed=0), small(seed=1)
    before.save(tmp_path / "b.safetensors")
    after.save(tmp_path / "a.safetensors")
    out = tmp_path / "report"
    rc = cli_main(["alignment", str(tmp_path / "b.safetensors"), str(tmp_path / "a.safetensors"),
                   "--trained", "fr,zh", "--json", "--out-dir", str(out)])
    assert rc == 0
    d = json.loads(capsys.readouterr().out)
    for key in ("languages", "trained", "before", "after", "shared_by", "overlap"):
        assert key in d
    assert d["trained"] == ["fr", "zh"]
    saved = json.loads((out / "alignment.json").read_text())
    assert saved.pop("run")["command"].startswith("langneuron alignment")
    assert saved == d
    for name in ("alignment.md", "alignment_layers.png", "alignment_shared_by.png",
                 "alignment_activation_change.png"):
        assert (out / name).stat().st_size > 0
    md = (out / "alignment.md").read_text()
    assert "| fr | trained |" in md and "| en | untrained |" in md
    # bad input: one line, exit 2
    rc = cli_main(["alignment", str(tmp_path / "b.safetensors"), str(tmp_path / "a.safetensors"),
                   "--trained", "de"])
    assert rc == 2
    assert "not among the scanned" in capsys.readouterr().err


def test_report_rebuilds_alignment_section(tmp_path, capsys):
    from langneuron_ext.report.alignment import write_alignment_report
    cmp = compare(small(seed=0), small(seed=1), trained=["fr"])
    paths = write_alignment_report(tmp_path / "a", cmp)
    ns = cmp.before
    ns.save(tmp_path / "n.json")
    rc = cli_main(["report", str(tmp_path / "n.json"), "--alignment", str(paths["json"]),
                   "--out-dir", str(tmp_path / "r")])
    assert rc == 0
    report = (tmp_path / "r" / "report.md").read_text()
    assert "## Alignment: language neurons before and after" in report
    assert (tmp_path / "r" / "alignment_layers.png").exists()
