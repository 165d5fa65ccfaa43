"""Histograms on the real model: a Gemma 3 270M scan with histograms (`scan --hist`) of a few
Debian-handbook paragraphs in four languages, against the activations that forward hooks
record in the same forward passes.

- every counted token lands in exactly one bin: per (language, neuron) the bins add up to
  n_tokens;
- the mass at and above the edge 0, less the activations exactly 0, equals `counts` (act > 0);
- the bins equal the hooked activations binned by the op's rule, the maxima their maxima;
- `stats.median()` lies within one bin of torch.quantile over the hooked activations.
"""
from __future__ import annotations

import pytest
import torch
from test_real_model import LANGUAGES, OPTS, gemma, handbook  # noqa: F401  (fixtures)

from langneuron_ext.ops.reference import activation_fp32

pytestmark = pytest.mark.slow


class HookRecorder:
    """fp32 act(gate) of every token per language and layer, from hooks on every gate_proj;
    a pre-hook on the base model checks each forward gets the expected batch."""

    def __init__(self, model, tokenizer, corpus):
        from langneuron_ext.corpus import iter_batches
        self.batches = list(iter_batches(corpus, tokenizer, LANGUAGES, **OPTS))
        layers = model.model.layers
        K, self.I = len(LANGUAGES), model.config.intermediate_size
        self.acts = [[[] for _ in layers] for _ in range(K)]
        self.calls, self.rows = 0, None

        def pre_hook(module, args, kwargs):
            batch = self.batches[self.calls]
            assert torch.equal(kwargs["input_ids"].cpu(), batch.input_ids)
            self.rows = batch.row_lang.reshape(-1)
            self.calls += 1

        def hook_for(layer):
            def hook(module, inputs, output):
                a = activation_fp32(output.reshape(-1, self.I).float(), "gelu_tanh")
                for k in range(K):
                    self.acts[k][layer].append(a[self.rows == k])
            return hook

        self.hooks = [model.model.register_forward_pre_hook(pre_hook, with_kwargs=True)]
        self.hooks += [layer.mlp.gate_proj.register_forward_hook(hook_for(i))
                       for i, layer in enumerate(layers)]

    def stacked(self, reduce):
        """[K, L, I]: reduce(activations [n, I]) per language and layer."""
        return torch.stack([torch.stack([reduce(torch.cat(per_layer)) for per_layer in per_lang])
                            for per_lang in self.acts])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()


def test_gemma_histograms_equal_hooked_activations(gemma, handbook):  # noqa: F811
    import langneuron_ext as ln
    model, tokenizer = gemma
    with HookRecorder(model, tokenizer, handbook) as hooks:
        stats = ln.scan(model, tokenizer, handbook, progress=False, hist_bins=32, **OPTS)
    assert hooks.calls == len(hooks.batches) > 0
    edges = ln.ops.default_hist_edges(32)
    assert torch.equal(stats.hist_edges, edges) and stats.hist.shape == (4, 18, 2048, 32)
    totals = stats.hist.sum(-1)
    assert bool((stats.n_tokens > 0).all())
    assert torch.equal(totals, stats.n_tokens[:, None, None].expand_as(totals))

    zero = int((edges == 0).nonzero())             # bin zero + 1 starts at 0.0
    exact_zeros = hooks.stacked(lambda a: (a == 0).sum(0))
    assert torch.equal(stats.hist[..., zero + 1:].sum(-1) - exact_zeros, stats.counts)

    binned = hooks.stacked(lambda a: torch.nn.functional.one_hot(
        torch.bucketize(a, edges, right=True), 32).sum(0))
    assert torch.equal(stats.hist, binned.long())
    assert torch.equal(stats.amax, hooks.stacked(lambda a: a.amax(0)))

    true = hooks.stacked(lambda a: a.double().quantile(0.5, dim=0))
    est = stats.median()
    b_true = torch.bucketize(true.float(), edges, right=True)
    b_est = torch.bucketize(est.float(), edges, right=True)
    assert bool(((b_true - b_est).abs() <= 1).all())
    # inside a closed bin the estimate is off by at most that bin's width
    width = torch.cat([torch.tensor([torch.inf]), edges[1:] - edges[:-1],
                       torch.tensor([torch.inf])]).double()
    closed = (b_true > 0) & (b_true < 31) & (b_true == b_est)
    assert bool(((est - true).abs()[closed] <= width[b_true][closed] + 1e-6).all())
    assert float(closed.double().mean()) > 0.5
