"""`langneuron identify` end to end on small stats files."""
import json

import pytest
import torch

from langneuron_ext.cli import main
from langneuron_ext.identify import NeuronSet, lape, ternary
from langneuron_ext.stats import ActivationStats


def tiny_stats(K=3, L=6, I=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = torch.tensor([5003 + 97 * k for k in range(K)])
    p = torch.rand(K, L, I, generator=g) ** 2
    p = torch.where(torch.rand(K, L, I, generator=g) < 0.2, p.sqrt(), p * 0.3)
    return ActivationStats((p * n[:, None, None]).long(), n, ["en", "fr", "zh"][:K])


@pytest.fixture
def stats_file(tmp_path):
    return tiny_stats().save(tmp_path / "stats.safetensors")


def test_ternary_writes_set_with_phases(stats_file, tmp_path, capsys):
    out = tmp_path / "n.json"
    rc = main(["identify", str(stats_file), "--method", "ternary", "--top-rate", "0.05",
               "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0
    ns = NeuronSet.load(out)
    expected = ternary(ActivationStats.load(stats_file), top_rate=0.05)
    assert ns.neurons == expected.neurons and ns.types == expected.types
    assert [p["name"] for p in ns.phases] == ["understanding", "shared reasoning",
                                              "output transformation", "vocabulary output"]
    assert ns.phases[0]["start"] == 0 and ns.phases[-1]["stop"] == 6
    for word in ("specific", "related", "general", "phases", "en", "fr", "zh"):
        assert word in text
    assert sum(1 for line in text.splitlines() if line.strip().split(" ")[0].isdigit()) >= 6


def test_lape_json_summary(stats_file, tmp_path, capsys):
    out = tmp_path / "l.json"
    rc = main(["identify", str(stats_file), "--method", "lape", "--top-rate", "0.1",
               "--filter-rate", "0.9", "--bar-ratio", "0.9", "--out", str(out), "--json"])
    summary = json.loads(capsys.readouterr().out)
    assert rc == 0
    expected = lape(ActivationStats.load(stats_file), top_rate=0.1, filter_rate=0.9,
                    activation_bar_ratio=0.9)
    assert summary["counts"] == {l: expected.count(l) for l in expected.languages}
    assert summary["method"] == "lape" and summary["types"] is None
    assert summary["per_layer_by_language"]["en"] == expected.per_layer_counts()[0].tolist()
    assert summary["phases"] == NeuronSet.load(out).phases and len(summary["phases"]) == 4


def test_prefix_and_fixed_lambda(stats_file, tmp_path, capsys):
    prefix = tiny_stats(seed=1)
    prefix.counts //= 5
    prefix.n_tokens //= 5
    prefix_file = prefix.save(tmp_path / "prefix.safetensors")
    out = tmp_path / "r.json"
    rc = main(["identify", str(stats_file), "--method", "ternary", "--prefix", str(prefix_file),
               "--lambda", "0.05", "--top-rate", "0.05", "--out", str(out), "--json"])
    assert rc == 0
    ns = NeuronSet.load(out)
    expected = ternary(ActivationStats.load(stats_file).minus(prefix), top_rate=0.05, lam=0.05)
    assert ns.neurons == expected.neurons and ns.params["lambda"] == 0.05
    assert json.loads(capsys.readouterr().out)["params"]["response_only"] is True


@pytest.mark.parametrize("extra, match", [
    (["--method", "lape", "--lambda", "0.1"], "--lambda applies to --method ternary"),
    (["--method", "ternary", "--filter-rate", "0.9"], "--filter-rate applies to --method lape"),
    (["--method", "ternary", "--lambda", "big"], "--lambda must be 'auto' or a number"),
    (["--method", "lape", "--top-rate", "0"], "--top-rate must be in (0, 1]"),
    (["--method", "lape", "--bar-ratio", "x"], "--bar-ratio must be a number in (0, 1]"),
])
def test_user_errors_exit_2(stats_file, tmp_path, capsys, extra, match):
    rc = main(["identify", str(stats_file), "--out", str(tmp_path / "x.json"), *extra])
    assert rc == 2
    assert match in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


def test_single_language_and_missing_file(tmp_path, capsys):
    one = tiny_stats().select(["en"]).save(tmp_path / "one.safetensors")
    assert main(["identify", str(one), "--method", "lape", "--out", str(tmp_path / "o.json")]) == 2
    assert "at least two" in capsys.readouterr().err
    assert main(["identify", str(tmp_path / "none.safetensors"), "--method", "lape",
                 "--out", str(tmp_path / "o.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_a_registered_method_needs_no_cli_change(stats_file, tmp_path, monkeypatch, capsys):
    """A method registered in identify/registry.py gets --method, its own flag and the
    flag check from the registry alone."""
    from langneuron_ext.identify import registry

    def top_layer(stats, prefix=None, layer=0):
        mask = torch.zeros(len(stats.languages), stats.num_layers, stats.intermediate_size,
                           dtype=torch.bool)
        mask[:, layer, :3] = True
        return NeuronSet.from_masks("top-layer", {"layer": layer}, stats.languages, mask)

    monkeypatch.setattr(registry, "_METHODS", dict(registry._METHODS))
    registry.register_method(registry.Method(
        "top-layer", top_layer, title="first neurons of one layer (a test method)",
        options=(registry.Option("layer", "--layer-index", int, 0, "the layer"),)))
    out = tmp_path / "t.json"
    assert main(["identify", str(stats_file), "--method", "top-layer", "--layer-index", "2",
                 "--out", str(out)]) == 0
    ns = NeuronSet.load(out)
    assert ns.method == "top-layer" and ns.per_layer_counts()[0].tolist() == [0, 0, 3, 0, 0, 0]
    capsys.readouterr()
    assert main(["identify", str(stats_file), "--method", "lape", "--layer-index", "2",
                 "--out", str(out)]) == 2
    assert "--layer-index applies to --method top-layer only" in capsys.readouterr().err
