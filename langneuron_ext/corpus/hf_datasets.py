"""Corpora users have: Hugging Face `datasets` (local files or the hub cache), parallel TSV,
and a language filter for mixed real-world text.

- `HFDatasetSource`: records streamed from `datasets.load_dataset(..., streaming=True)`, so
  memory stays flat however big the corpus is. The language of a record comes either from a
  field (`language_field="lang"`) or from the split it is in (one split per language, e.g.
  `data_files={"en": "en.parquet", "fr": "fr.parquet"}`, or a hub dataset whose splits are
  languages). Local files are read by extension (.parquet, .json/.jsonl, .csv, .txt); a name
  that is not a local path is loaded from the hub cache (no network here: set HF_HUB_OFFLINE=1).
- `ParallelTsv`: aligned translations, a header of language codes and one sentence per column
  per line, so every language is evaluated on the same content.
- `LanguageFilter`: wraps any source and drops documents (or lines) that `langid` does not
  identify as the language they are filed under (LAPE users report Wikipedia text "mixed with
  English"); `dropped` counts them per language, among the documents actually read.

The CLI options for all three (`--dataset`, `--text-field`, `--language-field`,
`--dataset-split`, `--parallel`, `--filter-language`) are added by `add_dataset_options` and
turned into sources by `dataset_sources` / `with_language_filter`.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Union

from .sources import CorpusError, Document, TextSource, _check_file

# File extensions -> the `datasets` builder that reads them.
BUILDERS = {".parquet": "parquet", ".json": "json", ".jsonl": "json", ".csv": "csv",
            ".txt": "text", ".arrow": "arrow"}


def _builder(path: str) -> str:
    for ext, builder in BUILDERS.items():
        if path.endswith(ext) or path.endswith(ext + ".gz"):
            return builder
    raise CorpusError(f"cannot tell the format of {path}; use a file ending in "
                      f"{', '.join(BUILDERS)}, or a folder / hub dataset name")


def _check_rows(path: str) -> None:
    """A local parquet file with no rows is one line here, not an Arrow error mid-scan."""
    if str(path).endswith(".parquet") and os.path.isfile(path):
        import pyarrow.parquet as pq
        try:
            rows = pq.read_metadata(path).num_rows
        except Exception as exc:          # pyarrow raises its own error types
            raise CorpusError(f"{path} is not a readable parquet file ({exc}); check the "
                              f"file") from None
        if rows == 0:
            raise CorpusError(f"{path} is an empty parquet file (0 rows); put text in it or "
                              f"leave it out")


def _load(path: Union[str, Mapping[str, str]], config: Optional[str] = None,
          split: Optional[str] = None):
    """`datasets.load_dataset(..., streaming=True)` for a file, {split: file}, folder or name."""
    try:
        import datasets
    except ImportError:
        raise CorpusError("reading Hugging Face datasets needs the `datasets` package: "
                          "pip install datasets") from None
    datasets.disable_progress_bars()
    try:
        if isinstance(path, Mapping):
            builders = {_builder(str(p)) for p in path.values()}
            if len(builders) != 1:
                raise CorpusError(f"per-language files must share one format, got "
                                  f"{', '.join(sorted(builders))}")
            for p in path.values():
                _check_file(p)
                _check_rows(p)
            return datasets.load_dataset(builders.pop(), data_files=dict(path), split=split,
                                         streaming=True)
        if os.path.isfile(path):
            _check_rows(path)
            return datasets.load_dataset(_builder(path), data_files=path, split=split,
                                         streaming=True)
        return datasets.load_dataset(path, config, split=split, streaming=True)
    except CorpusError:
        raise
    except (FileNotFoundError, ValueError, ConnectionError, OSError) as error:
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CorpusError(f"cannot load dataset {path!r}: {first}. Give a local file or folder, "
                          f"or a dataset already in the Hugging Face cache "
                          f"(HF_HUB_OFFLINE=1)") from None


# Record fields that name a language: without --language-field their presence means the rows
# carry several languages, and taking each split as one language would mix them silently.
LANGUAGE_FIELDS = ("lang", "language", "languages", "lang_code", "language_code", "langcode",
                   "locale", "lid", "lang_id", "language_id", "iso", "iso_code", "iso639")
# Split names that are not languages: a dataset with such splits needs --language-field (or
# LANG=FILE per language); "train" never becomes a language.
GENERIC_SPLITS = ("train", "test", "validation", "valid", "dev", "eval", "evaluation",
                  "heldout", "default", "all", "full")
# The language sample of each split: records read, and the share (and count) a second language
# must reach for the split to count as mixed (a few misfiled lines are the filter's job).
SAMPLE_RECORDS = 64
MIXED_SHARE, MIXED_MIN = 0.2, 3


class HFDatasetSource(TextSource):
    """Documents from a Hugging Face dataset, streamed.

    >>> HFDatasetSource("wiki.parquet", text_field="text", language_field="lang")
    >>> HFDatasetSource({"en": "en.jsonl", "fr": "fr.jsonl"})        # one split per language
    >>> HFDatasetSource("some/hub-dataset", languages=["en", "fr"])   # splits named en, fr

    language_field: the record field holding the language code; without it each split is a
    language. split: with a language field, the split to read (default "train").
    languages: the languages to offer (default: found by one streaming pass over the language
    field, or the split names).
    """

    def __init__(self, path: Union[str, Mapping[str, str]], text_field: str = "text",
                 language_field: Optional[str] = None, split: Optional[str] = None,
                 languages: Optional[Sequence[str]] = None, config: Optional[str] = None):
        self.path, self.text_field, self.language_field = path, text_field, language_field
        self.split, self.config = split, config
        name = ", ".join(f"{k}={v}" for k, v in path.items()) if isinstance(path, Mapping) \
            else str(path)
        how = f"field {language_field}" if language_field else "split per language"
        self.description = f"dataset {name} (text field {text_field}, language by {how})"
        if language_field is not None:
            self._data = _load(path, config, split or "train")
        else:
            if split is not None:
                raise CorpusError("a split names one split, but without --language-field each "
                                  "split is a language; give --language-field or drop "
                                  "--dataset-split")
            self._data = _load(path, config)
        self._languages = list(languages) if languages is not None else None

    @property
    def languages(self) -> List[str]:
        if self._languages is None:
            if self.language_field is None:
                self._languages = list(self._data.keys())
                self._check_splits_are_languages(self._languages)
            else:
                seen: Dict[str, None] = {}
                for record in self._data:
                    seen.setdefault(str(self._field(record, self.language_field)))
                self._languages = list(seen)
            if not self._languages:
                raise CorpusError(f"{self.description} holds no records")
        return self._languages

    def _check_splits_are_languages(self, splits: List[str]) -> None:
        """Each split is taken as one language: refuse generic split names, empty splits,
        records with a language column, and splits in which langid finds several languages;
        each is one line suggesting --language-field."""
        hint = ("give --language-field FIELD (the record field holding each row's language) "
                "or one file per language as --dataset LANG=FILE")
        for split in splits:
            sample, records = [], 0
            for record in self._data[split]:
                records += 1
                column = next((k for k in record if str(k).lower() in LANGUAGE_FIELDS), None)
                if column is not None:
                    raise CorpusError(f"{self.description}: the records have a language column "
                                      f"{column!r}; give --language-field {column} (without it "
                                      f"split {split!r} would be one language)")
                text = record.get(self.text_field)
                if isinstance(text, str) and len(text.strip()) >= 20:
                    sample.append(text)
                if len(sample) >= SAMPLE_RECORDS:
                    break
            if split.lower() in GENERIC_SPLITS:
                raise CorpusError(f"{self.description}: split {split!r} is not a language; "
                                  f"{hint}")
            if not records:
                raise CorpusError(f"{self.description}: split {split!r} holds no records (an "
                                  f"empty file?); put text in it or leave it out")
            found = _languages_in(sample)
            several = [(lang, n) for lang, n in found
                       if n >= MIXED_MIN and n >= MIXED_SHARE * len(sample)]
            if len(several) > 1:
                seen = ", ".join(f"{lang} {n}" for lang, n in found[:4])
                raise CorpusError(f"{self.description}: split {split!r} holds several languages "
                                  f"(langid on {len(sample)} records: {seen}); {hint}")

    def _field(self, record: dict, key: str):
        if key not in record:
            raise CorpusError(f"{self.description}: records have no field {key!r} (fields: "
                              f"{', '.join(sorted(record))}); pass --text-field / "
                              f"--language-field with one of them")
        return record[key]

    def _documents(self, lang: str) -> Iterator[Document]:
        if self.language_field is None:
            if lang not in self._data:
                raise CorpusError(f"{self.description} has no split {lang!r} (splits: "
                                  f"{', '.join(self._data.keys())})")
            records = ((lang, r) for r in self._data[lang])
        else:
            records = ((str(self._field(r, self.language_field)), r) for r in self._data)
        for record_lang, record in records:
            if record_lang != lang:
                continue
            text = self._field(record, self.text_field)
            if not isinstance(text, str):
                raise CorpusError(f"{self.description}: field {self.text_field!r} holds "
                                  f"{type(text).__name__}, not text")
            if text.strip():
                yield Document(lang, text)


class ParallelTsv(TextSource):
    """Aligned translations in a TSV file: a header of language codes, then one line per
    sentence with its translation in each column (empty cells are skipped). Streamed."""

    def __init__(self, path: Union[str, os.PathLike]):
        self.path = _check_file(path)
        with open(self.path, encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle, delimiter="\t"), [])
        self.languages = [h.strip() for h in header]
        if len(self.languages) < 2 or not all(self.languages) \
                or len(set(self.languages)) != len(self.languages):
            raise CorpusError(f"{self.path}: the first line must name two or more different "
                              f"languages separated by tabs, e.g. 'en<TAB>fr', got {header!r}")
        self.description = f"parallel tsv {self.path} ({', '.join(self.languages)})"

    def _documents(self, lang: str) -> Iterator[Document]:
        column = self.languages.index(lang)
        with open(self.path, encoding="utf-8", newline="") as handle:
            rows = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            next(rows)
            for number, row in enumerate(rows, start=2):
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(self.languages):
                    raise CorpusError(f"{self.path}:{number}: {len(row)} columns, the header "
                                      f"has {len(self.languages)}; one translation per "
                                      f"language, separated by tabs")
                if row[column].strip():
                    yield Document(lang, row[column])


def _languages_in(texts: Sequence[str]) -> List[tuple]:
    """[(langid code, count), ...] over `texts`, most frequent first."""
    if not texts:
        return []
    from langid import langid
    if langid.identifier is None:
        langid.load_model()
    counts: Dict[str, int] = {}
    for text in texts:
        code = langid.identifier.classify(text)[0]
        counts[code] = counts.get(code, 0) + 1
    return sorted(counts.items(), key=lambda item: -item[1])


def _langid_code(lang: str) -> str:
    return lang.split("-")[0].split("_")[0].lower()


class LanguageFilter(TextSource):
    """`source` with the documents (unit "documents") or lines (unit "lines") dropped that
    `langid` does not identify as the language they are filed under; `dropped[lang]` counts
    the dropped units among those read."""

    UNITS = ("documents", "lines")

    def __init__(self, source: TextSource, unit: str = "documents"):
        if unit not in self.UNITS:
            raise CorpusError(f"--filter-language unit must be one of {', '.join(self.UNITS)}, "
                              f"got {unit!r}")
        from langid import langid
        if langid.identifier is None:
            langid.load_model()
        self._classify = langid.identifier.classify
        self.source, self.unit = source, unit
        self.dropped: Dict[str, int] = {}
        self.kept: Dict[str, int] = {}
        self.description = f"{source.description}, {unit} not identified as their language " \
                           f"dropped (langid)"

    @property
    def languages(self) -> List[str]:
        return self.source.languages

    def _keep(self, text: str, lang: str) -> bool:
        ok = self._classify(text)[0] == _langid_code(lang)
        counter = self.kept if ok else self.dropped
        counter[lang] = counter.get(lang, 0) + 1
        return ok

    def _documents(self, lang: str) -> Iterator[Document]:
        self.dropped.setdefault(lang, 0)
        for doc in self.source.documents(lang):
            if self.unit == "documents":
                if self._keep(doc.text, lang):
                    yield doc
                continue
            lines = [line for line in doc.text.split("\n")
                     if line.strip() and self._keep(line, lang)]
            if lines:
                yield Document(doc.lang, "\n".join(lines), doc.prompt)

    def metadata(self) -> Dict[str, str]:
        """What goes into the stats file's metadata: dropped and kept units per language."""
        return {"language_filter": json.dumps({"unit": self.unit, "dropped": self.dropped,
                                               "kept": self.kept})}


# ---- CLI --------------------------------------------------------------------------------------
def add_dataset_options(parser: argparse.ArgumentParser) -> None:
    """The corpus options for Hugging Face datasets, parallel TSV and the language filter."""
    g = parser.add_argument_group("datasets (Hugging Face datasets, parallel TSV, filtering)")
    g.add_argument("--dataset", action="append", default=[], metavar="NAME_OR_PATH",
                   help="a Hugging Face dataset: a local file (.parquet, .json/.jsonl, .csv, "
                        ".txt), folder or cached hub name, read streaming; or LANG=FILE, "
                        "repeated, one file per language")
    g.add_argument("--text-field", default="text", metavar="FIELD",
                   help="the record field holding the text (default text)")
    g.add_argument("--language-field", metavar="FIELD",
                   help="the record field holding the language code (default: each split of "
                        "the dataset is one language)")
    g.add_argument("--dataset-split", metavar="SPLIT",
                   help="with --language-field: the split to read (default train)")
    g.add_argument("--dataset-config", metavar="NAME", help="the dataset's configuration name")
    g.add_argument("--parallel", metavar="FILE.tsv",
                   help="aligned translations: a header of language codes, one sentence per "
                        "column")
    g.add_argument("--filter-language", nargs="?", const="documents",
                   choices=LanguageFilter.UNITS, metavar="documents|lines",
                   help="drop documents (or, with 'lines', lines) that langid does not "
                        "identify as their language; counts per language go into the stats "
                        "metadata")


def dataset_sources(args) -> List[TextSource]:
    """The sources `add_dataset_options`' options ask for (empty when none)."""
    sources: List[TextSource] = []
    items = list(getattr(args, "dataset", None) or [])
    per_language = [i for i in items if "=" in i and not os.path.exists(i)]
    if per_language:
        if len(per_language) != len(items):
            raise CorpusError("--dataset: give either one NAME_OR_PATH or LANG=FILE items, "
                              "not both")
        files = {}
        for item in per_language:
            lang, _, path = item.partition("=")
            if not lang.strip() or not path.strip() or lang.strip() in files:
                raise CorpusError(f"--dataset {item!r}: write LANG=FILE, each language once")
            files[lang.strip()] = path.strip()
        sources.append(HFDatasetSource(files, text_field=args.text_field,
                                       language_field=args.language_field,
                                       split=args.dataset_split))
    elif len(items) > 1:
        raise CorpusError("--dataset given more than once; give one dataset, or LANG=FILE "
                          "per language")
    elif items:
        sources.append(HFDatasetSource(items[0], text_field=args.text_field,
                                       language_field=args.language_field,
                                       split=args.dataset_split,
                                       config=getattr(args, "dataset_config", None)))
    if getattr(args, "parallel", None):
        sources.append(ParallelTsv(args.parallel))
    return sources


def with_language_filter(corpus: TextSource, args) -> TextSource:
    """`corpus` wrapped in a LanguageFilter when --filter-language is given."""
    unit = getattr(args, "filter_language", None)
    return LanguageFilter(corpus, unit) if unit else corpus


def filter_metadata(corpus) -> Dict[str, str]:
    """Stats metadata entries of a filtered corpus (empty otherwise)."""
    return corpus.metadata() if isinstance(corpus, LanguageFilter) else {}
