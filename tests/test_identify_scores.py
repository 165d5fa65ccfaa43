"""Per-neuron scores: the values both identification methods rank, the file and the plot."""
import json
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


def padded_stats(seed=3):
    """MoE-style stats: 4 layers padded to the widest (40), layers 1 and 3 only 24 wide; the
    padding's counts are large on purpose, as if something had counted there."""
    stats = random_stats(L=4, width=40, seed=seed)
    stats.extra["layer_sizes"] = json.dumps([40, 24, 40, 24])
    stats.counts[:, 1, 24:] = stats.n_tokens[:, None]
    stats.counts[:, 3, 24:] = stats.n_tokens[:, None] // 2
    return stats


def test_scores_leave_padding_out_as_the_methods_do():
    stats = padded_stats()
    valid = stats.neuron_mask()
    assert valid is not None and int((~valid).sum()) == 32
    s = scores(stats)
    assert s.filter_value == lape(stats, top_rate=0.05).params["filter_value"]
    P = s.probabilities.permute(1, 2, 0)
    want = P[valid].flatten()
    want = want.kthvalue(round(0.95 * want.numel())).values.item()
    assert s.filter_value == want
    for t in (s.lape_entropy, s.lape_filtered, s.ternary_entropy):
        assert bool(torch.isnan(t[~valid]).all()) and not bool(torch.isnan(t[valid]).any())
    # the padding changes nothing: the same stats cut to their neurons give the same scores
    narrow = ActivationStats(stats.counts[:, :, :24].clone(), stats.n_tokens, stats.languages)
    s_narrow = scores(narrow)
    assert torch.equal(s.ternary_entropy[1, :24], s_narrow.ternary_entropy[1])
    e = s.entropy_by_layer()
    assert e["ternary_mean"][3] == pytest.approx(float(s.ternary_entropy[3, :24].mean()))
    assert e["ternary_quantile"][1] == pytest.approx(
        float(s.ternary_entropy[1, :24].quantile(0.01)))
    lape_1 = s.lape_entropy[1, :24].double() / math.log(4)
    firing = s.max_probability[1, :24] > 0
    assert e["lape_mean"][1] == pytest.approx(float(lape_1[firing].mean()))
    # ternary selects no padding and its scores agree with the file's
    ns = ternary(stats, top_rate=0.05, lam=0.0)
    for lang in ns.languages:
        for layer, ids in ns.neurons[lang].items():
            assert all(i < stats.layer_sizes()[layer] for i in ids)


def hist_stats(seed=5, K=3, L=2, width=6, n=300):
    """Stats with histograms of known activations acts [K, L, I, n]."""
    g = torch.Generator().manual_seed(seed)
    shift = torch.randn(K, L, width, 1, generator=g)
    acts = torch.nn.functional.silu(shift + torch.randn(K, L, width, n, generator=g))
    edges = torch.linspace(-0.3, 3.0, 40)
    hist = torch.nn.functional.one_hot(torch.bucketize(acts, edges, right=True), 41).sum(-2)
    stats = ActivationStats((acts > 0).sum(-1), torch.full((K,), n), ["a", "b", "c"][:K],
                            model_name="toy", hist=hist.long(), hist_edges=edges,
                            amax=acts.amax(-1))
    return stats, acts


def test_medians_and_mass_above_median():
    stats, acts = hist_stats()
    s = scores(stats)
    assert torch.equal(s.medians, stats.median().float())
    # the share of all languages' activations (each language weighted equally) above
    # language k's median, against the exact share from the activations themselves
    pooled = acts.permute(1, 2, 0, 3).reshape(2, 6, -1)                   # [L, I, K * n]
    exact = (pooled[None] > torch.quantile(acts, 0.5, dim=-1)[..., None]).double().mean(-1)
    width = float((stats.hist_edges[1:] - stats.hist_edges[:-1]).max())
    # the median is within one bin, so the share differs by at most the mass of ~2 bins
    pooled_hist = stats.hist.sum(0).double() / stats.hist.sum((0, -1))[..., None]
    two_bins = 2 * pooled_hist.max(-1).values
    assert bool(((s.mass_above_median.double() - exact).abs() <= two_bins + 1e-6).all())
    assert width < 0.1
    assert float(s.mass_above_median.min()) >= 0 and float(s.mass_above_median.max()) <= 1
    # a language whose median is above everything of the others': little mass above it
    hi, _ = hist_stats(seed=6)
    hi.hist[0] = 0
    hi.hist[0, ..., -1] = 300                                              # all in the top bin
    hi.amax[0] = 5.0
    top = scores(hi).mass_above_median[0]
    assert bool((top < 0.34).all())


def test_scores_file_keeps_medians(tmp_path):
    stats, _ = hist_stats()
    s = scores(stats)
    back = NeuronScores.load(s.save(tmp_path / "s.safetensors"))
    assert torch.equal(back.medians, s.medians)
    assert torch.equal(back.mass_above_median, s.mass_above_median)
    plain = scores(random_stats())
    assert plain.medians is None and "medians" not in plain.tensors()
    assert NeuronScores.load(plain.save(tmp_path / "p.safetensors")).medians is None
