"""Text sources: documents, laziness and every bad-input error."""
import json
import tracemalloc

import pytest

from langneuron_ext.corpus import (
    CorpusError,
    Document,
    JsonlSource,
    MixedSource,
    PlainTextFiles,
)


def write(path, text, encoding="utf-8"):
    path.write_bytes(text.encode(encoding) if isinstance(text, str) else text)
    return path


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    return path


# --- PlainTextFiles -------------------------------------------------------------------------


def test_plain_text_one_document_per_line_blank_lines_skipped(tmp_path):
    en = write(tmp_path / "en.txt", "first line\n\n   \nsecond line\r\nthird\n")
    fr = write(tmp_path / "fr.txt", "\ufeffpremière\ndeuxième")  # BOM, no final newline
    source = PlainTextFiles({"en": en, "fr": fr})
    assert source.languages == ["en", "fr"]
    assert list(source.documents("en")) == [
        Document("en", "first line"), Document("en", "second line"), Document("en", "third")]
    assert [d.text for d in source.documents("fr")] == ["première", "deuxième"]
    assert all(d.prompt is None for d in source.documents("fr"))
    assert str(en) in source.description


def test_plain_text_missing_file(tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(CorpusError, match="not found.*nope.txt"):
        PlainTextFiles({"en": missing})


def test_plain_text_empty_file(tmp_path):
    empty = write(tmp_path / "empty.txt", "")
    with pytest.raises(CorpusError, match="empty.*empty.txt"):
        PlainTextFiles({"en": empty})


def test_plain_text_only_blank_lines_is_a_language_without_text(tmp_path):
    blank = write(tmp_path / "blank.txt", "\n  \n\n")
    source = PlainTextFiles({"de": blank})
    with pytest.raises(CorpusError, match="'de' has no text.*blank.txt"):
        list(source.documents("de"))


def test_requested_language_not_in_source(tmp_path):
    source = PlainTextFiles({"en": write(tmp_path / "en.txt", "hello\n")})
    with pytest.raises(CorpusError, match="'ru' has no text.*available languages: en"):
        source.documents("ru")


def test_invalid_utf8_names_file_line_and_byte_offset(tmp_path):
    good = "ligne un\nligne deux\n".encode()
    bad_line = b"caf\xe9 au lait\n"  # latin-1 e-acute
    path = write(tmp_path / "latin1.txt", good + bad_line)
    source = PlainTextFiles({"fr": path})
    documents = source.documents("fr")
    assert next(documents).text == "ligne un"  # lazily: the error only comes at the bad line
    expected_offset = len(good) + bad_line.index(b"\xe9")
    with pytest.raises(CorpusError) as error:
        list(documents)
    message = str(error.value)
    assert "latin1.txt:3" in message
    assert f"byte offset {expected_offset}" in message
    assert "UTF-8" in message


def test_corpus_error_is_a_value_error():
    assert issubclass(CorpusError, ValueError)


# --- JsonlSource ----------------------------------------------------------------------------


def test_jsonl_text_and_prompt_response(tmp_path):
    path = write_jsonl(tmp_path / "data.jsonl", [
        {"lang": "fr", "text": "bonjour"},
        {"lang": "en", "prompt": "Q: 2+2?\nA:", "response": " 4", "id": 7},
        {"lang": "fr", "prompt": "Traduire :", "response": " salut"},
        {"lang": "en", "text": "hello"},
    ])
    source = JsonlSource(path)
    assert source.languages == ["fr", "en"]  # order of first appearance
    assert list(source.documents("en")) == [
        Document("en", " 4", prompt="Q: 2+2?\nA:"), Document("en", "hello")]
    assert list(source.documents("fr")) == [
        Document("fr", "bonjour"), Document("fr", " salut", prompt="Traduire :")]


def test_jsonl_line_not_an_object(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"lang": "en", "text": "ok"}\n\n["en", "list"]\n', "utf-8")
    with pytest.raises(CorpusError, match=r"bad.jsonl:3: expected a JSON object, got list"):
        JsonlSource(path).languages


def test_jsonl_invalid_json(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"lang": "en", "text": "ok"}\n{"lang": "en", text}\n', "utf-8")
    with pytest.raises(CorpusError, match=r"broken.jsonl:2: not valid JSON"):
        list(JsonlSource(path).documents("en"))


@pytest.mark.parametrize("record, problem", [
    ({"text": "no language"}, "missing key 'lang'"),
    ({"lang": "en"}, "needs 'text', or 'prompt' and 'response'"),
    ({"lang": "en", "prompt": "only a prompt"}, "needs 'text', or 'prompt' and 'response'"),
    ({"lang": "en", "text": 5}, "'text' must be a string"),
    ({"lang": 3, "text": "x"}, "'lang' must be a string"),
])
def test_jsonl_line_lacking_keys_names_file_and_line(tmp_path, record, problem):
    path = write_jsonl(tmp_path / "keys.jsonl", [{"lang": "en", "text": "fine"}, record])
    with pytest.raises(CorpusError, match=f"keys.jsonl:2: .*{problem}"):
        JsonlSource(path).languages


def test_jsonl_missing_and_empty_files(tmp_path):
    with pytest.raises(CorpusError, match="not found"):
        JsonlSource(tmp_path / "absent.jsonl")
    with pytest.raises(CorpusError, match="empty"):
        JsonlSource(write(tmp_path / "empty.jsonl", ""))
    with pytest.raises(CorpusError, match="no documents"):
        JsonlSource(write(tmp_path / "blank.jsonl", "\n\n")).languages


def test_jsonl_invalid_utf8(tmp_path):
    path = write(tmp_path / "enc.jsonl", b'{"lang": "fr", "text": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match=r"enc.jsonl:1: invalid UTF-8 at byte offset 27"):
        JsonlSource(path).languages


def test_jsonl_unknown_language(tmp_path):
    source = JsonlSource(write_jsonl(tmp_path / "d.jsonl", [{"lang": "en", "text": "x"}]))
    with pytest.raises(CorpusError, match="'ja' has no text"):
        source.documents("ja")


# --- laziness -------------------------------------------------------------------------------


def test_sources_read_lazily_with_flat_memory(tmp_path):
    """Reading the first documents of a big file must not load the file."""
    line = "x" * 200 + "\n"
    big = tmp_path / "big.txt"
    big.write_text(line * 50_000, "utf-8")  # 10 MB
    records = tmp_path / "big.jsonl"
    records.write_text((json.dumps({"lang": "en", "text": "y" * 200}) + "\n") * 50_001, "utf-8")

    tracemalloc.start()
    try:
        documents = PlainTextFiles({"en": big}).documents("en")
        first = [next(documents) for _ in range(10)]
        jsonl = JsonlSource(records)
        languages = jsonl.languages  # a full streaming pass
        count = sum(1 for _ in jsonl.documents("en"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert first[0].text == "x" * 200 and len(first) == 10
    assert languages == ["en"] and count == 50_001
    assert peak < 2_000_000, f"peak {peak} bytes: the files were not streamed"


# --- MixedSource ----------------------------------------------------------------------------


def test_mixed_source_chains_sources_per_language(tmp_path):
    plain = PlainTextFiles({"en": write(tmp_path / "en.txt", "a\nb\n"),
                            "de": write(tmp_path / "de.txt", "eins\n")})
    jsonl = JsonlSource(write_jsonl(tmp_path / "x.jsonl", [
        {"lang": "en", "prompt": "p", "response": "r"}, {"lang": "fr", "text": "un"}]))
    mixed = MixedSource([plain, jsonl])
    assert mixed.languages == ["en", "de", "fr"]
    assert [(d.text, d.prompt) for d in mixed.documents("en")] == [
        ("a", None), ("b", None), ("r", "p")]
    assert [d.text for d in mixed.documents("fr")] == ["un"]
    assert plain.description in mixed.description and jsonl.description in mixed.description
    with pytest.raises(CorpusError, match="'it' has no text"):
        mixed.documents("it")
    with pytest.raises(CorpusError, match="at least one source"):
        MixedSource([])
