"""Per-call Python overhead of the patched MLP forward, on a tiny llama where the math is
negligible and the Python around the op dominates.

    python benchmarks/bench_patch_overhead.py                     # this tree's patch
    python benchmarks/bench_patch_overhead.py --before 6fda96a    # ... and an older patch.py

Times one forward (1 x 8 tokens, 8 layers, hidden 64, 128 neurons, torch.inference_mode) of
the unpatched model and of the patched model (plain, and recording counts for 3 languages),
interleaved over rounds; reports medians and the overhead per patched MLP call,
(patched - unpatched) / layers. With --before REV the patch module of git revision REV is
loaded next to this one (as `langneuron_ext.models._patch_before`) and timed in the same rounds.
Also times, with timeit, one MLP module call alone and the handle's own per-call bookkeeping
(the op's arguments, the flush after the call) in isolation. Appends rows to
benchmarks/results/patch_overhead.csv.
"""
from __future__ import annotations

import argparse
import csv
import importlib.util
import os
import platform
import statistics
import subprocess
import sys
import time
import timeit
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "patch_overhead.csv"
LAYERS, TOKENS, K = 8, 8, 3


def tiny_llama():
    import transformers
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=LAYERS, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def load_patch_module(rev: str):
    """The `models/patch.py` of git revision `rev`, imported inside this package."""
    source = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:langneuron_ext/models/patch.py"],
        check=True, capture_output=True, text=True).stdout
    name = "langneuron_ext.models._patch_before"
    spec = importlib.util.spec_from_loader(name, loader=None)
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "langneuron_ext.models"
    sys.modules[name] = module
    exec(compile(source, f"{rev}:patch.py", "exec"), module.__dict__)
    return module


def bookkeeping_us(handle, n: int = 20000) -> float:
    """Microseconds per MLP call spent in the handle's own per-call work (the op's arguments
    and the after-call flush), best of 5 timeit repeats; works for both patch versions."""
    device = torch.device("cpu")
    if hasattr(handle, "op_args"):                      # this tree: per part
        part = handle.parts[1]

        def call():
            handle.op_args(part, TOKENS, device)
            handle.done(part)
    else:                                                # before: per layer
        def call():
            handle._op_args(1, TOKENS, device)
            handle._done(1)
    return min(timeit.repeat(call, number=n, repeat=5)) / n * 1e6


def mlp_call_us(model, n: int = 200) -> float:
    """Microseconds per call of layer 0's MLP module alone (1 x 8 rows), one timeit run; the
    caller interleaves runs of all variants and keeps each one's minimum, the least disturbed
    measure of the patch's cost on a loaded machine."""
    mlp, x = model.model.layers[0].mlp, torch.randn(1, TOKENS, 64)
    with torch.inference_mode():
        mlp(x)
        return timeit.timeit(lambda: mlp(x), number=n) / n * 1e6


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="git revision whose patch.py to time as well")
    parser.add_argument("--rounds", type=int, default=41)
    parser.add_argument("--calls", type=int, default=50, help="forwards per timing")
    parser.add_argument("--impl", default="torch")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from langneuron_ext.models import patch as patch_now
    variants = {"now": patch_now}
    if args.before:
        variants["before"] = load_patch_module(args.before).patch
    models = {name: tiny_llama() for name in ["unpatched", *variants]}
    handles = {name: fn(models[name], impl=args.impl) for name, fn in variants.items()}
    ids = torch.randint(3, 128, (1, TOKENS))
    row_lang = torch.randint(0, K, (1, TOKENS), dtype=torch.int32)

    def time_one(model) -> float:
        with torch.inference_mode():
            model(input_ids=ids)                        # warm
            t0 = time.perf_counter()
            for _ in range(args.calls):
                model(input_ids=ids)
            return (time.perf_counter() - t0) / args.calls

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip() or "?"
    rows = []
    for mode in ("plain", "recording"):
        for name, h in handles.items():
            if mode == "recording":
                h.set_rows(row_lang)
                h.start_recording(K)
        samples = {name: [] for name in models}
        mlp_samples = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, model in models.items():          # interleaved: same load for all
                samples[name].append(time_one(model))
                mlp_samples[name].append(mlp_call_us(model))
        mlp_us = {name: min(v) for name, v in mlp_samples.items()}
        # min as well as median: on a loaded machine the minimum is the least disturbed run
        base, base_min = statistics.median(samples["unpatched"]), min(samples["unpatched"])
        for name in variants:
            med, low = statistics.median(samples[name]), min(samples[name])
            per_call, per_call_min = (med - base) / LAYERS, (low - base_min) / LAYERS
            book = bookkeeping_us(handles[name])
            rows.append(dict(mode=mode, patch=name, rev=args.before if name == "before" else head,
                             forward_us=round(med * 1e6, 1), unpatched_us=round(base * 1e6, 1),
                             overhead_per_mlp_us=round(per_call * 1e6, 2),
                             overhead_per_mlp_min_us=round(per_call_min * 1e6, 2),
                             bookkeeping_us=round(book, 3),
                             mlp_call_us=round(mlp_us[name], 2),
                             mlp_call_unpatched_us=round(mlp_us["unpatched"], 2),
                             impl=args.impl,
                             layers=LAYERS, tokens=TOKENS, rounds=args.rounds,
                             machine=f"{platform.machine()} {torch.get_num_threads()} thread, "
                                     f"load {os.getloadavg()[0]:.1f}",
                             torch=torch.__version__))
            print(f"{mode:9s} {name:6s} forward {med * 1e6:8.1f} us (unpatched {base * 1e6:7.1f})"
                  f"  overhead per MLP call {per_call * 1e6:6.2f} us (from minima "
                  f"{per_call_min * 1e6:6.2f})  handle bookkeeping per call {book:6.3f} us"
                  f"  one MLP call {mlp_us[name]:6.1f} us (unpatched {mlp_us['unpatched']:6.1f})")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    new = not RESULTS.exists()
    with RESULTS.open("a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        if new:
            writer.writeheader()
        writer.writerows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
