"""Specific / related / general neurons: the published NJUNLP mask, a per-neuron loop written
from docs/design.md, the lambda bisection, and bad input."""
import json
import math

import numpy as np
import pytest
import torch

from langneuron_ext.identify import IdentifyError, ternary
from langneuron_ext.identify.ternary import LAMBDA_HIGH
from langneuron_ext.stats import ActivationStats


@pytest.fixture(scope="module")
def mistral(fixtures_dir):
    base = fixtures_dir / "njunlp_mistral_mgsm"
    z = np.load(base / "counts.npz")
    langs = [str(x) for x in z["languages"]]
    make = lambda part: ActivationStats(  # noqa: E731
        torch.from_numpy(z[f"over_zero_{part}"]).long(),
        torch.from_numpy(z[f"total_tokens_{part}"]), langs)
    released = json.loads((base / "mask_released.json").read_text())
    return make("full"), make("prefix"), released


def test_reproduces_published_mask(mistral):
    full, prefix, released = mistral
    ns = ternary(full.minus(prefix))
    assert ns.params["lambda"] == 0.109375
    assert ns.params["selected"] == 4588
    assert ns.to_dict()["neurons"] == released               # every one of the assignments
    assert sum(ns.count(lang) for lang in ns.languages) == 6307
    assert ternary(full, prefix=prefix).neurons == ns.neurons


def test_types_are_consistent(mistral):
    full, prefix, _ = mistral
    stats = full.minus(prefix)
    ns = ternary(stats)
    K = len(ns.languages)
    spec, rel, gen = (NeuronSetMasks(ns, t) for t in ("specific", "related", "general"))
    assert torch.equal(spec | rel, ns.masks())
    assert not bool((spec & rel).any())
    assert bool((spec.sum(dim=0) <= 1).all())                 # specific: one language only
    n_rel = rel.sum(dim=0)
    assert bool(((n_rel == 0) | ((n_rel > 1) & (n_rel < K))).all())
    P = stats.counts.float() / stats.n_tokens.float()[:, None, None]
    above = P > ns.params["tau"]
    assert torch.equal(gen, above.all(dim=0, keepdim=True).expand_as(gen))
    assert bool(above[spec | rel].all())


def NeuronSetMasks(ns, type_name):
    return torch.stack([torch.zeros(ns.num_layers, ns.intermediate_size, dtype=torch.bool)
                        .index_put_(_ids(ns.types[type_name][lang]), torch.tensor(True))
                        for lang in ns.languages])


def _ids(layers):
    rows = [l for l, ids in layers.items() for _ in ids]
    cols = [i for ids in layers.values() for i in ids]
    return torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)


def random_stats(K=4, L=3, I=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = torch.tensor([50_021 + 3571 * k for k in range(K)])
    p = torch.rand(K, L, I, generator=g) ** 2
    special = torch.rand(K, L, I, generator=g) < 0.25
    p = torch.where(special, p.sqrt(), p * 0.4)
    counts = (p * n[:, None, None]).long()
    return ActivationStats(counts, n, [f"l{k}" for k in range(K)])


def ternary_by_loop(stats, top_rate, bar_ratio, lam):
    """docs/design.md steps 1-6 one neuron at a time (float32 probabilities, float64 scores)."""
    K, L, I = stats.counts.shape
    P = (stats.counts.float() / stats.n_tokens.float()[:, None, None]).permute(1, 2, 0)
    flat = sorted(P.flatten().tolist())
    tau = flat[round(bar_ratio * len(flat)) - 1]
    norm_max = sum(1 / j for j in range(1, K + 1)) / K
    scores = []
    for l in range(L):
        for i in range(I):
            p = P[l, i]
            pn = p / p.sum() if p.sum() > 0 else torch.full_like(p, 1 / K)
            h = -sum(x * math.log(x) for x in pn.tolist() if x > 0) / math.log(K)
            scores.append((h - lam * p.max().item() / norm_max, l * I + i))
    chosen = [idx for _, idx in sorted(scores)[:round(top_rate * L * I)]]
    out = {f"l{k}": {l: [] for l in range(L)} for k in range(K)}
    for idx in chosen:
        l, i = divmod(idx, I)
        langs = [k for k in range(K) if P[l, i, k].item() > tau]
        if 1 <= len(langs) < K:
            for k in langs:
                out[f"l{k}"][l].append(i)
    return {lang: {l: sorted(ids) for l, ids in layers.items()} for lang, layers in out.items()}


@pytest.mark.parametrize("seed, top_rate, bar, lam", [
    (0, 0.1, 0.95, 0.0), (1, 0.1, 0.9, 0.05), (2, 0.2, 0.8, 0.15), (3, 0.05, 0.95, 1.0)])
def test_matches_loop_over_neurons(seed, top_rate, bar, lam):
    stats = random_stats(seed=seed)
    ns = ternary(stats, top_rate=top_rate, bar_ratio=bar, lam=lam)
    assert ns.neurons == ternary_by_loop(stats, top_rate, bar, lam)
    assert ns.params["lambda"] == lam and ns.params["lambda_auto"] is False


def all_language_selected(stats, top_rate, bar, lam):
    ns = ternary(stats, top_rate=top_rate, bar_ratio=bar, lam=lam)
    return ns.params["selected_all_languages"]


def banded_stats(K, L=4, I=100, seed=0):
    """Moderate neurons (p in [0.3, 0.5]), 8 language-specific ones (0.9 in one language) and a
    band of 24 neurons at 0.97 in every language, which a large lambda selects."""
    g = torch.Generator().manual_seed(seed)
    n = torch.tensor([20_011 + 101 * k for k in range(K)])
    p = 0.3 + 0.2 * torch.rand(K, L, I, generator=g)
    for j in range(8):
        p[:, j % L, 10 + j] = 0.01
        p[j % K, j % L, 10 + j] = 0.9
    p[:, :, :6] = 0.97
    return ActivationStats((p * n[:, None, None]).long(), n, [f"l{k}" for k in range(K)])


@pytest.mark.parametrize("K", [2, 3, 5, 10])
def test_auto_lambda_is_bisection_boundary(K):
    stats = banded_stats(K, seed=K)
    assert all_language_selected(stats, 0.05, 0.9, 0.0) == 0
    assert all_language_selected(stats, 0.05, 0.9, LAMBDA_HIGH) > 0
    ns = ternary(stats, top_rate=0.05, bar_ratio=0.9)
    lam = ns.params["lambda"]
    assert ns.params["lambda_auto"] is True
    assert all_language_selected(stats, 0.05, 0.9, lam) == 0
    assert 0 <= lam < LAMBDA_HIGH
    # bisection ends within its tolerance (1e-3) below a lambda that fails
    assert all_language_selected(stats, 0.05, 0.9, lam + 1e-3) > 0
    # and it is a multiple of 0.2 / 2^steps, as the reference's midpoints are
    assert math.isclose(lam / 0.2 * 256, round(lam / 0.2 * 256), abs_tol=1e-9)


def test_auto_lambda_takes_upper_end_when_it_qualifies():
    stats = random_stats(K=3, seed=7)
    ns = ternary(stats, top_rate=0.05, bar_ratio=0.99)
    if all_language_selected(stats, 0.05, 0.99, LAMBDA_HIGH) == 0:
        assert ns.params["lambda"] == LAMBDA_HIGH
    else:
        assert ns.params["lambda"] < LAMBDA_HIGH


def test_auto_lambda_impossible_is_an_error():
    # every neuron fires in every language: even lambda = 0 selects all-language neurons
    n = torch.tensor([1000, 1000])
    counts = torch.randint(900, 1000, (2, 2, 20))
    with pytest.raises(IdentifyError, match="pass an explicit lambda"):
        ternary(ActivationStats(counts, n, ["a", "b"]), top_rate=0.5, bar_ratio=0.1)


def test_explicit_lambda_all_language_neurons_are_general_not_language():
    n = torch.tensor([1000, 1000])
    counts = torch.randint(900, 1000, (2, 2, 20))
    ns = ternary(ActivationStats(counts, n, ["a", "b"]), top_rate=0.5, bar_ratio=0.1, lam=0.0)
    assert ns.params["selected_all_languages"] > 0
    # with K = 2 there are no related neurons: a neuron in both languages would be general
    assert not bool((ns.mask("a") & ns.mask("b")).any())
    assert ns.count("a") + ns.count("b") + ns.params["selected_all_languages"] <= 20
    assert sum(len(v) for v in ns.types["general"]["a"].values()) >= \
        ns.params["selected_all_languages"]


@pytest.mark.parametrize("lam, match", [("bogus", "'auto' or a number"), (-0.1, ">= 0"),
                                         (float("nan"), "finite"), ([1], "'auto' or a number")])
def test_bad_lambda(lam, match):
    with pytest.raises(IdentifyError, match=match):
        ternary(random_stats(), lam=lam)


def test_bad_stats_and_rates():
    stats = random_stats()
    with pytest.raises(IdentifyError, match="at least two"):
        ternary(stats.select(["l2"]))
    with pytest.raises(IdentifyError, match="bar_ratio"):
        ternary(stats, bar_ratio=0)
    with pytest.raises(IdentifyError, match="top_rate"):
        ternary(stats, top_rate=1.01)
    prefix = random_stats()
    prefix.n_tokens = stats.n_tokens // 2
    prefix.n_tokens[3] = stats.n_tokens[3] + 1
    with pytest.raises(IdentifyError, match=r"\['l3'\] have no counted tokens after subtract"):
        ternary(stats, prefix=prefix)
