"""Bad input to every verb: exit status 2, one line on stderr, no traceback, before any model
loads, and every input file byte-identical afterwards.

The verbs run in-process (`langneuron_ext.cli.main`) with model loading replaced by a function
that fails the test: each case must be refused before a model would load.
"""
import hashlib
import json
import os
import re
import sys
from pathlib import Path

import pytest
import torch

from langneuron_ext.cli import COMMANDS, main
from langneuron_ext.identify import lape
from langneuron_ext.stats import ActivationStats

TEXT = {"en": "The system is running.\nThe package is installed.\n",
        "fr": "Le système fonctionne.\nLe paquet est installé.\n"}


def tiny_stats(K=2, L=6, I=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = torch.tensor([5003 + 97 * k for k in range(K)])
    p = torch.rand(K, L, I, generator=g) ** 2
    p = torch.where(torch.rand(K, L, I, generator=g) < 0.2, p.sqrt(), p * 0.3)
    counts = (p * n[:, None, None]).long()
    return ActivationStats(counts, n, ["en", "fr"][:K], sums=counts.double() * 0.5,
                           model_name="tiny")


@pytest.fixture
def work(tmp_path, monkeypatch):
    """A folder of inputs (texts, JSONL, stats, a neuron set, an NLL file, a device map) and
    loaders that fail the test if a case gets as far as loading a model."""
    for lang, text in TEXT.items():
        (tmp_path / f"{lang}.txt").write_text(text, encoding="utf-8")
    (tmp_path / "data.jsonl").write_text(
        "".join(json.dumps({"lang": lang, "text": t}) + "\n" for lang, t in TEXT.items()))
    stats = tiny_stats()
    stats.save(tmp_path / "stats.safetensors")
    stats.save(tmp_path / "after.safetensors")
    ActivationStats(stats.counts, stats.n_tokens, stats.languages).save(
        tmp_path / "nosums.safetensors")
    ActivationStats(stats.counts, stats.n_tokens, ["en", "de"], model_name="tiny").save(
        tmp_path / "de.safetensors")
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.Table.from_pylist([{"text": t, "lang": lang} for lang, text in TEXT.items()
                                         for t in text.splitlines()]), tmp_path / "wiki.parquet")
    neurons = lape(stats, top_rate=0.05)
    neurons.save(tmp_path / "neurons.json")
    (tmp_path / "nll.json").write_text(json.dumps(
        {"rows": ["baseline", "en"], "columns": ["en", "fr"], "delta": [[0, 0], [0.5, 0.1]]}))
    (tmp_path / "devmap.json").write_text(json.dumps({"model.layers.0": "cpu"}))
    (tmp_path / "empty.json").write_text("")
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "inside.txt").write_text("x")
    (tmp_path / "report.md").write_text(neurons.to_json() if hasattr(neurons, "to_json")
                                        else json.dumps(neurons.to_dict()))
    (tmp_path / "link.txt").symlink_to(tmp_path / "en.txt")
    (tmp_path / "par.tsv").write_text("en\tfr\nThe system runs.\tLe système fonctionne.\n"
                                      "Install it.\tInstallez-le.\n", encoding="utf-8")
    (tmp_path / "par_de.tsv").write_text("en\tde\nThe system runs.\tDas System läuft.\n"
                                         "Install it.\tInstallieren Sie es.\n",
                                         encoding="utf-8")
    (tmp_path / "prev").mkdir()             # prompts kept under a name steer-bench writes
    (tmp_path / "prev" / "steer_bench.json").write_text(json.dumps(
        {"pair": "en:fr", "prompt": "The system", "reference": "Le système"}) + "\n")

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded before the bad input was refused")

    import langneuron_ext.bench.scan as bench_scan
    import langneuron_ext.models.loading as loading
    monkeypatch.setattr(loading, "load_model", no_model)
    monkeypatch.setattr(bench_scan, "load_bench_model", no_model)
    monkeypatch.chdir(tmp_path)
    return tmp_path


TEXTS = ["--text", "en=en.txt", "--text", "fr=fr.txt"]
MODEL = ["--model", "gemma-3-270m"]
SCAN = ["scan", *MODEL, *TEXTS, "--tokens-per-language", "8"]
EVAL = ["evaluate", *MODEL, "--neurons", "neurons.json", *TEXTS]
STEER = ["steer", *MODEL, "--neurons", "neurons.json", "--prompt", "Le système"]
ALIGN = ["alignment", "stats.safetensors", "after.safetensors", "--trained", "en"]
PARALLEL = [*ALIGN, "--model-before", "gemma-3-270m", "--model-after", "gemma-3-270m"]
BENCH = ["steer-bench", *MODEL, "--stats", "stats.safetensors", "--neurons", "neurons.json",
         "--pairs", "en:fr"]
EXAMPLES = ["examples", *MODEL, "--neurons", "neurons.json", *TEXTS]
BROWSE = ["browse", "--stats", "stats.safetensors", "--neurons", "neurons.json"]
EXPERTS = ["identify", "stats.safetensors", "--experts"]

# (case id, argv, a piece of the expected message)
CASES = [
    # scan: outputs against inputs, unwritable places, options
    ("scan-out-is-text-input", [*SCAN, "--out", "en.txt"], "is the input"),
    ("scan-out-is-jsonl-input", ["scan", *MODEL, "--jsonl", "data.jsonl", "--out", "data.jsonl"],
     "is the input"),
    ("scan-out-links-to-input", [*SCAN, "--out", "link.txt"], "is the input"),
    ("scan-out-is-device-map", [*SCAN, "--device-map", "devmap.json", "--out", "devmap.json"],
     "is the input"),
    ("scan-out-under-a-file", [*SCAN, "--out", "en.txt/stats.safetensors"], "is a file"),
    ("scan-out-is-a-folder", [*SCAN, "--out", "folder"], "is a folder"),
    ("scan-out-in-proc", [*SCAN, "--out", "/proc/langneuron.safetensors"], "cannot"),
    ("scan-out-is-a-device", [*SCAN, "--out", "/dev/null"], "not a regular file"),
    ("scan-zero-budget", [*SCAN, "--tokens-per-language", "0", "--out", "s.safetensors"],
     "--tokens-per-language"),
    ("scan-text-without-lang", ["scan", *MODEL, "--text", "en.txt", "--out", "s.safetensors"],
     "LANG=PATH"),
    ("scan-no-corpus", ["scan", *MODEL, "--out", "s.safetensors"], "no corpus"),
    ("scan-bad-dtype", [*SCAN, "--dtype", "float8", "--out", "s.safetensors"], "--help"),
    ("scan-text-is-a-folder", ["scan", *MODEL, "--text", "en=folder", "--out", "s.safetensors"],
     "folder"),
    ("scan-missing-text", ["scan", *MODEL, "--text", "en=nope.txt", "--out", "s.safetensors"],
     "nope.txt"),
    ("scan-languages-not-in-text", [*SCAN, "--languages", "en,de", "--out", "s.safetensors"],
     "de"),
    # identify
    ("identify-out-is-stats", ["identify", "stats.safetensors", "--method", "lape", "--out",
                               "stats.safetensors"], "is the input"),
    ("identify-scores-is-stats", ["identify", "stats.safetensors", "--method", "lape", "--out",
                                  "n.json", "--scores", "stats.safetensors"], "is the input"),
    ("identify-out-equals-scores", ["identify", "stats.safetensors", "--method", "lape", "--out",
                                    "s.out", "--scores", "s.out"], "are both"),
    ("identify-out-under-a-file", ["identify", "stats.safetensors", "--method", "lape", "--out",
                                   "neurons.json/n.json"], "is a file"),
    ("identify-neuron-set-as-stats", ["identify", "neurons.json", "--method", "lape", "--out",
                                      "n.json"], "is a JSON file, not a langneuron stats file"),
    ("identify-empty-stats", ["identify", "empty.json", "--method", "lape", "--out", "n.json"],
     "is an empty file"),
    ("identify-folder-as-stats", ["identify", "folder", "--method", "lape", "--out", "n.json"],
     "is a folder"),
    ("identify-missing-stats", ["identify", "nope.safetensors", "--method", "lape", "--out",
                                "n.json"], "nope.safetensors"),
    ("identify-bad-method", ["identify", "stats.safetensors", "--method", "magic", "--out",
                             "n.json"], "--help"),
    # evaluate
    ("evaluate-out-is-neurons", [*EVAL, "--out", "neurons.json"], "is the input"),
    ("evaluate-out-is-text", [*EVAL, "--out", "fr.txt"], "is the input"),
    ("evaluate-out-is-stats", [*EVAL, "--control", "en:fr", "--stats", "stats.safetensors",
                               "--out", "stats.safetensors"], "is the input"),
    ("evaluate-out-under-a-file", [*EVAL, "--out", "nll.json/x.json"], "is a file"),
    ("evaluate-stats-as-neurons", ["evaluate", *MODEL, "--neurons", "stats.safetensors", *TEXTS,
                                   "--out", "x.json"], "is a langneuron stats file"),
    ("evaluate-control-without-stats", [*EVAL, "--control", "en:fr", "--out", "x.json"],
     "--stats"),
    ("evaluate-rows-unknown", [*EVAL, "--rows", "de", "--out", "x.json"], "de"),
    # alignment
    ("alignment-out-is-before", [*ALIGN, "--out", "stats.safetensors"], "is the input"),
    ("alignment-out-dir-is-a-file", [*ALIGN, "--out-dir", "after.safetensors"], "is a file"),
    ("alignment-out-inside-out-dir", [*ALIGN, "--out", "rep/alignment.json", "--out-dir", "rep"],
     "also writes"),
    ("alignment-out-under-a-file", [*ALIGN, "--out", "en.txt/a.json"], "is a file"),
    ("alignment-other-languages", ["alignment", "stats.safetensors", "de.safetensors",
                                   "--trained", "en", "--out", "a.json"], "--languages"),
    ("alignment-bad-lambda", [*ALIGN, "--lambda", "big", "--out", "a.json"], "--lambda"),
    # report
    ("report-out-dir-is-neurons", ["report", "neurons.json", "--out-dir", "neurons.json"],
     "is a file"),
    ("report-out-dir-holds-input", ["report", "report.md", "--out-dir", "."], "holds the input"),
    ("report-out-dir-under-a-file", ["report", "neurons.json", "--out-dir", "en.txt/rep"],
     "is a file"),
    ("report-nll-not-json", ["report", "neurons.json", "--nll", "en.txt", "--out-dir", "rep"],
     "not JSON"),
    ("report-stats-as-neurons", ["report", "stats.safetensors", "--out-dir", "rep"],
     "langneuron identify"),
    # compare
    ("compare-stats-file", ["compare", "stats.safetensors", "neurons.json"], "is a stats file"),
    ("compare-folder", ["compare", "folder", "neurons.json"], "is a folder"),
    ("compare-empty-file", ["compare", "neurons.json", "empty.json"], "empty.json"),
    ("compare-missing", ["compare", "nope.json", "neurons.json"], "nope.json"),
    # steer
    ("steer-missing-neurons", ["steer", *MODEL, "--neurons", "nope.json", "--prompt", "x",
                               "--deactivate", "en"], "nope.json"),
    ("steer-add-without-value", [*STEER, "--add", "fr"], "--value"),
    ("steer-nothing", STEER, "nothing to steer"),
    ("steer-unknown-language", [*STEER, "--deactivate", "xx"], "xx"),
    ("steer-activate-without-sums", [*STEER, "--activate", "fr", "--stats", "nosums.safetensors"],
     "--sums"),
    ("scan-dataset-with-language-column", ["scan", *MODEL, "--dataset", "wiki.parquet", "--out",
                                           "s.safetensors"], "--language-field lang"),
    ("steer-zero-tokens", [*STEER, "--deactivate", "en", "--max-new-tokens", "0"],
     "--max-new-tokens"),
    # demo
    ("demo-out-dir-is-a-file", ["demo", "--out-dir", "en.txt"], "is a file"),
    ("demo-out-dir-under-a-file", ["demo", "--out-dir", "en.txt/demo"], "is a file"),
    ("demo-unknown-step", ["demo", "--steps", "load,teleport", "--out-dir", "d"], "teleport"),
    ("demo-one-language", ["demo", "--languages", "en", "--out-dir", "d"], "at least 2"),
    # bench
    ("bench-csv-equals-plot", ["bench", "scan", "--csv", "b.csv", "--plot", "b.csv"],
     "are both"),
    ("bench-plot-without-csv", ["bench", "scan", "--plot", "b.png"], "--csv"),
    ("bench-kernels-csv-in-proc", ["bench", "kernels", "--csv", "/proc/b.csv"], "cannot"),
    ("bench-bad-sizes", ["bench", "kernels", "--sizes", "12"], "--sizes"),
    ("info-unknown-option", ["info", "--self-test"], "unrecognized arguments: --self-test"),
    # identify --scores writes a plot beside the scores file; it may not replace --out
    ("identify-scores-plot-is-out", ["identify", "stats.safetensors", "--method", "lape",
                                     "--out", "sc.entropy.png", "--scores", "sc.safetensors"],
     "are both"),
    # identify --experts
    ("experts-out-is-stats", [*EXPERTS, "--out", "stats.safetensors"], "is the input"),
    ("experts-out-under-a-file", [*EXPERTS, "--out", "en.txt/experts.json"], "is a file"),
    ("experts-with-a-method", [*EXPERTS, "--method", "lape", "--out", "e.json"], "--method"),
    ("experts-with-scores", [*EXPERTS, "--scores", "sc.safetensors", "--out", "e.json"],
     "--scores"),
    # alignment with representation similarity on parallel text
    ("alignment-out-is-parallel", [*PARALLEL, "--parallel", "par.tsv", "--out", "par.tsv"],
     "is the input"),
    ("alignment-out-dir-is-parallel", [*PARALLEL, "--parallel", "par.tsv", "--out-dir",
                                       "par.tsv"], "is a file"),
    ("alignment-parallel-without-models", [*ALIGN, "--parallel", "par.tsv", "--out", "a.json"],
     "--model-before"),
    ("alignment-parallel-unscanned-language", [*PARALLEL, "--parallel", "par_de.tsv", "--out",
                                               "a.json"], "language(s) de"),
    ("alignment-parallel-missing", [*PARALLEL, "--parallel", "nope.tsv", "--out", "a.json"],
     "nope.tsv"),
    # steer-bench
    ("steer-bench-out-dir-is-a-file", [*BENCH, "--out-dir", "en.txt"], "is a file"),
    ("steer-bench-out-dir-is-stats", [*BENCH, "--out-dir", "stats.safetensors"], "is a file"),
    ("steer-bench-out-dir-under-a-file", [*BENCH, "--out-dir", "en.txt/bench"], "is a file"),
    ("steer-bench-out-dir-in-proc", [*BENCH, "--out-dir", "/proc/bench"], "cannot"),
    ("steer-bench-out-dir-holds-prompts", [*BENCH, "--prompts-file", "prev/steer_bench.json",
                                           "--out-dir", "prev"], "holds the input"),
    ("steer-bench-bad-pair", [*BENCH[:-1], "en-fr", "--out-dir", "b"], "SRC:TGT"),
    ("steer-bench-zero-prompts", [*BENCH, "--prompts", "0", "--out-dir", "b"], "--prompts"),
    ("steer-bench-neurons-are-stats", [*BENCH[:5], "--neurons", "stats.safetensors", "--pairs",
                                       "en:fr", "--out-dir", "b"], "stats.safetensors"),
    # examples
    ("examples-out-is-neurons", [*EXAMPLES, "--out", "neurons.json"], "is the input"),
    ("examples-out-is-text", [*EXAMPLES, "--out", "fr.txt"], "is the input"),
    ("examples-out-is-a-folder", [*EXAMPLES, "--out", "folder"], "is a folder"),
    ("examples-out-in-proc", [*EXAMPLES, "--out", "/proc/ex.safetensors"], "cannot"),
    ("examples-top-without-stats", [*EXAMPLES, "--top", "3", "--out", "ex.safetensors"],
     "--stats"),
    ("examples-zero-k", [*EXAMPLES, "-k", "0", "--out", "ex.safetensors"], "-k"),
    # browse
    ("browse-out-dir-is-stats", [*BROWSE, "--out-dir", "stats.safetensors"], "is a file"),
    ("browse-out-dir-holds-inputs", [*BROWSE, "--out-dir", "."], "holds the input"),
    ("browse-out-dir-under-a-file", [*BROWSE, "--out-dir", "en.txt/site"], "is a file"),
    ("browse-nll-not-json", [*BROWSE, "--nll", "en.txt", "--out-dir", "site"], "not JSON"),
    ("browse-stats-as-neurons", ["browse", "--stats", "stats.safetensors", "--neurons",
                                 "stats.safetensors", "--out-dir", "site"], "stats.safetensors"),
]


# `ActivationStats.load(path)`, `.select([...])`, `track_sums=True`: advice for Python callers,
# not for someone at the command line (a `langneuron ...` command in backticks is fine)
PYTHON_CALL = re.compile(r"(?<![\w./-])\.[a-z_]\w*\(|\b[A-Za-z_]\w*\.[a-z_]\w*\("
                         r"|\b[a-z_]+=(True|False|None)\b")


def _hashes(folder: Path) -> dict:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def run_cli(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:                  # argparse errors
        code = exc.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def check_refused(argv, match, work, capsys):
    before = _hashes(work)
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1, f"expected one line, got:\n{err}"
    assert "Traceback" not in err and "error:" in err, err
    assert match in err, err
    assert not PYTHON_CALL.search(err), f"a Python call in a command-line error: {err}"
    after = _hashes(work)
    assert {p: h for p, h in after.items() if p in before} == before, "an input changed"
    if os.environ.get("LANGNEURON_SHOW_ERRORS"):
        print(err, file=sys.__stderr__)
    return err


def test_there_are_enough_cases():
    assert len(CASES) >= 40
    verbs = {argv[0] for _, argv, _ in CASES}
    assert verbs == set(COMMANDS)


@pytest.mark.parametrize("argv, match", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(argv, match, work, capsys):
    check_refused(argv, match, work, capsys)


def test_demo_blames_the_unknown_language(work, capsys, monkeypatch):
    import langneuron_ext.corpus.handbook as handbook
    monkeypatch.setattr(handbook, "_require_handbook", lambda root: None)
    monkeypatch.setattr(handbook, "available_languages", lambda root=None: ["en-US", "fr-FR"])
    err = check_refused(["demo", "--languages", "en,xx", "--out-dir", "d"], "'xx'", work, capsys)
    assert "--control" not in err


def test_an_empty_parquet_is_one_line(work, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq
    pq.write_table(pa.table({"text": pa.array([], pa.string())}), work / "empty.parquet")
    check_refused(["scan", *MODEL, "--dataset", "en=empty.parquet", "--out", "s.safetensors"],
                  "empty.parquet", work, capsys)


def test_no_stray_test_files_are_left(work, capsys):
    check_refused([*SCAN, "--out", "en.txt"], "is the input", work, capsys)
    assert not [p for p in work.rglob(".langneuron-write-check-*")]
    assert os.listdir(work / "folder") == ["inside.txt"]
