#!/usr/bin/env python
"""Kernel benchmark: the fused op (every available implementation) vs the reference with
statistics (impl="torch") vs plain act(gate) * up without statistics, over sizes.

    python benchmarks/bench_kernels.py                  # CPU fp32, all sizes
    python benchmarks/bench_kernels.py --quick          # two sizes, seconds
    python benchmarks/bench_kernels.py --device cuda    # bf16, + Triton GEMM-epilogue vs cuBLAS
    python benchmarks/bench_kernels.py --sizes 2048x8192 --rounds 21
    python benchmarks/bench_kernels.py --dispatch-overhead   # per-call cost of the Python layer
    python benchmarks/bench_kernels.py --op-v2 --threads 1   # cost of hist / amax / scale

Appends one row per (shape, variant) to benchmarks/results/kernels.csv and writes
benchmarks/results/kernels_<device>.png for this run. The timing method is described in
`langneuron_ext/ops/benchmark.py`.
"""
from __future__ import annotations

import argparse
import os
import pathlib
import sys

import torch

from langneuron_ext.ops import benchmark

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def parse_sizes(text: str):
    sizes = []
    for item in text.split(","):
        try:
            M, I = (int(v) for v in item.lower().split("x"))
        except ValueError:
            raise SystemExit(f"bad size {item!r}: write MxI, e.g. 2048x8192") from None
        if M <= 0 or I <= 0:
            raise SystemExit(f"bad size {item!r}: M and I must be positive")
        sizes.append((M, I))
    return sizes


def plot(results, device: str, path: pathlib.Path) -> None:
    """Grouped bars of median time per shape and variant (log scale), one panel per dtype."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dtypes = sorted({r.dtype for r in results})
    fig, axes = plt.subplots(len(dtypes), 1, figsize=(11, 4.5 * len(dtypes)), squeeze=False)
    for ax, dtype in zip(axes[:, 0], dtypes):
        rows = [r for r in results if r.dtype == dtype]
        shapes = list(dict.fromkeys((r.M, r.I) for r in rows))
        variants = list(dict.fromkeys(r.variant for r in rows))
        width = 0.8 / len(variants)
        for j, variant in enumerate(variants):
            xs, ys, errs, labels = [], [], [], []
            for s, (M, I) in enumerate(shapes):
                match = [r for r in rows if (r.M, r.I) == (M, I) and r.variant == variant]
                if match:
                    r = match[0]
                    xs.append(s + (j - (len(variants) - 1) / 2) * width)
                    ys.append(r.median_ms)
                    errs.append(r.iqr_ms / 2)
                    labels.append(f"{r.speedup_vs_reference:.1f}x")
            bars = ax.bar(xs, ys, width, yerr=errs, label=variant, capsize=2)
            ax.bar_label(bars, labels=labels, fontsize=7, rotation=90, padding=2)
        ax.set_xticks(range(len(shapes)), [f"M={M}\nI={I}" for M, I in shapes])
        ax.set_yscale("log")
        ax.set_ylabel("median ms per call (IQR bars)")
        ax.set_title(f"act_stats on {device} ({dtype}); labels: speedup vs reference")
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def dispatch_overhead(device: str, csv_path: pathlib.Path, save: bool) -> int:
    """Microseconds per call on a 1 x 64 input (the op itself is ~free there): the native op
    called directly, `act_stats(impl=NAME)` (argument object + a cached resolve: what the
    patch pays per MLP call) and `act_stats()` (automatic selection every call)."""
    import csv
    import datetime

    from langneuron_ext.ops import act_stats, dispatch
    dev = torch.device(device)
    name = dispatch.select_impl(dev, torch.float32)
    gate, up = torch.randn(1, 64, device=dev), torch.randn(1, 64, device=dev)
    row_lang = torch.zeros(1, dtype=torch.int32, device=dev)
    counts = torch.zeros(2, 64, dtype=torch.int64, device=dev)
    fn = dispatch.get(name).fn
    act_stats(gate, up, row_lang=row_lang, counts=counts, impl=name)   # first use: self-check
    fns = {f"{name} direct": lambda: fn(gate, up, "silu", row_lang, counts, None, None, None,
                                       None, None),
           f"act_stats(impl={name!r})": lambda: act_stats(gate, up, row_lang=row_lang,
                                                          counts=counts, impl=name,
                                                          check_ids=False),
           "act_stats() automatic": lambda: act_stats(gate, up, row_lang=row_lang,
                                                      counts=counts, check_ids=False)}
    samples = benchmark.time_interleaved(fns, dev, rounds=11, min_block_s=0.05)
    machine, device_name = benchmark.device_description(dev)
    rows = []
    for variant, s in samples.items():
        us = sorted(s)[len(s) // 2] * 1e6
        rows.append(dict(timestamp=datetime.datetime.now().isoformat(timespec="seconds"),
                         machine=machine, device_name=device_name,
                         torch_version=torch.__version__, load_avg=f"{os.getloadavg()[0]:.1f}",
                         variant=variant, us_per_call=f"{us:.2f}"))
        print(f"{variant:<28} {us:8.2f} us per call")
    if save:
        new = not csv_path.exists()
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        with open(csv_path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            if new:
                writer.writeheader()
            writer.writerows(rows)
        print(f"appended {len(rows)} rows to {csv_path}")
    return 0


OPV2_FIELDS = ["timestamp", "machine", "device_name", "torch_version", "threads", "load_avg",
               "impl", "dtype", "M", "I", "K", "B", "rounds", "variant", "median_ms", "iqr_ms",
               "ratio_vs_counts", "ratio_iqr"]


def op_v2(device: str, sizes, rounds: int, csv_path: pathlib.Path, save: bool,
          impl: str = None) -> int:
    """What the optional parts of the op cost on one implementation: counts only, + amax,
    + histograms (B = 32, default edges), + both; and steering with set vs scale on every
    neuron (counts on). Interleaved rounds; ratios are medians of the per-round ratios to
    counts only (set for the scale row), so a load change between rounds cancels."""
    import datetime
    import statistics

    from langneuron_ext.ops import default_hist_edges, dispatch
    from langneuron_ext.ops.reference import STEER_SCALE, STEER_SET
    dev = torch.device(device)
    dtype, K, B = torch.float32, 8, 32
    name = impl or dispatch.select_impl(dev, dtype)
    fn = dispatch.get(name).fn
    machine, device_name = benchmark.device_description(dev)
    rows = []
    for M, I in sizes:
        gen = torch.Generator().manual_seed(0)
        # activations of a real model's spread: N(0, 1) gates, up of the same size
        gate = torch.randn(M, I, generator=gen).to(dev)
        up = torch.randn(M, I, generator=gen).to(dev)
        row_lang = (torch.arange(M, dtype=torch.int32) * K // M).to(dev)   # language runs
        counts = torch.zeros(K, I, dtype=torch.int64, device=dev)
        hist = torch.zeros(K, I, B, dtype=torch.int64, device=dev)
        edges = default_hist_edges(B).to(dev)
        amax = torch.full((K, I), float("-inf"), device=dev)
        group = torch.zeros(M, dtype=torch.int32, device=dev)
        value = torch.full((1, I), 1.5, device=dev)
        mode = {m: torch.full((1, I), m, dtype=torch.int8, device=dev)
                for m in (STEER_SET, STEER_SCALE)}

        def call(hist_=None, amax_=None, steer=None):
            return lambda: fn(gate, up, "silu", row_lang, counts, None, None,
                              group if steer else None, mode[steer] if steer else None,
                              value if steer else None, hist_, edges if hist_ is not None
                              else None, amax_)
        fns = {"counts": call(), "counts+amax": call(amax_=amax),
               "counts+hist": call(hist_=hist), "counts+hist+amax": call(hist, amax),
               "counts+steer set": call(steer=STEER_SET),
               "counts+steer scale": call(steer=STEER_SCALE)}
        samples = benchmark.time_interleaved(fns, dev, rounds=rounds, min_block_s=0.2)
        load = os.getloadavg()[0]
        base = {v: ("counts+steer set" if v == "counts+steer scale" else "counts")
                for v in fns}
        for variant, s in samples.items():
            ratios = [a / b for a, b in zip(s, samples[base[variant]])]
            q = statistics.quantiles(ratios, n=4, method="inclusive")
            qs = statistics.quantiles(s, n=4, method="inclusive")
            rows.append(dict(
                timestamp=datetime.datetime.now().isoformat(timespec="seconds"),
                machine=machine, device_name=device_name, torch_version=torch.__version__,
                threads=torch.get_num_threads(), load_avg=f"{load:.2f}", impl=name,
                dtype="fp32", M=M, I=I, K=K, B=B, rounds=rounds,
                variant=variant if base[variant] == "counts" else f"{variant} (vs set)",
                median_ms=f"{statistics.median(s) * 1e3:.3f}",
                iqr_ms=f"{(qs[2] - qs[0]) * 1e3:.3f}",
                ratio_vs_counts=f"{statistics.median(ratios):.3f}",
                ratio_iqr=f"{q[2] - q[0]:.3f}"))
    print(f"{'variant':<30} {'median ms':>10} {'ratio':>7} {'IQR':>6}   ({name}, "
          f"{torch.get_num_threads()} threads, load {rows[-1]['load_avg']})")
    for r in rows:
        print(f"{r['variant']:<30} {r['median_ms']:>10} {r['ratio_vs_counts']:>7} "
              f"{r['ratio_iqr']:>6}")
    if save:
        benchmark.append_csv(rows, csv_path, fieldnames=OPV2_FIELDS)
        print(f"appended {len(rows)} rows to {csv_path}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        choices=["cpu", "cuda"])
    parser.add_argument("--quick", action="store_true", help="two sizes, short blocks")
    parser.add_argument("--sizes", type=parse_sizes, help="comma list of MxI, e.g. 2048x8192")
    parser.add_argument("--dtype", action="append", choices=list(DTYPES),
                        help="repeatable; default fp32 on CPU, bf16 on CUDA")
    parser.add_argument("--act", default="silu")
    parser.add_argument("--rounds", type=int, help="interleaved rounds per shape")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    parser.add_argument("--csv", type=pathlib.Path, default=RESULTS / "kernels.csv")
    parser.add_argument("--plot", type=pathlib.Path,
                        help="default benchmarks/results/kernels_<device>.png")
    parser.add_argument("--no-save", action="store_true", help="print only")
    parser.add_argument("--dispatch-overhead", action="store_true",
                        help="time the per-call cost of act_stats' Python layer instead "
                             "(writes benchmarks/results/dispatch_overhead.csv)")
    parser.add_argument("--op-v2", action="store_true",
                        help="time counts only vs + hist (B=32) / + amax / both, and scale vs "
                             "set steering, at 2048x8192 fp32 K=8 unless --sizes (writes "
                             "benchmarks/results/kernels_opv2.csv)")
    parser.add_argument("--impl", help="with --op-v2: the implementation (default: the best)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.op_v2:
        return op_v2(args.device, args.sizes or [(2048, 8192)], args.rounds or 11,
                     RESULTS / "kernels_opv2.csv", not args.no_save, args.impl)
    if args.dispatch_overhead:
        return dispatch_overhead(args.device, RESULTS / "dispatch_overhead.csv",
                                 not args.no_save)
    try:
        results = benchmark.run_kernel_benchmark(
            args.device, quick=args.quick, sizes=args.sizes, act=args.act, rounds=args.rounds,
            dtypes=[DTYPES[d] for d in args.dtype] if args.dtype else None)
    except ValueError as exc:
        print(f"bench_kernels: error: {exc}", file=sys.stderr)
        return 2
    print(benchmark.format_table(results))
    if not args.no_save:
        benchmark.append_csv(benchmark.csv_rows(results, args.device), args.csv)
        plot_path = args.plot or RESULTS / f"kernels_{args.device}.png"
        plot(results, args.device, plot_path)
        print(f"appended {len(results)} rows to {args.csv}; plot: {plot_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
