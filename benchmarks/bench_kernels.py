#!/usr/bin/env python
"""Kernel benchmark: the fused op (every available implementation) vs the reference with
statistics (impl="torch") vs plain act(gate) * up without statistics, over sizes.

    python benchmarks/bench_kernels.py                  # CPU fp32, all sizes
    python benchmarks/bench_kernels.py --quick          # two sizes, seconds
    python benchmarks/bench_kernels.py --device cuda    # bf16, + Triton GEMM-epilogue vs cuBLAS
    python benchmarks/bench_kernels.py --sizes 2048x8192 --rounds 21
    python benchmarks/bench_kernels.py --dispatch-overhead   # per-call cost of the Python layer

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
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
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
