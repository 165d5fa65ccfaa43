"""corpus/shards.py: W ranks (threads with an in-process all_gather here) yield exactly the
batches one process yields, each tokenising only its own blocks; a reader Position resumes
without tokenising counted blocks and refuses a changed corpus."""
from __future__ import annotations

import json
import threading

import pytest
import torch

from langneuron_ext.corpus import CorpusError, Document, Position, ShardedBatches, TextSource
from langneuron_ext.corpus.shards import CorpusChanged
from langneuron_ext.models.toy import byte_tokenizer

OPTS = dict(tokens_per_language=700, max_length=24, batch_size=3, docs_per_block=4)


class Texts(TextSource):
    """In memory: {lang: [texts]}."""

    def __init__(self, texts):
        self.texts = texts
        self.languages = list(texts)
        self.description = "memory"

    def _documents(self, lang):
        for text in self.texts[lang]:
            yield Document(lang, text)


def corpus(n: int = 30, **changes) -> Texts:
    texts = {"en": [f"Sentence number {i} of the English text." for i in range(n)],
             "fr": [f"Phrase {i}, en français." * (1 + i % 3) for i in range(n)],
             "de": [f"Satz {i}." for i in range(n // 2)]}
    for lang, (i, text) in changes.items():
        texts[lang][i] = text
    return Texts(texts)


class Recording:
    """The byte tokenizer, recording every text it is asked to tokenise."""

    def __init__(self):
        self.inner, self.texts = byte_tokenizer(), []

    def __call__(self, texts, **kwargs):
        self.texts.extend(texts)
        return self.inner(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def key(batch):
    return (batch.input_ids.numpy().tobytes(), batch.row_lang.numpy().tobytes())


def run_ranks(source, world, positions=None, stop_after=None, all_errors=False, **opts):
    """Iterate W ShardedBatches in threads with a barrier all_gather; per rank: (batches,
    tokenised texts, final position)."""
    slots, barrier = [None] * world, threading.Barrier(world)
    results, errors = [None] * world, []

    def exchange_for(rank):
        def exchange(t):
            slots[rank] = t.clone()
            barrier.wait()
            out = torch.stack(slots)
            barrier.wait()
            return out
        return exchange

    def work(rank):
        try:
            tok = Recording()
            batches = ShardedBatches(source, tok, ["en", "fr", "de"], rank=rank, world=world,
                                     exchange=exchange_for(rank) if world > 1 else None,
                                     position=positions[rank] if positions else None,
                                     **{**OPTS, **opts})
            got = []
            for batch in batches:
                got.append(batch)
                if stop_after is not None and len(got) == stop_after[rank]:
                    break
            results[rank] = (got, tok.texts, Position.from_json(batches.position.to_json()))
        except BaseException as exc:   # noqa: BLE001  (reported by the test)
            errors.append(exc)
            if not all_errors:
                barrier.abort()

    threads = [threading.Thread(target=work, args=(r,)) for r in range(world)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a rank hangs"
    if all_errors:
        return errors
    if errors:
        raise errors[0]
    return results


@pytest.mark.parametrize("world", [2, 3])
def test_ranks_yield_the_one_process_batches_and_tokenise_only_their_share(world):
    [(one, one_texts, _)] = run_ranks(corpus(), 1)
    ranks = run_ranks(corpus(), world)
    assert sorted(key(b) for got, _, _ in ranks for b in got) == sorted(key(b) for b in one)
    totals = sum(b.tokens_per_language for got, _, _ in ranks for b in got)
    assert totals.tolist() == sum(b.tokens_per_language for b in one).tolist()
    assert totals.tolist() == [700, 700, sum(len(f"Satz {i}.") for i in range(15))]
    texts = [t for _, tokenised, _ in ranks for t in tokenised]
    assert len(texts) == len(set(texts)), "no block is tokenised by two ranks"
    assert set(one_texts) <= set(texts)
    # a rank learns that the budget ran out in an earlier round of its step only after
    # tokenising its own block: at most W - 1 blocks of 4 documents per language in excess
    assert len(texts) - len(one_texts) <= (world - 1) * 4 * 3
    assert all(len(tokenised) < len(one_texts) for _, tokenised, _ in ranks)


def test_blocks_are_packed_separately():
    [(one, _, _)] = run_ranks(corpus(), 1)
    rows = [(ids, langs) for b in one for ids, langs in zip(b.input_ids.tolist(),
                                                           b.row_lang.tolist())]
    assert any(len([x for x in langs if x >= 0]) < 20 for _, langs in rows)  # short block ends
    big = run_ranks(corpus(), 1, docs_per_block=1000)[0][0]
    assert sum(b.tokens_per_language for b in big).tolist() == \
        sum(b.tokens_per_language for b in one).tolist()


@pytest.mark.parametrize("stop", [1, 4, 7])
def test_resume_from_a_position_equals_one_pass(stop):
    [(one, _, _)] = run_ranks(corpus(), 1)
    [(first, _, position)] = run_ranks(corpus(), 1, stop_after=[stop])
    position = Position.from_json(json.loads(json.dumps(position.to_json())))
    [(rest, texts, _)] = run_ranks(corpus(), 1, positions=[position])
    assert [key(b) for b in first + rest] == [key(b) for b in one]
    # counted blocks are read past, not tokenised: only the round in progress is tokenised again
    block = position.step
    again = {t for lang, texts_ in corpus().texts.items() for t in texts_[:block * 4]}
    assert not again & set(texts)


def test_two_ranks_resume_from_different_steps():
    ranks = run_ranks(corpus(), 2)
    full = sorted(key(b) for got, _, _ in ranks for b in got)
    assert all(len(got) >= 5 for got, _, _ in ranks)
    stopped = run_ranks(corpus(), 2, stop_after=[2, 5])   # rank 1 is further ahead
    positions = [p for _, _, p in stopped]
    assert positions[0].step != positions[1].step or positions[0].batches != positions[1].batches
    resumed = run_ranks(corpus(), 2, positions=positions)
    done = [b for got, _, _ in stopped for b in got] + [b for got, _, _ in resumed for b in got]
    assert sorted(key(b) for b in done) == full


def test_changed_text_is_refused_on_resume():
    [(_, _, position)] = run_ranks(corpus(), 1, stop_after=[15])
    assert position.step >= 1
    with pytest.raises(CorpusChanged, match="'en'"):
        run_ranks(corpus(en=(2, "Something else entirely.")), 1, positions=[position])
    with pytest.raises(CorpusChanged):
        run_ranks(corpus(n=6), 1, positions=[position])   # the text got shorter


def test_language_without_tokens_fails_on_every_rank():
    source = Texts({"en": ["hello world"] * 9, "fr": [""] * 9, "de": ["Hallo Welt"] * 9})
    errors = run_ranks(source, 2, all_errors=True)   # both ranks decide alike: nobody hangs
    assert len(errors) == 2 and all(isinstance(e, CorpusError) for e in errors)
    assert all("'fr' yields no tokens" in str(e) for e in errors)
