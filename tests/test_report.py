"""Reports and `langneuron report` / `langneuron compare` on the published fixtures."""
import json
import pathlib

import pytest
import torch

from langneuron_ext.cli import main
from langneuron_ext.identify import NeuronSet, load_lape_masks, phases
from langneuron_ext.report import layer_profile, write_report

LLAMA_LANGS = ["en", "zh", "fr", "es", "vi", "id", "ja"]


@pytest.fixture
def llama_set(fixtures_dir):
    return load_lape_masks(fixtures_dir / "lape_official" / "LLaMA-2-7B.neuron.pth", LLAMA_LANGS)


def test_layer_profile_matches_union_of_languages(llama_set):
    language, general = layer_profile(llama_set)
    union = llama_set.masks().any(dim=0).sum(dim=1).double() / llama_set.intermediate_size
    assert torch.allclose(torch.from_numpy(language), union)
    assert float(general.sum()) == 0.0  # LAPE sets have no general neurons


def test_write_report_makes_plots_and_tables(llama_set, tmp_path):
    phases(llama_set)
    nll = {"rows": ["baseline", "en"], "columns": ["en", "zh"],
           "delta": [[0.0, 0.0], [0.5, 0.1]]}
    path = write_report(tmp_path, llama_set, nll=nll, command="langneuron report x")
    text = path.read_text()
    assert "| zh | 583 |" in text and "| en | +0.500 | +0.100 |" in text
    for png in ("layers.png", "overlap.png", "phases.png", "nll_delta.png"):
        assert (tmp_path / png).stat().st_size > 1000
        assert f"]({png})" in text


def test_cli_report_and_compare(llama_set, tmp_path, capsys):
    path = llama_set.save(tmp_path / "llama.json")
    assert main(["report", str(path), "--out-dir", str(tmp_path / "rep"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["report"].endswith("report.md")
    assert main(["compare", str(path), str(tmp_path / "llama.json"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["language"] for r in rows] == LLAMA_LANGS
    assert all(r["jaccard"] == 1.0 and r["a"] == r["b"] == r["both"] for r in rows)
    assert {r["language"]: r["a"] for r in rows}["fr"] == 1022


def test_cli_compare_partial_overlap(llama_set, tmp_path, capsys):
    smaller = NeuronSet(llama_set.method, {}, ["en", "fr"], llama_set.num_layers,
                        llama_set.intermediate_size,
                        {"en": llama_set.neurons["en"], "fr": {4: llama_set.neurons["fr"][4]}})
    a = llama_set.save(tmp_path / "a.json")
    b = smaller.save(tmp_path / "b.json")
    assert main(["compare", str(a), str(b), "--json"]) == 0
    rows = {r["language"]: r for r in json.loads(capsys.readouterr().out)["rows"]}
    assert set(rows) == {"en", "fr"}
    assert rows["fr"]["b"] == rows["fr"]["both"] == len(llama_set.neurons["fr"][4])
    assert rows["fr"]["b_found_in_a"] == 1.0 and rows["fr"]["jaccard"] < 1.0


def test_cli_compare_torch_file_needs_language_names(fixtures_dir, capsys):
    pth = str(fixtures_dir / "lape_official" / "LLaMA-2-7B.neuron.pth")
    assert main(["compare", pth, pth]) == 2
    assert "--languages" in capsys.readouterr().err
    assert main(["compare", pth, pth, "--languages", ",".join(LLAMA_LANGS)]) == 0


MISTRAL_LAPE_LANGS = ["en", "zh", "fr", "es", "vi", "id"]   # an assumption: 6 of LLaMA's 7
NJUNLP_LANGS = ["en", "ru", "es", "fr", "de", "zh", "ja", "bn", "th", "sw"]


def test_cli_compare_lape_mistral_with_njunlp_mask(fixtures_dir, capsys):
    """LAPE's Mistral file (6 entries, largest id 14333) against NJUNLP's released Mistral mask
    (a bare JSON map, 10 languages): per-input languages, one width for both."""
    pth = str(fixtures_dir / "lape_official" / "Mistral-7B.neuron.pth")
    released = str(fixtures_dir / "njunlp_mistral_mgsm" / "mask_released.json")
    args = ["compare", pth, released, "--languages-a", ",".join(MISTRAL_LAPE_LANGS), "--json"]
    assert main(args + ["--width", "14336"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["a"]["intermediate_size"] == out["b"]["intermediate_size"] == 14336
    assert out["a"]["width_source"] == out["b"]["width_source"] == "--width"
    assert [r["language"] for r in out["rows"]] == ["en", "zh", "fr", "es"]
    assert [r["a"] for r in out["rows"]] == [76, 1190, 919, 838]
    mask = json.loads(open(released).read())
    assert [r["b"] for r in out["rows"]] == [sum(len(v) for v in mask[lang].values())
                                             for lang in ["en", "zh", "fr", "es"]]
    # without --width the width is guessed and said so
    assert main(args[:-1]) == 0
    text = capsys.readouterr().out
    assert "14336 neurons (width guessed from the largest id; give --width N" in text
    assert "4 languages in common" in text


def test_cli_compare_width_from_the_other_input(fixtures_dir, tmp_path, capsys):
    pth = fixtures_dir / "lape_official" / "Mistral-7B.neuron.pth"
    ours = load_lape_masks(pth, MISTRAL_LAPE_LANGS, intermediate_size=14336)
    ours.params = {}                                   # a set that records its width
    path = ours.save(tmp_path / "ours.json")
    assert main(["compare", str(path), str(pth), "--languages", ",".join(MISTRAL_LAPE_LANGS),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["b"]["intermediate_size"] == 14336 and out["b"]["width_source"] == "the other input"
    assert all(r["jaccard"] == 1.0 for r in out["rows"])


@pytest.mark.parametrize("extra, match", [
    (["--languages", "en,zh"], "holds 6 language entries but 2"),
    (["--languages", "en,en,zh,fr,es,vi"], "--languages repeats en"),
    (["--languages", ",".join(MISTRAL_LAPE_LANGS), "--width", "14000"], "too large"),
])
def test_cli_compare_errors(fixtures_dir, capsys, extra, match):
    pth = str(fixtures_dir / "lape_official" / "Mistral-7B.neuron.pth")
    assert main(["compare", pth, pth, *extra]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1


def test_cli_report_reads_evaluate_output_and_lists_only_its_files(llama_set, tmp_path,
                                                                   capsys):
    path = llama_set.save(tmp_path / "llama.json")
    out_dir = tmp_path / "rep"
    out_dir.mkdir()
    (out_dir / "unrelated.png").write_bytes(b"x")
    nll = {"rows": ["baseline", "-en"], "kinds": ["baseline", "language"],
           "columns": ["en", "zh"], "delta": [[0.0, 0.0], [0.25, 0.125]],
           "layer_sizes": [None, [1] * 32], "meta": {"model": "meta-llama/Llama-2-7b-hf"}}
    conditions = ["no steering", "-en +zh"]
    control = {"source": "en", "target": "zh", "conditions": conditions,
               "target_share": {"no steering": 0.0, "-en +zh": 0.75},
               "source_share": {"no steering": 1.0, "-en +zh": 0.25},
               "target_ci": {c: [0.0, 1.0] for c in conditions},   # derived values are ignored
               "sizes": {"no steering": 0, "-en +zh": 678},
               "outputs": {c: ["..."] * 4 for c in conditions},
               "labels": {"no steering": ["en"] * 4, "-en +zh": ["zh", "zh", "zh", "en"]},
               "meta": {}}
    evaluate_file = tmp_path / "nll.json"            # as `langneuron evaluate --out` writes it
    evaluate_file.write_text(json.dumps({"nll_matrix": nll, "language_control": [control]}))
    assert main(["report", str(path), "--nll", str(evaluate_file), "--out-dir", str(out_dir),
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    names = sorted(pathlib.Path(f).name for f in out["files"])
    assert names == ["layers.png", "nll_delta.png", "overlap.png", "phases.png", "report.md"]
    text = (out_dir / "report.md").read_text()
    assert "| -en | +0.250 | +0.125 |" in text and "| -en +zh | 678 | 0.75 [" in text
    assert f"langneuron report {path} --nll {evaluate_file} --out-dir {out_dir} --json" in text
    assert "## Neurons: LAPE (Tang et al. 2024)" in text
    # the demo's files: the matrix at the top level (nll_lape.json), control_en_zh.json alone
    (tmp_path / "top.json").write_text(json.dumps(nll))
    (tmp_path / "control_en_zh.json").write_text(json.dumps(control))
    assert main(["report", str(path), "--nll", str(tmp_path / "top.json"), "--out-dir",
                 str(tmp_path / "rep2"), "--language-control",
                 str(tmp_path / "control_en_zh.json")]) == 0
    text = (tmp_path / "rep2" / "report.md").read_text()
    assert "| -en | +0.250 | +0.125 |" in text and "| -en +zh | 678 | 0.75 [" in text
    capsys.readouterr()
    assert main(["report", str(path), "--out-dir", str(tmp_path / "rep3"),
                 "--language-control", str(tmp_path / "top.json")]) == 2
    assert "holds no output-language control result" in capsys.readouterr().err


def test_cli_report_refuses_files_of_another_model(llama_set, tmp_path, capsys):
    from langneuron_ext.stats import ActivationStats
    llama_set.params["model"] = "meta-llama/Llama-2-7b-hf"
    path = llama_set.save(tmp_path / "llama.json")
    small = ActivationStats(torch.ones(2, 4, 8, dtype=torch.int64), torch.tensor([5, 5]),
                            ["en", "zh"], model_name="tiny")
    stats_path = small.save(tmp_path / "small.safetensors")
    assert main(["report", str(path), "--stats", str(stats_path), "--out-dir",
                 str(tmp_path / "r")]) == 2
    assert "4 layers x 8 neurons but the neuron set for 32 layers x 11008" in \
        capsys.readouterr().err
    bad_nll = tmp_path / "nll.json"
    bad_nll.write_text(json.dumps({"nll_matrix": {
        "rows": ["baseline"], "columns": ["en"], "delta": [[0.0]],
        "meta": {"model": "mistralai/Mistral-7B-v0.1"}}}))
    assert main(["report", str(path), "--nll", str(bad_nll), "--out-dir",
                 str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "'mistralai/Mistral-7B-v0.1'" in err and "Llama-2-7b-hf" in err
    bad_nll.write_text(json.dumps({"rows": ["baseline"]}))
    assert main(["report", str(path), "--nll", str(bad_nll), "--out-dir",
                 str(tmp_path / "r")]) == 2
    assert "has no NLL matrix (no columns, delta)" in capsys.readouterr().err
    assert not (tmp_path / "r" / "report.md").exists()
