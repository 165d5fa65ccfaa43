#!/usr/bin/env python
"""Scan throughput benchmark: `langneuron bench scan` with the repository's CSV and plot.

    python benchmarks/bench_scan.py --model gemma-3-270m          # plain vs hooks vs patch
    python benchmarks/bench_scan.py --model smollm2-135m --json   # last line: one JSON object
    python benchmarks/bench_scan.py --sweep --model smollm2-135m,gemma-3-270m   # how cost grows

Rows are appended to benchmarks/results/scan.csv and benchmarks/results/scan_<device>.png is
redrawn (override with --csv / --plot). The measurement itself is
`langneuron_ext.bench.scan` / `langneuron_ext.bench.sweep`, so installed users get the same
numbers from `langneuron bench scan`. See benchmarks/README.md for the method.
"""
from __future__ import annotations

import pathlib
import sys

from langneuron_ext.cli import main

RESULTS = pathlib.Path(__file__).resolve().parent / "results"


def _has(argv, option: str) -> bool:
    return any(a == option or a.startswith(option + "=") for a in argv)


if __name__ == "__main__":
    argv = sys.argv[1:]
    if not _has(argv, "--csv"):
        argv += ["--csv", str(RESULTS / "scan.csv")]
    if not _has(argv, "--plot"):
        import torch
        device = "cuda" if torch.cuda.is_available() and "cpu" not in argv else "cpu"
        argv += ["--plot", str(RESULTS / f"scan_{device}.png")]
    sys.exit(main(["bench", "scan", *argv]))
