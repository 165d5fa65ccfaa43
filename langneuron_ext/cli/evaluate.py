"""`langneuron evaluate`: the NLL-change matrix (and optionally output-language control).

    langneuron evaluate --model gemma-3-270m --neurons neurons.json \\
        --corpus debian-handbook --languages en,fr,de --out nll.json
    ... --stats stats.safetensors --control fr:de     # also steer fr prompts towards de

Text comes from the held-out handbook split by default (the scan uses the train split).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Tuple

from . import CliError


def register(subparsers) -> None:
    from .options import add_corpus_options
    from .scan import add_model_arguments
    p = subparsers.add_parser(
        "evaluate", help="NLL change per language when each language's neurons are deactivated",
        description="Mean next-token NLL on held-out text per evaluated language (columns) for "
                    "the unsteered model, each language's neurons deactivated, and random "
                    "neuron sets of the same sizes (rows); printed as the change against the "
                    "baseline. --control SRC:TGT also measures output-language control.")
    add_model_arguments(p)
    add_corpus_options(p, split_default="heldout")
    p.add_argument("--neurons", required=True, metavar="FILE",
                   help="neuron set JSON written by `langneuron identify`")
    p.add_argument("--rows", metavar="LANGS",
                   help="languages whose neurons are deactivated, one row each (default: all "
                        "languages of the neuron set)")
    p.add_argument("--tokens-per-language", type=int, default=2048, metavar="N",
                   help="predicted tokens scored per language (default 2048)")
    p.add_argument("--max-length", type=int, default=128, metavar="T",
                   help="tokens per window (default 128)")
    p.add_argument("--random-sets", type=int, default=1, metavar="R",
                   help="random neuron sets per language, same per-layer sizes (default 1)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random sets (default 0)")
    p.add_argument("--layers", metavar="LIST", help="steer only these layers, e.g. 0-3,15")
    p.add_argument("--per-variant", action="store_true",
                   help="one pass over the text per variant instead of all variants in the "
                        "same forward passes via per-row steering groups (the default, faster)")
    p.add_argument("--control", action="append", default=[], metavar="SRC:TGT",
                   help="also generate from SRC prompts with SRC deactivated and TGT activated "
                        "and report the share identified as TGT (repeatable; needs --stats)")
    p.add_argument("--stats", metavar="FILE", help="stats of a scan with --sums (for --control)")
    p.add_argument("--prompts", type=int, default=20, metavar="N",
                   help="--control prompts: the openings of N held-out paragraphs (default 20)")
    p.add_argument("--max-new-tokens", type=int, default=24, metavar="N",
                   help="--control tokens generated per prompt (default 24)")
    p.add_argument("--out", metavar="FILE", help="write the full result as JSON")
    p.add_argument("--json", action="store_true", help="print JSON instead of markdown")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def parse_control(items: List[str], languages: List[str]) -> List[Tuple[str, str]]:
    pairs = []
    for item in items:
        src, sep, tgt = item.partition(":")
        if not sep or not src or not tgt or src == tgt:
            raise CliError(f"--control {item!r} is not SRC:TGT with two languages, e.g. fr:de")
        for lang in (src, tgt):
            if lang not in languages:
                raise CliError(f"--control {item!r}: {lang!r} is not in the neuron set "
                               f"({', '.join(languages)})")
        pairs.append((src, tgt))
    return pairs


def run(args) -> int:
    from ..evaluate import language_control, nll_matrix
    from ..evaluate.langcontrol import prompts_from_texts
    from ..evaluate.texts import iter_texts
    from ..identify.neuron_set import NeuronSet
    from ..models.loading import load_model
    from ..stats import ActivationStats
    from .scan import corpus_from_args
    from .steer import parse_languages, parse_layers

    for name in ("tokens_per_language", "max_length", "prompts", "max_new_tokens"):
        if getattr(args, name) < (2 if name == "max_length" else 1):
            raise CliError(f"--{name.replace('_', '-')} is too small: {getattr(args, name)}")
    if args.random_sets < 0:
        raise CliError(f"--random-sets must be 0 or more, got {args.random_sets}")
    neurons = NeuronSet.load(args.neurons)
    corpus, languages = corpus_from_args(args)
    rows = parse_languages(args.rows, "--rows") or [l for l in neurons.languages]
    for lang in rows:
        if lang not in neurons.languages:
            raise CliError(f"--rows: {lang!r} is not in {args.neurons} "
                           f"({', '.join(neurons.languages)})")
    layers = parse_layers(args.layers)
    controls = parse_control(args.control, neurons.languages)
    stats = None
    if controls:
        if not args.stats:
            raise CliError("--control activates the target's neurons at their mean activation: "
                           "give --stats (a scan with --sums)")
        stats = ActivationStats.load(args.stats)
    out = Path(args.out) if args.out else None
    if out is not None and out.is_dir():
        raise CliError(f"--out {out} is a folder; give a file name such as {out}/nll.json")
    model, tokenizer = load_model(args.model, gguf_file=args.gguf, dtype=args.dtype,
                                  device=args.device)
    matrix = nll_matrix(model, tokenizer, neurons, corpus, languages, deactivate=rows,
                        random_sets=args.random_sets, seed=args.seed,
                        max_tokens_per_language=args.tokens_per_language,
                        max_length=args.max_length, batched=not args.per_variant, layers=layers,
                        impl=args.impl, progress=not args.no_progress)
    result = {"nll_matrix": matrix.to_dict(), "language_control": []}
    controls_done = []
    for src, tgt in controls:
        if src not in corpus.languages:
            raise CliError(f"--control {src}:{tgt}: the corpus has no {src!r} text for prompts; "
                           f"add {src} to --languages")
        prompts = prompts_from_texts(iter_texts(corpus, src), n=args.prompts)
        res = language_control(model, tokenizer, neurons, stats, prompts, src, tgt,
                               random_sets=max(1, args.random_sets), seed=args.seed,
                               max_new_tokens=args.max_new_tokens, layers=layers,
                               impl=args.impl, progress=not args.no_progress)
        controls_done.append(res)
        result["language_control"].append(res.to_dict())
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n")
        tmp.replace(out)
    if args.json:
        print(json.dumps(result, indent=1, ensure_ascii=False))
        return 0
    print(matrix.to_markdown())
    spec = matrix.specificity()
    if spec:
        print("\n| language | own rise | mean rise of the others | random set, own rise |")
        print("|---|---|---|---|")
        for lang, s in spec.items():
            print(f"| {lang} | {s['own']:+.3f} | {s['others_mean']:+.3f} | "
                  f"{s['random_own']:+.3f} |")
    for res in controls_done:
        print()
        print(res.to_markdown())
    if out is not None:
        print(f"\nwrote {out}")
    return 0
