"""Held-out text to fixed token windows, the same budget for every language.

A text source is either a mapping `{lang: [texts]}` or a corpus source (anything with
`documents(lang)` yielding objects with a `.text`, e.g. `corpus.DebianHandbook(...,
split="heldout")`). Each language's texts are joined with newlines, tokenised, and cut into
windows of at most `max_length` tokens (a BOS token first when the tokenizer has one) until the
language has `max_tokens` predicted tokens: every language is scored on the same number of tokens.
"""
from __future__ import annotations

from typing import Iterable, Iterator, List, Mapping, Sequence, Tuple

from ..corpus.bos import bos_token_id
from ..steer import SteeringError


def iter_texts(source, lang: str) -> Iterator[str]:
    """The texts of `lang` in `source` (a {lang: [texts]} mapping or a corpus source)."""
    if isinstance(source, Mapping):
        if lang not in source:
            raise SteeringError(f"no text for language {lang!r}; the texts have "
                                f"{', '.join(source) or 'no languages'}")
        texts = source[lang]
        if isinstance(texts, str):
            texts = [texts]
        yield from texts
    elif hasattr(source, "documents"):
        for doc in source.documents(lang):
            yield doc.text if hasattr(doc, "text") else str(doc)
    else:
        raise SteeringError(f"cannot read texts from {type(source).__name__}: pass a "
                            f"{{language: [texts]}} mapping or a corpus source with "
                            f"documents(lang)")


def token_windows(tokenizer, texts: Iterable[str], max_tokens: int, max_length: int = 128,
                  lang: str = "?") -> List[List[int]]:
    """Token windows for one language holding exactly `max_tokens` predicted tokens in total
    (fewer only if the texts run out; an error if they give nothing)."""
    return token_windows_with_documents(tokenizer, texts, max_tokens, max_length, lang)[0]


def token_windows_with_documents(tokenizer, texts: Iterable[str], max_tokens: int,
                                 max_length: int = 128, lang: str = "?"
                                 ) -> Tuple[List[List[int]], List[List[int]]]:
    """`token_windows` plus, per window, the index of the text each position came from (-1 for
    the BOS token): the units of the bootstrap over documents (a window may span texts)."""
    if max_tokens < 1:
        raise SteeringError(f"max_tokens_per_language must be at least 1, got {max_tokens}")
    bos = bos_token_id(tokenizer)     # the scan's rule: BOS when the tokenizer has one
    head = [bos] if bos is not None else []
    step = max_length - len(head) if head else max_length - 1  # predicted tokens per window
    if step < 1:
        raise SteeringError(f"max_length {max_length} is too short; use at least 2")
    extra = 0 if head else 1          # without BOS the first token of a window is only context
    windows: List[List[int]] = []
    owners: List[List[int]] = []
    stream: List[int] = []
    stream_doc: List[int] = []
    left = max_tokens
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]

    def take_window(take: int) -> None:
        nonlocal stream, stream_doc, left
        windows.append(head + stream[:take + extra])
        owners.append([-1] * len(head) + stream_doc[:take + extra])
        stream, stream_doc = stream[take + extra:], stream_doc[take + extra:]
        left -= take

    doc = -1
    for text in texts:
        if left <= 0:
            break
        if not text.strip():
            continue
        doc += 1
        ids = tokenizer(text, add_special_tokens=False)["input_ids"] + newline
        stream += ids
        stream_doc += [doc] * len(ids)
        while left > 0 and len(stream) >= step + extra:
            take_window(min(step, left))
    if left > 0 and len(stream) >= 1 + extra:  # the remainder: one shorter window
        take_window(min(left, len(stream) - extra))
    if not windows:
        raise SteeringError(f"language {lang!r} has no text to evaluate on; give it at least "
                            f"a few sentences")
    return windows, owners


def predicted_tokens(windows: Sequence[Sequence[int]]) -> int:
    """How many next-token predictions the windows hold (all but the first token of each)."""
    return sum(len(w) - 1 for w in windows)
