"""Corpora from Hugging Face `datasets` (local parquet / JSON files), parallel TSV and the
language filter; the CLI options end to end through `langneuron scan` on a tiny model."""
import json

import pytest

from langneuron_ext.corpus import CorpusError, iter_batches
from langneuron_ext.corpus.hf_datasets import HFDatasetSource, LanguageFilter, ParallelTsv
from langneuron_ext.models.toy import byte_tokenizer

EN = ["The package manager installs software from the archive.",
      "Debian is a free operating system developed by volunteers."]
FR = ["Le gestionnaire de paquets installe les logiciels depuis l'archive.",
      "Debian est un système d'exploitation libre développé par des bénévoles."]
# an English sentence filed under French: the mix real corpora have
MIXED_FR = ["The kernel is configured before it is compiled and installed."] + FR


def write_parquet(path, records):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist(records), path)


@pytest.fixture()
def files(tmp_path):
    records = [{"text": t, "lang": "en", "id": i} for i, t in enumerate(EN)] + \
              [{"text": t, "lang": "fr", "id": 9 + i} for i, t in enumerate(MIXED_FR)]
    write_parquet(tmp_path / "mixed.parquet", records)
    (tmp_path / "mixed.jsonl").write_text(
        "\n".join(json.dumps({"body": r["text"], "language": r["lang"]}) for r in records) + "\n")
    (tmp_path / "en.json").write_text("\n".join(json.dumps({"text": t}) for t in EN) + "\n")
    (tmp_path / "fr.json").write_text("\n".join(json.dumps({"text": t}) for t in FR) + "\n")
    (tmp_path / "par.tsv").write_text("en\tfr\n" + "".join(f"{e}\t{f}\n"
                                                           for e, f in zip(EN, FR)))
    return tmp_path


def texts(source, lang):
    return [d.text for d in source.documents(lang)]


def test_parquet_with_language_field(files):
    src = HFDatasetSource(str(files / "mixed.parquet"), language_field="lang")
    assert src.languages == ["en", "fr"]
    assert texts(src, "en") == EN and texts(src, "fr") == MIXED_FR
    with pytest.raises(CorpusError, match="has no text"):
        src.documents("de")


def test_json_lines_with_other_field_names_and_split_per_language(files):
    src = HFDatasetSource(str(files / "mixed.jsonl"), text_field="body", language_field="language")
    assert texts(src, "en") == EN
    per_lang = HFDatasetSource({"en": str(files / "en.json"), "fr": str(files / "fr.json")})
    assert per_lang.languages == ["en", "fr"] and texts(per_lang, "fr") == FR
    bad = HFDatasetSource(str(files / "mixed.jsonl"), text_field="nope", language_field="language")
    with pytest.raises(CorpusError, match="no field 'nope'.*body"):
        texts(bad, "en")
    with pytest.raises(CorpusError, match="cannot load dataset"):
        HFDatasetSource(str(files / "missing-folder"), language_field="lang")


def test_same_budgets_and_packing_as_other_sources(files):
    from langneuron_ext.corpus import PlainTextFiles
    (files / "en.txt").write_text("\n".join(EN) + "\n")
    (files / "fr.txt").write_text("\n".join(FR) + "\n")
    tok = byte_tokenizer()
    hf = HFDatasetSource({"en": str(files / "en.json"), "fr": str(files / "fr.json")})
    plain = PlainTextFiles({"en": str(files / "en.txt"), "fr": str(files / "fr.txt")})
    kw = dict(tokens_per_language=80, max_length=32, batch_size=2)
    a = list(iter_batches(hf, tok, ["en", "fr"], **kw))
    b = list(iter_batches(plain, tok, ["en", "fr"], **kw))
    assert len(a) == len(b) and all((x.input_ids == y.input_ids).all() for x, y in zip(a, b))


def test_parallel_tsv(files):
    src = ParallelTsv(files / "par.tsv")
    assert src.languages == ["en", "fr"]
    assert texts(src, "en") == EN and texts(src, "fr") == FR
    (files / "bad.tsv").write_text("en\tfr\nonly one column\n")
    with pytest.raises(CorpusError, match="bad.tsv:2: 1 columns"):
        texts(ParallelTsv(files / "bad.tsv"), "fr")
    (files / "nohead.tsv").write_text("en\n")
    with pytest.raises(CorpusError, match="two or more different languages"):
        ParallelTsv(files / "nohead.tsv")


def test_language_filter_drops_misfiled_documents_and_lines(files):
    src = LanguageFilter(HFDatasetSource(str(files / "mixed.parquet"), language_field="lang"))
    assert texts(src, "fr") == FR and texts(src, "en") == EN
    assert src.dropped == {"fr": 1, "en": 0} and src.kept == {"fr": 2, "en": 2}
    meta = json.loads(src.metadata()["language_filter"])
    assert meta["dropped"] == {"fr": 1, "en": 0} and meta["unit"] == "documents"
    (files / "lines.jsonl").write_text(json.dumps({"lang": "fr", "text": "\n".join(MIXED_FR)}))
    from langneuron_ext.corpus import JsonlSource
    lines = LanguageFilter(JsonlSource(files / "lines.jsonl"), "lines")
    assert texts(lines, "fr") == ["\n".join(FR)] and lines.dropped == {"fr": 1}


def test_scan_cli_reads_a_dataset_and_records_what_the_filter_dropped(files, tmp_path):
    import transformers

    from langneuron_ext.cli import main
    from langneuron_ext.stats import ActivationStats
    config = transformers.LlamaConfig(vocab_size=259, hidden_size=16, intermediate_size=24,
                                      num_hidden_layers=2, num_attention_heads=2,
                                      num_key_value_heads=1, bos_token_id=1, eos_token_id=2,
                                      pad_token_id=0)
    folder = tmp_path / "model"
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    out = tmp_path / "stats.safetensors"
    code = main(["scan", "--model", str(folder), "--dataset", str(files / "mixed.parquet"),
                 "--language-field", "lang", "--filter-language", "--tokens-per-language",
                 "40", "--max-length", "16", "--impl", "torch", "--out", str(out),
                 "--no-progress"])
    assert code == 0
    stats = ActivationStats.load(out)
    assert stats.languages == ["en", "fr"]
    assert json.loads(stats.extra["language_filter"])["dropped"]["fr"] == 1
    assert "mixed.parquet" in stats.corpus
