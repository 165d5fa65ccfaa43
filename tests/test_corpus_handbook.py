"""The Debian handbook source: parsing, filtering, alignment, splits, language codes, errors.

The unit tests run on a tiny fake handbook in tmp_path; the others on the installed package
(`make test` installs debian-handbook).
"""
import re

import langid
import pytest

from langneuron_ext.corpus import CorpusError, DebianHandbook, handbook_available
from langneuron_ext.corpus.handbook import (
    HANDBOOK_ROOT,
    MIN_SCRIPT_SHARE,
    _ParagraphParser,
    _raw_paragraphs,
    available_languages,
    resolve_language,
    script_share,
)

# --- a fake handbook ------------------------------------------------------------------------


def page(*paragraphs):
    body = "".join(f'<div class="para">\n\t\t{p}\n\t</div><p>not a paragraph</p>'
                   for p in paragraphs)
    return f"<html><body><div class='chapter'>{body}</div></body></html>"


ENGLISH = [
    "The package manager installs software and resolves dependencies.",
    "Short one.",
    "This paragraph is left untranslated in every other language here.",
    "Configuration files live under the etc directory of the system.",
    "The kernel provides a block device file for each disk partition.",
]
FRENCH = [
    "Le gestionnaire de paquets installe les logiciels et résout les dépendances.",
    "Court.",
    ENGLISH[2],
    "The configuration files live under the etc directory of this system.",  # English
    "Le noyau fournit un fichier de périphérique bloc pour chaque partition.",
]
RUSSIAN = [
    "Менеджер пакетов устанавливает программы и разрешает зависимости.",
    "Коротко.",
    ENGLISH[2],
    "apt-get install --reinstall /usr/lib/foo.so.1 bar-baz quux",  # Latin only
    "Ядро предоставляет файл блочного устройства для каждого раздела.",
]


@pytest.fixture
def fake_root(tmp_path):
    for directory, paragraphs in [("en-US", ENGLISH), ("fr-FR", FRENCH), ("ru-RU", RUSSIAN)]:
        folder = tmp_path / directory
        folder.mkdir()
        # two files, so the file order matters; b.html sorts after a.html
        (folder / "b.html").write_text(page(*paragraphs[3:]), "utf-8")
        (folder / "a.html").write_text(page(*paragraphs[:3]), "utf-8")
    return str(tmp_path)


def test_parser_strips_tags_unescapes_and_skips_urls_and_code():
    parser = _ParagraphParser()
    parser.feed(
        '<div class="para">\n\t\tUse <code class="command">apt&nbsp;install</code> &amp; '
        'read <a href="x">the <em>manual</em></a>. <div class="url">→ https://x.org</div>\n'
        '<pre class="screen">$ some output</pre> Done.\n\t</div>'
        '<div class="para other">Second<div><div>nested</div></div> end</div><div>outside</div>'
    )
    parser.close()
    assert parser.paragraphs == ["Use apt install & read the manual. Done.", "Second nested end"]


def test_filters_untranslated_english_short_and_wrong_script(fake_root):
    source = DebianHandbook(["en", "fr", "ru"], root=fake_root)
    english = [p.text for p in source.paragraphs("en")]
    assert english == [ENGLISH[i] for i in (0, 2, 3, 4)]  # only the short one dropped
    french = source.paragraphs("fr")
    assert [p.text for p in french] == [FRENCH[0], FRENCH[4]]
    assert [p.index for p in french] == [0, 4]  # positions are the English ones
    assert [p.text for p in source.paragraphs("ru")] == [RUSSIAN[0], RUSSIAN[4]]
    assert source.coverage("fr") == {
        "total": 5, "kept": 2, "short": 1, "untranslated": 1, "english": 1}
    assert source.coverage("ru") == {
        "total": 5, "kept": 2, "short": 1, "untranslated": 1, "script": 1}
    assert [d.text for d in source.documents("fr")] == [FRENCH[0], FRENCH[4]]
    assert all(d.lang == "fr" and d.prompt is None for d in source.documents("fr"))


def test_misaligned_language_is_an_error(fake_root):
    import pathlib

    (pathlib.Path(fake_root) / "fr-FR" / "a.html").write_text(page("Une seule phrase en français."))
    with pytest.raises(CorpusError, match="cannot be aligned"):
        DebianHandbook(["fr"], root=fake_root).paragraphs("fr")


def test_missing_package_error_says_how_to_install(tmp_path):
    assert not handbook_available(str(tmp_path))
    with pytest.raises(CorpusError, match="apt-get install debian-handbook"):
        DebianHandbook(["en"], root=str(tmp_path))


@pytest.mark.parametrize("kwargs, problem", [
    ({"languages": []}, "at least one language"),
    ({"languages": ["en"], "split": "test"}, "split must be one of"),
    ({"languages": ["en"], "split": "train", "heldout_every": 1}, "heldout_every"),
    ({"languages": ["en", "en"]}, "repeat"),
])
def test_bad_arguments(fake_root, kwargs, problem):
    with pytest.raises(CorpusError, match=problem):
        DebianHandbook(root=fake_root, **kwargs)


def test_script_share():
    assert script_share("Привет, world", ("CYRILLIC",)) == pytest.approx(6 / 11)
    assert script_share("1234 !!", ("LATIN",)) == 0.0
    assert script_share("日本語のテキスト", ("HIRAGANA", "KATAKANA", "CJK")) == 1.0


# --- the installed handbook -----------------------------------------------------------------


@pytest.fixture(scope="module")
def handbook():
    if not handbook_available():
        pytest.fail("debian-handbook is not installed: `sudo apt-get install debian-handbook`")
    return DebianHandbook(["en", "fr", "de", "ru", "ja"])


def test_language_codes_map_to_directories():
    assert resolve_language("fr") == "fr-FR"
    assert resolve_language("pt") == "pt-BR"
    assert resolve_language("zh") == "zh-CN"
    assert resolve_language("zh-tw") == "zh-TW"
    assert resolve_language("AR") == "ar-MA"
    assert resolve_language("fa") == "fa-IR"
    assert "en-US" in available_languages() and len(available_languages()) >= 12
    with pytest.raises(CorpusError, match=r"no language 'xx'; available: .*fr \(fr-FR\)"):
        resolve_language("xx")
    with pytest.raises(CorpusError, match="no language 'klingon'"):
        DebianHandbook(["en", "klingon"])


def test_every_language_has_the_same_paragraph_structure():
    """The alignment rests on this: same files, same paragraph count per file, in every language."""
    english = _raw_paragraphs("en-US", HANDBOOK_ROOT)
    for directory in ("fr-FR", "de-DE", "ru-RU", "ja-JP", "zh-CN", "ar-MA", "pt-BR"):
        paragraphs = _raw_paragraphs(directory, HANDBOOK_ROOT)
        assert [p.file for p in paragraphs] == [p.file for p in english], directory


def test_several_languages_have_substantial_text(handbook):
    for lang in handbook.languages:
        paragraphs = handbook.paragraphs(lang)
        coverage = handbook.coverage(lang)
        assert coverage["kept"] == len(paragraphs)
        assert len(paragraphs) > 0.4 * coverage["total"], (lang, coverage)
        assert all(len(p.text) >= 20 for p in paragraphs)
        assert [p.index for p in paragraphs] == sorted(p.index for p in paragraphs)


def test_no_english_paragraphs_in_fr_de_ru(handbook):
    english = _raw_paragraphs("en-US", HANDBOOK_ROOT)
    for lang in ("fr", "de", "ru"):
        paragraphs = handbook.paragraphs(lang)
        assert all(p.text != english[p.index].text for p in paragraphs), lang
        # an independent check on a spread-out sample of full-sized paragraphs
        sample = [p for p in paragraphs if len(p.text) >= 80][::20]
        assert len(sample) >= 50
        flagged = [p.text for p in sample if langid.classify(p.text)[0] == "en"]
        assert flagged == [], (lang, flagged[:3])


def test_no_wrong_script_paragraphs(handbook):
    assert all(script_share(p.text, ("CYRILLIC",)) >= MIN_SCRIPT_SHARE
               for p in handbook.paragraphs("ru"))
    assert all(script_share(p.text, ("HIRAGANA", "KATAKANA", "CJK")) >= MIN_SCRIPT_SHARE
               for p in handbook.paragraphs("ja"))
    assert all(script_share(p.text, ("LATIN",)) >= 0.5 for p in handbook.paragraphs("de"))


def _markers(text):
    """Numbers and paths: they survive translation, so aligned paragraphs share them."""
    return set(re.findall(r"/[\w./-]+|\d+", text))


def _marker_agreement(paragraphs, english, shift):
    agree = total = 0
    for paragraph in paragraphs:
        position = paragraph.index + shift
        if not 0 <= position < len(english):
            continue
        markers = _markers(english[position].text)
        if markers:
            total += 1
            agree += len(markers & _markers(paragraph.text)) >= 0.5 * len(markers)
    return agree / total


def test_paragraphs_align_across_languages_by_position(handbook):
    english = _raw_paragraphs("en-US", HANDBOOK_ROOT)
    for lang in ("fr", "ru", "ja"):
        paragraphs = handbook.paragraphs(lang)
        aligned = _marker_agreement(paragraphs, english, 0)
        shifted = _marker_agreement(paragraphs, english, 1)
        assert aligned > 0.8, (lang, aligned)
        assert shifted < aligned - 0.4, (lang, aligned, shifted)


def test_train_and_heldout_splits_are_disjoint_and_parallel(handbook):
    train = DebianHandbook(["fr", "de"], split="train")
    heldout = DebianHandbook(["fr", "de"], split="heldout", heldout_every=10)
    for lang in ("fr", "de"):
        train_ids = {p.index for p in train.paragraphs(lang)}
        heldout_ids = {p.index for p in heldout.paragraphs(lang)}
        all_ids = {p.index for p in handbook.paragraphs(lang)}
        assert train_ids.isdisjoint(heldout_ids)
        assert train_ids | heldout_ids == all_ids
        assert all(index % 10 == 9 for index in heldout_ids)
        assert 0.05 < len(heldout_ids) / len(all_ids) < 0.15
        texts = {d.text for d in heldout.documents(lang)}
        assert texts.isdisjoint(d.text for d in train.documents(lang))
    # the held-out positions are the same in every language: parallel evaluation text
    fr_ids = {p.index for p in heldout.paragraphs("fr")}
    de_ids = {p.index for p in heldout.paragraphs("de")}
    assert len(fr_ids & de_ids) > 0.5 * min(len(fr_ids), len(de_ids))
    assert "heldout" in heldout.description and "fr,de" in heldout.description
