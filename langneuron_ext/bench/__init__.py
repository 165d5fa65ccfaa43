"""Benchmarks that ship with the package (`langneuron bench scan`): the scan's forward pass with
statistics against a plain forward and against user-written hook code, and how its cost grows.
The kernel benchmark of the fused op alone lives in `langneuron_ext.ops.benchmark`."""
from .scan import BenchError, ScanBenchResult, run_scan_benchmark

__all__ = ["BenchError", "ScanBenchResult", "run_scan_benchmark"]
