"""The Debian Administrator's Handbook as a parallel corpus (Debian package `debian-handbook`).

The package ships the same book in 26 languages as HTML under
/usr/share/doc/debian-handbook/html/<ll-CC>/*.html. Every language directory holds the same 127
files and every file the same number of `<div class="para">` blocks in the same order (3,034 in
all, checked for every language of the 2022 package), so the i-th paragraph of one language is
the translation of the i-th paragraph of English. That position is the paragraph's `index`; it
is the same in every language, which makes the train / held-out split parallel across languages.

Translations are incomplete: untranslated paragraphs are left in English. They are dropped here
(identical to the English paragraph at the same position, or identified as English by `langid`),
as are paragraphs in the wrong script (e.g. only Latin letters for Russian or Japanese: command
lines and file names) and very short ones (< 20 characters). How much survives differs a lot per
language (see `coverage()`); fr, de, es, it, pt, id, ru, ja, zh keep the large majority.
"""
from __future__ import annotations

import functools
import os
import re
import unicodedata
from dataclasses import dataclass
from html.parser import HTMLParser
from typing import Iterator, Sequence

from .sources import CorpusError, Document, TextSource

HANDBOOK_ROOT = "/usr/share/doc/debian-handbook/html"
MIN_CHARS = 20
SPLITS = ("all", "train", "heldout")

# Short code -> directory, where the short code alone is ambiguous or the default is not obvious.
_PREFERRED = {"zh": "zh-CN", "pt": "pt-BR"}

# Expected script of a language's letters (unicodedata name prefixes); anything else is Latin.
_SCRIPTS = {
    "ru": ("CYRILLIC",),
    "el": ("GREEK",),
    "ar": ("ARABIC",),
    "fa": ("ARABIC",),
    "ja": ("HIRAGANA", "KATAKANA", "CJK"),
    "zh": ("CJK",),
    "ko": ("HANGUL", "CJK"),
}
# A paragraph must have at least this share of its letters in the expected script. Technical
# paragraphs mix in many Latin commands and paths, so the bar is low; it removes untranslated and
# pure-code paragraphs.
MIN_SCRIPT_SHARE = 0.3


@dataclass(frozen=True)
class Paragraph:
    """One handbook paragraph: `index` is its position in the whole book (the same in every
    language), `file` the HTML file it comes from."""

    index: int
    file: str
    text: str


def handbook_available(root: str = HANDBOOK_ROOT) -> bool:
    """True when the debian-handbook HTML is installed (at least the English book)."""
    return os.path.isdir(os.path.join(root, "en-US"))


def _require_handbook(root: str) -> None:
    if not handbook_available(root):
        raise CorpusError(
            f"Debian's debian-handbook is not installed (no {root}/en-US); install it with "
            "`sudo apt-get update && sudo apt-get install debian-handbook` (or `make handbook`)."
        )


def available_languages(root: str = HANDBOOK_ROOT) -> list[str]:
    """The language directories of the installed handbook, e.g. ['ar-MA', 'ca-ES', ...]."""
    _require_handbook(root)
    return sorted(
        name for name in os.listdir(root)
        if os.path.isdir(os.path.join(root, name)) and "-" in name and name[0].islower()
    )


def resolve_language(code: str, root: str = HANDBOOK_ROOT) -> str:
    """Map a language code (`fr`, `pt`, `zh`, `zh-TW`, `pt-BR`, case-insensitive) to its handbook
    directory name; CorpusError listing the available ones otherwise."""
    directories = available_languages(root)
    by_lower = {name.lower(): name for name in directories}
    wanted = code.strip().lower().replace("_", "-")
    if wanted in by_lower:
        return by_lower[wanted]
    preferred = _PREFERRED.get(wanted)
    if preferred and preferred in directories:
        return preferred
    matches = [name for name in directories if name.split("-")[0].lower() == wanted]
    if len(matches) == 1:
        return matches[0]
    listing = ", ".join(f"{name.split('-')[0]} ({name})" for name in directories)
    raise CorpusError(
        f"the debian-handbook has no language {code!r}; available: {listing}. "
        "Use a short code (fr) or a directory name (zh-TW)."
    )


class _ParagraphParser(HTMLParser):
    """Collect the text of every `<div class="para">`, leaving out URL boxes and code blocks
    nested in it (not language)."""

    _SKIP_TAGS = ("pre", "script", "style")
    # Block elements separate words even without whitespace between them in the HTML.
    _BLOCK_TAGS = frozenset({"div", "p", "br", "li", "ul", "ol", "dd", "dt", "td", "tr", "table"})

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.paragraphs: list[str] = []
        self._parts: list[str] | None = None  # the paragraph being read, None outside one
        self._div_depth = 0  # open divs inside the current paragraph, itself included
        self._skip_tag: str | None = None  # the element being skipped
        self._skip_depth = 0  # open elements named _skip_tag inside the skipped one

    def handle_starttag(self, tag, attrs):
        classes = (dict(attrs).get("class") or "").split()
        if self._parts is None:
            if tag == "div" and "para" in classes:
                self._parts, self._div_depth = [], 1
            return
        if tag in self._BLOCK_TAGS:
            self._parts.append(" ")
        if tag == "div":
            self._div_depth += 1
        if self._skip_tag is None:
            if tag in self._SKIP_TAGS or (tag == "div" and "url" in classes):
                self._skip_tag, self._skip_depth = tag, 1
        elif tag == self._skip_tag:
            self._skip_depth += 1

    def handle_endtag(self, tag):
        if self._parts is None:
            return
        if tag in self._BLOCK_TAGS:
            self._parts.append(" ")
        if tag == self._skip_tag:
            self._skip_depth -= 1
            if self._skip_depth == 0:
                self._skip_tag = None
        if tag == "div":
            self._div_depth -= 1
            if self._div_depth == 0:
                self.paragraphs.append(" ".join("".join(self._parts).split()))
                self._parts, self._skip_tag = None, None

    def handle_data(self, data):
        if self._parts is not None and self._skip_tag is None:
            self._parts.append(data)


@functools.lru_cache(maxsize=None)
def _raw_paragraphs(directory: str, root: str) -> tuple[Paragraph, ...]:
    """Every paragraph of one language directory, unfiltered, in book position order (files
    sorted by name, paragraphs in document order)."""
    path = os.path.join(root, directory)
    files = sorted(name for name in os.listdir(path) if name.endswith(".html"))
    paragraphs: list[Paragraph] = []
    for name in files:
        parser = _ParagraphParser()
        with open(os.path.join(path, name), encoding="utf-8") as handle:
            parser.feed(handle.read())
        parser.close()
        start = len(paragraphs)
        paragraphs.extend(
            Paragraph(start + i, name, text) for i, text in enumerate(parser.paragraphs)
        )
    return tuple(paragraphs)


def script_share(text: str, scripts: Sequence[str]) -> float:
    """Share of the letters of `text` whose Unicode name starts with one of `scripts`
    (e.g. ("CYRILLIC",)); 0.0 for text without letters."""
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 0.0
    hits = sum(1 for ch in letters if unicodedata.name(ch, "").startswith(tuple(scripts)))
    return hits / len(letters)


def _expected_scripts(language: str) -> tuple[str, ...]:
    return _SCRIPTS.get(language, ("LATIN",))


# Frequent English function words. langid is slow here (tens of ms a paragraph) and mislabels
# short technical fragments ("info : message informatif ;") as English, so it is asked only
# about paragraphs where these words make up a noticeable share of the words.
_ENGLISH_FUNCTION_WORDS = frozenset(
    "the of and to a in is it that for on with as are be this by can or from an which not you "
    "will have its at if all these their they has more also but one such when into".split()
)
MIN_ENGLISH_SHARE = 0.1
_WORD = re.compile(r"[^\W\d_]+")


def english_function_word_share(text: str) -> float:
    """Share of the words of `text` that are frequent English function words."""
    words = _WORD.findall(text.lower())
    if not words:
        return 0.0
    return sum(word in _ENGLISH_FUNCTION_WORDS for word in words) / len(words)


def looks_english(text: str) -> bool:
    """True when `langid` identifies `text` as English (asked only when English function words
    are frequent enough to make that plausible)."""
    if english_function_word_share(text) < MIN_ENGLISH_SHARE:
        return False
    return _langid_classifier()(text)[0] == "en"


@functools.lru_cache(maxsize=1)
def _langid_classifier():
    import langid  # noqa: PLC0415  (imported on first use: loading its model takes a moment)

    return langid.classify


def _rejection(text: str, english: str, language: str) -> str | None:
    """Why a paragraph is dropped ("short", "untranslated", "english", "script"), or None."""
    if len(text) < MIN_CHARS:
        return "short"
    if language == "en":
        return None
    if text == english:
        return "untranslated"
    if script_share(text, _expected_scripts(language)) < (
        MIN_SCRIPT_SHARE if language in _SCRIPTS else 0.5
    ):
        return "script"
    if looks_english(text):
        return "english"
    return None


@functools.lru_cache(maxsize=None)
def _filtered_paragraphs(directory: str, root: str) -> tuple[tuple[Paragraph, ...], dict]:
    """The kept paragraphs of one language and the number dropped for each reason."""
    language = directory.split("-")[0].lower()
    english = _raw_paragraphs("en-US", root)
    raw = _raw_paragraphs(directory, root)
    if len(raw) != len(english):
        raise CorpusError(
            f"the debian-handbook's {directory} has {len(raw)} paragraphs but en-US has "
            f"{len(english)}, so they cannot be aligned; reinstall the debian-handbook package."
        )
    kept: list[Paragraph] = []
    dropped: dict[str, int] = {}
    for paragraph, reference in zip(raw, english):
        reason = _rejection(paragraph.text, reference.text, language)
        if reason is None:
            kept.append(paragraph)
        else:
            dropped[reason] = dropped.get(reason, 0) + 1
    return tuple(kept), dropped


class DebianHandbook(TextSource):
    """The Debian handbook's paragraphs in the given languages, one Document per paragraph.

    languages: short codes (en, fr, de, es, it, pt, id, ru, ja, zh, ar, fa, ...) or directory
        names (pt-BR, zh-TW); the source's `languages` are the codes as given.
    split: "all", "train" or "heldout". Paragraph positions with
        `index % heldout_every == heldout_every - 1` are held out, the rest are train; the same
        positions in every language, so evaluation text is parallel and unseen by the scan.
    """

    def __init__(
        self,
        languages: Sequence[str],
        split: str = "all",
        heldout_every: int = 10,
        root: str = HANDBOOK_ROOT,
    ):
        if isinstance(languages, str):
            languages = [part for part in languages.split(",") if part.strip()]
        if not languages:
            raise CorpusError("DebianHandbook needs at least one language, e.g. ['en', 'fr'].")
        if split not in SPLITS:
            raise CorpusError(f"split must be one of {', '.join(SPLITS)}, got {split!r}.")
        if not isinstance(heldout_every, int) or heldout_every < 2:
            raise CorpusError(
                f"heldout_every must be an integer >= 2 (every n-th paragraph is held out), "
                f"got {heldout_every!r}."
            )
        _require_handbook(root)
        self.root = root
        self.split = split
        self.heldout_every = heldout_every
        self.languages = [code.strip() for code in languages]
        if len(set(self.languages)) != len(self.languages):
            raise CorpusError(f"languages repeat: {self.languages}; give each language once.")
        self.directories = {code: resolve_language(code, root) for code in self.languages}
        self.description = (
            f"debian-handbook ({split}"
            + (f", every {heldout_every}th held out" if split != "all" else "")
            + f"): {','.join(self.languages)}"
        )

    def _in_split(self, index: int) -> bool:
        held_out = index % self.heldout_every == self.heldout_every - 1
        return {"all": True, "train": not held_out, "heldout": held_out}[self.split]

    def paragraphs(self, lang: str) -> list[Paragraph]:
        """The kept paragraphs of `lang` in this split, in book order, with their positions."""
        self.check_language(lang)
        kept, _ = _filtered_paragraphs(self.directories[lang], self.root)
        selected = [paragraph for paragraph in kept if self._in_split(paragraph.index)]
        if not selected:
            raise CorpusError(
                f"the debian-handbook has no usable {self.split} text for {lang!r} "
                f"(every paragraph was untranslated, in the wrong script or too short); "
                "choose another language."
            )
        return selected

    def coverage(self, lang: str) -> dict[str, int]:
        """How many paragraphs of `lang` were kept and dropped for each reason (whole book)."""
        self.check_language(lang)
        kept, dropped = _filtered_paragraphs(self.directories[lang], self.root)
        total = len(_raw_paragraphs(self.directories[lang], self.root))
        return {"total": total, "kept": len(kept), **dropped}

    def _documents(self, lang: str) -> Iterator[Document]:
        for paragraph in self.paragraphs(lang):
            yield Document(lang, paragraph.text)
