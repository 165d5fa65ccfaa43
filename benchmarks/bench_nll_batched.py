"""Batched (per-row steering groups) vs one pass per variant for `evaluate.nll_matrix`.

    python benchmarks/bench_nll_batched.py                      # a random llama-shaped model
    python benchmarks/bench_nll_batched.py --model gemma-3-270m --tokens 128

Both modes run the same variants over the same windows and give the same matrix (checked);
the script prints the median wall time of each and their ratio, and appends a CSV row to
benchmarks/results/nll_batched.csv.
"""
from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results" / "nll_batched.csv"


def random_model():
    import transformers

    from langneuron_ext.models.toy import byte_tokenizer
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=259, hidden_size=256, intermediate_size=1024,
                                      num_hidden_layers=6, num_attention_heads=8,
                                      num_key_value_heads=4, max_position_embeddings=256)
    tokenizer = byte_tokenizer()
    return transformers.LlamaForCausalLM(config).eval(), tokenizer, "random-llama-6x1024"


def random_neurons(languages, L, I, rate=0.01):
    from langneuron_ext.identify.neuron_set import NeuronSet
    gen = torch.Generator().manual_seed(1)
    return NeuronSet.from_masks("random", {}, languages, torch.rand(len(languages), L, I,
                                                                     generator=gen) < rate)


def main() -> None:
    from langneuron_ext.corpus import DebianHandbook
    from langneuron_ext.evaluate import nll_matrix
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a model name for load_model (default: random)")
    p.add_argument("--languages", default="en,fr,de")
    p.add_argument("--tokens", type=int, default=512, help="tokens per language")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--impl", default=None)
    args = p.parse_args()
    languages = args.languages.split(",")
    if args.model:
        from langneuron_ext.models.loading import load_model
        model, tokenizer = load_model(args.model)
        name = args.model
    else:
        model, tokenizer, name = random_model()
    L, I = model.config.num_hidden_layers, model.config.intermediate_size
    neurons = random_neurons(languages, L, I)
    source = DebianHandbook(languages, split="heldout")
    times = {False: [], True: []}
    results = {}
    for _ in range(args.repeats):
        for batched in (False, True):          # interleaved, so load changes hit both alike
            start = time.perf_counter()
            results[batched] = nll_matrix(model, tokenizer, neurons, source, languages,
                                          max_tokens_per_language=args.tokens,
                                          max_length=args.max_length, batched=batched,
                                          random_sets=1,   # the recorded rows: 7 variants
                                          impl=args.impl, progress=False)
            times[batched].append(time.perf_counter() - start)
    torch.testing.assert_close(results[True].nll, results[False].nll, rtol=1e-4, atol=1e-5)
    per_variant, together = statistics.median(times[False]), statistics.median(times[True])
    variants = len(results[True].rows)
    print(f"{name}: {variants} variants x {len(languages)} languages x {args.tokens} tokens, "
          f"torch threads {torch.get_num_threads()}")
    print(f"one pass per variant: {per_variant:.2f} s   batched groups: {together:.2f} s   "
          f"batched / per-variant = {together / per_variant:.2f}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    new = not RESULTS.exists()
    with RESULTS.open("a", newline="") as f:
        w = csv.writer(f)
        if new:
            w.writerow(["model", "variants", "languages", "tokens_per_language", "max_length",
                        "impl", "per_variant_s", "batched_s", "ratio"])
        w.writerow([name, variants, len(languages), args.tokens, args.max_length,
                    args.impl or "default", round(per_variant, 3), round(together, 3),
                    round(together / per_variant, 3)])


if __name__ == "__main__":
    main()
