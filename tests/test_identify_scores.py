"""Per-neuron scores: the values both identification methods rank, the file and the plot."""
import math

import pytest
import torch

import langneuron_ext as ln
from langneuron_ext.cli import main as cli_main
from langneuron_ext.identify import IdentifyError, NeuronScores, lape, scores, ternary
from langneuron_ext.identify.scores import plot_entropy_by_layer
from langneuron_ext.stats import ActivationStats


def random_stats(K=4, L=5, width=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = torch.randint(500, 1000, (K,), generator=g)
    counts = (torch.rand(K, L, width, generator=g) ** 3 * n[:, None, None]).long()
    return ActivationStats(counts, n, [f"l{k}" for k in range(K)], model_name="toy")


def test_api_is_the_function():
    import langneuron_ext.identify.scores  # noqa: F401  (importing the module must not shadow)
    assert callable(ln.identify.scores) and ln.identify.scores is scores


def test_scores_are_what_lape_selects():
    stats = random_stats()
    s = scores(stats)
    P = stats.counts.double() / stats.n_tokens.double()[:, None, None]
    assert s.probabilities.dtype == torch.float32
    assert torch.allclose(s.probabilities.double(), P, atol=1e-7)
    # entropy by hand for one neuron
    p = s.probabilities[:, 2, 7].double()
    q = p / p.sum()
    h = -sum(float(x) * math.log(float(x)) for x in q if x > 0)
    assert s.lape_entropy[2, 7].item() == pytest.approx(h, rel=1e-5)
    # LAPE picks the smallest filtered entropies
    ns = lape(stats, top_rate=0.05)
    k = ns.params["selected"]
    picked = set(s.lape_filtered.flatten().topk(k, largest=False).indices.tolist())
    chosen = {layer * stats.intermediate_size + i for lang in ns.languages
              for layer, ids in ns.neurons[lang].items() for i in ids}
    assert chosen <= picked
    assert s.filter_value == ns.params["filter_value"]


def test_ternary_entropy_ranks_like_ternary_at_lambda_zero():
    stats = random_stats(seed=1)
    s = scores(stats)
    assert s.ternary_entropy.dtype == torch.float64
    assert float(s.ternary_entropy.min()) >= 0 and float(s.ternary_entropy.max()) <= 1 + 1e-9
    ns = ternary(stats, top_rate=0.05, lam=0.0)
    k = ns.params["selected"]
    picked = set(s.ternary_entropy.to(torch.float32).flatten()
                 .topk(k, largest=False).indices.tolist())
    chosen = {layer * stats.intermediate_size + i for lang in ns.languages
              for layer, ids in ns.neurons[lang].items() for i in ids}
    assert chosen <= picked
    # a neuron active in one language only has entropy 0, uniform activity has entropy 1
    counts = torch.zeros(3, 4, 6, dtype=torch.long)
    counts[0, 1, 2] = 10
    counts[:, 2, 3] = 10
    counts[:, 0, 0] = 1            # something else fires too
    one = scores(ActivationStats(counts, torch.tensor([10, 10, 10]), ["a", "b", "c"]))
    assert one.ternary_entropy[1, 2].item() == pytest.approx(0, abs=1e-6)
    assert one.ternary_entropy[2, 3].item() == pytest.approx(1, abs=1e-6)


def test_file_round_trip_and_plot(tmp_path):
    s = scores(random_stats())
    path = s.save(tmp_path / "s.safetensors")
    back = NeuronScores.load(path)
    assert back.languages == s.languages and back.filter_value == s.filter_value
    for name, t in s.tensors().items():
        assert torch.equal(getattr(back, name), t), name
    e = s.entropy_by_layer()
    assert len(e["ternary_mean"]) == 5 and len(e["lape_quantile"]) == 5
    assert all(lo <= m for lo, m in zip(e["ternary_quantile"], e["ternary_mean"]))
    assert e["ternary_quantile"][2] == pytest.approx(
        float(s.ternary_entropy[2].quantile(0.01)))
    # LAPE's curves skip silent neurons (entropy 0 by its formula); a silent layer is None
    stats = random_stats()
    stats.counts[:, 3] = 0
    stats.counts[:, 1, :5] = 0
    e = scores(stats).entropy_by_layer()
    assert e["lape_mean"][3] is None and e["ternary_mean"][3] == pytest.approx(1.0)
    firing = scores(stats).lape_entropy[1, 5:].double() / math.log(4)
    assert e["lape_mean"][1] == pytest.approx(float(firing.mean()))
    assert plot_entropy_by_layer(s, tmp_path / "e.png").stat().st_size > 0
    with pytest.raises(IdentifyError, match="does not exist"):
        NeuronScores.load(tmp_path / "missing.safetensors")
    random_stats().save(tmp_path / "stats.safetensors")
    with pytest.raises(IdentifyError, match="not a scores file"):
        NeuronScores.load(tmp_path / "stats.safetensors")


def test_cli_identify_scores(tmp_path):
    stats = random_stats()
    stats.save(tmp_path / "stats.safetensors")
    rc = cli_main(["identify", str(tmp_path / "stats.safetensors"), "--method", "ternary",
                   "--out", str(tmp_path / "n.json"), "--scores", str(tmp_path / "sc.safetensors"),
                   "--json"])
    assert rc == 0
    back = NeuronScores.load(tmp_path / "sc.safetensors")
    assert torch.equal(back.ternary_entropy, scores(stats).ternary_entropy)
    assert (tmp_path / "sc.entropy.png").stat().st_size > 0
