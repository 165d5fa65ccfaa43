"""`langneuron identify`: stats file -> neuron set file, with a summary, the per-layer
distribution and the four phases.

The methods, their flags and the checks of which flag belongs to which method all come from
`identify/registry.py`: a method registered there appears here without changes to this file.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List

from .options import add_output_options, check_out_file, fail, plural
from .outputs import check_outputs, keep_result

HIST_WIDTH = 40


def _flags() -> Dict[str, List]:
    """flag -> [(method, Option), ...] over every registered method, in registration order."""
    from ..identify.registry import methods
    flags: Dict[str, List] = {}
    for method in methods():
        for option in method.options:
            flags.setdefault(option.flag, []).append((method, option))
    return flags


def _methods():
    from ..identify.registry import methods
    return methods()


def _dest(flag: str) -> str:
    return "method_" + flag.lstrip("-").replace("-", "_")


def register(subparsers) -> None:
    from ..identify.registry import methods
    p = subparsers.add_parser(
        "identify", help="find language neurons in a stats file ("
                         + " or ".join(m.name for m in methods()) + ")",
        description="Identify language neurons from an ActivationStats file and write a "
                    "NeuronSet JSON file (with the four phases under `phases`).")
    p.add_argument("stats", metavar="STATS", help="stats file written by `langneuron scan`")
    p.add_argument("--method", choices=[m.name for m in methods()],
                   help="; ".join(f"{m.name}: {m.title}" for m in methods())
                   + " (required unless --experts)")
    p.add_argument("--experts", action="store_true",
                   help="mixture-of-experts models: find language experts (LAPE over experts' "
                        "routing; --top-rate, --filter-rate, --bar-ratio apply, defaults 0.05, "
                        "0.9, 0.9) and write OUT (JSON) with OUT's routing-divergence and "
                        "routed-share plots (.divergence.png, .routed-share.png)")
    p.add_argument("--prefix", metavar="PREFIX_STATS",
                   help="stats of the prompts alone: identify on STATS - PREFIX (response tokens)")
    for flag, uses in _flags().items():
        option = uses[0][1]
        if len(uses) == len(methods()):
            where = "default " + ", ".join(sorted({repr(o.default) for _, o in uses}))
        else:
            where = " and ".join(f"{m.name} only, default {o.default!r}" for m, o in uses)
        p.add_argument(flag, dest=_dest(flag), default=None, metavar=option.metavar or "X",
                       help=f"{option.help} ({where})")
    p.add_argument("--scores", metavar="FILE", help="also write per-neuron scores (activation "
                   "probabilities, LAPE and ternary entropies; safetensors) and FILE's "
                   "entropy-by-layer plot (.entropy.png)")
    add_output_options(p, out="neuron set JSON file to write", out_required=True,
                       json_help="print a machine-readable summary on stdout")
    p.set_defaults(func=run)


def method_options(args) -> dict:
    """The chosen method's keyword arguments from the flags given; a flag of another method is
    an error naming the methods that take it."""
    from ..identify.registry import get_method
    method = get_method(args.method)
    kwargs = {}
    for flag, uses in _flags().items():
        text = getattr(args, _dest(flag), None)
        if text is None:
            continue
        option = method.option(flag)
        if option is None:
            owners = " or ".join(f"--method {m.name}" for m, _ in uses)
            fail(f"{flag} applies to {owners} only")
        try:
            kwargs[option.kwarg] = option.parse(text)
        except ValueError as exc:
            fail(f"{flag} {exc}")
    return kwargs


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
    from ..identify import phases
    from ..identify.phases import layer_counts
    from ..identify.registry import get_method
    from ..stats import ActivationStats

    if args.experts:
        from .identify_experts import run_experts
        return run_experts(args, _dest)
    if args.method is None:
        fail("give --method (" + " or ".join(m.name for m in _methods()) + "), or --experts "
             "for the language experts of a mixture-of-experts model")
    method = get_method(args.method)
    kwargs = method_options(args)
    out = check_out_file(args.out, example="neurons.json")
    plot = Path(args.scores).with_name(Path(args.scores).stem + ".entropy.png") \
        if args.scores else None                    # written beside by `write_scores`
    check_outputs(inputs=[args.stats, args.prefix], files=[
        ("--out", args.out), ("--scores", args.scores), ("--scores (plot)", plot)])
    stats = ActivationStats.load(args.stats)
    prefix = ActivationStats.load(args.prefix) if args.prefix else None
    neurons = method.run(stats, prefix=prefix, **kwargs)
    neurons.params["stats"] = args.stats
    if args.prefix:
        neurons.params["prefix_stats"] = args.prefix
    found = phases(neurons) if neurons.num_layers >= 4 else None  # also stored in the set
    keep_result(out, neurons.save, "--out", "neuron set")
    if args.scores:
        from ..identify.scores import write_scores
        try:
            written = write_scores(stats, args.scores, prefix)
        except OSError as exc:
            fail(f"cannot write --scores {args.scores} ({exc.strerror or exc}); the neuron set "
                 f"is safe in {out}; rerun with another --scores to write the scores")
        print(*(f"wrote {p}" for p in written), sep="\n",
              file=sys.stderr if args.json else sys.stdout)

    per_layer = layer_counts(neurons).T.tolist()
    language, general = per_layer[0], (per_layer[1] if len(per_layer) > 1 else None)
    if args.json:
        print(json.dumps({
            "out": str(out), "method": neurons.method, "params": neurons.params,
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
        print(f"phases: not computed ({plural(neurons.num_layers, 'layer')}; four phases need "
              f"at least 4)")
    else:
        print("phases:")
        for p in found:
            print(f"  {p.name:<22} layers {p.start:>3} - {p.stop - 1}")
    print(f"\nwrote {out}")
    return 0
