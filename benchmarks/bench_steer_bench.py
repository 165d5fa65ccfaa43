"""The steering benchmark's batched grid vs one `generate` call per (method, strength, prompt).

    python benchmarks/bench_steer_bench.py --stats scan.safetensors --neurons neurons.json

Both sides make the same generations (greedy, the same conditions and prompts) and score each
for fluency with the unsteered model: the grid (`SteerBench.run`) puts every condition's rows
into shared batches (neuron methods by steering groups, DiffMean by per-row vectors, the
unsteered generations once per prompt); the baseline installs each condition on its own and
calls `model.generate` once per prompt, then scores that one generation (fluency, both
language identifiers, chrF against the reference, as the grid scores every row). Rounds are
interleaved and the medians compared; a CSV row goes to benchmarks/results/steer_bench.csv
with the 1-minute load average.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "steer_bench.csv"
FIELDS = ["model", "pairs", "prompts", "conditions", "generations", "max_new_tokens",
          "batch_size", "threads", "rounds", "grid_s", "per_call_s", "ratio", "load_1min"]


def per_call(bench, model, tokenizer) -> float:
    """One generate call (batch of one) per condition and prompt, then its scores."""
    from langneuron_ext.evaluate import steer_metrics as M
    from langneuron_ext.evaluate.steer_bench import (
        _neuron_edits,
        _stop_ids,
        _until_stop,
        fluency_nll,
    )
    from langneuron_ext.steer import steering
    from langneuron_ext.steering.diffmean import diffmean_steering, diffmean_vectors
    stop = _stop_ids(tokenizer, model)
    reference = {}
    for rows in bench.items.values():
        for item in rows:
            reference.setdefault(item.prompt, item.reference)
            reference.setdefault(item.native_prompt, item.reference)
    start = time.perf_counter()
    for text, c, _ in bench._jobs():
        cond = None if c is None else bench.conditions[c]
        edits, vectors = [], {}
        if cond is not None and cond.method == "diffmean":
            vectors = {l: v * cond.strength for l, v in
                       diffmean_vectors(bench.stats, *cond.pair, cond.layers).items()}
        elif cond is not None:
            edits = _neuron_edits(cond, bench.neurons, bench.stats)   # random sets: same cost
        enc = tokenizer([text], return_tensors="pt")
        with steering(model, edits, impl=bench.impl), diffmean_steering(model, vectors), \
                torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=bench.max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
        ids = _until_stop(out[0, enc["input_ids"].shape[1]:].tolist(), stop)
        fluency_nll(model, tokenizer, [ids])
        generated = tokenizer.decode(ids, skip_special_tokens=True)
        M.identify_langid(generated), M.identify_lingua(generated)
        M.chrf(generated, reference[text])
    return time.perf_counter() - start


def main() -> None:
    from langneuron_ext.evaluate.steer_bench import SteerBench, handbook_items
    from langneuron_ext.identify.neuron_set import NeuronSet
    from langneuron_ext.models.loading import load_model
    from langneuron_ext.ops.benchmark import append_csv
    from langneuron_ext.stats import ActivationStats
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--stats", required=True, help="scan with --sums --residual-means")
    p.add_argument("--neurons", required=True)
    p.add_argument("--pair", default="en:fr")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args()
    model, tokenizer = load_model(args.model, progress=False)
    pair = tuple(args.pair.split(":"))
    bench = SteerBench(model, tokenizer, NeuronSet.load(args.neurons),
                       ActivationStats.load(args.stats), handbook_items([pair], args.prompts),
                       ["deactivate", "mean", "add", "scale", "diffmean"],
                       {"add": [1.0, 4.0], "scale": [4.0], "diffmean": [2.0, 8.0]}, [[6]],
                       random_sets=1, random_methods=["mean"],
                       max_new_tokens=args.max_new_tokens, batch_size=args.batch_size)
    grid, calls, loads = [], [], []
    for _ in range(args.rounds):           # interleaved rounds, medians
        start = time.perf_counter()
        bench.run(progress=False)
        grid.append(time.perf_counter() - start)
        calls.append(per_call(bench, model, tokenizer))
        loads.append(os.getloadavg()[0])
    g, c = statistics.median(grid), statistics.median(calls)
    row = dict(model=args.model, pairs=args.pair, prompts=args.prompts,
               conditions=len(bench.conditions), generations=len(bench._jobs()),
               max_new_tokens=args.max_new_tokens, batch_size=args.batch_size,
               threads=torch.get_num_threads(), rounds=args.rounds, grid_s=round(g, 2),
               per_call_s=round(c, 2), ratio=round(g / c, 3),
               load_1min=round(statistics.median(loads), 2))
    print(row)
    append_csv([row], RESULTS, FIELDS)


if __name__ == "__main__":
    main()
