#!/usr/bin/env python
"""Where a scan's time goes: cProfile over a whole `ln.scan` (text reading, tokenisation,
batching, forward, the patch's per-call Python, the statistics' collection) and torch.profiler
over one pass of each benchmark variant (plain / hooks / patch) on the same batches.

    python benchmarks/profile_scan.py --model gemma-3-270m --tokens-per-language 256
    python benchmarks/profile_scan.py --model toy            # seconds; per-call overhead dominates

Writes the report to benchmarks/results/scan_profile_<model>.txt (and prints it). The machine's
load average is in the header: under load, absolute times are inflated; shares are the point.
"""
from __future__ import annotations

import argparse
import cProfile
import inspect
import io
import os
import pathlib
import pstats
import sys
import time
import warnings

import torch

from langneuron_ext.bench import scan as bench_scan
from langneuron_ext.ops.benchmark import device_description

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
LANGUAGES = ["en", "fr", "de", "es", "it", "pt-br", "ja", "ru"]


def _cum(stats: pstats.Stats, fragment: str, name: str) -> tuple:
    """(calls, cumulative seconds, own seconds) summed over functions whose file contains
    `fragment` and whose name is `name`."""
    calls = cum = own = 0.0
    for (path, _line, func), (cc, nc, tt, ct, _callers) in stats.stats.items():
        if fragment in path and func == name:
            calls, cum, own = calls + nc, cum + ct, own + tt
    return int(calls), cum, own


def _callee(stats: pstats.Stats, fragment: str, name: str, caller_fragment: str,
            caller_name: str) -> float:
    """Cumulative seconds of `name` (file containing `fragment`) when called from
    `caller_name` (file containing `caller_fragment`)."""
    total = 0.0
    for (path, _line, func), (_cc, _nc, _tt, _ct, callers) in stats.stats.items():
        if fragment in path and func == name:
            for (cpath, _cline, cfunc), (_c1, _c2, _tt2, ct) in callers.items():
                if caller_fragment in cpath and cfunc == caller_name:
                    total += ct
    return total


def profile_scan(model, tokenizer, tokens_per_language: int, out) -> None:
    from langneuron_ext.corpus import DebianHandbook
    from langneuron_ext.scan import scan

    corpus = DebianHandbook(LANGUAGES, split="train")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scan(model, tokenizer, corpus, tokens_per_language=32, max_length=256, batch_size=4,
             progress=False)                           # parse + cache the pages first
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        stats = scan(model, tokenizer, corpus, tokens_per_language=tokens_per_language,
                     max_length=256, batch_size=4, progress=False)
        profiler.disable()
    wall = time.perf_counter() - start
    st = pstats.Stats(profiler)
    counted = int(stats.n_tokens.sum())
    print(f"## cProfile of ln.scan: {len(LANGUAGES)} languages x {tokens_per_language} tokens "
          f"({counted} counted), batch 4 x 256, wall {wall:.2f} s "
          f"({counted / wall:.0f} counted tokens/s under the profiler)\n", file=out)
    from langneuron_ext.scan import _forward_callable
    base_forward = inspect.unwrap(type(_forward_callable(model)).forward)   # decorators
    base_file = inspect.getsourcefile(base_forward)
    forward_cum = sum(v[3] for (path, line, func), v in st.stats.items()
                      if path == base_file and line == base_forward.__code__.co_firstlineno
                      and func == "forward")
    mlp_calls, mlp_cum, _ = _cum(st, "models/layouts", "forward")
    gemms = _callee(st, "torch._C._nn", "linear", "ops/impl_torch", "vendor_projections") + \
        _callee(st, "", "<built-in method torch._C._nn.linear>", "ops/impl_torch",
                "vendor_projections")
    # called by the patched MLPs only: the element-wise op, and the gated op less its GEMMs
    op = _cum(st, "ops/library", "act_stats_op")[1] + \
        _cum(st, "ops/library", "gated_mlp_stats_op")[1] - gemms
    down = _callee(st, "torch/nn/modules/module", "_wrapped_call_impl", "models/layouts",
                   "forward")
    print(f"forward of the base model: {forward_cum:.3f} s ({100 * forward_cum / wall:.1f} %);"
          f" outside it (reading, tokenising, packing, set_rows, collect): "
          f"{wall - forward_cum:.3f} s ({100 * (wall - forward_cum) / wall:.1f} %)", file=out)
    if mlp_calls:
        rest = mlp_cum - gemms - op - down
        print(f"patched MLP calls: {mlp_calls}, {mlp_cum:.3f} s in all = gate/up GEMMs "
              f"{gemms:.3f} s + fused op {op:.3f} s + down projection {down:.3f} s + Python "
              f"and dispatch around them {rest:.3f} s ({1e6 * rest / mlp_calls:.0f} us per "
              f"call, {100 * rest / forward_cum:.1f} % of the forward)\n", file=out)
    rows = [
        ("tokeniser calls", "corpus/batching", "_tokenize"),
        ("patched MLP forwards (closures)", "models/layouts", "forward"),
        ("  gated op entry (validate, select)", "ops/library", "gated_mlp_stats"),
        ("  argument validation (GatedArgs)", "ops/args", "validate"),
        ("  vendor path: GEMMs + op", "ops/impl_torch", "vendor_gated"),
        ("  the fused op (custom-op dispatch + kernel)", "ops/library", "act_stats_op"),
        ("  per-call rows / buffers (state.op_args)", "models/recording", "op_args"),
        ("  per-call flush (state.done)", "models/recording", "done"),
        ("set_rows per batch", "models/recording", "set_rows"),
        ("collect (stack counters)", "models/recording", "collect"),
    ]
    print(f"{'what':<48} {'calls':>7} {'cum s':>8} {'share':>6} {'own s':>7}", file=out)
    for label, fragment, name in rows:
        calls, cum, own = _cum(st, fragment, name)
        if not calls:
            continue
        print(f"{label:<48} {calls:>7} {cum:>8.3f} {100 * cum / wall:>5.1f}% {own:>7.3f}",
              file=out)
    buf = io.StringIO()
    pstats.Stats(profiler, stream=buf).sort_stats("tottime").print_stats(18)
    print("\nTop functions by own time:\n" + _trim(buf.getvalue()), file=out)


def _trim(text: str) -> str:
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if "ncalls" in line), 0)
    return "\n".join(line[:150] for line in lines[start:])


def profile_variants(model, batches, K: int, impl: str, out) -> None:
    from torch.profiler import ProfilerActivity, profile

    from langneuron_ext.scan import _forward_callable
    forward = _forward_callable(model)
    variants = [bench_scan.PlainForward(), bench_scan.HookCounting(K),
                bench_scan.PatchCounting(K, impl)]
    for v in variants:                                 # warm up each variant once
        v.install(model)
        bench_scan._one_pass(forward, v, batches, torch.device("cpu"))
        v.remove()
    for v in variants:
        v.install(model)
        try:
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                seconds, _ = bench_scan._one_pass(forward, v, batches, torch.device("cpu"))
        finally:
            v.remove()
        tokens = sum(b.input_ids.numel() for b in batches)
        print(f"\n## torch.profiler, {v.name}: one pass, {tokens} tokens, {seconds:.3f} s "
              f"under the profiler\n", file=out)
        print(_trim_table(prof.key_averages().table(sort_by="self_cpu_time_total",
                                                    row_limit=14)), file=out)


def _trim_table(text: str) -> str:
    return "\n".join(line[:160] for line in text.splitlines())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="gemma-3-270m")
    parser.add_argument("--tokens-per-language", type=int, default=256)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", type=pathlib.Path)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    model, tokenizer = bench_scan.load_bench_model(args.model, torch.float32, device)
    impls, default = bench_scan.implementations(device, torch.float32)
    batches, text = bench_scan.make_batches(tokenizer, model.config.vocab_size, batch_size=4,
                                            seq_len=256, n_batches=1, languages=8)
    out = io.StringIO()
    machine, device_name = device_description(device)
    print(f"# Scan profile: {args.model}, float32, {device_name}, torch {torch.__version__}, "
          f"1-min load average {os.getloadavg()[0]:.2f} at start on {os.cpu_count()} cores\n"
          f"Command: python benchmarks/profile_scan.py {' '.join(argv or sys.argv[1:])}\n",
          file=out)
    profile_scan(model, tokenizer, args.tokens_per_language, out)
    profile_variants(model, batches, 8, default, out)
    print(f"\n1-min load average at the end: {os.getloadavg()[0]:.2f}", file=out)
    report = out.getvalue()
    print(report)
    path = args.out or RESULTS / f"scan_profile_{args.model}.txt"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
