#!/usr/bin/env python
"""End-to-end benchmark: forward throughput (tokens/s) of a model's decoder stack unpatched vs
patched with each implementation of the fused op while recording counts (what a scan does per
batch; the LM head is skipped as in `ln.scan`).

    python benchmarks/bench_end_to_end.py                       # tiny random Llama, CPU fp32
    python benchmarks/bench_end_to_end.py --hidden 576 --intermediate 1536 --layers 30   # SmolLM2-135M shape
    python benchmarks/bench_end_to_end.py --model gemma-3-270m  # a real model (ln.models.load_model)

Appends rows to benchmarks/results/end_to_end.csv. Variants are timed interleaved, as in
bench_kernels.py (`langneuron_ext.ops.benchmark.time_interleaved`).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import pathlib
import sys

import torch

import langneuron_ext as ln
from langneuron_ext.ops import benchmark

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
FIELDS = ["timestamp", "machine", "device_name", "torch_version", "threads", "load_avg", "model",
          "dtype", "batch", "seq_len", "variant", "median_ms", "iqr_ms", "tokens_per_s",
          "time_vs_unpatched"]


def tiny_llama(hidden: int, intermediate: int, layers: int, dtype: torch.dtype):
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         vocab_size=1024,
                         max_position_embeddings=4096)
    torch.manual_seed(0)
    return LlamaForCausalLM(config).to(dtype).eval(), f"llama h{hidden} i{intermediate} l{layers}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="HF id / folder / 'gemma-3-270m'; default a random Llama")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--languages", type=int, default=8)
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None)
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--threads", type=int)
    parser.add_argument("--csv", type=pathlib.Path, default=RESULTS / "end_to_end.csv")
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
        args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    if args.model:
        model, _tokenizer = ln.models.load_model(args.model, dtype=dtype)
        name = args.model
    else:
        model, name = tiny_llama(args.hidden, args.intermediate, args.layers, dtype)
    model = model.to(device).eval()
    base = getattr(model, "model", model)          # decoder stack without the LM head
    vocab = model.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (args.batch, args.seq_len), generator=gen).to(device)
    row_lang = torch.randint(-1, args.languages, ids.shape, generator=gen, dtype=torch.int32)

    def forward():
        with torch.inference_mode():
            return base(input_ids=ids)

    impls = ["torch"] + benchmark.elementwise_implementations(device, dtype)
    variants = ["unpatched"] + impls
    samples = {v: [] for v in variants}
    from tqdm.auto import tqdm
    # A model is patched with one implementation at a time, so each round patches, times one
    # block and unpatches per variant (patching is outside the timed block); the order rotates.
    for r in tqdm(range(args.rounds), desc="bench e2e", unit="round"):
        for variant in variants[r % len(variants):] + variants[:r % len(variants)]:
            handle = None
            if variant != "unpatched":
                handle = ln.patch(model, impl=variant)
                handle.set_rows(row_lang)
                handle.start_recording(args.languages)
            try:
                s = benchmark.time_interleaved({variant: forward}, device, rounds=1,
                                               min_block_s=0.2, warmup=1)
                samples[variant].extend(s[variant])
                if handle is not None and int(handle.collect()["counts"].sum()) == 0:
                    raise SystemExit(f"{variant}: the patched forward recorded no counts")
            finally:
                if handle is not None:
                    handle.unpatch()
    tokens = ids.numel()
    unpatched = benchmark._median_iqr(samples["unpatched"])[0]
    machine, device_name = benchmark.device_description(device)
    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    rows = []
    print(f"{name}, {dtype}, batch {args.batch} x {args.seq_len} tokens on {device_name}")
    for variant in ["unpatched"] + impls:
        median, iqr = benchmark._median_iqr(samples[variant])
        rows.append(dict(timestamp=stamp, machine=machine, device_name=device_name,
                         torch_version=torch.__version__, threads=torch.get_num_threads(),
                         load_avg=f"{os.getloadavg()[0]:.2f}", model=name,
                         dtype=str(dtype).replace("torch.", ""), batch=args.batch,
                         seq_len=args.seq_len, variant=variant,
                         median_ms=f"{median * 1e3:.4g}", iqr_ms=f"{iqr * 1e3:.4g}",
                         tokens_per_s=f"{tokens / median:.6g}",
                         time_vs_unpatched=f"{median / unpatched:.4g}"))
        print(f"  {variant:>10}: {median * 1e3:9.2f} ms (IQR {iqr * 1e3:.2f})  "
              f"{tokens / median:10.0f} tokens/s  {median / unpatched:5.2f}x unpatched time")
    if not args.no_save:
        new = not args.csv.exists()
        args.csv.parent.mkdir(parents=True, exist_ok=True)
        with open(args.csv, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            if new:
                writer.writeheader()
            writer.writerows(rows)
        print(f"appended {len(rows)} rows to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
