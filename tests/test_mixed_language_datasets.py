"""Datasets whose rows mix languages: without --language-field they are refused in one line
that suggests it, a split name never becomes a language, region codes filter by their base
language, and the corpus options combine as their help says."""
import argparse
import json

import pytest

from langneuron_ext.cli import main
from langneuron_ext.corpus import CorpusError, Document, TextSource
from langneuron_ext.corpus.hf_datasets import HFDatasetSource, LanguageFilter

EN = ["The package manager installs software from the Debian archive.",
      "Debian is a free operating system developed by volunteers around the world.",
      "The kernel is configured before it is compiled and installed on the machine.",
      "Every service on the server is started by the init system at boot time."]
FR = ["Le gestionnaire de paquets installe les logiciels depuis l'archive Debian.",
      "Debian est un système d'exploitation libre développé par des bénévoles.",
      "Le noyau est configuré avant d'être compilé puis installé sur la machine.",
      "Chaque service du serveur est démarré par le système d'initialisation."]
DE = ["Der Paketmanager installiert die Software aus dem Debian-Archiv.",
      "Debian ist ein freies Betriebssystem, das von Freiwilligen entwickelt wird.",
      "Der Kernel wird konfiguriert, bevor er kompiliert und installiert wird.",
      "Jeder Dienst auf dem Server wird beim Systemstart vom Init-System gestartet."]


def write_parquet(path, records):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(records), path)
    return str(path)


def test_a_language_column_without_language_field_suggests_it(tmp_path):
    path = write_parquet(tmp_path / "wiki.parquet",
                         [{"text": t, "language": "en"} for t in EN]
                         + [{"text": t, "language": "fr"} for t in FR])
    source = HFDatasetSource({"xx": path})
    with pytest.raises(CorpusError, match="--language-field language") as info:
        source.languages
    assert "\n" not in str(info.value)
    # with the field the same file is two languages
    assert HFDatasetSource(path, language_field="language").languages == ["en", "fr"]


def test_a_split_name_never_becomes_a_language(tmp_path):
    path = write_parquet(tmp_path / "one.parquet", [{"text": t} for t in EN])
    with pytest.raises(CorpusError, match="split 'train' is not a language.*--language-field"):
        HFDatasetSource(path).languages
    # named per language it is one language
    assert HFDatasetSource({"en": path}).languages == ["en"]


def test_langid_finding_several_languages_in_a_split_is_refused(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in EN + FR + DE))
    with pytest.raises(CorpusError, match=r"several languages \(langid on 12 records") as info:
        HFDatasetSource({"en": str(path)}).languages
    assert "--language-field" in str(info.value)
    # one misfiled document among many is left to --filter-language, not refused
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in EN * 3 + FR[:1]))
    assert HFDatasetSource({"en": str(path)}).languages == ["en"]


def test_the_cli_refuses_a_mixed_dataset_in_one_line(tmp_path, capsys):
    path = write_parquet(tmp_path / "wiki.parquet",
                         [{"text": t, "lang": "en"} for t in EN]
                         + [{"text": t, "lang": "fr"} for t in FR])
    code = main(["scan", "--model", "gemma-3-270m", "--dataset", path, "--out",
                 str(tmp_path / "s.safetensors")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--language-field lang" in err


class Stub(TextSource):
    def __init__(self, docs):
        self.docs = docs
        self.languages = list(docs)
        self.description = "stub"

    def _documents(self, lang):
        return (Document(lang, t) for t in self.docs[lang])


@pytest.mark.parametrize("code", ["pt-BR", "pt_BR", "PT-br"])
def test_the_language_filter_reads_region_codes_by_their_base_language(code):
    pt = "O gerenciador de pacotes instala os programas a partir do arquivo do Debian."
    zh = "软件包管理器从存档中安装软件。"
    source = LanguageFilter(Stub({code: [pt, EN[0]], "zh-CN": [zh, FR[0]]}))
    assert [d.text for d in source.documents(code)] == [pt]
    assert [d.text for d in source.documents("zh-CN")] == [zh]
    assert source.dropped == {code: 1, "zh-CN": 1} and source.kept == {code: 1, "zh-CN": 1}


def _corpus_args(**given):
    from langneuron_ext.cli import options
    parser = argparse.ArgumentParser()
    options.add_corpus_options(parser)
    argv = []
    for key, value in given.items():
        for item in (value if isinstance(value, list) else [value]):
            argv += [f"--{key.replace('_', '-')}", item]
    return parser, parser.parse_args(argv)


def test_text_jsonl_and_dataset_combine_as_the_help_says(tmp_path):
    from langneuron_ext.cli import options
    (tmp_path / "en.txt").write_text("\n".join(EN) + "\n")
    (tmp_path / "fr.jsonl").write_text("".join(json.dumps({"lang": "fr", "text": t}) + "\n"
                                               for t in FR))
    de = write_parquet(tmp_path / "de.parquet", [{"text": t} for t in DE])
    (tmp_path / "more.txt").write_text(EN[0] + "\n")
    parser, args = _corpus_args(text=[f"en={tmp_path / 'en.txt'}"],
                                jsonl=str(tmp_path / "fr.jsonl"), dataset=f"de={de}")
    assert "combine" in parser.format_help()
    corpus, languages = options.corpus_from_args(args)
    assert languages == ["en", "fr", "de"]
    assert [d.text for d in corpus.documents("fr")] == FR
    assert [d.text for d in corpus.documents("de")] == DE
    # a language in two sources: its documents from each, in the order of the help
    (tmp_path / "en.jsonl").write_text(json.dumps({"lang": "en", "text": "From JSONL."}) + "\n")
    _, args = _corpus_args(text=[f"en={tmp_path / 'more.txt'}"],
                           jsonl=str(tmp_path / "en.jsonl"))
    corpus, _ = options.corpus_from_args(args)
    assert [d.text for d in corpus.documents("en")] == [EN[0], "From JSONL."]
