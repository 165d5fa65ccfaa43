"""Rows and batches: lay tokenised documents out in rows that say, per token, which language
slot it counts for. `shards.py` reads the documents block by block and uses these layouts.

Row layouts (`T` <= max_length):
- packed text (packing=True, the LAPE layout): a block of a language's documents is concatenated
  as `BOS doc EOS BOS doc EOS ...` and cut into windows of exactly `max_length` tokens; every
  window starts with BOS (when rows have one, see `bos.py`) so the model never sees a headless
  sequence. Only the documents' own tokens count; BOS / EOS separators get -1 (no language).
- one document per row (packing=False): `BOS doc`, truncated to max_length, right-padded.
- prompt/response documents: one row `BOS prompt response`, never packed with others; prompt
  positions get -1, so only response tokens count, in the same forward pass.

A token budget per language stops counting exactly at the budget: the document that reaches it
is cut there and the last window is shorter. Rows are taken round-robin across languages, so
every batch mixes languages while several remain. Padding positions have attention_mask 0 and
row_lang -1 and are never counted.
"""
from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch

from .bos import bos_token_id
from .sources import CorpusError, Document

# Documents are tokenised this many at a time: one tokenizer call per chunk is much faster than
# one per document, and memory stays bounded.
TOKENIZE_CHUNK = 64


@dataclass
class Batch:
    """One batch of rows.

    input_ids, attention_mask: long [B, T]. row_lang: int32 [B, T], the language slot (index into
    the `languages` passed to `iter_batches`) of each counted token, -1 for padding, prompt
    tokens and BOS/EOS separators. tokens_per_language: long [K], counted tokens per language in
    this batch (equals `(row_lang == k).sum()` for each k).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    row_lang: torch.Tensor
    tokens_per_language: torch.Tensor

    def to(self, device) -> "Batch":
        """The same batch with every tensor on `device`."""
        return Batch(*(tensor.to(device) for tensor in (
            self.input_ids, self.attention_mask, self.row_lang, self.tokens_per_language)))


@dataclass
class _Row:
    ids: list[int]
    lang: list[int]  # language slot per position, -1 where not counted


def total_tokens(languages: Sequence[str], tokens_per_language: int) -> int:
    """The most tokens `iter_batches` will count in all (the progress-bar total)."""
    return len(languages) * int(tokens_per_language)


def _tokenize(tokenizer, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def tokenize_documents(documents: list[Document], tokenizer) -> list[tuple]:
    """(prompt ids or None, text ids) per document, tokenising in chunks."""
    out: list[tuple] = []
    for start in range(0, len(documents), TOKENIZE_CHUNK):
        chunk = documents[start:start + TOKENIZE_CHUNK]
        texts = _tokenize(tokenizer, [document.text for document in chunk])
        prompted = [i for i, document in enumerate(chunk) if document.prompt is not None]
        prompts = dict(zip(prompted, _tokenize(tokenizer, [chunk[i].prompt for i in prompted])))
        out.extend((prompts.get(i), texts[i]) for i in range(len(chunk)))
    return out


class _Packer:
    """Fills fixed windows of `max_length` from a stream of (token ids, language id) segments."""

    def __init__(self, max_length: int, bos: int | None, eos: int | None):
        self.max_length, self.bos, self.eos = max_length, bos, eos
        self.row = _Row([], [])

    def push(self, ids: list[int], lang: int) -> Iterator[_Row]:
        """Append a segment, yielding every window it completes."""
        position = 0
        while position < len(ids):
            if not self.row.ids:
                if ids == [self.eos] and lang < 0:
                    return  # a separator EOS never opens a window
                if self.bos is not None and not (position == 0 and ids[0] == self.bos and lang < 0):
                    self.row.ids.append(self.bos)
                    self.row.lang.append(-1)
            take = ids[position:position + self.max_length - len(self.row.ids)]
            self.row.ids.extend(take)
            self.row.lang.extend([lang] * len(take))
            position += len(take)
            if len(self.row.ids) == self.max_length:
                yield from self.flush()

    def flush(self) -> Iterator[_Row]:
        """Yield the open window if it holds counted tokens, and start a new one."""
        row, self.row = self.row, _Row([], [])
        if any(lang >= 0 for lang in row.lang):
            yield row


def countable_tokens(prompt: list[int] | None, text: list[int], *, max_length: int,
                     packing: bool, bos: int | None) -> int:
    """How many tokens of one tokenised document `block_rows` counts when the budget allows."""
    head = 0 if bos is None else 1
    if prompt is not None:
        return max(0, min(max_length - head - len(prompt), len(text)))
    if not packing:
        return min(max_length - head, len(text))
    return len(text)


def block_rows(documents: list[tuple], slot: int, *, budget: int, max_length: int,
               packing: bool, bos: int | None, eos: int | None) -> Iterator[_Row]:
    """The rows of one block of tokenised documents of one language, in order, until the
    documents or the `budget` of counted tokens run out. Packed windows never cross blocks."""
    remaining = budget
    packer = _Packer(max_length, bos, eos)
    head = [] if bos is None else [bos]
    for prompt, text in documents:
        if remaining <= 0:
            break
        if prompt is not None:
            room = max_length - len(head) - len(prompt)
            response = text[:max(0, min(room, remaining))]
            if response:
                remaining -= len(response)
                yield _Row(head + prompt + response,
                           [-1] * (len(head) + len(prompt)) + [slot] * len(response))
        elif not packing:
            body = text[:min(max_length - len(head), remaining)]
            if body:
                remaining -= len(body)
                yield _Row(head + body, [-1] * len(head) + [slot] * len(body))
        elif text:
            body = text[:remaining]
            remaining -= len(body)
            yield from packer.push(head, -1)
            yield from packer.push(body, slot)
            if remaining and eos is not None:
                yield from packer.push([eos], -1)
    yield from packer.flush()


def _collate(rows: list[_Row], num_languages: int, pad_id: int) -> Batch:
    width = max(len(row.ids) for row in rows)
    # One tensor() call on padded nested lists: much faster than filling row by row.
    input_ids = torch.tensor([row.ids + [pad_id] * (width - len(row.ids)) for row in rows],
                             dtype=torch.long)
    row_lang = torch.tensor([row.lang + [-1] * (width - len(row.lang)) for row in rows],
                            dtype=torch.int32)
    lengths = torch.tensor([len(row.ids) for row in rows])
    attention_mask = (torch.arange(width) < lengths[:, None]).long()
    # (boolean indexing + bincount is ~100x slower than this on CPU for batch-sized inputs)
    slots = torch.arange(num_languages, dtype=torch.int32)
    tokens = (row_lang.reshape(-1, 1) == slots).sum(0, dtype=torch.long)
    return Batch(input_ids, attention_mask, row_lang, tokens)


def special_ids(tokenizer, bos: bool | None) -> tuple[int | None, int | None, int]:
    """(BOS id or None, EOS id or None, pad id) for the rows; see `bos.bos_token_id`."""
    eos = getattr(tokenizer, "eos_token_id", None)
    pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        pad = eos if eos is not None else 0  # any id works: padding is masked and never counted
    return bos_token_id(tokenizer, bos), eos, pad


def check_options(languages: Sequence[str], tokens_per_language, max_length: int,
                  batch_size: int, bos_id: int | None) -> list[str]:
    """The languages as a list; CorpusError for options that cannot make batches."""
    languages = list(languages)
    if not languages:
        raise CorpusError("no languages requested; pass at least one, e.g. ['en', 'fr'].")
    if len(set(languages)) != len(languages):
        raise CorpusError(f"languages repeat: {languages}; give each language once.")
    if isinstance(tokens_per_language, bool) or not isinstance(tokens_per_language, int):
        raise CorpusError(f"tokens_per_language must be an integer, got {tokens_per_language!r}.")
    if tokens_per_language <= 0:
        raise CorpusError(
            f"tokens_per_language must be positive, got {tokens_per_language}; "
            "pass the number of tokens to count per language, e.g. 100000."
        )
    if batch_size < 1:
        raise CorpusError(f"batch_size must be at least 1, got {batch_size}.")
    least = 1 if bos_id is None else 2
    if max_length < least:
        raise CorpusError(
            f"max_length {max_length} leaves no room for text; use at least {least} "
            f"(typically 512 or more)."
        )
    return languages


def batches_of(rows_per_language: list[Iterator[_Row]], batch_size: int, num_languages: int,
               pad_id: int) -> Iterator[Batch]:
    """Batches of `batch_size` rows taken round-robin across the languages' row streams, so
    every batch mixes languages while several remain."""
    queue = collections.deque(rows_per_language)
    while queue:
        batch: list[_Row] = []
        while queue and len(batch) < batch_size:
            rows = queue.popleft()
            row = next(rows, None)
            if row is not None:
                batch.append(row)
                queue.append(rows)
        if batch:
            yield _collate(batch, num_languages, pad_id)
