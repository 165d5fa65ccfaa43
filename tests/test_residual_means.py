"""Residual means (`scan(..., track_residual=True)`, `langneuron scan --residual-means`).

The oracle is a plain hook-based sum on the unpatched model over the same batches: per forward
and language, the fp32 outputs of each decoder layer for that language's tokens, converted to
fp64 and summed, added in batch order. The scan must equal it bit for bit; merge, resume and a
two-rank torchrun scan keep the sums (resume adds partial sums in another order: fp64 rounding;
torchrun ranks compute with one thread each: fp32 rounding of the hidden states).
"""
from __future__ import annotations

import subprocess

import pytest
import torch
from test_scan import LANGS, OPTS, Interrupt, _interrupt_after, tiny_llama, write_corpus
from test_torchrun import TORCHRUN, _env, _texts

from langneuron_ext.cli import main
from langneuron_ext.corpus import iter_batches
from langneuron_ext.scan import scan
from langneuron_ext.stats import ActivationStats, StatsError


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from langneuron_ext.models.toy import byte_tokenizer
    return tiny_llama(), byte_tokenizer(), write_corpus(tmp_path_factory.mktemp("corpus"))


def hook_residual_sums(model, tok, corpus):
    K, L, H = len(LANGS), model.config.num_hidden_layers, model.config.hidden_size
    sums = torch.zeros(K, L, H, dtype=torch.float64)
    current = {}

    def hook_for(li):
        def hook(module, inputs, output):
            h = (output[0] if isinstance(output, tuple) else output).reshape(-1, H)
            rows = current["rows"].reshape(-1)
            for k in range(K):
                if bool((rows == k).any()):
                    sums[k, li] += h[rows == k].double().sum(0)
        return hook

    hooks = [layer.register_forward_hook(hook_for(i))
             for i, layer in enumerate(model.model.layers)]
    try:
        for batch in iter_batches(corpus, tok, LANGS, **OPTS):
            current["rows"] = batch.row_lang
            with torch.no_grad():
                model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return sums


def test_residual_sums_equal_hook_sums_bit_for_bit(setup, tmp_path):
    model, tok, corpus = setup
    stats = scan(model, tok, corpus, progress=False, impl="torch", track_residual=True, **OPTS)
    expected = hook_residual_sums(model, tok, corpus)
    assert stats.residual_sums.dtype == torch.float64
    assert torch.equal(stats.residual_sums, expected)
    assert float(stats.residual_sums.abs().sum()) > 0
    means = stats.residual_means()
    assert torch.equal(means, expected / stats.n_tokens.double()[:, None, None])
    path = stats.save(tmp_path / "s.safetensors")
    again = ActivationStats.load(path)
    assert torch.equal(again.residual_sums, stats.residual_sums)
    # without the option nothing is recorded, and asking for means says how to get them
    plain = scan(model, tok, corpus, progress=False, impl="torch", **OPTS)
    assert plain.residual_sums is None
    with pytest.raises(StatsError, match="--residual-means"):
        plain.residual_means()


def test_merge_and_select_keep_residual_sums(setup):
    model, tok, corpus = setup
    a = scan(model, tok, corpus, languages=["en", "fr"], progress=False, track_residual=True,
             **OPTS)
    b = scan(model, tok, corpus, languages=["ru", "fr"], progress=False, track_residual=True,
             **OPTS)
    merged = a.merge(b)
    assert merged.languages == ["en", "fr", "ru"]
    assert torch.equal(merged.residual_sums[0], a.residual_sums[0])
    assert torch.equal(merged.residual_sums[2], b.residual_sums[0])
    assert torch.equal(merged.residual_sums[1], a.residual_sums[1] + b.residual_sums[1])
    assert torch.equal(merged.select(["ru"]).residual_sums[0], b.residual_sums[0])
    # merging with stats that lack them drops them instead of inventing zeros
    plain = scan(model, tok, corpus, languages=["en"], progress=False, **OPTS)
    assert a.merge(plain).residual_sums is None


def test_interrupted_then_resumed_keeps_residual_sums(setup, tmp_path):
    model, tok, corpus = setup
    opts = dict(OPTS, track_residual=True)
    one_shot = scan(model, tok, corpus, progress=False, **opts)
    ckpt = tmp_path / "scan.partial"
    hook, _ = _interrupt_after(model, 5)
    with pytest.raises(Interrupt):
        scan(model, tok, corpus, progress=False, checkpoint=ckpt, checkpoint_every=2, **opts)
    hook.remove()
    partial = ActivationStats.load(ckpt)
    assert partial.residual_sums is not None
    assert 0 < float(partial.residual_sums.abs().sum()) < float(one_shot.residual_sums.abs().sum())
    resumed = scan(model, tok, corpus, progress=False, checkpoint=ckpt, checkpoint_every=2,
                   **opts)
    assert torch.equal(resumed.counts, one_shot.counts)
    torch.testing.assert_close(resumed.residual_sums, one_shot.residual_sums, rtol=1e-12,
                               atol=1e-9)


def test_torchrun_two_ranks_keep_residual_sums(tmp_path):
    from test_loading import _tiny_folder
    model = _tiny_folder(tmp_path / "tiny", layers=2, neurons=32)
    common = ["scan", "--model", str(model), *_texts(tmp_path), "--tokens-per-language",
              "1500", "--max-length", "32", "--batch-size", "4", "--docs-per-block", "4",
              "--no-progress", "--residual-means"]
    one, two = tmp_path / "one.safetensors", tmp_path / "two.safetensors"
    assert main([*common, "--out", str(one)]) == 0
    done = subprocess.run([str(TORCHRUN), "--standalone", "--nproc-per-node", "2", "-m",
                           "langneuron_ext", *common, "--out", str(two)],
                          capture_output=True, text=True, timeout=240, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = ActivationStats.load(one), ActivationStats.load(two)
    assert torch.equal(a.counts, b.counts)
    assert a.residual_sums is not None and float(a.residual_sums.abs().sum()) > 0
    # the ranks run one thread each, whose fp32 matmuls may round differently from this
    # process's: the hidden states agree to fp32 precision, not bit for bit
    torch.testing.assert_close(b.residual_sums, a.residual_sums, rtol=1e-5, atol=1e-6)
