"""The examples pass against a plain forward on the same batches (Gemma 3 270M by default).

    python benchmarks/bench_examples.py --neurons 1000 --k 20 --rounds 5

Batches: Debian-handbook held-out text (en, fr, de), `--batch-size` rows of `--max-length`
tokens. Each round times, for every batch, the plain forward (the unpatched model's decoder
stack, as the scan runs it) and the examples step (patched model with the tap of `--neurons`
columns spread evenly over the layers, then the streaming top-k update), alternating which goes
first. Reports medians per batch and the ratio plain / examples (1.0 = free); appends a row to
benchmarks/results/examples_pass.csv with the machine, threads and load average.
"""
from __future__ import annotations

import argparse
import csv
import os
import platform
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "examples_pass.csv"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--neurons", type=int, default=1000)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--context", type=int, default=16)
    p.add_argument("--batches", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default=str(RESULTS))
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from langneuron_ext.corpus import DebianHandbook, iter_batches
    from langneuron_ext.examples import TopK, record_batch
    from langneuron_ext.models import patch
    from langneuron_ext.models.loading import load_model
    from langneuron_ext.scan import _forward_callable

    model, tok = load_model(args.model, dtype="float32", device="cpu", progress=False)
    languages = ["en", "fr", "de"]
    corpus = DebianHandbook(languages, split="heldout")
    batches = []
    for batch in iter_batches(corpus, tok, languages, tokens_per_language=10**6,
                              max_length=args.max_length, batch_size=args.batch_size):
        batches.append(batch)
        if len(batches) == args.batches:
            break
    forward = _forward_callable(model)
    from langneuron_ext.models.patch import layer_sizes
    sizes = layer_sizes(model)
    g = torch.Generator().manual_seed(0)
    per_layer = {}
    total = sum(sizes)
    for idx in torch.randperm(total, generator=g)[:args.neurons].tolist():
        layer = next(l for l in range(len(sizes)) if idx < sum(sizes[:l + 1]))
        per_layer.setdefault(layer, []).append(idx - sum(sizes[:layer]))
    per_layer = {l: sorted(v) for l, v in sorted(per_layer.items())}
    order = sorted(per_layer)

    def plain(batch):
        with torch.inference_mode():
            forward(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                    use_cache=False)

    top = TopK(len(languages), args.neurons, args.k, args.context)

    def tapped(batch, i):
        with patch(model) as handle:
            handle.set_tap(per_layer)
            record_batch(handle, forward, top, order, batch, "cpu", i << 24)

    for b in batches:                          # warm up both paths
        plain(b)
        tapped(b, 0)
    times = {"plain": [], "examples": []}
    for r in range(args.rounds):
        for i, b in enumerate(batches):
            runs = [("plain", lambda: plain(b)), ("examples", lambda: tapped(b, r + 1))]
            for name, fn in (runs if (r + i) % 2 == 0 else runs[::-1]):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["plain"] / med["examples"]
    load = os.getloadavg()
    row = dict(model=args.model, neurons=args.neurons, k=args.k, context=args.context,
               batch_size=args.batch_size, max_length=args.max_length, batches=args.batches,
               rounds=args.rounds, threads=args.threads,
               plain_s=f"{med['plain']:.4f}", examples_s=f"{med['examples']:.4f}",
               ratio=f"{ratio:.3f}", machine=platform.machine(), cpus=os.cpu_count(),
               load_1m=f"{load[0]:.2f}", date=time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                           time.gmtime()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    new = not out.exists()
    with out.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        if new:
            w.writeheader()
        w.writerow(row)
    print(row)


if __name__ == "__main__":
    main()
