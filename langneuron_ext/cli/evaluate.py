"""`langneuron evaluate`: the NLL-change matrix with intervals (and output-language control).

    langneuron evaluate --model gemma-3-270m --neurons neurons.json \\
        --corpus debian-handbook --languages en,fr,de --out nll.json
    ... --stats stats.safetensors --control fr:de --control en:fr   # also steer the output
    ... --phases                  # also each language deactivated in one phase's layers only

Text comes from the held-out handbook split by default (the scan's default is the train
split). Everything the user can get wrong is checked before the model is loaded.
"""
from __future__ import annotations

import sys
from typing import List, Tuple

from .options import (
    add_corpus_options,
    add_model_options,
    add_output_options,
    check_min,
    check_out_file,
    corpus_from_args,
    fail,
    parse_languages,
    parse_layers,
    parse_pair,
    plural,
    resolve_device_and_impl,
)
from .outputs import check_outputs, corpus_inputs, keep_json

# Held-out tokens per language. Measured on Gemma 3 270M (LAPE from the demo's scan, 8
# languages, docs/results/steering/README.md): at 512 tokens (8-10 handbook paragraphs per
# language) the own-language rise of 7 of 8 languages lies above 5 random sets' intervals (not
# English, whose 16 neurons barely move it); 1,024 doubles the documents, because under 10 a
# bootstrap's intervals are rough.
DEFAULT_EVAL_TOKENS = 1024
# Random sets of the NLL matrix. Single neurons have heavy-tailed effects (on Gemma 3 270M one
# neuron in no language's set raised Italian NLL by +0.24 and two of five random 124-neuron sets
# by +0.32 and +0.34), so "above the highest of 5 sets" is a weak test; 20 sets give an empirical
# p-value down to 1/21. The cost: a random set is scored on its own language's column only, so
# each column runs 1 + K + R variants (K languages' rows, R sets): for 8 languages, 29 variant
# passes per column at R = 20 against 14 at R = 5, about 2x the time of 5 sets.
DEFAULT_RANDOM_SETS = 20          # evaluate.nll.RANDOM_SETS (not imported: keeps --help light)
# Each random set of --control is a full set of generations, far dearer than an NLL row.
MAX_CONTROL_RANDOM_SETS = 5


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="NLL change per language when each language's neurons are deactivated",
        description="Mean next-token NLL on held-out text per evaluated language (columns) for "
                    "the unsteered model, each language's neurons deactivated, and random "
                    "neuron sets of the same per-layer sizes (rows); printed as the change "
                    "against the baseline with 95% intervals from a bootstrap over documents. "
                    "--control SRC:TGT also measures output-language control.")
    add_model_options(p, auto_dtype=True)
    add_corpus_options(p, split_default="heldout")
    p.add_argument("--neurons", required=True, metavar="FILE",
                   help="neuron set JSON written by `langneuron identify`")
    p.add_argument("--rows", metavar="LANGS",
                   help="languages whose neurons are deactivated, one row each (default: all "
                        "languages of the neuron set)")
    p.add_argument("--tokens-per-language", type=int, default=DEFAULT_EVAL_TOKENS, metavar="N",
                   help=f"predicted tokens scored per language (default {DEFAULT_EVAL_TOKENS})")
    p.add_argument("--max-length", type=int, default=128, metavar="T",
                   help="tokens per window (default 128)")
    p.add_argument("--random-sets", type=int, default=DEFAULT_RANDOM_SETS, metavar="R",
                   help=f"random neuron sets per language, same per-layer sizes (default "
                        f"{DEFAULT_RANDOM_SETS}, about 2x the time of 5 for 8 languages; "
                        f"0 = none)")
    p.add_argument("--random-match", choices=["none", "frequency"], default="none",
                   help="draw the NLL matrix's random neurons matched on activation frequency: "
                        "each from the same layer and P(act > 0) decile as the neuron it "
                        "replaces (needs --stats; default none)")
    p.add_argument("--random-columns", choices=["own", "all"], default="own",
                   help="score each random set on its own language only (default: the "
                        "comparison it exists for, K times cheaper) or on all languages")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="B",
                   help="bootstrap resamples of the documents for the intervals (default 1000; "
                        "0 = no intervals)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sets (default 0)")
    p.add_argument("--layers", metavar="LIST", help="steer only these layers, e.g. 0-3,15")
    p.add_argument("--phases", action="store_true",
                   help="also deactivate each --phase-rows language in one phase's layers only "
                        "(the phases stored in the neuron set by `identify`)")
    p.add_argument("--phase-rows", metavar="LANGS",
                   help="languages of the per-phase rows (default: those of --rows)")
    p.add_argument("--per-variant", action="store_true",
                   help="one pass over the text per variant instead of all variants in the "
                        "same forward passes via per-row steering groups (the default, faster)")
    p.add_argument("--control", action="append", default=[], metavar="SRC:TGT",
                   help="also generate from SRC prompts with SRC deactivated and TGT activated "
                        "and report the share identified as TGT (repeatable; needs --stats)")
    p.add_argument("--control-random-sets", type=int, default=None, metavar="R",
                   help=f"random sets per --control pair (default: --random-sets, at most "
                        f"{MAX_CONTROL_RANDOM_SETS}: each set costs a full set of generations)")
    p.add_argument("--stats", metavar="FILE",
                   help="stats of a scan: with --sums for --control; any scan for "
                        "--random-match frequency")
    p.add_argument("--prompts", type=int, default=20, metavar="N",
                   help="--control prompts: the openings of N held-out paragraphs (default 20)")
    p.add_argument("--max-new-tokens", type=int, default=24, metavar="N",
                   help="--control tokens generated per prompt (default 24)")
    add_output_options(p, out="write the full result as JSON",
                       json_help="print the full result as JSON on stdout (nothing else)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def check_controls(items: List[str], neurons, stats_path, corpus) -> Tuple[list, object]:
    """The --control pairs and the stats they need, all checked before any model work."""
    from ..stats import ActivationStats

    pairs = [parse_pair(item, "--control", neurons.languages, "the neuron set")
             for item in items]
    if not pairs:
        return [], None
    for src, tgt in pairs:
        if src not in corpus.languages:
            fail(f"--control {src}:{tgt}: the text has no {src!r} paragraphs to take prompts "
                 f"from; add {src} to the evaluated text")
    if not stats_path:
        fail("--control activates the target's neurons at their mean activation: give "
             "--stats (a scan with --sums)")
    stats = ActivationStats.load(stats_path)
    if stats.sums is None:
        fail(f"--stats {stats_path} has no activation sums, so the targets have no mean "
             f"activation; rescan with `langneuron scan --sums`")
    for src, tgt in pairs:
        if tgt not in stats.languages:
            fail(f"--control {src}:{tgt}: {tgt!r} is not in --stats {stats_path} (it has "
                 f"{', '.join(stats.languages)}); scan {tgt} too")
    return pairs, stats


def random_match_frequency(args, neurons, stats):
    """P(act > 0) per neuron [L, I] for --random-match frequency (None for plain random sets),
    from --stats, checked against the neuron set before the model loads."""
    if args.random_match == "none":
        return None
    if not args.random_sets:
        fail("--random-match frequency matches random sets, but --random-sets is 0; give "
             "--random-sets R or drop --random-match")
    if not args.stats:
        fail("--random-match frequency draws neurons by how often they fire: give --stats (the "
             "scan the neurons were identified on)")
    if stats is None:
        from ..stats import ActivationStats
        stats = ActivationStats.load(args.stats)
    from ..evaluate.controls import pooled_frequency
    from ..steer import SteeringError
    try:
        frequency = pooled_frequency(stats)
    except SteeringError as exc:
        fail(f"--random-match frequency: {exc}")
    shape = (neurons.num_layers, neurons.intermediate_size)
    if tuple(frequency.shape) != shape:
        fail(f"--stats {args.stats} has {list(frequency.shape)} neurons but the neuron set "
             f"{list(shape)}; use the scan of the same model")
    return frequency


def run(args) -> int:
    from ..evaluate import language_controls, nll_matrix
    from ..evaluate.langcontrol import prompts_from_texts
    from ..evaluate.texts import iter_texts
    from ..identify.neuron_set import NeuronSet
    from ..models.loading import load_model

    for name in ("tokens_per_language", "prompts", "max_new_tokens"):
        check_min(args, name, 1)
    check_min(args, "max_length", 2)
    check_min(args, "random_sets", 0)
    if args.control_random_sets is not None:
        check_min(args, "control_random_sets", 0)
    check_min(args, "bootstrap", 0)
    resolve_device_and_impl(args)
    neurons = NeuronSet.load(args.neurons)
    corpus, languages = corpus_from_args(args)
    rows = parse_languages(args.rows, "--rows", known=neurons.languages,
                           known_from=args.neurons) or list(neurons.languages)
    phase_rows = parse_languages(args.phase_rows, "--phase-rows", known=neurons.languages,
                                 known_from=args.neurons)
    if phase_rows and not args.phases:
        fail("--phase-rows needs --phases")
    if args.phases and not neurons.phases:
        fail(f"--phases: {args.neurons} has no phases; run `langneuron identify` on it again "
             f"(it stores the phases of models with at least 4 layers)")
    layers = parse_layers(args.layers)
    pairs, stats = check_controls(args.control, neurons, args.stats, corpus)
    frequency = random_match_frequency(args, neurons, stats)
    control_sets = args.control_random_sets
    if control_sets is None:
        control_sets = min(args.random_sets, MAX_CONTROL_RANDOM_SETS)
    out = check_out_file(args.out, "nll.json")
    check_outputs(inputs=[args.neurons, args.stats, *corpus_inputs(args)],
                  files=[("--out", args.out)])
    log = sys.stderr if args.json else sys.stdout

    model, tokenizer = load_model(args.model, gguf_file=args.gguf, dtype=args.dtype,
                                  device=args.device, progress=not args.no_progress)
    matrix = nll_matrix(model, tokenizer, neurons, corpus, languages, deactivate=rows,
                        random_sets=args.random_sets, seed=args.seed,
                        max_tokens_per_language=args.tokens_per_language,
                        max_length=args.max_length, batched=not args.per_variant, layers=layers,
                        phases=neurons.phases if args.phases else None,
                        phase_languages=phase_rows or rows,
                        random_columns=args.random_columns, bootstrap_samples=args.bootstrap,
                        random_match=args.random_match, frequency=frequency,
                        impl=args.impl, progress=not args.no_progress)
    short = [f"{lang} ({n:,})" for lang, n in zip(matrix.columns, matrix.tokens)
             if n < args.tokens_per_language]
    if short:
        print(f"note: the text ran out before {args.tokens_per_language:,} tokens for "
              f"{', '.join(short)}; those columns are scored on fewer tokens", file=sys.stderr)
    result = {"nll_matrix": matrix.to_dict(), "language_control": []}
    if out is not None:        # the matrix is safe on disk before the slower generation
        keep_json(out, result, "--out", "NLL matrix")
    prompts = {src: prompts_from_texts(iter_texts(corpus, src), n=args.prompts)
               for src in dict.fromkeys(src for src, _ in pairs)}
    controls = language_controls(model, tokenizer, neurons, stats, prompts, pairs,
                                 random_sets=control_sets, seed=args.seed,
                                 max_new_tokens=args.max_new_tokens, layers=layers,
                                 impl=args.impl, progress=not args.no_progress) if pairs else []
    result["language_control"] = [c.to_dict() for c in controls]
    if out is not None:
        keep_json(out, result, "--out", "NLL matrix and language control")
    if args.json:
        import json
        print(json.dumps(result, indent=1, ensure_ascii=False, allow_nan=False))
        return 0
    print(matrix.to_markdown(), file=log)
    print(specificity_table(matrix), file=log)
    if args.phases:
        print("\nNeurons deactivated in one phase's layers only:\n", file=log)
        print(matrix.phase_table(), file=log)
    for res in controls:
        print(file=log)
        print(res.to_markdown(), file=log)
    if out is not None:
        print(f"\nwrote {out} ({plural(len(matrix.rows), 'variant')} x "
              f"{plural(len(matrix.columns), 'language')})", file=log)
    return 0


def specificity_table(matrix) -> str:
    """Own rise with its interval against the mean rise of the others and the random sets."""
    from ..evaluate.uncertainty import interval_text
    from ..report.cells import MISSING, num
    spec = matrix.specificity()
    if not spec:
        return ""
    lines = ["", "| language | own rise [95% CI] | mean rise of the others | random sets: own "
                 "rise, mean ± sd (highest upper end) | p (rank) | separated |",
             "|---|---|---|---|---|---|"]
    for lang, s in spec.items():
        rand = MISSING if not s["random_sets"] else (
            f"{num(s['random_own'], '{:+.3f}')} ± {num(s['random_own_sd'])} "
            f"({num(s['random_own_high'], '{:+.3f}')})")
        sep = {True: "yes", False: "**no**", None: MISSING}[s["separated"]]
        own = num(s["own"], "{:+.3f}")
        if own != MISSING:
            own += interval_text(s["own_ci"], 3)
        rank = MISSING if s.get("random_p") is None else \
            f"{s['random_p']:.3f} ({s['random_rank']} of {s['random_sets'] + 1})"
        lines.append(f"| {lang} | {own} | {num(s['others_mean'], '{:+.3f}')} | {rand} | {rank} "
                     f"| {sep} |")
    if any(s.get("random_p") is not None for s in spec.values()):
        lines.append("")
        lines.append("p (rank): the share of the random sets whose own rise is at least the own "
                     "set's, counting the own set, (1 + beaten) / (1 + R); rank 1 = above every "
                     "random set.")
    return "\n".join(lines)


__all__ = ["register", "run", "check_controls", "specificity_table"]
