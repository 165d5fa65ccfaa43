"""Text sources: where per-language documents come from.

A source is an object with `languages`, `description` and `documents(lang)`, which yields
`Document`s lazily (files are streamed line by line, so memory stays flat however big they are).
Three sources live here (plain-text files, JSONL, a mix of sources); the Debian handbook lives in
`handbook.py`.

A `Document` with a `prompt` is a prompt/response pair: only the response (`text`) is counted,
the prompt is fed to the model as context (its positions get a negative language id).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Iterable, Iterator, Mapping


class CorpusError(ValueError):
    """Bad corpus input. The message says what is wrong and what to do about it."""


@dataclass(frozen=True)
class Document:
    """One unit of text in one language.

    `text` is what is counted; `prompt`, when given, is context placed before `text` in the same
    row and never counted (prompt/response data, where only response tokens count).
    """

    lang: str
    text: str
    prompt: str | None = None


class TextSource:
    """Base class of every text source.

    Subclasses set `languages` (the languages they can yield) and `description` (one line, stored
    in the stats file's metadata) and implement `_documents(lang)`.
    """

    languages: list[str]
    description: str

    def documents(self, lang: str) -> Iterator[Document]:
        """Yield the documents of `lang` lazily; CorpusError if the source has no such language."""
        self.check_language(lang)
        return self._documents(lang)

    def _documents(self, lang: str) -> Iterator[Document]:
        raise NotImplementedError

    def check_language(self, lang: str) -> None:
        """Raise CorpusError naming the available languages when `lang` is not one of them."""
        if lang not in self.languages:
            raise CorpusError(
                f"language {lang!r} has no text in {self.description}; "
                f"available languages: {', '.join(self.languages) or '(none)'}. "
                "Request one of those or add text for it."
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.description})"


def _check_file(path: str | os.PathLike) -> str:
    """Return `path` as a string; CorpusError if it is missing, not a file, or empty."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CorpusError(f"corpus file not found: {path}; check the path (one document per line).")
    if not os.path.isfile(path):
        raise CorpusError(f"corpus path is not a regular file: {path}; pass a text file.")
    if os.path.getsize(path) == 0:
        raise CorpusError(f"corpus file is empty: {path}; put at least one document in it.")
    return path


def _read_lines(path: str) -> Iterator[tuple[int, str]]:
    """Yield (1-based line number, decoded line without its newline), streaming the file.

    Decodes line by line so an invalid byte is reported with its line and absolute byte offset.
    A UTF-8 byte-order mark at the start is dropped.
    """
    offset = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise CorpusError(
                    f"{path}:{number}: invalid UTF-8 at byte offset {offset + error.start} "
                    f"(byte 0x{raw[error.start]:02x}); re-encode the file as UTF-8, "
                    "e.g. `iconv -f latin1 -t utf-8`."
                ) from None
            if number == 1 and line.startswith("\ufeff"):
                line = line[1:]
            offset += len(raw)
            yield number, line.rstrip("\r\n")


class PlainTextFiles(TextSource):
    """One plain-text UTF-8 file per language, one document per line (blank lines skipped).

    >>> source = PlainTextFiles({"en": "en.txt", "fr": "fr.txt"})
    """

    def __init__(self, files: Mapping[str, str | os.PathLike]):
        if not files:
            raise CorpusError("PlainTextFiles needs at least one {language: path} entry.")
        self.files = {str(lang): _check_file(path) for lang, path in files.items()}
        self.languages = list(self.files)
        self.description = "text files " + ", ".join(
            f"{lang}={path}" for lang, path in self.files.items()
        )

    def _documents(self, lang: str) -> Iterator[Document]:
        path = self.files[lang]
        found = False
        for _, line in _read_lines(path):
            if line.strip():
                found = True
                yield Document(lang, line)
        if not found:
            raise CorpusError(
                f"language {lang!r} has no text: {path} holds only blank lines; "
                "put one document per line in it."
            )


class JsonlSource(TextSource):
    """A JSON Lines file; each line is an object with `lang` and either `text`, or `prompt` and
    `response` (only the response is counted). Blank lines are skipped; other keys are ignored.

    The languages are found by one streaming pass over the file on first use (memory flat); each
    `documents(lang)` call streams the file again and keeps that language's lines.
    """

    def __init__(self, path: str | os.PathLike):
        self.path = _check_file(path)
        self.description = f"jsonl {self.path}"
        self._languages: list[str] | None = None

    @property
    def languages(self) -> list[str]:
        if self._languages is None:
            seen: dict[str, None] = {}
            for document in self._parse():
                seen.setdefault(document.lang)
            if not seen:
                raise CorpusError(
                    f"{self.path} holds no documents (only blank lines); "
                    'write one object per line, e.g. {"lang": "en", "text": "..."}.'
                )
            self._languages = list(seen)
        return self._languages

    def _parse(self) -> Iterator[Document]:
        for number, line in _read_lines(self.path):
            if not line.strip():
                continue
            where = f"{self.path}:{number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise CorpusError(
                    f"{where}: not valid JSON ({error.msg} at column {error.colno}); "
                    "each line must be one JSON object."
                ) from None
            if not isinstance(record, dict):
                raise CorpusError(
                    f"{where}: expected a JSON object, got {type(record).__name__}; "
                    'write objects like {"lang": "en", "text": "..."}.'
                )
            yield _record_to_document(record, where)

    def _documents(self, lang: str) -> Iterator[Document]:
        for document in self._parse():
            if document.lang == lang:
                yield document


def _record_to_document(record: dict, where: str) -> Document:
    """Validate one JSONL object and turn it into a Document."""
    if "lang" not in record:
        raise CorpusError(f"{where}: missing key 'lang'; every line needs a language code.")
    if "text" in record:
        keys = ("lang", "text")
    elif "prompt" in record and "response" in record:
        keys = ("lang", "prompt", "response")
    else:
        raise CorpusError(
            f"{where}: needs 'text', or 'prompt' and 'response' (found keys: "
            f"{', '.join(sorted(record)) or 'none'})."
        )
    for key in keys:
        if not isinstance(record[key], str):
            raise CorpusError(
                f"{where}: {key!r} must be a string, got {type(record[key]).__name__}."
            )
    if "text" in record:
        return Document(record["lang"], record["text"])
    return Document(record["lang"], record["response"], prompt=record["prompt"])


class MixedSource(TextSource):
    """Several sources as one: a language's documents are those of every source that has it,
    in the order the sources were given."""

    def __init__(self, sources: Iterable[TextSource]):
        self.sources = list(sources)
        if not self.sources:
            raise CorpusError("MixedSource needs at least one source.")
        languages: dict[str, None] = {}
        for source in self.sources:
            for lang in source.languages:
                languages.setdefault(lang)
        self.languages = list(languages)
        self.description = " + ".join(source.description for source in self.sources)

    def _documents(self, lang: str) -> Iterator[Document]:
        for source in self.sources:
            if lang in source.languages:
                yield from source.documents(lang)
