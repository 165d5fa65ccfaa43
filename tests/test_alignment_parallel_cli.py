"""`langneuron alignment ... --parallel FILE.tsv --model-before A --model-after B`: the
representation measure of both models in the JSON, the report and stdout (equal to the library
call), and one-line refusals before any model loads."""
import json

import pytest
import torch

import langneuron_ext as ln
from langneuron_ext.cli import main as cli_main
from langneuron_ext.stats import ActivationStats

LAYERS = 3
PARALLEL = {"en": ["Install the package.", "Update the system now.", "Read the manual first."],
            "fr": ["Installez le paquet.", "Mettez le système à jour.", "Lisez d'abord le manuel."],
            "zh": ["安装软件包。", "现在更新系统。", "先阅读手册。"]}


def tiny_model(folder, seed):
    from transformers import LlamaConfig, LlamaForCausalLM

    from langneuron_ext.models.toy import BYTE_VOCAB_SIZE, byte_tokenizer
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=BYTE_VOCAB_SIZE, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=LAYERS, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=256)
    LlamaForCausalLM(config).save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return folder


def stats(seed, langs=("en", "fr", "zh")):
    g = torch.Generator().manual_seed(seed)
    return ActivationStats(torch.randint(0, 100, (len(langs), LAYERS, 64), generator=g),
                           torch.full((len(langs),), 100), list(langs), model_type="llama")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("parallel_cli")
    stats(0).save(root / "b.safetensors")
    stats(1).save(root / "a.safetensors")
    ln.alignment.write_parallel(root / "p.tsv", PARALLEL)
    return root, tiny_model(root / "model_b", 0), tiny_model(root / "model_a", 1)


def args(root, before, after, *extra):
    return ["alignment", str(root / "b.safetensors"), str(root / "a.safetensors"),
            "--trained", "fr", "--parallel", str(root / "p.tsv"), "--model-before", str(before),
            "--model-after", str(after), *extra]


def test_cli_measures_both_models(setup, capsys):
    from langneuron_ext.models.loading import load_model
    root, before, after = setup
    out = root / "report"
    assert cli_main(args(root, before, after, "--out-dir", str(out), "--batch-size", "2")) == 0
    printed = capsys.readouterr().out
    assert "representation similarity to English (3 parallel paragraphs" in printed
    data = json.loads((out / "alignment.json").read_text())
    rep = data["representation"]
    for which, folder in (("before", before), ("after", after)):
        assert rep[which]["languages"] == ["fr", "zh"] and rep[which]["num_layers"] == LAYERS
        model, tok = load_model(str(folder), dtype="float32", progress=False)
        want = ln.alignment.representation_similarity(model, tok, PARALLEL, batch_size=3)
        for lang in ("fr", "zh"):
            assert rep[which]["layers"][lang]["retrieval"] == want["layers"][lang]["retrieval"]
            assert rep[which]["layers"][lang]["margin"] == pytest.approx(
                want["layers"][lang]["margin"], abs=1e-6)
    # two different random models: their measures differ
    assert rep["before"]["layers"]["fr"]["margin"] != rep["after"]["layers"]["fr"]["margin"]
    md = (out / "alignment.md").read_text()
    assert "Parallel paragraphs: representation similarity to English" in md
    assert "| before | trained (fr) |" in md and "| after | untrained (zh) |" in md
    assert (out / "representation_layers.png").stat().st_size > 0


def refused(capsys, argv, monkeypatch, match):
    import langneuron_ext.models.loading as loading

    def no_load(*a, **k):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(loading, "load_model", no_load)
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert match in err, err


def test_refuses_languages_the_models_were_not_scanned_on(setup, capsys, monkeypatch):
    root, before, after = setup
    ln.alignment.write_parallel(root / "ru.tsv", {**PARALLEL, "ru": ["а", "б", "в"]})
    argv = args(root, before, after, "--out-dir", str(root / "never"))
    argv[argv.index(str(root / "p.tsv"))] = str(root / "ru.tsv")
    refused(capsys, argv, monkeypatch, "has language(s) ru the models were not scanned on "
                                       "(scanned: en, fr, zh)")
    assert not (root / "never" / "alignment.json").exists()


def test_refuses_incomplete_options_and_bad_files(setup, capsys, monkeypatch):
    root, before, after = setup
    argv = args(root, before, after)
    refused(capsys, argv[:argv.index("--model-after")], monkeypatch,
            "--model-after missing")
    (root / "noen.tsv").write_text("fr\tzh\nun\t一\ndeux\t二\n")
    argv = args(root, before, after)
    argv[argv.index(str(root / "p.tsv"))] = str(root / "noen.tsv")
    refused(capsys, argv, monkeypatch, "no 'en' column")
    argv[argv.index(str(root / "noen.tsv"))] = str(root / "missing.tsv")
    refused(capsys, argv, monkeypatch, "does not exist")
