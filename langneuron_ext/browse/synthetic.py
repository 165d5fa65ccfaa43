"""Synthetic inputs for the browser, of any size: stats, a typed neuron set with phases, and
examples whose windows hold Zipf-distributed tokens (as text does). Used to measure a 7B-size
site (`benchmarks/bench_browser.py`) and by the browser tests."""
from __future__ import annotations

import string
from typing import Optional, Sequence

import torch


def synthetic_inputs(num_layers: int = 32, intermediate_size: int = 11008,
                     languages: Sequence[str] = ("en", "fr", "de", "es", "it", "ru", "ja", "zh",
                                                 "ar", "ko"),
                     per_language: int = 350, k: int = 20, context: int = 16, seed: int = 0,
                     hist_bins: Optional[int] = None, vocab_size: int = 32000):
    """(stats, neurons, examples): `per_language` neurons per language (a tenth shared with the
    next language), types and four phases, and k examples per language and neuron."""
    from ..examples import Examples, columns_of
    from ..identify.neuron_set import NeuronSet
    from ..stats import ActivationStats

    g = torch.Generator().manual_seed(seed)
    K, L, N = len(languages), num_layers, intermediate_size
    n_tokens = torch.full((K,), 100_000, dtype=torch.int64)
    probs = torch.rand(K, L, N, generator=g) * 0.3
    chosen = {}
    for kk, lang in enumerate(languages):
        # late and early layers hold more language neurons (as in the papers)
        w = torch.tensor([1.0 + 3.0 * (abs(l - L / 2) / (L / 2)) ** 2 for l in range(L)])
        layers = torch.multinomial(w, per_language, replacement=True, generator=g)
        ids = torch.randint(0, N, (per_language,), generator=g)
        if kk > 0:                                    # shared with the previous language
            share = per_language // 10
            prev = chosen[languages[kk - 1]]
            layers[:share], ids[:share] = prev[0][:share], prev[1][:share]
        chosen[lang] = (layers, ids)
        probs[kk, layers, ids] = 0.6 + 0.4 * torch.rand(per_language, generator=g)
    counts = (probs * n_tokens[:, None, None]).long()
    stats = ActivationStats(counts, n_tokens, list(languages), model_name="synthetic-7b",
                            model_type="llama")
    if hist_bins:
        stats.hist = torch.randint(0, 1000, (K, L, N, hist_bins), generator=g)
        stats.hist_edges = torch.linspace(-0.5, 4.0, hist_bins - 1)
    neurons = {lang: {} for lang in languages}
    for lang, (layers, ids) in chosen.items():
        for l, i in zip(layers.tolist(), ids.tolist()):
            neurons[lang].setdefault(l, set()).add(i)
    neurons = {lang: {l: sorted(v) for l, v in m.items()} for lang, m in neurons.items()}
    types = {"specific": {}, "related": {}, "general": {}}
    owners = {}
    for lang, m in neurons.items():
        for l, ids in m.items():
            for i in ids:
                owners.setdefault((l, i), []).append(lang)
    for (l, i), langs in owners.items():
        t = "specific" if len(langs) == 1 else "related"
        for lang in langs:
            types[t].setdefault(lang, {}).setdefault(l, []).append(i)
    q = L // 4
    phases = [dict(name=n, start=a, stop=b) for n, a, b in (
        ("understanding", 0, q), ("shared reasoning", q, 2 * q),
        ("output transformation", 2 * q, 3 * q), ("vocabulary output", 3 * q, L))]
    ns = NeuronSet("ternary", {"synthetic": True}, list(languages), L, N, neurons, types, phases)
    columns = columns_of(ns)
    M, W = columns.shape[0], 2 * context + 1
    ex = Examples.empty(list(languages), columns, k, context, model_name="synthetic-7b",
                        model_type="llama", num_layers=L, intermediate_size=N)
    ranks = torch.arange(1, vocab_size + 1, dtype=torch.float64)
    zipf = 1.0 / ranks
    ex.tokens = torch.multinomial(zipf, K * M * k * W, replacement=True,
                                  generator=g).reshape(K, M, k, W)
    ex.window = torch.randn(K, M, k, W, generator=g).clamp(min=-0.2)
    center = ex.window[..., context]
    ex.values = (center.abs() + 3.0).sort(dim=-1, descending=True).values
    ex.window[..., context] = ex.values
    ex.keys = torch.arange(K * M * k, dtype=torch.int64).reshape(K, M, k)
    letters = string.ascii_lowercase
    ex.vocab = {}
    for i in torch.unique(ex.tokens).tolist():
        n = 2 + (i * 7919) % 7
        ex.vocab[i] = ("▁" if i % 3 == 0 else "") + "".join(letters[(i * 31 + j * 17) % 26]
                                                            for j in range(n))
    return stats, ns, ex
