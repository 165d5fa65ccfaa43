"""`langneuron bench`: benchmarks of the fused op and of a scan's forward pass.

    langneuron bench kernels [--quick] [--device cpu|cuda] [--json] [--sizes 2048x8192]
    langneuron bench scan [--model gemma-3-270m] [--json] [--csv F --plot P] [--sweep]

`kernels` prints the median time of every implementation, the reference with statistics and
plain `act(gate) * up` per shape (full script with CSV and plot: benchmarks/bench_kernels.py).
`scan` measures tokens/s and peak memory of a scan's forward: the plain model, forward hooks
counting in PyTorch (the reference user code) and the patched model with each implementation,
interleaved on the same batches (benchmarks/bench_scan.py runs it with the repository's CSV).
"""
from __future__ import annotations

import json

from . import CliError
from .options import (
    DTYPES,
    add_impl_device_options,
    check_min,
    parse_list,
    resolve_device_and_impl,
)
from .outputs import check_outputs, keep_result

# Short spellings accepted for --dtype (the other verbs spell them out).
DTYPE_ALIASES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16", "half": "float16"}


def _dtype_name(text: str) -> str:
    return DTYPE_ALIASES.get(text.strip().lower(), text.strip().lower())


def _sizes(text: str):
    sizes = []
    for item in text.split(","):
        parts = item.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise CliError(f"bad size {item!r} in --sizes: write positive MxI pairs, e.g. "
                           f"512x2048,2048x8192")
        sizes.append((int(parts[0]), int(parts[1])))
    return sizes


def _add_dtype(p, default_help: str) -> None:
    p.add_argument("--dtype", type=_dtype_name, choices=DTYPES, default=None,
                   help=f"float32, bfloat16 or float16 (fp32, bf16, fp16 also accepted); "
                        f"{default_help}")


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmark the fused kernels and a scan",
                                   description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="bench_command", metavar="WHAT")
    kernels = sub.add_parser("kernels", help="fused op vs reference vs plain act(gate)*up",
                             description="Time every available implementation of the fused op "
                                         "against the torch reference with statistics and "
                                         "plain act(gate)*up without statistics.")
    kernels.add_argument("--device", default=None, metavar="DEVICE",
                         help="cpu or cuda (default: cuda when a GPU is visible, else cpu)")
    kernels.add_argument("--quick", action="store_true", help="two sizes, short timing blocks")
    kernels.add_argument("--sizes", default=None, help="comma list of MxI (rows x neurons)")
    _add_dtype(kernels, "default float32 on cpu, bfloat16 on cuda")
    kernels.add_argument("--act", choices=["silu", "gelu", "gelu_tanh", "relu"], default="silu")
    kernels.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds")
    kernels.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    kernels.add_argument("--csv", default=None, help="also append the rows to this CSV file")
    kernels.add_argument("--json", action="store_true", help="print a JSON object instead")
    kernels.add_argument("--no-progress", action="store_true", help="no progress bars")
    kernels.set_defaults(func=run_kernels)
    _register_scan(sub)
    parser.set_defaults(func=lambda args: _missing_what(parser))


def _register_scan(sub) -> None:
    p = sub.add_parser(
        "scan", help="a scan's forward: plain vs hook code vs patched, tokens/s and memory",
        description="Tokens/s and peak memory of a scan's forward pass on one model and the "
                    "same batches: (a) the plain model, (b) forward hooks counting act > 0 per "
                    "language in PyTorch (the reference user code), (c) the patched model with "
                    "each available implementation. Interleaved rounds; ratios are medians of "
                    "per-round ratios. The patch's counts are checked equal to the hooks'.")
    p.add_argument("--model", default="gemma-3-270m", metavar="NAME_OR_PATH",
                   help="a built-in name (gemma-3-270m, smollm2-135m), a Hugging Face folder "
                        "or id, or 'toy' (a tiny random Llama); with --sweep a comma list "
                        "(default gemma-3-270m)")
    _add_dtype(p, "default float32")
    add_impl_device_options(p)
    p.add_argument("--batch-size", type=int, default=4, metavar="B", help="rows per batch (4)")
    p.add_argument("--seq-len", type=int, default=256, metavar="T", help="tokens per row (256)")
    p.add_argument("--batches", type=int, default=2, metavar="N",
                   help="batches per timed block (2)")
    p.add_argument("--num-languages", type=int, default=8, metavar="K",
                   help="language slots counted (8)")
    p.add_argument("--rounds", type=int, default=None, metavar="R",
                   help="interleaved rounds (default 7; 3 with --sweep)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--random-ids", action="store_true",
                   help="random token ids instead of Debian handbook text")
    p.add_argument("--sweep", action="store_true",
                   help="how cost grows: sequence length 128-2048, batch 1-16, K 1-64 on the "
                        "first --model, the base point on the others, and the memory of a "
                        "whole scan for two corpus sizes ten times apart")
    from ..ops.reference import DEFAULT_HIST_BINS
    p.add_argument("--hist", type=int, nargs="?", const=DEFAULT_HIST_BINS, default=None,
                   metavar="B",
                   help=f"also time each implementation recording histograms of B bins and "
                        f"maxima (scan --hist; default {DEFAULT_HIST_BINS}): variants "
                        f"patch:<impl>+hist")
    p.add_argument("--csv", default=None, metavar="FILE", help="append the rows to this CSV")
    p.add_argument("--plot", default=None, metavar="PNG",
                   help="redraw this plot from --csv afterwards")
    p.add_argument("--json", action="store_true",
                   help="print the result as one JSON line (last line of the output)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_scan)


def _missing_what(parser) -> int:
    parser.print_help()
    return 2


def _threads(args) -> None:
    import torch
    if args.threads is not None:
        check_min(args, "threads", 1)
        torch.set_num_threads(args.threads)


def run_kernels(args) -> int:
    import torch

    from ..ops import benchmark

    device, _ = resolve_device_and_impl(args, args.dtype)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")).type
    check_min(args, "rounds", 1)
    check_outputs(files=[("--csv", args.csv)])
    _threads(args)
    dtypes = [getattr(torch, args.dtype)] if args.dtype else None
    sizes = _sizes(args.sizes) if args.sizes else None
    results = benchmark.run_kernel_benchmark(device, quick=args.quick, sizes=sizes,
                                             dtypes=dtypes, act=args.act, rounds=args.rounds,
                                             progress=not (args.json or args.no_progress))
    rows = benchmark.csv_rows(results, device)
    if args.csv:
        keep_result(args.csv, lambda p: benchmark.append_csv(rows, p), "--csv", "timings")
    if args.json:
        machine, device_name = benchmark.device_description(torch.device(device))
        print(json.dumps({"device": device, "device_name": device_name, "machine": machine,
                          "torch_version": torch.__version__,
                          "threads": torch.get_num_threads(),
                          "results": [_json_row(r) for r in results]}))
    else:
        print(benchmark.format_table(results))
    return 0


def _json_row(result) -> dict:
    keys = ("variant", "M", "I", "H", "dtype", "act", "K", "median_ms", "iqr_ms", "blocks",
            "speedup_vs_reference", "time_vs_plain", "gb_per_s", "pct_peak_bandwidth",
            "tflop_per_s")
    return {k: getattr(result, k) for k in keys}


def run_scan(args) -> int:
    import torch

    from ..bench import scan as bench_scan

    dtype_name = args.dtype or "float32"
    device, impl = resolve_device_and_impl(args, dtype_name)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = getattr(torch, dtype_name)
    for name in ("batch_size", "seq_len", "batches", "num_languages", "rounds"):
        check_min(args, name, 1)
    if args.plot and not args.csv:
        raise CliError("--plot is drawn from the CSV rows: give --csv FILE too")
    models = parse_list(args.model, "--model", example="gemma-3-270m,smollm2-135m")
    if len(models) > 1 and not args.sweep:
        raise CliError(f"--model {args.model!r}: give one model (a comma list only with --sweep)")
    check_outputs(files=[("--csv", args.csv), ("--plot", args.plot)])
    _threads(args)
    if args.hist is not None:
        from ..ops import default_hist_edges
        try:
            default_hist_edges(args.hist)
        except ValueError as exc:
            raise CliError(f"--hist {args.hist}: {exc}") from None
        if args.sweep:
            raise CliError("--hist times one configuration; leave out --sweep")
    if args.sweep:
        return _run_sweep(args, models, dtype, device, impl)
    impls, default = bench_scan.implementations(device, dtype, impl)
    model, tokenizer = bench_scan.load_bench_model(models[0], dtype, device)
    batches, text = bench_scan.make_batches(
        tokenizer, model.config.vocab_size, batch_size=args.batch_size, seq_len=args.seq_len,
        n_batches=args.batches, languages=args.num_languages, device=device,
        text=not args.random_ids)
    result = bench_scan.run_scan_benchmark(
        model, batches, languages=args.num_languages, impls=impls, default_impl=default,
        rounds=args.rounds or 7, model_name=models[0], text=text,
        progress=not (args.json or args.no_progress), hist_bins=args.hist)
    _save(args, result.rows())
    if args.json:
        print(json.dumps(result.summary()))
    else:
        print(bench_scan.format_table(result))
    return 0


def _run_sweep(args, models, dtype, device, impl) -> int:
    from ..bench.sweep import run_sweep

    rows = run_sweep(models, dtype=dtype, device=device, impl=impl, rounds=args.rounds or 3,
                     text=not args.random_ids, progress=not (args.json or args.no_progress),
                     on_rows=(lambda r: _save(args, r, plot=False)) if args.csv else None)
    _save(args, [], plot=True)
    if args.json:
        print(json.dumps({"rows": rows}))
    else:
        for r in rows:
            print(f"{r['experiment']:>7} {r['model']:>14} {r['batch']:>3}x{r['seq_len']:<5} "
                  f"K {r['K']:>3} {r['variant']:>12} {float(r['tokens_per_s']):9.1f} tok/s "
                  f"vs plain {r['ratio_vs_plain'] or '-':>7} "
                  f"vs hooks {r['ratio_vs_hooks'] or '-':>7} "
                  f"peak {r['peak_mem_mb'] or '-':>8} MiB  load {r['load_avg_end']}")
    return 0


def _save(args, rows, plot: bool = True) -> None:
    from ..bench import scan as bench_scan
    if args.csv and rows:
        keep_result(args.csv, lambda p: bench_scan.append_csv(rows, p), "--csv", "timings")
    if plot and args.plot:
        from ..bench.plot import plot_scan
        plot_scan(args.csv, args.plot)
