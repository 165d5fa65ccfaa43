"""`langneuron bench`: benchmarks of the fused op.

    langneuron bench kernels [--quick] [--device cpu|cuda] [--json] [--sizes 2048x8192]

prints the median time of every implementation, the reference with statistics and plain
`act(gate) * up` per shape, with the ratios measured in the same run. The full script with CSV
and plot output is benchmarks/bench_kernels.py.
"""
from __future__ import annotations

import json

from . import CliError


def _sizes(text: str):
    sizes = []
    for item in text.split(","):
        parts = item.lower().split("x")
        if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise CliError(f"bad size {item!r} in --sizes: write positive MxI pairs, e.g. "
                           f"512x2048,2048x8192")
        sizes.append((int(parts[0]), int(parts[1])))
    return sizes


def register(subparsers) -> None:
    parser = subparsers.add_parser("bench", help="benchmark the fused kernels",
                                   description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="bench_command", metavar="WHAT")
    kernels = sub.add_parser("kernels", help="fused op vs reference vs plain act(gate)*up",
                             description="Time every available implementation of the fused op "
                                         "against the torch reference with statistics and "
                                         "plain act(gate)*up without statistics.")
    kernels.add_argument("--device", choices=["cpu", "cuda"], default=None,
                         help="default: cuda when a GPU is visible, else cpu")
    kernels.add_argument("--quick", action="store_true", help="two sizes, short timing blocks")
    kernels.add_argument("--sizes", default=None, help="comma list of MxI (rows x neurons)")
    kernels.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None,
                         help="default: fp32 on cpu, bf16 on cuda")
    kernels.add_argument("--act", choices=["silu", "gelu", "gelu_tanh", "relu"], default="silu")
    kernels.add_argument("--rounds", type=int, default=None, help="interleaved timing rounds")
    kernels.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    kernels.add_argument("--csv", default=None, help="also append the rows to this CSV file")
    kernels.add_argument("--json", action="store_true", help="print a JSON object instead")
    kernels.set_defaults(func=run_kernels)
    parser.set_defaults(func=lambda args: _missing_what(parser))


def _missing_what(parser) -> int:
    parser.print_help()
    return 2


def run_kernels(args) -> int:
    import torch

    from ..ops import benchmark

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise CliError("--device cuda was requested but no CUDA GPU is visible; use "
                       "--device cpu")
    if args.rounds is not None and args.rounds < 1:
        raise CliError("--rounds must be at least 1")
    if args.threads is not None:
        if args.threads < 1:
            raise CliError("--threads must be at least 1")
        torch.set_num_threads(args.threads)
    dtypes = None
    if args.dtype:
        dtypes = [{"fp32": torch.float32, "fp16": torch.float16,
                   "bf16": torch.bfloat16}[args.dtype]]
    sizes = _sizes(args.sizes) if args.sizes else None
    results = benchmark.run_kernel_benchmark(device, quick=args.quick, sizes=sizes,
                                             dtypes=dtypes, act=args.act, rounds=args.rounds,
                                             progress=not args.json)
    rows = benchmark.csv_rows(results, device)
    if args.csv:
        benchmark.append_csv(rows, args.csv)
    if args.json:
        machine, device_name = benchmark.device_description(torch.device(device))
        print(json.dumps({"device": device, "device_name": device_name, "machine": machine,
                          "torch_version": torch.__version__,
                          "threads": torch.get_num_threads(),
                          "results": [_json_row(r) for r in results]}, indent=2))
    else:
        print(benchmark.format_table(results))
    return 0


def _json_row(result) -> dict:
    keys = ("variant", "M", "I", "H", "dtype", "act", "K", "median_ms", "iqr_ms", "blocks",
            "speedup_vs_reference", "time_vs_plain", "gb_per_s", "pct_peak_bandwidth",
            "tflop_per_s")
    return {k: getattr(result, k) for k in keys}
