"""A tokenizer that needs no files: every byte is a token. For tests, benchmarks and examples
with tiny randomly initialised models (`transformers.*Config(vocab_size=BYTE_VOCAB_SIZE, ...)`)."""
from __future__ import annotations

BYTE_VOCAB_SIZE = 259   # <pad>, <bos>, <eos> and the 256 byte-level symbols


def byte_tokenizer():
    """A `PreTrainedTokenizerFast` over bytes (ids 0-2: pad, bos, eos): no training, no download."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "<bos>": 1, "<eos>": 2}
    for c in sorted(pre_tokenizers.ByteLevel.alphabet()):
        vocab[c] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>")
