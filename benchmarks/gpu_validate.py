#!/usr/bin/env python
"""One command for a machine with a GPU: build, check, measure, write the results.

    python benchmarks/gpu_validate.py --out DIR            # one H100 / H200: <= 10 minutes
    python benchmarks/gpu_validate.py --out DIR --dry-run  # the same script on CPU, tiny shapes

Steps (each recorded with its status and time; a failing step does not stop the others):
1. build: JIT-builds the CUDA module (csrc/cuda) for this GPU's architecture unless
   langneuron_ext._C_cuda is already installed, and registers it as the "cuda" implementation.
2. correctness: `cuda` and `triton` against the reference with the tolerance policy of
   ops/conformance.py (counts bit-exact): bf16 / fp16 / fp32, every activation, the vector
   (I % 8 == 0) and scalar (I = 515) column paths, gate_up views, K in {1, 8, 64}, sums and
   sums of squares, steering, histograms (B = 32) + running maxima + scale steering (mode 3),
   language runs across row tiles, unchecked out-of-range ids
   (must never write past the buffers), the gated op (`triton_gemm`, `vendor`), and one
   M = 65536 x I = 28672 bf16 case with counts starting at 2^40 (checked in row chunks).
3. bandwidth: bytes moved / time and share of the device's peak for each implementation with
   counts, with counts + histograms (B = 32) + amax, and with scale vs set steering, beside
   plain act(g) * u and a copy of the same bytes.
4. gemm: the GEMM epilogue against the vendor GEMM (+ the best element-wise op, + plain) in
   TFLOP/s; stores the measured choice of ops/dispatch.py for that shape.
5. model: an 8-layer random Llama end to end, unpatched vs patched with each implementation
   (logits close, counts equal across implementations), tokens per second.
Writes DIR/gpu_validate.json and DIR/gpu_validate.md; exit status 1 when a check failed.

--dry-run runs every step on CPU with tiny shapes: the `cpu` implementation and `triton` under
the Triton interpreter (TRITON_INTERPRET=1) stand in for the GPU ones, the build step only
resolves the toolchain, the 2^40 case shrinks to 256 x 96. CI runs it
(tests/test_gpu_validate.py) so that this script cannot crash on its first real use.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import pathlib
import platform
import sys
import time
import traceback

REPO = pathlib.Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for gpu_validate.json / .md")
    parser.add_argument("--dry-run", action="store_true",
                        help="run every step on CPU with tiny shapes (interpreter for Triton)")
    parser.add_argument("--skip", default="",
                        help="comma-separated steps to skip (build, correctness, bandwidth, "
                             "gemm, model)")
    return parser.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.dry_run:
    # Must be set before triton is imported (it decides at decoration time).
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from langneuron_ext.ops import benchmark, dispatch, selfcheck, settings  # noqa: E402
from langneuron_ext.ops import conformance as testing  # noqa: E402
from langneuron_ext.ops.reference import (  # noqa: E402
    ACTIVATIONS,
    STEER_SCALE,
    STEER_SET,
    activation_fp32,
    default_hist_edges,
    plain_act_mul,
)

DTYPES = (torch.bfloat16, torch.float16, torch.float32)


class Validation:
    """Collects steps, checks and measurements; renders JSON and markdown."""

    def __init__(self, dry_run: bool):
        self.dry_run = dry_run
        self.device = torch.device("cpu" if dry_run else "cuda")
        self.steps = []
        self.checks = []
        self.measurements = []

    def check(self, name: str, fn) -> bool:
        start = time.perf_counter()
        try:
            detail = fn() or ""
            ok = True
        except Exception as exc:  # noqa: BLE001 - every failure is recorded, none stops us
            ok, detail = False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:400]}"
        self.checks.append(dict(name=name, ok=ok, detail=detail,
                                seconds=round(time.perf_counter() - start, 3)))
        print(f"  {'ok  ' if ok else 'FAIL'} {name} {detail}", flush=True)
        return ok

    def step(self, name: str, fn) -> None:
        print(f"[{name}]", flush=True)
        start = time.perf_counter()
        try:
            fn(self)
            status, detail = "done", ""
        except Exception as exc:  # noqa: BLE001
            status, detail = "error", "".join(traceback.format_exception_only(exc)).strip()
            traceback.print_exc()
        self.steps.append(dict(name=name, status=status, detail=detail,
                               seconds=round(time.perf_counter() - start, 1)))

    @property
    def ok(self) -> bool:
        return all(c["ok"] for c in self.checks) and all(s["status"] != "error"
                                                         for s in self.steps)


# ---- 1. build -------------------------------------------------------------------------------

def step_build(v: Validation) -> None:
    import importlib.util
    if importlib.util.find_spec("langneuron_ext._C_cuda") is not None:
        v.check("build: langneuron_ext._C_cuda installed", lambda: "prebuilt, not rebuilt")
    else:
        v.check("build: JIT-compile csrc/cuda", lambda: _jit_build(v))
    if not v.dry_run:
        v.check("build: cuda implementation available",
                lambda: _require(dispatch.get("cuda").not_supported_reasons(
                    v.device, torch.bfloat16, selfcheck=False)))


def _require(reasons):
    if reasons:
        raise RuntimeError("; ".join(reasons))
    return ""


def _jit_build(v: Validation) -> str:
    from torch.utils.cpp_extension import CUDA_HOME
    csrc = REPO / "csrc"
    sources = [csrc / "cuda" / "act_stats_cuda.cpp", csrc / "cuda" / "module.cpp",
               csrc / "cuda" / "act_stats_kernel.cu"]
    missing = [str(s) for s in sources if not s.exists()]
    if missing:
        raise FileNotFoundError(f"missing sources: {missing}")
    if v.dry_run:
        return f"dry run: sources present, CUDA_HOME={CUDA_HOME} (not compiled)"
    from torch.utils.cpp_extension import load

    from langneuron_ext.ops import native
    if not native.cpu_available()[0]:   # defines the op the CUDA module registers a kernel for
        raise RuntimeError(f"langneuron_ext._C is missing: {native.cpu_available()[1]}")
    major, minor = torch.cuda.get_device_capability()
    os.environ["TORCH_CUDA_ARCH_LIST"] = f"{major}.{minor}"
    build_dir = pathlib.Path(ARGS.out if ARGS else ".") / "cuda_build"
    build_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    module = load(name="_C_cuda", sources=[str(s) for s in sources],
                  extra_include_paths=[str(csrc)], extra_cflags=["-O3"],
                  extra_cuda_cflags=["-O3"],
                  build_directory=str(build_dir), with_cuda=True, verbose=False)
    sys.modules["langneuron_ext._C_cuda"] = module     # what ops/native.py imports
    return f"{time.perf_counter() - start:.0f} s for sm_{major}{minor}"


# ---- 2. correctness -------------------------------------------------------------------------

def elementwise_impls(v: Validation):
    wanted = ("cpu", "triton") if v.dry_run else ("cuda", "triton")
    names = []
    for name in wanted:
        impl = dispatch.get(name)
        reasons = impl.not_supported_reasons(v.device, torch.float32, selfcheck=False)
        if reasons:
            v.check(f"{name}: can run", lambda r=reasons: _require(r))
        else:
            names.append(name)
    return names


def step_correctness(v: Validation) -> None:
    """Fixed tiles here (each implementation's self-check tile: one compile per flag
    combination, not six autotuning trials, ~4 min saved); autotuning runs in the bandwidth,
    gemm and model steps."""
    dev = v.device
    M, I_vec, I_scalar = (40, 48, 37) if v.dry_run else (1000, 4096, 515)
    for name in elementwise_impls(v):
        impl = dispatch.get(name)
        untiled = impl.fn
        fn = functools.partial(untiled, **impl.check_options(dev))
        for dtype in DTYPES:
            for j, act in enumerate(ACTIVATIONS):
                layout = ("contiguous", "gate_up")[j % 2]
                I = (I_vec, I_scalar)[(j // 2) % 2]
                tag = f"{name} {str(dtype)[6:]} {act} {layout} I={I} K=8 sums steering"
                kw = dict(M=M, I=I, K=8, dtype=dtype, act=act, layout=layout,
                          sums_dtype=torch.float64, sumsq_dtype=torch.float32,
                          steer_groups=3, negative_group_fraction=0.2, seed=j, device=dev)
                v.check(tag, lambda kw=kw: _matches(fn, kw))
        for K in (1, 8, 64):
            kw = dict(M=M, I=I_vec, K=K, dtype=torch.float16, act="silu", layout="strided",
                      sums_dtype=torch.float32, seed=K, device=dev)
            v.check(f"{name} fp16 K={K} strided (scalar path)", lambda kw=kw: _matches(fn, kw))
        for j, dtype in enumerate(DTYPES):
            kw = dict(M=M, I=(I_vec, I_scalar)[j % 2], K=8, dtype=dtype, act=ACTIVATIONS[j],
                      hist_bins=32, amax=True, steer_groups=2, steer_modes=4,
                      negative_group_fraction=0.2, special_fraction=0.02, seed=40 + j,
                      device=dev)
            v.check(f"{name} {str(dtype)[6:]} {ACTIVATIONS[j]} hist B=32 + amax + scale "
                    f"steering", lambda kw=kw: _matches(fn, kw))
        v.check(f"{name} language runs across row tiles", lambda: _language_runs(fn, dev, M))
        v.check(f"{name} out-of-range ids never written", lambda: _out_of_range(fn, dev))
        v.check(f"{name} under CUDA-graph capture (no autotuning)",
                lambda: _graph_capture(untiled, dev))
        big = (256, 96) if v.dry_run else (65536, 28672)
        v.check(f"{name} bf16 {big[0]}x{big[1]} counts from 2^40",
                lambda: _big_case(fn, dev, *big))
    for gname in ("triton_gemm", "vendor"):
        impl = dispatch.get(gname, dispatch.GATED_MLP)
        for dtype in DTYPES:
            v.check(f"gated {gname} {str(dtype)[6:]} vs reference (self-check cases)",
                    lambda impl=impl, dtype=dtype: _gated_selfcheck(impl, dev, dtype))


def _matches(fn, kw) -> str:
    inputs = testing.make_inputs(**kw)
    testing.assert_matches_reference(fn, **inputs)
    return ""


def _language_runs(fn, dev, M) -> str:
    runs = [(0, M), (3, M // 3), (-1, 7), (1, 5), (3, 2 * M)]
    row_lang = torch.cat([torch.full((n,), k, dtype=torch.int32) for k, n in runs])
    inputs = testing.make_inputs(M=len(row_lang), I=96, K=4, act="gelu",
                                 sums_dtype=torch.float64, seed=7, device=dev)
    inputs["row_lang"] = row_lang.to(dev)
    testing.assert_matches_reference(fn, **inputs)
    return ""


def _out_of_range(fn, dev) -> str:
    K, G = 3, 2
    inputs = testing.make_inputs(M=200, I=64, K=K, steer_groups=G, sums_dtype=torch.float64,
                                 seed=9, device=dev)
    row_lang, row_group = inputs["row_lang"].clone(), inputs["row_group"].clone()
    row_lang[::3] = K
    row_lang[1::7] = K + 100
    row_group[::4] = G
    counts = torch.zeros(K + 200, 64, dtype=torch.int64, device=dev)
    sums = torch.zeros(K + 200, 64, dtype=torch.float64, device=dev)
    args = dict(inputs, row_lang=row_lang, row_group=row_group, counts=counts[:K],
                sums=sums[:K])
    outcome = "ignored"
    try:
        fn(*(args[k] for k in testing.OP_ARGS))
    except (RuntimeError, ValueError) as exc:   # the CPU kernel refuses them: also safe
        if "row_lang" not in str(exc) and "row_group" not in str(exc):
            raise
        outcome = "refused"
    if counts[K:].any() or sums[K:].any():
        raise AssertionError("an out-of-range language id wrote past the buffers")
    return outcome


def _graph_capture(fn, dev) -> str:
    """Capture one call on a shape no tuning has seen, replay it twice: counts twice the
    reference's, h equal to it (the launch must not autotune while capturing)."""
    if dev.type != "cuda":
        return "not applicable on CPU"
    from langneuron_ext.ops import impl_triton as te
    return _capture_twice(fn, dev, te)


def _capture_twice(fn, dev, te) -> str:
    inputs = testing.make_inputs(M=333, I=1000, K=2, dtype=torch.bfloat16, device=dev, seed=3)
    # Compile outside the capture (loading a module while capturing may be refused): the same
    # specialisation the capture branch launches, CAPTURE_CONFIG, forced.
    warm = testing.clone_inputs(inputs)
    extra = {}
    if fn is te.act_stats_triton:
        extra = dict(block_m=te.CAPTURE_CONFIG[0], block_n=te.CAPTURE_CONFIG[1])
    fn(*(warm[k] for k in testing.OP_ARGS), **extra)
    torch.cuda.synchronize()
    args = testing.clone_inputs(inputs)
    zero = torch.zeros_like(args["counts"])
    args["counts"] = zero
    graph = torch.cuda.CUDAGraph()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.cuda.graph(graph):
        h = fn(*(args[k] for k in testing.OP_ARGS))
    torch.cuda.current_stream().wait_stream(side)
    graph.replay()
    graph.replay()
    torch.cuda.synchronize()
    ref_h, ref_bufs = testing.reference_fp32(dict(inputs, counts=torch.zeros_like(zero)))
    if not torch.equal(zero, 2 * ref_bufs["counts"]):
        raise AssertionError("counts after two replays are not twice the reference's")
    testing.assert_close_nonfinite(h, ref_h.to(h.dtype).double(),
                                   testing.h_error_bound(inputs, ref_h), "h")
    return "2 replays exact"


def _big_case(fn, dev, M, I) -> str:
    """Counts start at 2^40 (64-bit atomics), offsets beyond 2^31 bytes; checked in chunks so
    the oracle needs little memory."""
    gen = torch.Generator(device=dev).manual_seed(0)
    gate = torch.randn(M, I, device=dev, dtype=torch.bfloat16, generator=gen)
    up = torch.randn(M, I, device=dev, dtype=torch.bfloat16, generator=gen)
    K = 8
    row_lang = (torch.arange(M, device=dev, dtype=torch.int32) // max(1, M // 64)) % K
    start = 2 ** 40
    counts = torch.full((K, I), start, dtype=torch.int64, device=dev)
    h = fn(gate, up, "silu", row_lang, counts, None, None, None, None, None)
    expected = torch.full_like(counts, start)
    chunk = 4096
    worst = 0.0
    rtol, atol = testing.H_TOLERANCE[torch.bfloat16]      # the policy of ops/conformance.py
    for m0 in range(0, M, chunk):
        g = gate[m0:m0 + chunk]
        a = activation_fp32(g, "silu")
        expected.index_add_(0, row_lang[m0:m0 + chunk].long(), (a > 0).long())
        ref = (a * up[m0:m0 + chunk].float())
        err = (h[m0:m0 + chunk].float() - ref).abs() - atol - rtol * ref.abs() \
            - testing.activation_error_bound(g, "silu").float() * up[m0:m0 + chunk].float().abs()
        worst = max(worst, float(err.max()))
    if not torch.equal(counts, expected):
        raise AssertionError("counts differ from the reference")
    if worst > 0:
        raise AssertionError(f"h exceeds the bf16 tolerance by {worst:.3g}")
    return f"counts exact (max {int(counts.max())}), h within the bf16 tolerance"


def _gated_selfcheck(impl, dev, dtype) -> str:
    reasons = impl.not_supported_reasons(dev, dtype, selfcheck=False)
    if reasons:
        raise RuntimeError("; ".join(reasons))
    result = selfcheck.check(impl, dev, dtype, dispatch.selfcheck_target(impl, dev),
                             force=True)
    if not result.ok:
        raise AssertionError(f"{result.case}: {result.message}")
    return f"{result.seconds:.2f} s"


# ---- 3. bandwidth ---------------------------------------------------------------------------

def step_bandwidth(v: Validation) -> None:
    dev = v.device
    shapes = [(64, 128)] if v.dry_run else [(4096, 14336), (16384, 28672)]
    dtype = torch.float32 if v.dry_run else torch.bfloat16
    peak = benchmark.peak_bandwidth(dev)
    K = 8
    for M, I in shapes:
        gen = torch.Generator(device=dev).manual_seed(0)    # on the device: 470M values
        gate = torch.randn(M, I, generator=gen, device=dev).to(dtype)
        up = torch.randn(M, I, generator=gen, device=dev).to(dtype)
        out = torch.empty_like(gate)
        row_lang = (torch.arange(M, dtype=torch.int32) // 512 % K).to(dev)   # language runs
        counts = torch.zeros(K, I, dtype=torch.int64, device=dev)
        es = gate.element_size()
        op_bytes = 3 * M * I * es + 4 * M + 2 * K * I * 8
        fns = {"plain act(g)*u": lambda: plain_act_mul(gate, up, "silu"),
               "copy": lambda: out.copy_(gate)}
        moved = {"plain act(g)*u": 3 * M * I * es, "copy": 2 * M * I * es}
        B = 32
        edges = default_hist_edges(B).to(dev)
        hist = torch.zeros(K, I, B, dtype=torch.int64, device=dev)
        amax = torch.full((K, I), float("-inf"), device=dev)
        modes = {m: torch.full((1, I), m, dtype=torch.int8, device=dev)
                 for m in (STEER_SET, STEER_SCALE)}
        value = torch.full((1, I), 1.5, device=dev)
        for name in elementwise_impls(v):
            fn = dispatch.get(name).fn
            fns[name] = (lambda fn=fn: fn(gate, up, "silu", row_lang, counts, None, None, None,
                                          None, None))
            moved[name] = op_bytes
            fns[f"{name} +hist+amax"] = (lambda fn=fn: fn(
                gate, up, "silu", row_lang, counts, None, None, None, None, None, hist, edges,
                amax))
            moved[f"{name} +hist+amax"] = op_bytes + 2 * K * I * (B * 8 + 4)
            for mode, word in ((STEER_SET, "set"), (STEER_SCALE, "scale")):
                fns[f"{name} steer {word}"] = (lambda fn=fn, mode=mode: fn(
                    gate, up, "silu", None, None, None, None, None, modes[mode], value))
                moved[f"{name} steer {word}"] = 3 * M * I * es
        samples = benchmark.time_interleaved(fns, dev, rounds=3 if v.dry_run else 7,
                                             min_block_s=0.005 if v.dry_run else 0.05,
                                             warmup=1 if v.dry_run else 3)
        for name, s in samples.items():
            ms = sorted(s)[len(s) // 2] * 1e3
            gbps = moved[name] / (ms / 1e3) / 1e9
            v.measurements.append(dict(
                kind="bandwidth", variant=name, shape=f"{M}x{I}", dtype=str(dtype)[6:],
                ms=round(ms, 4), gb_per_s=round(gbps, 1),
                pct_peak=round(100 * gbps * 1e9 / peak, 1) if peak else None))
            print(f"  {name:<22} {M}x{I}: {ms:.3f} ms, {gbps:.0f} GB/s", flush=True)


# ---- 4. GEMM epilogue -----------------------------------------------------------------------

def step_gemm(v: Validation) -> None:
    import torch.nn.functional as F

    from langneuron_ext.ops.args import GatedArgs
    dev = v.device
    M, H, I = (32, 64, 96) if v.dry_run else (4096, 4096, 14336)
    dtype = torch.float32 if v.dry_run else torch.bfloat16
    x = torch.randn(M, H, device=dev, dtype=dtype)
    w = torch.randn(2 * I, H, device=dev, dtype=dtype) / H ** 0.5
    K = 8
    row_lang = (torch.arange(M, dtype=torch.int32, device=dev) // 256) % K
    counts = torch.zeros(K, I, dtype=torch.int64, device=dev)
    args = GatedArgs.validate(x, w[:I], w[I:], "silu", row_lang=row_lang, counts=counts)
    fns = {"vendor GEMM only": lambda: F.linear(x, w)}
    for name in ("vendor", "triton_gemm"):
        impl = dispatch.get(name, dispatch.GATED_MLP)
        if impl.not_supported_reasons(dev, dtype, args, selfcheck=False):
            continue
        fns[name] = lambda impl=impl: impl.fn(args, None)
    samples = benchmark.time_interleaved(fns, dev, rounds=3 if v.dry_run else 7,
                                         min_block_s=0.005 if v.dry_run else 0.05,
                                         warmup=1 if v.dry_run else 3)
    flops = 2 * M * H * 2 * I
    for name, s in samples.items():
        ms = sorted(s)[len(s) // 2] * 1e3
        v.measurements.append(dict(kind="gemm", variant=name, shape=f"M={M} H={H} I={I}",
                                   dtype=str(dtype)[6:], ms=round(ms, 4),
                                   tflop_per_s=round(flops / (ms / 1e3) / 1e12, 2)))
        print(f"  {name:<18} {ms:.3f} ms, {flops / (ms / 1e3) / 1e12:.1f} TFLOP/s", flush=True)
    choice = dispatch.measure(args, reps=3 if v.dry_run else 10)
    v.check("gemm: measured choice stored",
            lambda: f"{choice} -> {dispatch.choice_cache_path()}")


# ---- 5. model end to end --------------------------------------------------------------------

def step_model(v: Validation) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    from langneuron_ext.models.patch import patched
    dev = v.device
    if v.dry_run:
        cfg = dict(hidden_size=64, intermediate_size=160, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=128)
        B, T, dtype = 2, 16, torch.float32
    else:
        cfg = dict(hidden_size=2048, intermediate_size=8192, num_attention_heads=16,
                   num_key_value_heads=8, vocab_size=32000)
        B, T, dtype = 8, 512, torch.bfloat16
    torch.manual_seed(0)
    with torch.device(dev):     # initialise on the device: 665M parameters on the GPU config
        model = LlamaForCausalLM(LlamaConfig(num_hidden_layers=8, **cfg)).to(dtype).eval()
    ids = torch.randint(0, cfg["vocab_size"], (B, T), device=dev)
    K = 4
    row_lang = (torch.arange(B * T) // T % K).to(torch.int32).reshape(B, T)

    def forward():
        with torch.no_grad():
            return model(ids).logits

    def timed():
        sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
        forward()
        sync()
        reps = 1 if v.dry_run else 10
        start = time.perf_counter()
        for _ in range(reps):
            logits = forward()
        sync()
        return logits, (time.perf_counter() - start) / reps

    reference, seconds = timed()
    v.measurements.append(dict(kind="model", variant="unpatched", shape=f"8 layers {B}x{T}",
                               dtype=str(dtype)[6:], ms=round(seconds * 1e3, 2),
                               tokens_per_s=round(B * T / seconds)))
    counts_by_impl = {}
    variants = [(name, None) for name in elementwise_impls(v)]
    variants.append(("auto", "triton_gemm"))
    for name, gated_impl in variants:
        label = name if gated_impl is None else f"{name}+{gated_impl}"

        def run(name=name, gated_impl=gated_impl, label=label):
            old = os.environ.get("LANGNEURON_GATED_IMPL")
            if gated_impl:
                os.environ["LANGNEURON_GATED_IMPL"] = gated_impl
            try:
                with patched(model, impl=None if name == "auto" else name) as h:
                    h.set_rows(row_lang)
                    h.start_recording(K)
                    logits, secs = timed()
                    counts_by_impl[label] = h.collect()["counts"]
            finally:
                if gated_impl:
                    if old is None:
                        os.environ.pop("LANGNEURON_GATED_IMPL", None)
                    else:
                        os.environ["LANGNEURON_GATED_IMPL"] = old
            # Relative mean difference of the logits: the fused op rounds act(g) * u once
            # where the unpatched bf16 MLP rounds act(g) and the product separately, so bf16
            # logits move by about an ulp per layer; 2 % would mean a real error.
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            rel = float((logits.float() - reference.float()).abs().mean()
                        / reference.float().abs().mean())
            if rel > tol:
                raise AssertionError(f"logits differ from unpatched by {rel:.2e} (mean, "
                                     f"relative) > {tol:g}")
            v.measurements.append(dict(kind="model", variant=label,
                                       shape=f"8 layers {B}x{T}", dtype=str(dtype)[6:],
                                       ms=round(secs * 1e3, 2),
                                       tokens_per_s=round(B * T / secs)))
            return f"{B * T / secs:.0f} tokens/s, logits within {rel:.1e} of unpatched"
        v.check(f"model: patched with {label}", run)
    names = list(counts_by_impl)
    if len(names) > 1:
        v.check("model: counts agree across implementations",
                lambda: _counts_agree(counts_by_impl))


def _counts_agree(counts_by_impl) -> str:
    """Implementations fed the same projections count identically; a GEMM epilogue computes
    gate with another summation order, so a gate within an ulp of 0 may flip: allow 0.1 % of
    the entries to differ, and say how many did."""
    names = list(counts_by_impl)
    base = counts_by_impl[names[0]]
    notes, bad = [], []
    for name in names[1:]:
        other = counts_by_impl[name]
        differ = int((other != base).sum())
        notes.append(f"{name}: {differ} of {base.numel()} entries differ from {names[0]}")
        if differ > 1e-3 * base.numel():
            bad.append(notes[-1])
    _require(bad)
    return "; ".join(notes)


# ---- output ---------------------------------------------------------------------------------

def environment(v: Validation) -> dict:
    info = dict(dry_run=v.dry_run, python=platform.python_version(), torch=torch.__version__,
                machine=f"{platform.node()} {platform.machine()} {os.cpu_count()} cores",
                load_avg=os.getloadavg()[0], triton_interpret=settings.TRITON_INTERPRET)
    try:
        import triton
        info["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        info["triton"] = None
    if v.device.type == "cuda":
        props = torch.cuda.get_device_properties(v.device)
        info.update(gpu=props.name, capability=f"{props.major}.{props.minor}",
                    sms=props.multi_processor_count,
                    peak_bandwidth_gb_s=(benchmark.peak_bandwidth(v.device) or 0) / 1e9)
    return info


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# GPU validation ({'dry run on CPU' if env['dry_run'] else env.get('gpu')})", "",
             f"torch {env['torch']}, triton {env['triton']}, {env['machine']}, "
             f"load {env['load_avg']:.1f}; result: **{'PASS' if report['ok'] else 'FAIL'}**",
             "", "| step | status | s |", "|---|---|---:|"]
    lines += [f"| {s['name']} | {s['status']} | {s['seconds']} |" for s in report["steps"]]
    failed = [c for c in report["checks"] if not c["ok"]]
    lines += ["", f"{len(report['checks']) - len(failed)} of {len(report['checks'])} checks "
                  f"passed."]
    if failed:
        lines += ["", "| failed check | detail |", "|---|---|"]
        lines += [f"| {c['name']} | {c['detail']} |" for c in failed]
    lines += ["", "| kind | variant | shape | dtype | ms | GB/s | % peak | TFLOP/s | tokens/s |",
              "|---|---|---|---|---:|---:|---:|---:|---:|"]
    for m in report["measurements"]:
        lines.append(f"| {m['kind']} | {m['variant']} | {m['shape']} | {m['dtype']} | "
                     f"{m['ms']} | {m.get('gb_per_s', '')} | {m.get('pct_peak') or ''} | "
                     f"{m.get('tflop_per_s', '')} | {m.get('tokens_per_s', '')} |")
    return "\n".join(lines) + "\n"


def main(args) -> int:
    out = pathlib.Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.dry_run and not settings.TRITON_INTERPRET:
        raise SystemExit("--dry-run needs TRITON_INTERPRET=1 before triton is imported; run "
                         "this file as a script")
    if not args.dry_run and not torch.cuda.is_available():
        raise SystemExit("no CUDA device is visible: use --dry-run to run the script on CPU")
    if args.dry_run:
        torch.set_num_threads(1)   # tiny shapes: threads only add waiting on a shared CPU
    # Self-check results and measured choices of this run go to DIR, not the user's cache.
    os.environ["LANGNEURON_CACHE"] = str(out / "cache")
    v = Validation(args.dry_run)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    start = time.perf_counter()
    for name, fn in (("build", step_build), ("correctness", step_correctness),
                     ("bandwidth", step_bandwidth), ("gemm", step_gemm),
                     ("model", step_model)):
        if name in skip:
            v.steps.append(dict(name=name, status="skipped", detail="--skip", seconds=0))
            continue
        v.step(name, fn)
    report = dict(ok=v.ok, seconds=round(time.perf_counter() - start, 1),
                  environment=environment(v), steps=v.steps, checks=v.checks,
                  measurements=v.measurements)
    (out / "gpu_validate.json").write_text(json.dumps(report, indent=1))
    (out / "gpu_validate.md").write_text(markdown(report))
    print(f"{'PASS' if v.ok else 'FAIL'} in {report['seconds']} s: {out / 'gpu_validate.md'}")
    return 0 if v.ok else 1


if __name__ == "__main__":
    sys.exit(main(ARGS))
