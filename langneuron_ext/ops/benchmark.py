"""Kernel benchmark of the fused op: every available implementation against the reference with
statistics (`torch`) and against plain `act(gate) * up` without statistics, side by side.

Used by `langneuron bench kernels` and `benchmarks/bench_kernels.py` (which also writes the CSV
and the plot). Timing: each variant is called in blocks long enough to dwarf timer overhead;
blocks of all variants are interleaved round by round (so drift and turbo affect all alike) and
each variant's median and interquartile range are taken over its blocks. Implementations are
called directly (2-D, already validated inputs), i.e. the kernels without the API's checks.

On CUDA it also times the Triton GEMM-epilogue (`x @ W_gate^T`, `x @ W_up^T`, act, product,
counts in one kernel) against cuBLAS matmuls followed by the reference and by the fastest
element-wise implementation.
"""
from __future__ import annotations

import csv
import datetime
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch

from . import dispatch
from .reference import act_stats_torch, plain_act_mul

FULL_SIZES = [(512, 2048), (512, 8192), (512, 14336), (2048, 2048), (2048, 8192), (2048, 14336)]
QUICK_SIZES = [(512, 2048), (2048, 8192)]
# Hidden size used for the GEMM-epilogue comparison, by intermediate size (real model shapes:
# SmolLM2-360M-ish, Llama-3.2-1B, Llama-3-8B); others use I // 4.
HIDDEN_FOR = {2048: 768, 8192: 2048, 14336: 4096}
LANGUAGES = 8
# Peak memory bandwidth (bytes/s) by GPU name fragment, checked in order.
PEAK_BANDWIDTH = [("H100 PCIe", 2.0e12), ("H100 NVL", 3.9e12), ("H100", 3.35e12),
                  ("H200", 4.8e12), ("A100-SXM4-80GB", 2.039e12), ("A100", 1.555e12)]

CSV_FIELDS = ["timestamp", "machine", "device_name", "torch_version", "threads", "load_avg",
              "variant",
              "M", "I", "H", "dtype", "act", "K", "median_ms", "iqr_ms", "blocks",
              "speedup_vs_reference", "time_vs_plain", "gb_per_s", "pct_peak_bandwidth",
              "tflop_per_s"]


@dataclass
class Result:
    """One timed variant at one shape (a CSV row)."""
    variant: str
    M: int
    I: int
    dtype: str
    act: str
    median_ms: float
    iqr_ms: float
    blocks: int
    bytes_moved: int
    flops: int = 0
    H: int = 0
    K: int = LANGUAGES
    speedup_vs_reference: Optional[float] = None   # reference median / this median (>1 faster)
    time_vs_plain: Optional[float] = None          # this median / plain median (<=1: no slower)
    gb_per_s: float = 0.0
    pct_peak_bandwidth: Optional[float] = None
    tflop_per_s: Optional[float] = None
    extra: Dict[str, str] = field(default_factory=dict)


def device_description(device: torch.device) -> Tuple[str, str]:
    """(machine, device name) for the CSV."""
    machine = f"{platform.node()} {platform.machine()} {os.cpu_count()} cores"
    if device.type == "cuda":
        return machine, torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return machine, f"{name} ({torch.get_num_threads()} threads)"


def peak_bandwidth(device: torch.device) -> Optional[float]:
    """Peak memory bandwidth in bytes/s for known GPUs, else None."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for fragment, peak in PEAK_BANDWIDTH:
        if fragment in name:
            return peak
    return None


def _synchronizer(device: torch.device) -> Callable[[], None]:
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_interleaved(fns: Dict[str, Callable[[], object]], device: torch.device, *,
                     rounds: int = 11, min_block_s: float = 0.05, warmup: int = 2
                     ) -> Dict[str, List[float]]:
    """Seconds per call of each function: one list of block averages per function.

    Each round runs one block of every function, in an order rotated from round to round.
    """
    sync = _synchronizer(device)
    numbers = {}
    for name, fn in fns.items():
        for _ in range(warmup):      # first calls: allocation, Triton compile / autotune
            fn()
        sync()
        number, elapsed = 1, 0.0
        while True:
            start = time.perf_counter()
            for _ in range(number):
                fn()
            sync()
            elapsed = time.perf_counter() - start
            if elapsed >= min_block_s or number >= 1 << 16:
                break
            number *= 2 if elapsed <= 0 else max(2, min(16, int(min_block_s / elapsed) + 1))
        numbers[name] = number
    samples: Dict[str, List[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn, number = fns[name], numbers[name]
            sync()
            start = time.perf_counter()
            for _ in range(number):
                fn()
            sync()
            samples[name].append((time.perf_counter() - start) / number)
    return samples


def _median_iqr(values: Sequence[float]) -> Tuple[float, float]:
    if len(values) < 2:
        return values[0], 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return statistics.median(values), q[2] - q[0]


def elementwise_implementations(device: torch.device, dtype: torch.dtype) -> List[str]:
    """Implementations to time besides the reference: available and supporting the device
    (automatic selection allowed: the Triton interpreter on CPU is not a kernel to time)."""
    names = []
    for impl in dispatch.implementations():
        if impl.name == "torch" or not impl.available()[0]:
            continue
        if not impl.supports(device.type, dtype):
            continue
        if impl.auto is not None and not impl.auto(device.type, dtype):
            continue
        names.append(impl.name)
    return names


def _shape_inputs(M: int, I: int, dtype: torch.dtype, device: torch.device, K: int,
                  gen: torch.Generator):
    gate = torch.randn(M, I, generator=gen).to(device=device, dtype=dtype)
    up = torch.randn(M, I, generator=gen).to(device=device, dtype=dtype)
    row_lang = torch.randint(-1, K, (M,), generator=gen, dtype=torch.int32).to(device)
    counts = torch.zeros(K, I, dtype=torch.int64, device=device)
    return gate, up, row_lang, counts


def benchmark_shape(M: int, I: int, dtype: torch.dtype, device: torch.device, *,
                    act: str = "silu", K: int = LANGUAGES, rounds: int = 11,
                    min_block_s: float = 0.05, include_gemm: bool = True) -> List[Result]:
    """Time every variant at one shape; ratios are computed within this one run."""
    gen = torch.Generator().manual_seed(0)
    gate, up, row_lang, counts = _shape_inputs(M, I, dtype, device, K, gen)
    es = gate.element_size()
    stats_bytes = 3 * M * I * es + 4 * M + 2 * K * I * 8   # gate, up, h, row_lang, counts r+w
    plain_bytes = 3 * M * I * es

    fns: Dict[str, Callable[[], object]] = {
        "plain": lambda: plain_act_mul(gate, up, act),
        "torch": lambda: act_stats_torch(gate, up, act, row_lang, counts, None, None, None,
                                         None, None),
    }
    bytes_moved = {"plain": plain_bytes, "torch": stats_bytes}
    for name in elementwise_implementations(device, dtype):
        fn = dispatch.get(name).fn
        fns[name] = (lambda fn=fn: fn(gate, up, act, row_lang, counts, None, None, None, None,
                                      None))
        bytes_moved[name] = stats_bytes
    flops: Dict[str, int] = {}
    H = 0
    if include_gemm and device.type == "cuda":
        H = HIDDEN_FOR.get(I, I // 4)
        H = _add_gemm_variants(fns, bytes_moved, flops, M, I, H, dtype, device, act, K,
                               row_lang, counts, gen)
    samples = time_interleaved(fns, device, rounds=rounds, min_block_s=min_block_s)
    machine_peak = peak_bandwidth(device)
    medians = {name: _median_iqr(s)[0] for name, s in samples.items()}
    results = []
    for name, s in samples.items():
        median, iqr = _median_iqr(s)
        is_gemm = name in flops
        reference = medians["cublas+torch"] if is_gemm else medians["torch"]
        plain = medians["cublas+plain"] if is_gemm else medians["plain"]
        gbps = bytes_moved[name] / median / 1e9
        results.append(Result(
            variant=name, M=M, I=I, H=H if is_gemm else 0, K=K,
            dtype=str(dtype).replace("torch.", ""), act=act, median_ms=median * 1e3,
            iqr_ms=iqr * 1e3, blocks=len(s), bytes_moved=bytes_moved[name],
            flops=flops.get(name, 0), speedup_vs_reference=reference / median,
            time_vs_plain=median / plain, gb_per_s=gbps,
            pct_peak_bandwidth=(100 * gbps * 1e9 / machine_peak) if machine_peak else None,
            tflop_per_s=(flops[name] / median / 1e12) if is_gemm else None))
    return results


def _add_gemm_variants(fns, bytes_moved, flops, M, I, H, dtype, device, act, K, row_lang,
                       counts, gen) -> int:
    """CUDA only: Triton GEMM-epilogue vs cuBLAS matmuls + reference / fastest impl / plain."""
    from .args import GatedArgs
    x = torch.randn(M, H, generator=gen).to(device=device, dtype=dtype)
    w_gate = (torch.randn(I, H, generator=gen) / H ** 0.5).to(device=device, dtype=dtype)
    w_up = (torch.randn(I, H, generator=gen) / H ** 0.5).to(device=device, dtype=dtype)
    es = x.element_size()
    gemm_flops = 2 * M * H * 2 * I
    # Minimum traffic: x, both weights, h, row_lang, counts; the unfused path also writes and
    # reads gate and up (4 M I elements more).
    fused_bytes = (M * H + 2 * I * H + M * I) * es + 4 * M + 2 * K * I * 8
    unfused_bytes = fused_bytes + 4 * M * I * es
    args = GatedArgs.validate(x, w_gate, w_up, act, row_lang=row_lang, counts=counts)
    triton_gemm = dispatch.get("triton_gemm", dispatch.GATED_MLP)
    if not triton_gemm.not_supported_reasons(device, dtype, args, selfcheck=False):
        fns["triton_gemm"] = lambda: triton_gemm.fn(args)
        bytes_moved["triton_gemm"] = fused_bytes
        flops["triton_gemm"] = gemm_flops
    fns["cublas+plain"] = lambda: plain_act_mul(x @ w_gate.T, x @ w_up.T, act)
    fns["cublas+torch"] = lambda: act_stats_torch(x @ w_gate.T, x @ w_up.T, act, row_lang,
                                                  counts, None, None, None, None, None)
    for name in ("cublas+plain", "cublas+torch"):
        bytes_moved[name] = unfused_bytes
        flops[name] = gemm_flops
    fastest = elementwise_implementations(device, dtype)
    if fastest:
        fn = dispatch.get(fastest[0]).fn
        name = f"cublas+{fastest[0]}"
        fns[name] = lambda: fn(x @ w_gate.T, x @ w_up.T, act, row_lang, counts, None, None,
                               None, None, None)
        bytes_moved[name] = unfused_bytes
        flops[name] = gemm_flops
    return H


def run_kernel_benchmark(device: str | torch.device = "cpu", *, quick: bool = False,
                         sizes: Optional[Iterable[Tuple[int, int]]] = None,
                         dtypes: Optional[Iterable[torch.dtype]] = None, act: str = "silu",
                         rounds: Optional[int] = None, progress: bool = True) -> List[Result]:
    """Benchmark the fused op over sizes; fp32 on CPU, bf16 on CUDA unless `dtypes` says.

    quick: two sizes, fewer and shorter blocks (seconds instead of minutes).
    """
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was requested but no CUDA GPU is visible; use "
                         "--device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device}; use cpu or cuda")
    sizes = list(sizes or (QUICK_SIZES if quick else FULL_SIZES))
    dtypes = list(dtypes or ([torch.bfloat16] if device.type == "cuda" else [torch.float32]))
    rounds = rounds or (5 if quick else 11)
    min_block_s = 0.02 if quick else 0.05
    cases = [(M, I, dt) for dt in dtypes for M, I in sizes]
    from tqdm.auto import tqdm
    results: List[Result] = []
    for M, I, dt in tqdm(cases, desc="bench kernels", unit="shape", disable=not progress):
        results.extend(benchmark_shape(M, I, dt, device, act=act, rounds=rounds,
                                       min_block_s=min_block_s))
    return results


def csv_rows(results: Sequence[Result], device: str | torch.device) -> List[Dict[str, object]]:
    """Rows with the columns of `CSV_FIELDS` (machine and software included)."""
    device = torch.device(device)
    machine, device_name = device_description(device)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    # Other processes on the CPU distort CPU timings (thread-pool barriers wait for them).
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    rows = []
    for r in results:
        row = asdict(r)
        row.update(timestamp=stamp, machine=machine, device_name=device_name,
                   torch_version=torch.__version__, threads=torch.get_num_threads(),
                   load_avg=load)
        rows.append({k: _fmt(row.get(k)) for k in CSV_FIELDS})
    return rows


def _fmt(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def append_csv(rows: Sequence[Dict[str, object]], path: str | os.PathLike,
               fieldnames: Sequence[str] = CSV_FIELDS) -> None:
    """Append rows to `path`, writing the header when the file is new (every benchmark's CSV)."""
    new = not os.path.exists(path) or os.path.getsize(path) == 0
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def format_table(results: Sequence[Result]) -> str:
    """A plain-text table of medians and ratios, one line per (shape, variant)."""
    header = (f"{'M':>5} {'I':>6} {'dtype':>8} {'variant':>14} {'median ms':>10} {'IQR ms':>8} "
              f"{'vs torch':>9} {'vs plain':>9} {'GB/s':>8}")
    lines = [header, "-" * len(header)]
    for r in results:
        lines.append(f"{r.M:>5} {r.I:>6} {r.dtype:>8} {r.variant:>14} {r.median_ms:>10.3f} "
                     f"{r.iqr_ms:>8.3f} {r.speedup_vs_reference:>8.2f}x "
                     f"{r.time_vs_plain:>8.2f}x {r.gb_per_s:>8.1f}")
    lines.append("vs torch: reference time / this time (higher is faster); vs plain: this time "
                 "/ plain act(gate)*up time (<= 1: no slower than no statistics).")
    return "\n".join(lines)
