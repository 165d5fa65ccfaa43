"""`langneuron steer-bench`: neuron steering against DiffMean and random sets, every method x
strength x pair over the same prompts, with intervals, a table and a plot.

    langneuron steer-bench --model gemma-3-270m --stats scan.safetensors \\
        --neurons neurons.json --pairs en:fr,en:ru --methods deactivate,mean,add,diffmean \\
        --diffmean-layers "6;9" --out-dir bench/            # --resume after Ctrl-C

The stats must come from `langneuron scan --sums --residual-means` for the methods that need
them (mean, add: sums; diffmean: residual means). Prompts are the openings of held-out handbook
paragraphs present in both languages of a pair (or --prompts-file). Every input is checked
before the model loads; the result is written to DIR/steer_bench.{json,csv,md,png}.
"""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from .options import (
    add_model_options,
    add_output_options,
    check_min,
    check_out_dir,
    fail,
    parse_list,
    parse_pair,
    produced_by,
    resolve_device_and_impl,
    write_json,
)

DEFAULT_METHODS = "deactivate,mean,add,scale,diffmean"
DEFAULT_PROMPTS = 50
DEFAULT_NEW_TOKENS = 16
DEFAULT_RANDOM_SETS = 1
CHECKPOINT = "steer_bench.partial.jsonl"
OUTPUT_FILES = ("steer_bench.json", "steer_bench.csv", "steer_bench.md", "steer_bench.png",
                "steer_bench_time.json", CHECKPOINT)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "steer-bench", help="benchmark neuron steering against DiffMean and random sets",
        description="Generate from source-language prompts under every steering method x "
                    "strength x language pair (batched: all conditions share forward passes) "
                    "and report success (langid and lingua), fluency (the unsteered model's "
                    "NLL of the text) and content (chrF against the aligned target paragraph) "
                    "with 95% intervals, a summary score, a table and a plot.")
    add_model_options(p)
    p.add_argument("--stats", required=True, metavar="FILE",
                   help="stats of `langneuron scan --sums --residual-means`")
    p.add_argument("--neurons", required=True, metavar="FILE",
                   help="neuron set JSON written by `langneuron identify`")
    p.add_argument("--pairs", required=True, metavar="SRC:TGT[,SRC:TGT]",
                   help="language pairs, e.g. en:fr,fr:de,en:ru,en:zh")
    p.add_argument("--methods", default=DEFAULT_METHODS, metavar="LIST",
                   help=f"some of deactivate, mean, median, add, scale, diffmean (default "
                        f"{DEFAULT_METHODS})")
    p.add_argument("--strengths", action="append", default=[], metavar="METHOD=LIST",
                   help="strength grid of add (x the target's mean activation), scale (factor) "
                        "or diffmean (alpha), e.g. add=1,2,4 (repeatable; defaults add=1,2,4 "
                        "scale=2,4,8 diffmean=2,4,8)")
    p.add_argument("--diffmean-layers", default=None, metavar="L[,L];L...",
                   help="DiffMean layer choices separated by ';', each one or more layers, "
                        "e.g. '6;9' (default: the layers at 1/3 and 1/2 of the depth)")
    p.add_argument("--prompts", type=int, default=DEFAULT_PROMPTS, metavar="N",
                   help=f"held-out handbook prompts per pair (default {DEFAULT_PROMPTS})")
    p.add_argument("--prompts-file", metavar="FILE",
                   help="JSON lines {\"pair\": \"en:fr\", \"prompt\": ..., \"reference\": ..., "
                        "\"native_prompt\": ...} instead of the handbook")
    p.add_argument("--random-sets", type=int, default=DEFAULT_RANDOM_SETS, metavar="R",
                   help=f"random neuron sets per neuron condition (default "
                        f"{DEFAULT_RANDOM_SETS}; 0 = none)")
    p.add_argument("--random-methods", metavar="LIST",
                   help="the neuron methods that get random sets (default: every neuron method "
                        "of --methods)")
    p.add_argument("--random-match", choices=["none", "frequency"], default="none",
                   help="draw random neurons matched on P(act > 0) per layer (default none)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sets (default 0)")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULT_NEW_TOKENS, metavar="N",
                   help=f"greedy tokens per generation (default {DEFAULT_NEW_TOKENS})")
    p.add_argument("--batch-size", type=int, default=32, metavar="B",
                   help="generations per batch (default 32)")
    add_output_options(p, out_dir="folder for steer_bench.{json,csv,md,png}",
                       out_dir_required=True, json_help="print the result JSON on stdout")
    p.add_argument("--resume", action="store_true",
                   help=f"continue from DIR/{CHECKPOINT} (written after every batch)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def parse_strengths(items) -> dict:
    out = {}
    for item in items:
        method, sep, values = str(item).partition("=")
        method = method.strip()
        if not sep or not method:
            fail(f"--strengths {item!r} is not METHOD=LIST, e.g. add=1,2,4")
        grid = []
        for v in parse_list(values, "--strengths", "1,2,4") or []:
            try:
                x = float(v)
            except ValueError:
                fail(f"--strengths {item!r}: {v!r} is not a number")
            if not math.isfinite(x):
                fail(f"--strengths {item!r}: {v!r} is not a finite number; give numbers such "
                     f"as 1,2,4")
            grid.append(x)
        if not grid:
            fail(f"--strengths {item!r} has no values")
        out[method] = grid
    return out


def parse_layer_choices(text, num_layers: int):
    if text is None:
        return [[num_layers // 3], [num_layers // 2]]
    choices = []
    for part in str(text).split(";"):
        try:
            layers = [int(v) for v in part.split(",") if v.strip()]
        except ValueError:
            fail(f"--diffmean-layers {text!r}: {part!r} is not a list of layer numbers")
        if not layers:
            fail(f"--diffmean-layers {text!r} has an empty choice; give e.g. 6;9 or 6,9")
        bad = [l for l in layers if not 0 <= l < num_layers]
        if bad:
            fail(f"--diffmean-layers: layer {bad[0]} is out of range: the model has "
                 f"{num_layers} layers (0..{num_layers - 1})")
        choices.append(layers)
    return choices


def read_prompts_file(path_text: str, pairs) -> dict:
    from ..evaluate.langcontrol import prompts_from_texts
    from ..evaluate.steer_bench import PairItem
    path = Path(path_text)
    if not path.is_file():
        fail(f"--prompts-file {path} does not exist")
    items = {p: [] for p in pairs}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            pair = tuple(str(rec["pair"]).split(":", 1))
            prompt, reference = str(rec["prompt"]), str(rec["reference"])
        except (ValueError, KeyError, TypeError):
            fail(f"--prompts-file {path} line {n} is not JSON with pair, prompt and reference")
        if pair in items:
            native = rec.get("native_prompt") or _opening(reference, prompts_from_texts)
            items[pair].append(PairItem(prompt, reference, str(native)))
    for pair, rows in items.items():
        if not rows:
            fail(f"--prompts-file {path} has no prompts for {pair[0]}:{pair[1]}")
    return items


def _opening(text: str, prompts_from_texts) -> str:
    """The opening of a reference paragraph, as held-out prompts are cut (shorter texts: their
    first half)."""
    from ..steer import SteeringError
    try:
        return prompts_from_texts([text], 1)[0]
    except SteeringError:
        return text[:max(1, len(text) // 2)]


def run(args) -> int:
    from ..evaluate.steer_bench import BenchError, SteerBench, check_request, handbook_items
    from ..identify.neuron_set import NeuronSet
    from ..models.loading import load_model
    from ..report.steer_bench import render
    from ..stats import ActivationStats

    for name in ("prompts", "max_new_tokens", "batch_size"):
        check_min(args, name, 1)
    check_min(args, "random_sets", 0)
    resolve_device_and_impl(args)
    from .outputs import check_outputs, keep_json
    check_outputs(inputs=[args.stats, args.neurons, args.prompts_file, args.gguf],
                  dirs=[("--out-dir", args.out_dir, OUTPUT_FILES)])
    out_dir = check_out_dir(args.out_dir)
    checkpoint = out_dir / CHECKPOINT
    if checkpoint.exists() and not args.resume:
        fail(f"{checkpoint} holds an unfinished run: add --resume to continue it, or delete it "
             f"to start afresh")
    if args.resume and not checkpoint.exists():
        print(f"note: --resume: no checkpoint {checkpoint} to continue; starting afresh",
              file=sys.stderr)
    neurons = NeuronSet.load(args.neurons)
    stats = ActivationStats.load(args.stats)
    pairs = [parse_pair(p, "--pairs") for p in parse_list(args.pairs, "--pairs", "en:fr")]
    methods = parse_list(args.methods, "--methods", "deactivate,mean") or []
    strengths = parse_strengths(args.strengths)
    layers = parse_layer_choices(args.diffmean_layers, stats.num_layers) \
        if "diffmean" in methods else []
    random_methods = parse_list(args.random_methods, "--random-methods", "mean,add")
    for method in random_methods or []:
        if method not in methods:
            fail(f"--random-methods {method}: not one of --methods ({', '.join(methods)})")
    try:
        check_request(neurons, stats, pairs, methods, strengths, layers, args.random_sets)
        items = read_prompts_file(args.prompts_file, pairs) if args.prompts_file \
            else handbook_items(pairs, args.prompts)
    except BenchError as exc:
        fail(str(exc))
    log = sys.stderr if args.json else sys.stdout

    model, tokenizer = load_model(args.model, gguf_file=args.gguf, dtype=args.dtype,
                                  device=args.device, progress=not args.no_progress)
    bench = SteerBench(model, tokenizer, neurons, stats, items, methods, strengths, layers,
                       random_sets=args.random_sets, random_match=args.random_match,
                       seed=args.seed, max_new_tokens=args.max_new_tokens,
                       batch_size=args.batch_size, impl=args.impl,
                       random_methods=random_methods)
    try:
        result = bench.run(checkpoint=checkpoint, progress=not args.no_progress)
    except KeyboardInterrupt:
        print(f"langneuron steer-bench: progress is saved in {checkpoint}; rerun the same "
              f"command with --resume to continue", file=sys.stderr)
        raise
    result["command"] = produced_by(args)
    keep_json(out_dir / "steer_bench.json", result, "--out-dir", "benchmark")  # never lost
    files = render(result, out_dir, command=result["command"])
    write_json(out_dir / "steer_bench_time.json", {**bench.timing, "command": result["command"]})
    checkpoint.unlink()
    if args.json:
        print(json.dumps(result, indent=1, ensure_ascii=False, allow_nan=False))
        return 0
    from ..report.steer_bench import summary_markdown
    print(summary_markdown(result), file=log)
    print(f"\nwrote {', '.join(str(f) for f in files)}", file=log)
    return 0


__all__ = ["register", "run"]
