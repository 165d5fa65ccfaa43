"""`langneuron bench scan` on a tiny random Llama: the JSON it prints, the CSV and plot it
writes, and that the hook baseline counts exactly what the patch counts (so it is a correct
baseline). No timing is asserted: timings vary by machine and load."""
from __future__ import annotations

import csv
import json

import pytest
import torch

from langneuron_ext.bench import scan as bench_scan
from langneuron_ext.bench import sweep as bench_sweep
from langneuron_ext.bench.plot import markdown_tables
from langneuron_ext.cli import main

SMALL = ["--model", "toy", "--rounds", "2", "--batches", "2", "--batch-size", "2",
         "--seq-len", "32", "--random-ids"]


@pytest.fixture(scope="module")
def toy():
    return bench_scan.toy_model()


def _json_last_line(out: str) -> dict:
    lines = out.strip().splitlines()
    assert lines, "nothing printed"
    return json.loads(lines[-1])


def test_cli_json_csv_and_plot(capsys, tmp_path):
    csv_path, png = tmp_path / "scan.csv", tmp_path / "scan.png"
    assert main(["bench", "scan", *SMALL, "--json", "--csv", str(csv_path),
                 "--plot", str(png)]) == 0
    result = _json_last_line(capsys.readouterr().out)
    for key in ("ratio_vs_plain", "ratio_vs_hooks"):
        assert isinstance(result[key], float) and result[key] > 0
    default = result["default_impl"]
    assert default == "cpu"                      # the C++ kernel is built in this checkout
    assert {"plain", "hooks", f"patch:{default}", "patch:torch"} <= set(result["variants"])
    for name, v in result["variants"].items():
        assert len(v["tokens_per_s_rounds"]) == 2 and v["tokens_per_s"] > 0, name
    # the default's ratios are the medians of its per-round ratios, reported per variant too
    assert result["ratio_vs_plain"] == result["variants"][f"patch:{default}"]["ratio_vs_plain"]
    assert result["variants"]["plain"]["ratio_vs_plain"] == 1.0
    assert result["counts_exact"] is True and result["counts_differing"] == 0
    for key in ("machine", "device_name", "torch_version", "threads", "load_avg_start",
                "load_avg_end", "model", "batch", "seq_len", "K", "tokens", "text"):
        assert key in result, key
    assert (result["batch"], result["seq_len"], result["K"]) == (2, 32, 8)
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["variant"] for r in rows] == list(result["variants"])
    assert all(r["load_avg_end"] and r["experiment"] == "compare" for r in rows)
    assert png.stat().st_size > 10_000
    table = markdown_tables(csv_path).splitlines()           # the README's table, from the CSV
    cpu_row = next(line for line in table if "`patch:cpu`" in line)
    cpu = next(r for r in rows if r["variant"] == "patch:cpu")
    assert f"| {float(cpu['ratio_vs_plain']):.3f} |" in cpu_row


def test_hook_baseline_counts_equal_patch_counts(toy):
    """Every layer, every language, every neuron: hooks == patch (torch and cpu) on SiLU fp32,
    where the patched forward computes h bit for bit like the model."""
    model, tokenizer = toy
    batches, _ = bench_scan.make_batches(tokenizer, model.config.vocab_size, batch_size=3,
                                         seq_len=48, n_batches=2, languages=5, text=False)
    forward = model.model
    counts = {}
    for variant in [bench_scan.HookCounting(5), bench_scan.PatchCounting(5, "torch"),
                    bench_scan.PatchCounting(5, "cpu")]:
        variant.install(model)
        try:
            with torch.inference_mode():
                for b in batches:
                    variant.before_batch(b)
                    forward(input_ids=b.input_ids, attention_mask=b.attention_mask,
                            use_cache=False)
            counts[variant.name] = variant.counts()
        finally:
            variant.remove()
    hooks = counts["hooks"]
    assert hooks.shape == (5, 2, 256) and int(hooks.sum()) > 0
    # every slot got rows, and no slot counted more tokens than it has
    tokens = sum(b.tokens_per_language for b in batches)
    assert (hooks.amax(dim=(1, 2)) <= tokens).all() and (tokens > 0).all()
    assert torch.equal(counts["patch:torch"], hooks)
    assert torch.equal(counts["patch:cpu"], hooks)
    assert bench_scan.compare_counts(counts) == {"hooks": 0, "patch:torch": 0, "patch:cpu": 0}


def test_compare_counts_rejects_a_wrong_count():
    hooks = torch.randint(1, 50, (3, 4, 1000))
    layer0 = hooks.clone()
    layer0[1, 0, 5] += 1
    with pytest.raises(bench_scan.BenchError, match="layer 0"):
        bench_scan.compare_counts({"hooks": hooks, "patch:cpu": layer0})
    many = hooks.clone()
    many[:, 1:] += 1                                     # every deeper entry off by one
    with pytest.raises(bench_scan.BenchError, match="void"):
        bench_scan.compare_counts({"hooks": hooks, "patch:cpu": many})
    # bfloat16: only layer 0 must agree (rounding of h propagates to deeper layers)
    assert bench_scan.compare_counts({"hooks": hooks, "patch:cpu": many},
                                     torch.bfloat16)["patch:cpu"] == 3 * 3 * 1000
    one = hooks.clone()
    one[0, 3, 0] += 1
    assert bench_scan.compare_counts({"hooks": hooks, "patch:cpu": one})["patch:cpu"] == 1


def test_batches_use_every_language_slot(toy, monkeypatch):
    """More slots than text languages: rows are relabelled so every slot counts."""
    monkeypatch.setattr(bench_scan, "TEXT_LANGUAGES", ("en", "fr"))
    model, tokenizer = toy
    for text in (True, False):
        batches, source = bench_scan.make_batches(tokenizer, model.config.vocab_size,
                                                  batch_size=4, seq_len=16, n_batches=3,
                                                  languages=12, text=text)
        assert [tuple(b.input_ids.shape) for b in batches] == [(4, 16)] * 3
        slots = torch.cat([b.row_lang.reshape(-1) for b in batches])
        assert set(slots[slots >= 0].tolist()) == set(range(12)), source
        for b in batches:
            assert torch.equal(b.tokens_per_language,
                               torch.bincount(b.row_lang[b.row_lang >= 0].long(),
                                              minlength=12))


@pytest.mark.parametrize("argv, match", [
    (["--impl", "cuda"], "--impl cuda"),
    (["--device", "cuda"], "--device cuda"),
    (["--device", "tpu"], "tpu"),
    (["--rounds", "0"], "--rounds"),
    (["--model", "toy,gemma-3-270m"], "one model"),
    (["--plot", "x.png"], "--csv"),
])
def test_bad_options_one_line(capsys, argv, match):
    if "cuda" in argv and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")   # the error is for machines without one
    assert main(["bench", "scan", "--model", "toy", *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


def test_dtype_spelling_and_aliases():
    from langneuron_ext.cli import build_parser
    parser = build_parser()
    for given, expected in [("float32", "float32"), ("fp32", "float32"), ("bf16", "bfloat16"),
                            ("bfloat16", "bfloat16"), ("fp16", "float16")]:
        for verb in ("scan", "kernels"):
            args = parser.parse_args(["bench", verb, "--dtype", given])
            assert args.dtype == expected
    with pytest.raises(SystemExit):
        parser.parse_args(["bench", "scan", "--dtype", "int8"])


def test_sweep_rows_and_plot(capsys, tmp_path, monkeypatch):
    """The sweep on the toy model with its axes shortened: every point gives plain, hooks and
    the patch; the corpus-size rows come from whole scans; the plot is drawn."""
    monkeypatch.setattr(bench_sweep, "SEQ_LENS", (32, 64))
    monkeypatch.setattr(bench_sweep, "BATCHES", (1, 2))
    monkeypatch.setattr(bench_sweep, "LANGUAGE_COUNTS", (1, 8))
    monkeypatch.setattr(bench_sweep, "BASE", (2, 64, 8))
    monkeypatch.setattr(bench_sweep, "TOKENS_PER_BLOCK", 64)
    monkeypatch.setattr(bench_sweep, "CORPUS_TOKENS", (100, 1000))
    monkeypatch.setattr(bench_sweep, "SEQ_AXIS_BATCH", 1)
    csv_path, png = tmp_path / "scan.csv", tmp_path / "scan.png"
    assert main(["bench", "scan", "--sweep", "--model", "toy", "--rounds", "1", "--json",
                 "--random-ids",
                 "--csv", str(csv_path), "--plot", str(png)]) == 0
    printed = _json_last_line(capsys.readouterr().out)["rows"]
    rows = list(csv.DictReader(open(csv_path)))
    assert [{k: str(v) for k, v in r.items()} for r in printed] == rows
    sweep = [r for r in rows if r["experiment"] == "sweep"]
    points = {(r["batch"], r["seq_len"], r["K"]) for r in sweep}
    assert points >= {("1", "32", "8"), ("1", "64", "8"), ("2", "64", "1"), ("2", "64", "8")}
    for point in points:
        assert {r["variant"] for r in sweep if (r["batch"], r["seq_len"], r["K"]) == point} \
            == {"plain", "hooks", "patch:cpu"}
    corpus = [r for r in rows if r["experiment"] == "corpus"]
    if corpus:                                   # needs the Debian handbook
        assert len(corpus) == 2 and all(float(r["peak_mem_mb"]) >= 0 for r in corpus)
        assert int(corpus[1]["tokens"]) > 5 * int(corpus[0]["tokens"])
    assert png.stat().st_size > 10_000
    assert "| toy | 1 x 32 | 8 | `hooks` |" in markdown_tables(csv_path)
