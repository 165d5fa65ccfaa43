"""`ln.scan` on a tiny random llama with a byte-level tokenizer.

The oracle is an independent count: the same batches (iter_batches is deterministic) run through
the *unpatched* model with forward hooks on every gate_proj; a token of language k counts for
neuron i when act_fp32(gate) > 0. Counts must match bit for bit. Resuming an interrupted scan
must give exactly the one-shot result.
"""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from langneuron_ext.corpus import PlainTextFiles, iter_batches
from langneuron_ext.models import get_handle, patch
from langneuron_ext.models.toy import byte_tokenizer
from langneuron_ext.ops.reference import activation_fp32
from langneuron_ext.scan import ScanError, scan

TEXTS = {
    "en": ["The quick brown fox jumps over the lazy dog number {i}.",
           "Packages are installed with apt and removed again ({i})."],
    "fr": ["Le renard brun saute par-dessus le chien paresseux {i}.",
           "Debian est un système d'exploitation libre, version {i}."],
    "ru": ["Съешь же ещё этих мягких французских булок {i}.",
           "Пакеты устанавливаются командой apt, номер {i}."],
}
LANGS = list(TEXTS)
OPTS = dict(tokens_per_language=300, max_length=32, batch_size=3)


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(7)
    config = LlamaConfig(vocab_size=259, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=64, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():   # widen the gate weights so both signs of act(gate) are common
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight.mul_(20)
    return model


def write_corpus(folder, lines_per_language: int = 40) -> PlainTextFiles:
    files = {}
    for lang, templates in TEXTS.items():
        path = folder / f"{lang}.txt"
        path.write_text("\n".join(templates[i % 2].format(i=i)
                                  for i in range(lines_per_language)) + "\n", encoding="utf-8")
        files[lang] = path
    return PlainTextFiles(files)


def hook_counts(model, tokenizer, corpus, languages, **opts):
    """Independent count on the unpatched model: hooks on gate_proj, act in fp32, > 0."""
    assert get_handle(model) is None
    layers = model.model.layers
    K, L, I = len(languages), len(layers), model.config.intermediate_size
    counts = torch.zeros(K, L, I, dtype=torch.int64)
    n_tokens = torch.zeros(K, dtype=torch.int64)
    current = {}

    def hook_for(layer):
        def hook(module, inputs, output):
            active = activation_fp32(output.reshape(-1, I).float(), "silu") > 0
            rows = current["row_lang"].reshape(-1)
            for k in range(K):
                counts[k, layer] += active[rows == k].sum(0)
        return hook

    hooks = [layer.mlp.gate_proj.register_forward_hook(hook_for(i))
             for i, layer in enumerate(layers)]
    try:
        for batch in iter_batches(corpus, tokenizer, languages, **opts):
            current["row_lang"] = batch.row_lang
            for k in range(K):
                n_tokens[k] += int((batch.row_lang == k).sum())
            with torch.no_grad():
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        for h in hooks:
            h.remove()
    return counts, n_tokens


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return tiny_llama(), byte_tokenizer(), write_corpus(folder)


def test_counts_equal_independent_hook_count(setup):
    model, tok, corpus = setup
    stats = scan(model, tok, corpus, progress=False, impl="torch", model_name="tiny", **OPTS)
    counts, n_tokens = hook_counts(model, tok, corpus, LANGS, **OPTS)
    assert stats.languages == LANGS
    assert torch.equal(stats.n_tokens, n_tokens)
    assert torch.equal(stats.counts, counts)
    assert int(stats.counts.sum()) > 0
    assert bool((stats.counts < stats.n_tokens[:, None, None]).any())
    assert all(0 < n <= OPTS["tokens_per_language"] for n in stats.n_tokens.tolist())
    assert stats.model_type == "llama" and stats.model_name == "tiny"
    assert get_handle(model) is None, "scan must unpatch the model it patched"


def test_default_impl_matches_torch_reference(setup):
    model, tok, corpus = setup
    ref = scan(model, tok, corpus, progress=False, impl="torch", **OPTS)
    best = scan(model, tok, corpus, progress=False, **OPTS)
    assert torch.equal(ref.counts, best.counts) and torch.equal(ref.n_tokens, best.n_tokens)


def test_sums_equal_hook_sums(setup):
    model, tok, corpus = setup
    stats = scan(model, tok, corpus, progress=False, impl="torch", track_sums=True,
                 track_sumsq=True, **OPTS)
    I = model.config.intermediate_size
    sums = torch.zeros(3, 2, I, dtype=torch.float64)
    current = {}
    hooks = []
    for li, layer in enumerate(model.model.layers):
        def hook(module, inputs, output, li=li):
            a = activation_fp32(output.reshape(-1, I).float(), "silu").double()
            rows = current["rows"].reshape(-1)
            for k in range(3):
                sums[k, li] += a[rows == k].sum(0)
        hooks.append(layer.mlp.gate_proj.register_forward_hook(hook))
    for batch in iter_batches(corpus, tok, LANGS, **OPTS):
        current["rows"] = batch.row_lang
        with torch.no_grad():
            model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    for h in hooks:
        h.remove()
    assert stats.sums is not None and stats.sumsq is not None
    torch.testing.assert_close(stats.sums, sums, rtol=1e-5, atol=1e-3)
    assert bool((stats.sumsq >= 0).all())


def test_lm_head_is_not_computed(setup):
    model, tok, corpus = setup
    calls = []
    h = model.lm_head.register_forward_hook(lambda *a: calls.append(1))
    try:
        scan(model, tok, corpus, progress=False, **OPTS)
    finally:
        h.remove()
    assert calls == []


def test_already_patched_model_keeps_its_patch(setup):
    model, tok, corpus = setup
    with patch(model, impl="torch") as handle:
        stats = scan(model, tok, corpus, progress=False, **OPTS)
        assert get_handle(model) is handle and handle.active
    assert get_handle(model) is None
    ref = scan(model, tok, corpus, progress=False, impl="torch", **OPTS)
    assert torch.equal(stats.counts, ref.counts)


def test_language_subset_and_order(setup):
    model, tok, corpus = setup
    full = scan(model, tok, corpus, progress=False, **OPTS)
    sub = scan(model, tok, corpus, languages=["ru", "en"], progress=False, **OPTS)
    assert sub.languages == ["ru", "en"]
    # each language's rows are its own windows, so its counts do not depend on the others
    assert torch.equal(sub.select(["en"]).counts, full.select(["en"]).counts)


@pytest.mark.parametrize("bad", [0, -5, 1.5, True])
def test_bad_budget_is_a_clear_error(setup, bad):
    model, tok, corpus = setup
    with pytest.raises(ScanError, match="tokens_per_language"):
        scan(model, tok, corpus, tokens_per_language=bad, progress=False)
    assert get_handle(model) is None


class Interrupt(Exception):
    pass


def _interrupt_after(model, n_calls: int):
    """A hook that raises on the base model's (n_calls+1)-th call, like a Ctrl-C mid-scan."""
    calls = []

    def hook(module, args, kwargs):
        calls.append(1)
        if len(calls) > n_calls:
            raise Interrupt()
    return model.model.register_forward_pre_hook(hook, with_kwargs=True), calls


def test_interrupted_then_resumed_equals_one_shot(setup, tmp_path):
    model, tok, corpus = setup
    opts = dict(OPTS, track_sums=True)
    one_shot = scan(model, tok, corpus, progress=False, **opts)
    ckpt = tmp_path / "scan.partial"
    hook, calls = _interrupt_after(model, 5)
    with pytest.raises(Interrupt):
        scan(model, tok, corpus, progress=False, checkpoint=ckpt, checkpoint_every=2, **opts)
    hook.remove()
    assert get_handle(model) is None, "an interrupted scan must unpatch the model"
    assert ckpt.exists()
    from langneuron_ext.stats import ActivationStats
    partial = ActivationStats.load(ckpt)
    assert 0 < int(partial.n_tokens.sum()) < int(one_shot.n_tokens.sum())

    hook, calls = _interrupt_after(model, 10**9)
    resumed = scan(model, tok, corpus, progress=False, checkpoint=ckpt, checkpoint_every=2,
                   **opts)
    hook.remove()
    total_batches = sum(1 for _ in iter_batches(corpus, tok, LANGS, **OPTS))
    assert len(calls) == total_batches - 4, "resume must skip exactly the 4 saved batches"
    assert torch.equal(resumed.counts, one_shot.counts)
    assert torch.equal(resumed.n_tokens, one_shot.n_tokens)
    torch.testing.assert_close(resumed.sums, one_shot.sums, rtol=1e-12, atol=1e-9)

    # a finished checkpoint resumes to the same result without any forward pass
    hook, calls = _interrupt_after(model, 0)
    again = scan(model, tok, corpus, progress=False, checkpoint=ckpt, **opts)
    hook.remove()
    assert calls == [] and torch.equal(again.counts, one_shot.counts)


def test_checkpoint_of_other_options_is_refused(setup, tmp_path):
    model, tok, corpus = setup
    ckpt = tmp_path / "scan.partial"
    scan(model, tok, corpus, progress=False, checkpoint=ckpt, **OPTS)
    with pytest.raises(ScanError, match="tokens_per_language"):
        scan(model, tok, corpus, progress=False, checkpoint=ckpt,
             **dict(OPTS, tokens_per_language=200))
    assert get_handle(model) is None


def test_checkpoint_of_changed_corpus_is_refused(setup, tmp_path):
    model, tok, _ = setup
    corpus = write_corpus(tmp_path, lines_per_language=40)
    ckpt = tmp_path / "scan.partial"
    hook, _ = _interrupt_after(model, 3)
    with pytest.raises(Interrupt):
        scan(model, tok, corpus, progress=False, checkpoint=ckpt, checkpoint_every=1, **OPTS)
    hook.remove()
    # same file names and description, other text: the skipped batches no longer add up
    for lang in LANGS:
        path = tmp_path / f"{lang}.txt"
        path.write_text(path.read_text(encoding="utf-8").replace(" ", "  "), encoding="utf-8")
    with pytest.raises(ScanError, match="changed"):
        scan(model, tok, corpus, progress=False, checkpoint=ckpt, checkpoint_every=1, **OPTS)


def test_stats_file_is_not_a_checkpoint(setup, tmp_path):
    model, tok, corpus = setup
    path = tmp_path / "stats.safetensors"
    scan(model, tok, corpus, progress=False, **OPTS).save(path)
    with pytest.raises(ScanError, match="not a scan checkpoint"):
        scan(model, tok, corpus, progress=False, checkpoint=path, **OPTS)


def test_short_corpus_warns(setup, tmp_path):
    model, tok, _ = setup
    corpus = write_corpus(tmp_path, lines_per_language=2)
    with pytest.warns(UserWarning, match="ran out of text"):
        stats = scan(model, tok, corpus, progress=False, **OPTS)
    assert bool((stats.n_tokens < OPTS["tokens_per_language"]).all())
    assert bool((stats.n_tokens > 0).all())
