"""A verb that fails while writing its final result keeps the result: it is written beside
the intended file and the one-line error says where (`cli/outputs.py:keep_result`)."""
import json
import os

import pytest
import test_alignment_parallel_cli as parallel
from test_loading import _tiny_folder  # tests/ is on sys.path (pytest rootdir insertion)
from test_moe_experts import moe_stats  # noqa: F401  (fixtures, taken by name)
from test_steer_bench import files  # noqa: F401

from langneuron_ext.cli import main
from langneuron_ext.stats import ActivationStats

TEXT = {"en": "The system {i} is running and the package {i} is installed.",
        "fr": "Le système {i} fonctionne et le paquet {i} est installé."}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(_tiny_folder(tmp_path_factory.mktemp("model") / "tiny", layers=4, neurons=64))


@pytest.fixture
def texts(tmp_path):
    args = []
    for lang, template in TEXT.items():
        path = tmp_path / f"{lang}.txt"
        path.write_text("\n".join(template.format(i=i) for i in range(30)), encoding="utf-8")
        args += ["--text", f"{lang}={path}"]
    return args


def _disk_full_for(monkeypatch, target, module, name):
    """`module.name(path, ...)` raises ENOSPC for `target` only, as a full disk would."""
    real = getattr(module, name)

    def writer(path, *args, **kwargs):
        if os.fspath(path) == os.fspath(target):
            raise OSError(28, "No space left on device", os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(module, name, writer)


def _one_line_error(capsys, code):
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_evaluate_keeps_a_finished_matrix_when_out_cannot_be_written(
        tmp_path, model, texts, capsys, monkeypatch):
    from langneuron_ext.cli import options
    from langneuron_ext.identify import lape
    stats = ActivationStats(*_counts(), ["en", "fr"])
    neurons = tmp_path / "neurons.json"
    lape(stats, top_rate=0.05).save(neurons)
    out = tmp_path / "nll.json"
    _disk_full_for(monkeypatch, out, options, "write_json")
    code = main(["evaluate", "--model", model, "--neurons", str(neurons), *texts,
                 "--tokens-per-language", "32", "--max-length", "16", "--random-sets", "1",
                 "--bootstrap", "20", "--out", str(out), "--no-progress"])
    line = _one_line_error(capsys, code)
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("nll.unsaved-")]
    assert len(kept) == 1 and str(kept[0]) in line and "No space left" in line
    matrix = json.loads(kept[0].read_text())["nll_matrix"]
    assert matrix["columns"] == ["en", "fr"] and matrix["rows"][0] == "baseline"
    assert not out.exists()


def _counts():
    import torch
    g = torch.Generator().manual_seed(0)
    n = torch.tensor([4000, 4100])
    p = torch.rand(2, 4, 64, generator=g) ** 2
    return (p * n[:, None, None]).long(), n


def test_identify_keeps_the_neuron_set(tmp_path, capsys, monkeypatch):
    from langneuron_ext.identify import NeuronSet
    stats_path = ActivationStats(*_counts(), ["en", "fr"]).save(tmp_path / "s.safetensors")
    out = tmp_path / "neurons.json"
    monkeypatch.setattr(NeuronSet, "save", _as_method(NeuronSet.save, out))
    code = main(["identify", str(stats_path), "--method", "lape", "--top-rate", "0.05",
                 "--out", str(out)])
    line = _one_line_error(capsys, code)
    kept = tmp_path / f"neurons.unsaved-{os.getpid()}.json"
    assert str(kept) in line and NeuronSet.load(kept).languages == ["en", "fr"]


def _as_method(real, target):
    def save(self, path):
        if os.fspath(path) == os.fspath(target):
            raise OSError(28, "No space left on device", os.fspath(path))
        return real(self, path)
    return save


def test_scan_points_to_its_finished_checkpoint(tmp_path, model, texts, capsys, monkeypatch):
    out = tmp_path / "stats.safetensors"
    monkeypatch.setattr(ActivationStats, "save", _as_method(ActivationStats.save, out))
    code = main(["scan", "--model", model, *texts, "--tokens-per-language", "64",
                 "--max-length", "16", "--out", str(out), "--no-progress"])
    line = _one_line_error(capsys, code)
    partial = tmp_path / "stats.safetensors.partial"
    assert str(partial) in line and "--resume" in line and partial.exists()
    monkeypatch.undo()
    # the advised rerun writes the statistics without scanning again
    code = main(["scan", "--model", model, *texts, "--tokens-per-language", "64",
                 "--max-length", "16", "--out", str(out), "--no-progress", "--resume"])
    assert code == 0 and ActivationStats.load(out).n_tokens.tolist() == [64, 64]
    assert not partial.exists()


# ---- the verbs that finish a long computation before their last write ------------------------
def test_examples_keeps_its_top_k(tmp_path, capsys, monkeypatch):
    from test_examples import _cli_setup

    from langneuron_ext.examples import Examples
    common = _cli_setup(tmp_path)
    capsys.readouterr()                                  # the tiny model's saving bars
    out = tmp_path / "ex.safetensors"
    monkeypatch.setattr(Examples, "save", _as_method(Examples.save, out))
    line = _one_line_error(capsys, main([*common, "--out", str(out)]))
    kept = [p for p in tmp_path.iterdir() if p.name.startswith(("ex.unsaved-", "ex.safetensors."))
            and str(p) in line]
    assert len(kept) == 1 and "No space left" in line, line
    if kept[0].name.startswith("ex.unsaved-"):             # the result itself, beside --out
        ex = Examples.load(kept[0])
        assert ex.languages == ["en", "fr", "ru"] and ex.k == 3
    else:                                                  # a checkpoint: --resume finishes it
        assert "--resume" in line
        monkeypatch.undo()
        assert main([*common, "--out", str(out), "--resume"]) == 0
        assert Examples.load(out).k == 3
    assert not out.exists() or kept[0].name.startswith("ex.safetensors.")


def test_identify_experts_keeps_the_language_experts(request, tmp_path, capsys, monkeypatch):
    from langneuron_ext.identify.experts import LanguageExperts
    stats, path = request.getfixturevalue("moe_stats")
    capsys.readouterr()
    out = tmp_path / "experts.json"
    monkeypatch.setattr(LanguageExperts, "save", _as_method(LanguageExperts.save, out))
    line = _one_line_error(capsys, main(["identify", str(path), "--experts", "--top-rate", "0.5",
                                         "--out", str(out)]))
    kept = tmp_path / f"experts.unsaved-{os.getpid()}.json"
    assert str(kept) in line and "No space left" in line and not out.exists()
    assert LanguageExperts.load(kept).languages == stats.languages


def test_steer_bench_keeps_the_benchmark(request, tmp_path, capsys, monkeypatch):
    from langneuron_ext.cli import options
    bench = request.getfixturevalue("files")
    capsys.readouterr()                                  # the tiny model's saving bars
    out = tmp_path / "bench"
    target = out / "steer_bench.json"
    _disk_full_for(monkeypatch, target, options, "write_json")
    argv = ["steer-bench", "--model", str(bench["model"]), "--stats", str(bench["full"]),
            "--neurons", str(bench["neurons"]), "--pairs", "en:fr", "--prompts-file",
            str(bench["prompts"]), "--methods", "deactivate", "--random-sets", "0",
            "--max-new-tokens", "3", "--impl", "torch", "--out-dir", str(out), "--no-progress"]
    line = _one_line_error(capsys, main(argv))
    kept = out / f"steer_bench.unsaved-{os.getpid()}.json"
    assert str(kept) in line and "No space left" in line and not target.exists()
    result = json.loads(kept.read_text())
    assert {r["condition"] for r in result["table"]} == {"none", "deactivate"}
    # the batches stay checkpointed too: --resume writes the result without generating again
    assert (out / "steer_bench.partial.jsonl").exists()
    monkeypatch.undo()
    assert main([*argv, "--resume"]) == 0
    again = json.loads(target.read_text())
    assert again["table"] == result["table"]


@pytest.fixture(scope="module")
def parallel_setup(tmp_path_factory):
    """Two scans, parallel text and two tiny models (as in test_alignment_parallel_cli)."""
    from langneuron_ext.alignment import write_parallel
    root = tmp_path_factory.mktemp("parallel")
    parallel.stats(0).save(root / "b.safetensors")
    parallel.stats(1).save(root / "a.safetensors")
    write_parallel(root / "p.tsv", parallel.PARALLEL)
    return (root, parallel.tiny_model(root / "model_b", 0),
            parallel.tiny_model(root / "model_a", 1))


def test_alignment_keeps_the_representation_measure(parallel_setup, tmp_path, capsys,
                                                     monkeypatch):
    import langneuron_ext.report.alignment as report
    from langneuron_ext.cli import options
    root, before, after = parallel_setup
    capsys.readouterr()
    out = tmp_path / "report"

    def full_disk(out_dir, *args, **kwargs):
        raise OSError(28, "No space left on device", str(out_dir / "alignment.md"))

    monkeypatch.setattr(report, "write_alignment_report", full_disk)
    _disk_full_for(monkeypatch, out / "alignment.json", options, "write_json")
    line = _one_line_error(capsys, main(parallel.args(root, before, after, "--out-dir",
                                                      str(out))))
    kept = out / f"alignment.unsaved-{os.getpid()}.json"
    assert str(kept) in line and "No space left" in line
    rep = json.loads(kept.read_text())["representation"]
    assert sorted(rep) == ["after", "before"] and rep["before"]["languages"] == ["fr", "zh"]


def test_bench_keeps_its_timings(tmp_path, capsys, monkeypatch):
    import csv

    from langneuron_ext.ops import benchmark
    out = tmp_path / "kernels.csv"
    real = benchmark.append_csv

    def append_csv(rows, path, *args, **kwargs):
        if os.fspath(path) == os.fspath(out):
            raise OSError(28, "No space left on device", os.fspath(path))
        return real(rows, path, *args, **kwargs)

    monkeypatch.setattr(benchmark, "append_csv", append_csv)
    line = _one_line_error(capsys, main(["bench", "kernels", "--device", "cpu", "--sizes",
                                         "8x32", "--rounds", "1", "--no-progress", "--csv",
                                         str(out)]))
    kept = tmp_path / f"kernels.unsaved-{os.getpid()}.csv"
    assert str(kept) in line and "No space left" in line and not out.exists()
    with open(kept, newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows and {(r["M"], r["I"]) for r in rows} == {("8", "32")}


def test_demo_keeps_its_scan(tmp_path, capsys, monkeypatch):
    folder = _tiny_folder(tmp_path / "tiny", layers=4, neurons=64)
    out_dir = tmp_path / "out"
    target = out_dir / "stats.safetensors"
    monkeypatch.setattr(ActivationStats, "save", _as_method(ActivationStats.save, target))
    capsys.readouterr()
    code = main(["demo", "--model", str(folder), "--languages", "en,fr", "--tokens-per-language",
                 "32", "--max-length", "16", "--steps", "load,scan", "--out-dir", str(out_dir),
                 "--no-progress"])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err and "== scan" in out, err
    (line,) = err.strip().splitlines()                 # the steps' log is on stdout
    kept = out_dir / f"stats.unsaved-{os.getpid()}.safetensors"
    assert str(kept) in line and "No space left" in line and not target.exists()
    assert ActivationStats.load(kept).n_tokens.tolist() == [32, 32]
