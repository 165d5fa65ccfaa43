"""LAPE against a per-neuron loop written from docs/design.md, on hand-made and published stats."""
import math

import numpy as np
import pytest
import torch

from langneuron_ext.identify import IdentifyError, lape
from langneuron_ext.stats import ActivationStats


def random_stats(K=4, L=3, I=64, seed=0):
    """Counts with a few strongly language-specific neurons, distinct probabilities (no ties)."""
    g = torch.Generator().manual_seed(seed)
    n = torch.tensor([100_003 + 7919 * k for k in range(K)])
    p = torch.rand(K, L, I, generator=g) ** 3
    special = torch.randint(0, K, (L, I), generator=g)
    boost = torch.rand(L, I, generator=g) < 0.3
    p = torch.where(boost & (torch.arange(K)[:, None, None] == special), p.sqrt(), p * 0.3)
    counts = (p * n[:, None, None]).long()
    return ActivationStats(counts, n, [f"l{k}" for k in range(K)])


def lape_by_loop(stats, top_rate, filter_rate, bar_ratio):
    """docs/design.md steps 1-5, one neuron at a time, sorted with (entropy, flat index)."""
    K, L, I = stats.counts.shape
    P = [[[stats.counts[k, l, i].item() / stats.n_tokens[k].item() for k in range(K)]
          for i in range(I)] for l in range(L)]
    P32 = torch.tensor(P, dtype=torch.float32)                 # the reference's precision
    flat = sorted(P32.flatten().tolist())
    q = flat[round(filter_rate * len(flat)) - 1]
    bar = flat[round(bar_ratio * len(flat)) - 1]
    entropies = []
    for l in range(L):
        for i in range(I):
            p = P32[l, i]
            total = p.sum()
            h = 0.0
            if total > 0:
                pn = p / total
                h = -sum(x * math.log(x) for x in pn.tolist() if x > 0)
            if not any(x > q for x in p.tolist()):
                h = math.inf
            entropies.append((h, l * I + i))
    chosen = [idx for _, idx in sorted(entropies)[:round(top_rate * L * I)]]
    out = {f"l{k}": {l: [] for l in range(L)} for k in range(K)}
    for idx in chosen:
        l, i = divmod(idx, I)
        for k in range(K):
            if P32[l, i, k].item() > bar:
                out[f"l{k}"][l].append(i)
    return {lang: {l: sorted(ids) for l, ids in layers.items()} for lang, layers in out.items()}


@pytest.mark.parametrize("seed, top_rate, filter_rate, bar", [
    (0, 0.1, 0.95, 0.95), (1, 0.05, 0.9, 0.8), (2, 0.2, 0.7, 0.9), (3, 1.0, 0.95, 0.95)])
def test_matches_loop_over_neurons(seed, top_rate, filter_rate, bar):
    stats = random_stats(seed=seed)
    ns = lape(stats, top_rate=top_rate, filter_rate=filter_rate, activation_bar_ratio=bar)
    assert ns.neurons == lape_by_loop(stats, top_rate, filter_rate, bar)
    assert ns.method == "lape" and ns.params["top_rate"] == top_rate


def test_hand_made_specific_and_shared_neurons():
    # 2 languages, 1 layer, 40 neurons: neuron 3 fires only in a, neuron 7 only in b,
    # neuron 9 often in both; every other neuron fires rarely
    counts = torch.full((2, 1, 40), 1)
    counts[0, 0, 3], counts[1, 0, 7] = 90, 80
    counts[:, 0, 9] = torch.tensor([60, 61])
    stats = ActivationStats(counts, torch.tensor([100, 100]), ["a", "b"])
    ns = lape(stats, top_rate=0.05, filter_rate=0.95, activation_bar_ratio=0.95)  # 2 selected
    assert ns.neurons == {"a": {0: [3]}, "b": {0: [7]}}
    # with a lower bar, a neuron selected for low entropy gains every language above it
    ns = lape(stats, top_rate=0.075, filter_rate=0.95, activation_bar_ratio=0.5)
    assert ns.neurons["a"][0] == [3, 9] and ns.neurons["b"][0] == [7, 9]


def test_language_without_neurons_keeps_empty_entry():
    stats = random_stats(K=3)
    stats.counts[2] = stats.counts[2] // 50            # the last language never stands out
    ns = lape(stats, top_rate=0.02)
    assert ns.languages == ["l0", "l1", "l2"]
    assert ns.count("l2") == 0 and set(ns.neurons["l2"]) == {0, 1, 2}


def test_prefix_is_subtracted():
    full, prefix = random_stats(seed=4), random_stats(seed=5)
    prefix.counts //= 4
    prefix.n_tokens //= 4
    assert lape(full, prefix=prefix).neurons == lape(full.minus(prefix)).neurons


@pytest.mark.parametrize("kw, match", [
    (dict(top_rate=0.0), "top_rate must be in"), (dict(top_rate=1.5), "top_rate must be in"),
    (dict(top_rate=float("nan")), "top_rate must be in"),
    (dict(filter_rate=-0.1), "filter_rate"), (dict(activation_bar_ratio=2), "activation_bar"),
    (dict(top_rate=1e-4), "selects round"), (dict(top_rate="many"), "must be a number")])
def test_bad_parameters(kw, match):
    with pytest.raises(IdentifyError, match=match):
        lape(random_stats(), **kw)


def test_bad_stats():
    stats = random_stats()
    with pytest.raises(IdentifyError, match="at least two"):
        lape(stats.select(["l0"]))
    stats.n_tokens[1] = 0
    with pytest.raises(IdentifyError, match=r"\['l1'\] have no counted tokens"):
        lape(stats)
    zero = ActivationStats(torch.zeros(3, 2, 10, dtype=torch.long), torch.tensor([5, 5, 5]),
                           ["a", "b", "c"])
    with pytest.raises(IdentifyError, match="all activation counts are zero"):
        lape(zero)
    with pytest.raises(IdentifyError, match="expected ActivationStats"):
        lape(torch.zeros(3, 2, 10))


def test_lape_on_published_njunlp_counts(fixtures_dir):
    z = np.load(fixtures_dir / "njunlp_mistral_mgsm" / "counts.npz")
    langs = [str(x) for x in z["languages"]]
    stats = ActivationStats(torch.from_numpy(z["over_zero_full"]).long(),
                            torch.from_numpy(z["total_tokens_full"]), langs)
    ns = lape(stats)
    K, L, I = stats.counts.shape
    masks = ns.masks()
    # filter_rate == bar ratio: every selected neuron has a language, so the union is the selection
    assert ns.num_unique() == round(0.01 * L * I) == ns.params["selected"]
    P = stats.counts.float() / stats.n_tokens.float()[:, None, None]
    assert bool((P[masks] > ns.params["activation_bar"]).all())
    assert bool((masks.sum(dim=0) > 1).any())          # multi-language neurons exist
