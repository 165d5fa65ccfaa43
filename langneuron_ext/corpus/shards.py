"""Documents -> batches for one process or many: blocks, rounds and steps.

The layout is the same for any number of processes, so W processes count exactly what one does:
- each language's documents are cut into blocks of `docs_per_block` documents (fewer when a
  block reaches `chars_per_block` characters, so huge lines keep memory bounded);
- round j is block j of every language still short of its budget; its rows (packed per block,
  see `batching.py`) are taken round-robin across the languages and cut into batches;
- rounds are grouped in steps of W: in step s, rank r owns round s*W + r. It tokenises only
  its own blocks and streams past the other ranks' documents without tokenising them. Then the
  ranks exchange (all_gather) how many countable tokens each of their blocks holds, K numbers a
  rank, so each knows how much budget the rounds before its own used and cuts its block exactly
  where one process would.

The reader position (`Position`, stored in scan checkpoints) says where a rank stands: the step
in progress, the batches of its round already counted (with a fingerprint of them), the budget
used before that step, the languages that are done, and how many documents of each language the
rank has read with a digest of their text. A resume skips the counted blocks without tokenising
them (it reads them to check the digest: a changed corpus is refused), tokenises again only the
round in progress, and skips its counted batches.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator, Optional, Sequence

import torch

from .batching import (
    Batch,
    batches_of,
    block_rows,
    check_options,
    countable_tokens,
    special_ids,
    tokenize_documents,
)
from .sources import CorpusError, Document, TextSource

# 256 handbook paragraphs are ~20k tokens: a block's last, shorter window wastes ~1% of a
# 512-token scan, and a step stays short enough to checkpoint often.
DOCS_PER_BLOCK = 256
CHARS_PER_BLOCK = 1_000_000

# local int64 tensor -> the tensors of all ranks stacked [W, ...] (torch.distributed.all_gather)
Exchange = Callable[[torch.Tensor], torch.Tensor]


class CorpusChanged(CorpusError):
    """The corpus differs from the one a checkpoint was made from."""


@dataclass
class Position:
    """Where one rank stands in the batch sequence (see the module docstring)."""
    step: int = 0
    batches: int = 0                  # this rank's batches of `step` already counted
    batch_digest: str = ""            # fingerprint of those batches
    used: list = field(default_factory=list)         # counted tokens before `step`, per language
    done: list = field(default_factory=list)         # languages finished before `step`
    docs: list = field(default_factory=list)         # documents this rank has read, per language
    text_digest: list = field(default_factory=list)  # digest of their text, per language

    @classmethod
    def start(cls, num_languages: int) -> "Position":
        K = num_languages
        return cls(used=[0] * K, done=[False] * K, docs=[0] * K, text_digest=[""] * K)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Position":
        return cls(**json.loads(text))


def fingerprint(hasher, batch: Batch) -> None:
    """Fold one batch's token ids and language slots into a running fingerprint."""
    for t in (batch.input_ids, batch.row_lang):
        hasher.update(t.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())


class _Reader:
    """One language's documents, block by block, with a digest of the text read so far."""

    def __init__(self, source: TextSource, lang: str, docs_per_block: int,
                 chars_per_block: int, expect: Optional[tuple] = None):
        self.documents = source.documents(lang)
        self.lang, self.description = lang, source.description
        self.docs_per_block, self.chars_per_block = docs_per_block, chars_per_block
        self.blocks = self.docs = 0
        self.exhausted = False
        self.hasher = hashlib.blake2b(digest_size=16)
        self.expect = expect if expect and expect[0] > 0 else None   # (docs, digest) to check

    def _changed(self) -> CorpusChanged:
        return CorpusChanged(f"the text of {self.lang!r} in {self.description} differs from "
                             f"the text the checkpoint was made from (its first "
                             f"{self.expect[0]} documents changed)")

    def _next(self) -> Optional[Document]:
        document = next(self.documents, None)
        if document is None:
            self.exhausted = True
            if self.expect is not None:
                raise self._changed()
            return None
        self.hasher.update(document.text.encode("utf-8", "surrogatepass") + b"\0"
                           + (document.prompt or "").encode("utf-8", "surrogatepass") + b"\1")
        self.docs += 1
        if self.expect is not None and self.docs == self.expect[0]:
            if self.hasher.hexdigest() != self.expect[1]:
                raise self._changed()
            self.expect = None
        return document

    def block(self) -> list:
        """The next block of documents ([] once the language has run out)."""
        documents, chars = [], 0
        while (not self.exhausted and len(documents) < self.docs_per_block
               and chars < self.chars_per_block):
            document = self._next()
            if document is None:
                break
            documents.append(document)
            chars += len(document.text) + len(document.prompt or "")
        self.blocks += 1
        return documents


class ShardedBatches:
    """The batches of rank `rank` of `world` (all of them when world == 1), resumable from a
    `Position`. Iterate it for `Batch`es; `position` is where this rank stands after the batch
    last yielded (save it with the counters of every batch yielded so far).

    exchange: all_gather for world > 1 (see `Exchange`); every rank must iterate to the end,
        since each step exchanges once.
    Other arguments as `iter_batches`.
    """

    def __init__(self, source: TextSource, tokenizer, languages: Sequence[str], *,
                 tokens_per_language: int, max_length: int = 512, batch_size: int = 8,
                 packing: bool = True, bos: Optional[bool] = None, rank: int = 0,
                 world: int = 1, exchange: Optional[Exchange] = None,
                 position: Optional[Position] = None, docs_per_block: int = DOCS_PER_BLOCK,
                 chars_per_block: int = CHARS_PER_BLOCK):
        self.bos, self.eos, self.pad = special_ids(tokenizer, bos)
        self.languages = check_options(languages, tokens_per_language, max_length, batch_size,
                                       self.bos)
        for lang in self.languages:
            source.check_language(lang)
        if world > 1 and exchange is None:
            raise ValueError("world > 1 needs an exchange (all_gather) function")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is not in 0..{world - 1}")
        if not isinstance(docs_per_block, int) or docs_per_block < 1:
            raise CorpusError(f"docs_per_block must be a positive integer, got "
                              f"{docs_per_block!r}")
        K = len(self.languages)
        self.position = position if position is not None else Position.start(K)
        if len(self.position.used) != K:
            raise CorpusError(f"the reader position is for {len(self.position.used)} languages, "
                              f"not {K}")
        self.source, self.tokenizer = source, tokenizer
        self.budget, self.max_length, self.batch_size = tokens_per_language, max_length, batch_size
        self.packing, self.rank, self.world, self.exchange = packing, rank, world, exchange
        self.docs_per_block, self.chars_per_block = docs_per_block, chars_per_block

    def _gather(self, local: torch.Tensor) -> torch.Tensor:
        return self.exchange(local) if self.world > 1 else local[None]

    def _now(self, step, batches, digest, used, done, readers) -> Position:
        return Position(step, batches, digest, [int(u) for u in used],
                        [bool(d) for d in done], [r.docs for r in readers],
                        [r.hasher.hexdigest() for r in readers])

    def __iter__(self) -> Iterator[Batch]:
        saved, K, W, r = self.position, len(self.languages), self.world, self.rank
        # Resume where the rank that is furthest behind stands; ranks ahead of it re-read their
        # blocks up to their own position (for the exchange) without yielding them again.
        steps = self._gather(torch.tensor([saved.step], dtype=torch.int64))[:, 0]
        step, behind = int(steps.min()), int(steps.argmin())
        state = torch.tensor(saved.used + [int(d) for d in saved.done], dtype=torch.int64)
        state = self._gather(state)[behind]
        used, done = state[:K].clone(), state[K:].bool()
        readers = [_Reader(self.source, lang, self.docs_per_block, self.chars_per_block,
                           (saved.docs[k], saved.text_digest[k]))
                   for k, lang in enumerate(self.languages)]
        while not bool(done.all()):
            mine = step * W + r
            documents: list = [[] for _ in range(K)]
            local = torch.zeros(K, 2, dtype=torch.int64)    # countable tokens, ran out
            for k, reader in enumerate(readers):
                if done[k]:
                    continue
                while reader.blocks < mine:                  # the other ranks' blocks
                    reader.block()
                documents[k] = tokenize_documents(reader.block(), self.tokenizer)
                local[k, 0] = sum(countable_tokens(p, t, max_length=self.max_length,
                                                   packing=self.packing, bos=self.bos)
                                  for p, t in documents[k])
                local[k, 1] = int(reader.exhausted)
            info = self._gather(local)                        # [W, K, 2]
            remaining = (self.budget - used - info[:r, :, 0].sum(0)).clamp(min=0)
            used_after = (used + info[:, :, 0].sum(0)).clamp(max=self.budget)
            done_after = done | info[:, :, 1].bool().any(0) | (used_after >= self.budget)
            empty = [lang for k, lang in enumerate(self.languages)
                     if done_after[k] and used_after[k] == 0]
            if empty:
                raise CorpusError(
                    f"language {empty[0]!r} yields no tokens from {self.source.description} "
                    f"(every document is empty, or every prompt fills "
                    f"max_length={self.max_length}); add text for it or drop it from the "
                    f"languages.")
            if step >= saved.step:
                yield from self._round(step, documents, remaining, used, done, used_after,
                                       done_after, readers, saved)
                self.position = self._now(step + 1, 0, "", used_after, done_after, readers)
            step, used, done = step + 1, used_after, done_after

    def _round(self, step, documents, remaining, used, done, used_after, done_after, readers,
               saved) -> Iterator[Batch]:
        """This rank's batches of one step, minus those counted before an interruption."""
        rows = [block_rows(documents[k], k, budget=int(remaining[k]),
                           max_length=self.max_length, packing=self.packing, bos=self.bos,
                           eos=self.eos) for k in range(len(documents))]
        batches = list(batches_of(rows, self.batch_size, len(documents), self.pad))
        skip = saved.batches if step == saved.step else 0
        if skip > len(batches):
            raise CorpusChanged(f"the checkpoint counted {skip} batches of step {step}, the "
                                f"corpus now gives {len(batches)}: the text changed")
        hasher = hashlib.blake2b(digest_size=16)
        for i, batch in enumerate(batches):
            fingerprint(hasher, batch)
            if i < skip:
                if i == skip - 1 and hasher.hexdigest() != saved.batch_digest:
                    raise CorpusChanged(f"the batches of step {step} differ from those the "
                                        f"checkpoint counted: the text or tokenizer changed")
                continue
            if i == len(batches) - 1:       # the step is complete once this batch is counted
                self.position = self._now(step + 1, 0, "", used_after, done_after, readers)
            else:
                self.position = self._now(step, i + 1, hasher.hexdigest(), used, done, readers)
            yield batch


def iter_batches(source: TextSource, tokenizer, languages: Sequence[str], *,
                 tokens_per_language: int, max_length: int = 512, batch_size: int = 8,
                 packing: bool = True, bos: Optional[bool] = None,
                 docs_per_block: int = DOCS_PER_BLOCK) -> Iterator[Batch]:
    """Yield the `Batch`es of the `languages` of `source` (slot k = languages[k]), lazily.

    tokenizer: a Hugging Face tokenizer (called as `tokenizer(texts, add_special_tokens=False)`;
        its bos/eos/pad token ids are used for separators and padding).
    tokens_per_language: the budget of counted tokens per language; counting stops exactly there.
    max_length: row length (packed windows are exactly this long, except each block's last).
    batch_size: rows per batch, taken round-robin across the languages.
    packing: LAPE-style packing of text documents; False puts one document per row.
    bos: rows start with BOS: None = when the tokenizer has one (see `bos.bos_token_id`).
    docs_per_block: documents per block (see the module docstring).

    Raises CorpusError for bad arguments and for a language that yields no tokens; the latter is
    checked for every language before the first batch is yielded.
    """
    return iter(ShardedBatches(source, tokenizer, languages,
                               tokens_per_language=tokens_per_language, max_length=max_length,
                               batch_size=batch_size, packing=packing, bos=bos,
                               docs_per_block=docs_per_block))
