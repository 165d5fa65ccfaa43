"""The one BOS decision shared by scan, evaluate and steer.

By default a row starts with the tokenizer's BOS token when it has one (Llama, Gemma, Mistral)
and without it otherwise (the Qwen family and many user-built tokenizers have none: their models
are trained without it). `bos=True` insists on it, `bos=False` leaves it out; the CLI flags
`--bos/--no-bos` pass these through.
"""
from __future__ import annotations

from .sources import CorpusError


def bos_token_id(tokenizer, bos: bool | None = None) -> int | None:
    """The token id every row starts with, or None for rows without BOS.

    bos: None = the tokenizer's BOS when it has one; True = its BOS (CorpusError if it has
    none); False = no BOS.
    """
    have = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return have
    if bos and have is None:
        raise CorpusError("the tokenizer has no BOS token (bos_token_id is None), so rows "
                          "cannot start with one; drop --bos (rows then start with the text)")
    return have if bos else None
