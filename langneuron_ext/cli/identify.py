"""`langneuron identify`: stats file -> neuron set file, with a summary, the per-layer
distribution and the four phases."""
from __future__ import annotations

import json
from typing import Optional

from . import CliError

HIST_WIDTH = 40


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "identify", help="find language neurons in a stats file (LAPE or specific/related/general)",
        description="Identify language neurons from an ActivationStats file and write a "
                    "NeuronSet JSON file (with the four phases under `phases`).")
    p.add_argument("stats", metavar="STATS", help="stats file written by `langneuron scan`")
    p.add_argument("--method", required=True, choices=["lape", "ternary"],
                   help="lape: Tang et al. 2024; ternary: specific / related / general neurons "
                        "(Zhang et al. 2025)")
    p.add_argument("--prefix", metavar="PREFIX_STATS",
                   help="stats of the prompts alone: identify on STATS - PREFIX (response tokens)")
    p.add_argument("--top-rate", type=float, default=0.01,
                   help="share of all neurons to select (default 0.01)")
    p.add_argument("--filter-rate", type=float, default=None,
                   help="lape only: quantile a neuron must exceed in some language (default 0.95)")
    p.add_argument("--bar-ratio", type=float, default=0.95,
                   help="quantile of P above which a neuron belongs to a language (default 0.95)")
    p.add_argument("--lambda", dest="lam", default=None,
                   help="ternary only: 'auto' (default, bisection in [0, 0.2]) or a number >= 0")
    p.add_argument("--out", required=True, help="neuron set JSON file to write")
    p.add_argument("--json", action="store_true", help="print a machine-readable summary")
    p.set_defaults(func=run)


def _parse_lambda(text: Optional[str]):
    if text is None or text == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise CliError(f"--lambda must be 'auto' or a number, got {text!r}") from None


def _histogram(counts, general=None) -> str:
    """One line per layer: language neurons as a bar, counts, general neurons when known."""
    top = max(max(counts), 1)
    lines = ["layer  language " + ("general " if general is not None else "")
             + "language neurons per layer"]
    for layer, n in enumerate(counts):
        bar = "#" * round(HIST_WIDTH * n / top)
        line = f"{layer:>5}  {n:>8} "
        if general is not None:
            line += f"{general[layer]:>7} "
        lines.append(line + bar)
    return "\n".join(lines)


def run(args) -> int:
    from ..identify import lape, phases, ternary
    from ..identify.phases import layer_counts
    from ..stats import ActivationStats

    if args.method == "lape" and args.lam is not None:
        raise CliError("--lambda applies to --method ternary only")
    if args.method == "ternary" and args.filter_rate is not None:
        raise CliError("--filter-rate applies to --method lape only")
    stats = ActivationStats.load(args.stats)
    prefix = ActivationStats.load(args.prefix) if args.prefix else None
    if args.method == "lape":
        neurons = lape(stats, top_rate=args.top_rate,
                       filter_rate=0.95 if args.filter_rate is None else args.filter_rate,
                       activation_bar_ratio=args.bar_ratio, prefix=prefix)
    else:
        neurons = ternary(stats, top_rate=args.top_rate, bar_ratio=args.bar_ratio,
                          lam=_parse_lambda(args.lam), prefix=prefix)
    neurons.params["stats"] = args.stats
    if args.prefix:
        neurons.params["prefix_stats"] = args.prefix
    found = phases(neurons) if neurons.num_layers >= 4 else None  # also stored in the set
    neurons.save(args.out)

    per_layer = layer_counts(neurons).T.tolist()
    language, general = per_layer[0], (per_layer[1] if len(per_layer) > 1 else None)
    if args.json:
        print(json.dumps({
            "out": args.out, "method": neurons.method, "params": neurons.params,
            "languages": neurons.languages,
            "counts": {lang: neurons.count(lang) for lang in neurons.languages},
            "types": neurons.type_counts(), "distinct": neurons.num_unique(),
            "per_layer": {"language": language, "general": general},
            "per_layer_by_language": dict(zip(neurons.languages,
                                              neurons.per_layer_counts().tolist())),
            "phases": neurons.phases}, indent=2))
        return 0
    print(neurons.summary())
    print()
    print(_histogram(language, general))
    print()
    if found is None:
        print(f"phases: not computed ({neurons.num_layers} layers; four phases need at least 4)")
    else:
        print("phases:")
        for p in found:
            print(f"  {p.name:<22} layers {p.start:>3} - {p.stop - 1}")
    print(f"\nwrote {args.out}")
    return 0
