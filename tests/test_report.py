"""Reports and `langneuron report` / `langneuron compare` on the published fixtures."""
import json

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
    rows = json.loads(capsys.readouterr().out)
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
    rows = {r["language"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {"en", "fr"}
    assert rows["fr"]["b"] == rows["fr"]["both"] == len(llama_set.neurons["fr"][4])
    assert rows["fr"]["b_found_in_a"] == 1.0 and rows["fr"]["jaccard"] < 1.0


def test_cli_compare_torch_file_needs_language_names(fixtures_dir, capsys):
    pth = str(fixtures_dir / "lape_official" / "LLaMA-2-7B.neuron.pth")
    assert main(["compare", pth, pth]) == 2
    assert "--languages" in capsys.readouterr().err
    assert main(["compare", pth, pth, "--languages", ",".join(LLAMA_LANGS)]) == 0
