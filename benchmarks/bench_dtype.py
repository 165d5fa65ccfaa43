"""Scan throughput in float32 against bfloat16 on the CPU: the measurement behind `--dtype auto`.

    python benchmarks/bench_dtype.py --model gemma-3-270m --rounds 9
    python benchmarks/bench_dtype.py --model smollm2-135m --rounds 9 --threads 1

Loads the model once in float32 and once in bfloat16 (the same weights), patches both to record
K languages the way `ln.scan` does (the base model without the LM head, `use_cache=False`,
`torch.inference_mode`) and times one pass over the same handbook batches in each dtype,
alternating which goes first from round to round. The ratio per round is the float32 pass's
time over the bfloat16 pass's (> 1: bfloat16 is faster); the median over rounds is reported,
with the load average at the start and the end, and the same ratio on this process's CPU time
(less disturbed by other processes on a shared machine). Appends one row to
docs/results/dtype_speed.csv.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent.parent / "docs" / "results" / "dtype_speed.csv"
FIELDS = ["run_id", "model", "threads", "batch", "seq_len", "n_batches", "K", "rounds",
          "fp32_tokens_per_s", "bf16_tokens_per_s", "ratio_fp32_time_over_bf16",
          "ratio_iqr", "ratio_min", "ratio_max", "cpu_time_ratio_fp32_over_bf16",
          "load_avg_start", "load_avg_end",
          "cpu_avx512_bf16", "cpu_amx_bf16", "command"]


def _iqr(values):
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[2] - q[0]


def main() -> None:
    from langneuron_ext.bench.scan import make_batches
    from langneuron_ext.models.dtype_auto import cpu_bf16_features
    from langneuron_ext.models.loading import load_model
    from langneuron_ext.models.patch import patch
    from langneuron_ext.scan import _forward_callable

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batches", type=int, default=1)
    p.add_argument("--languages", type=int, default=8)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--csv", default=str(RESULTS))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    models = {}
    for name, dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        model, tokenizer = load_model(args.model, dtype=dtype, device="cpu", progress=False)
        handle = patch(model)
        handle.start_recording(args.languages)
        models[name] = (model, handle, _forward_callable(model))
    batches, _ = make_batches(tokenizer, models["float32"][0].config.vocab_size,
                              batch_size=args.batch_size, seq_len=args.seq_len,
                              n_batches=args.batches, languages=args.languages)
    tokens = sum(b.input_ids.numel() for b in batches)

    def one_pass(name):
        _, handle, forward = models[name]
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            for b in batches:
                handle.set_rows(b.row_lang)
                forward(input_ids=b.input_ids, attention_mask=b.attention_mask,
                        use_cache=False)
        return time.perf_counter() - start, time.process_time() - cpu_start

    for name in models:                       # warm-up
        one_pass(name)
    load_start = os.getloadavg()[0]
    times = {"float32": [], "bfloat16": []}
    cpu = {"float32": [], "bfloat16": []}
    order = ["float32", "bfloat16"]
    for r in range(args.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            wall, used = one_pass(name)
            times[name].append(wall)
            cpu[name].append(used)
    load_end = os.getloadavg()[0]
    ratios = [a / b for a, b in zip(times["float32"], times["bfloat16"])]
    cpu_ratios = [a / b for a, b in zip(cpu["float32"], cpu["bfloat16"])]
    features = cpu_bf16_features()
    row = dict(
        run_id=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        model=args.model, threads=torch.get_num_threads(), batch=args.batch_size,
        seq_len=args.seq_len, n_batches=args.batches, K=args.languages, rounds=args.rounds,
        fp32_tokens_per_s=round(tokens / statistics.median(times["float32"]), 1),
        bf16_tokens_per_s=round(tokens / statistics.median(times["bfloat16"]), 1),
        ratio_fp32_time_over_bf16=round(statistics.median(ratios), 3),
        ratio_iqr=round(_iqr(ratios), 3), ratio_min=round(min(ratios), 3),
        ratio_max=round(max(ratios), 3),
        cpu_time_ratio_fp32_over_bf16=round(statistics.median(cpu_ratios), 3),
        load_avg_start=round(load_start, 2),
        load_avg_end=round(load_end, 2), cpu_avx512_bf16=features["avx512_bf16"],
        cpu_amx_bf16=features["amx_bf16"],
        command="python benchmarks/bench_dtype.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
            if v is not None and k != "csv"))
    print(row)
    path = Path(args.csv)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)


if __name__ == "__main__":
    main()
