"""pytest-benchmark suite for the fused op, plus checks of the benchmark machinery.

Under `make test` (pytest -n 2) pytest-benchmark disables itself and each benchmarked function
runs once, so this module costs about a second. To measure for real, without xdist:

    .venv/bin/python -m pytest tests/test_benchmarks.py --benchmark-only
    .venv/bin/python -m pytest tests/test_benchmarks.py --benchmark-only \
        --benchmark-columns=median,iqr,rounds --benchmark-sort=name

Results are grouped by shape, so the fused implementations, the reference with statistics and
plain act(gate) * up appear side by side. No timing is asserted (timings vary by machine).
"""
import json

import pytest
import torch

from langneuron_ext.cli import main as cli_main
from langneuron_ext.ops import benchmark as bench
from langneuron_ext.ops import dispatch
from langneuron_ext.ops.reference import act_stats_torch, plain_act_mul

SHAPES = [(256, 1024), (512, 2048)]
K = 8
VARIANTS = ["plain", "torch"] + bench.elementwise_implementations(torch.device("cpu"),
                                                                  torch.float32)


def _inputs(M, I):
    gen = torch.Generator().manual_seed(M + I)
    return bench._shape_inputs(M, I, torch.float32, torch.device("cpu"), K, gen)


def _call(variant, gate, up, row_lang, counts):
    if variant == "plain":
        return plain_act_mul(gate, up, "silu")
    return dispatch.get(variant).fn(gate, up, "silu", row_lang, counts, None, None, None, None,
                                    None)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", SHAPES, ids=[f"M{M}xI{I}" for M, I in SHAPES])
def test_act_stats_speed(benchmark, shape, variant):
    M, I = shape
    gate, up, row_lang, counts = _inputs(M, I)
    benchmark.group = f"act_stats silu fp32 M={M} I={I}"
    benchmark.extra_info.update(M=M, I=I, K=K, variant=variant)
    h = benchmark(_call, variant, gate, up, row_lang, counts)
    # What was timed computes the right thing (checked on a fresh buffer: the benchmark ran
    # an unknown number of times).
    torch.testing.assert_close(h, plain_act_mul(gate, up, "silu"), rtol=1e-5, atol=1e-6)
    if variant != "plain":
        fresh = torch.zeros_like(counts)
        _call(variant, gate, up, row_lang, fresh)
        expected = torch.zeros_like(counts)
        act_stats_torch(gate, up, "silu", row_lang, expected, None, None, None, None, None)
        assert torch.equal(fresh, expected)
        assert counts.sum() > 0 and int(counts.sum()) % int(expected.sum()) == 0


def test_interleaved_timer_returns_one_sample_per_round():
    calls = {"a": 0, "b": 0}

    def work(name):
        calls[name] += 1
        return torch.ones(64).sum()

    samples = bench.time_interleaved({"a": lambda: work("a"), "b": lambda: work("b")},
                                     torch.device("cpu"), rounds=4, min_block_s=0.001)
    assert set(samples) == {"a", "b"}
    assert all(len(s) == 4 and all(t > 0 for t in s) for s in samples.values())
    assert calls["a"] >= 4 + 2 and calls["b"] >= 4 + 2      # warm-up + one block per round


def test_benchmark_shape_ratios_are_consistent(tmp_path):
    results = bench.benchmark_shape(16, 64, torch.float32, torch.device("cpu"), rounds=2,
                                    min_block_s=0.001)
    by_variant = {r.variant: r for r in results}
    assert {"plain", "torch"} <= set(by_variant)
    ref, plain = by_variant["torch"], by_variant["plain"]
    assert ref.speedup_vs_reference == pytest.approx(1.0)
    assert plain.time_vs_plain == pytest.approx(1.0)
    for r in results:
        assert r.speedup_vs_reference == pytest.approx(ref.median_ms / r.median_ms)
        assert r.gb_per_s == pytest.approx(r.bytes_moved / (r.median_ms * 1e-3) / 1e9)
    path = tmp_path / "kernels.csv"
    bench.append_csv(bench.csv_rows(results, "cpu"), path)
    bench.append_csv(bench.csv_rows(results, "cpu"), path)
    lines = path.read_text().splitlines()
    assert lines[0].split(",") == bench.CSV_FIELDS
    assert len(lines) == 1 + 2 * len(results)              # one header, rows appended
    table = bench.format_table(results)
    assert all(r.variant in table for r in results)


def test_cli_bench_kernels_json(capsys):
    rc = cli_main(["bench", "kernels", "--device", "cpu", "--sizes", "8x32,4x16",
                   "--rounds", "1", "--json"])
    assert rc == 0
    report = json.loads(capsys.readouterr().out)
    assert report["device"] == "cpu"
    shapes = {(r["M"], r["I"]) for r in report["results"]}
    assert shapes == {(8, 32), (4, 16)}
    assert {r["variant"] for r in report["results"]} == set(VARIANTS)
    assert all(r["median_ms"] > 0 for r in report["results"])


@pytest.mark.parametrize("argv, message", [
    (["--sizes", "8x"], "bad size"),
    (["--rounds", "0"], "--rounds"),
    (["--device", "cuda"], "no CUDA GPU"),
])
def test_cli_bench_kernels_bad_input(capsys, argv, message):
    if "cuda" in argv and torch.cuda.is_available():
        argv = ["--rounds", "0"]
        message = "--rounds"
    rc = cli_main(["bench", "kernels", *argv])
    assert rc == 2
    assert message in capsys.readouterr().err
