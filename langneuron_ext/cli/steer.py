"""`langneuron steer`: generate with and without steering language neurons, side by side.

    langneuron steer --model gemma-3-270m --neurons neurons.json --stats stats.safetensors \\
        --deactivate fr --activate de --prompt "Le système Debian est"
    langneuron steer ... --activate de --value median --stats hist.safetensors   # scan --hist
    langneuron steer ... --scale de=2 --scale fr=0.5 --prompt "..."     # amplify / damp

Everything is checked before the model is loaded: a language named in two of --deactivate /
--activate / --add / --scale, --value without --activate or --add, a statistic the --stats file
does not carry, a scale factor that is not a finite number, an empty prompt.
"""
from __future__ import annotations

import json

from .options import (
    add_model_options,
    check_min,
    fail,
    parse_languages,
    parse_layers,
    plural,
    resolve_device_and_impl,
)


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "steer", help="generate with language neurons deactivated / activated",
        description="Generate from prompts twice, without and with steering: --deactivate sets "
                    "the given languages' neurons to 0, --activate sets them to their mean "
                    "activation from --stats (or to --value: mean, median, pQ or a number), "
                    "--add shifts them by --value, --scale LANG=α multiplies them by α.")
    add_model_options(p, auto_dtype=True)
    p.add_argument("--neurons", required=True, metavar="FILE",
                   help="neuron set JSON written by `langneuron identify`")
    p.add_argument("--stats", metavar="FILE",
                   help="stats file of a scan with --sums (needed by --activate with the "
                        "default --value mean)")
    p.add_argument("--deactivate", metavar="LANGS", help="comma-separated languages to set to 0")
    p.add_argument("--activate", metavar="LANGS",
                   help="comma-separated languages to set to --value (default: their mean)")
    p.add_argument("--add", metavar="LANGS", help="comma-separated languages to shift by --value")
    p.add_argument("--scale", action="append", default=[], metavar="LANG=α",
                   help="multiply LANG's neurons by α (2 amplifies, 0.5 damps, 0 deactivates); "
                        "repeat or comma-separate for several, e.g. de=2,fr=0.5")
    p.add_argument("--value", default=None,
                   help="mean | median | pQ (the Q-th percentile, e.g. p90) | a number: the "
                        "activation for --activate (default mean; mean needs --stats from a "
                        "scan with --sums, median / pQ one with --hist) and the shift for --add "
                        "(required with --add)")
    p.add_argument("--layers", metavar="LIST",
                   help="steer only these layers, e.g. 0-3,15,16 (default: all)")
    p.add_argument("--prompt", action="append", default=[], required=True,
                   help="a prompt (repeat for several)")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N",
                   help="tokens to generate per prompt (default 32)")
    p.add_argument("--json", action="store_true",
                   help="print the result as JSON on stdout (nothing else)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def parse_value(text, default="mean"):
    from ..steer import SteeringError
    from ..steer import parse_value as parse
    if text is None:
        return default
    try:
        return parse(text)
    except SteeringError:
        fail(f"--value must be mean, median, pQ (a percentile, e.g. p90) or a finite number, "
             f"got {text!r}")


def parse_scales(items, known, known_from) -> dict:
    """--scale LANG=α (repeated or comma-separated) -> {lang: α}."""
    import math
    scales = {}
    for item in ",".join(items).split(","):
        if not item.strip():
            continue
        lang, sep, text = item.partition("=")
        lang = lang.strip()
        try:
            factor = float(text) if sep else None
        except ValueError:
            factor = None
        if not lang or factor is None or not math.isfinite(factor):
            fail(f"--scale {item!r} is not LANG=α with a finite number α, e.g. --scale de=2")
        if lang not in known:
            fail(f"--scale {item!r}: {lang!r} is not found in {known_from} (it has "
                 f"{', '.join(known)})")
        if lang in scales:
            fail(f"--scale names {lang} twice; give each language one factor")
        scales[lang] = factor
    return scales


def check_options(args, neurons, stats=None):
    """(deactivate, activate, add, value, scales); every contradiction is an error."""
    known = dict(known=neurons.languages, known_from=args.neurons)
    deactivate = parse_languages(args.deactivate, "--deactivate", **known) or []
    activate = parse_languages(args.activate, "--activate", **known) or []
    add = parse_languages(args.add, "--add", **known) or []
    scales = parse_scales(getattr(args, "scale", None) or [], neurons.languages, args.neurons)
    if not (deactivate or activate or add or scales):
        fail("nothing to steer: give --deactivate, --activate, --add and/or --scale languages")
    named = {"--deactivate": deactivate, "--activate": activate, "--add": add,
             "--scale": list(scales)}
    options = list(named)
    for i, a in enumerate(options):
        for b in options[i + 1:]:
            both = [lang for lang in named[a] if lang in named[b]]
            if both:
                fail(f"{', '.join(both)} given to both {a} and {b}: its neurons would be "
                     f"changed twice; name each language in one of them")
    if args.value is not None and not (activate or add):
        fail("--value sets the activation for --activate or the shift for --add; "
             "--deactivate always sets to 0, so drop --value")
    if add and args.value is None:
        fail("--add needs --value (the shift, a number)")
    value = parse_value(args.value)
    if (activate or add) and isinstance(value, str):
        need = "--sums" if value == "mean" else "--hist"
        if args.stats is None:
            fail(f"--value {value} needs --stats (a scan with {need}); or give --value NUMBER")
        field = "sums" if value == "mean" else "hist"
        if stats is not None and getattr(stats, field) is None:
            fail(f"--value {value} needs a stats file from a scan with {need}, but "
                 f"{args.stats} has none; rescan with {need} or give --value NUMBER")
    for prompt in args.prompt:
        if not prompt.strip():
            fail("--prompt is empty; give some text to continue, e.g. --prompt 'Le système'")
    return deactivate, activate, add, value, scales


def build_edits(neurons, stats, args, layers):
    """The interventions the options ask for, in order: deactivate, activate, add, scale."""
    from ..steer import interventions
    deactivate, activate, add, value, scales = check_options(args, neurons, stats)
    edits = []
    if deactivate:
        edits += interventions(neurons, deactivate, "deactivate", layers=layers)
    if activate:
        edits += interventions(neurons, activate, "activate", value=value, stats=stats,
                               layers=layers)
    if add:
        edits += interventions(neurons, add, "add", value=value, stats=stats, layers=layers)
    for lang, factor in scales.items():
        edits += interventions(neurons, [lang], "scale", layers=layers, factor=factor)
    return edits


def run(args) -> int:
    from ..evaluate.langcontrol import generate_texts, identify_language
    from ..identify.neuron_set import NeuronSet
    from ..models.loading import load_model
    from ..stats import ActivationStats
    from ..steer import steering

    check_min(args, "max_new_tokens", 1)
    resolve_device_and_impl(args)
    neurons = NeuronSet.load(args.neurons)
    stats = ActivationStats.load(args.stats) if args.stats else None
    if stats is not None and stats.sums is None and args.activate and args.value in (None,
                                                                                      "mean"):
        fail(f"--activate at the mean activation needs sums, and --stats {args.stats} has none; "
             f"rescan with `langneuron scan --sums` or give --value NUMBER")
    layers = parse_layers(args.layers)
    edits = build_edits(neurons, stats, args, layers)
    model, tokenizer = load_model(args.model, gguf_file=args.gguf, dtype=args.dtype,
                                  device=args.device, progress=not args.no_progress)
    plain = generate_texts(model, tokenizer, args.prompt, args.max_new_tokens)
    with steering(model, edits, impl=args.impl):
        steered = generate_texts(model, tokenizer, args.prompt, args.max_new_tokens)
    rows = [{"prompt": p, "unsteered": a, "steered": b,
             "language_unsteered": identify_language(a), "language_steered": identify_language(b)}
            for p, a, b in zip(args.prompt, plain, steered)]
    changed = sum(e.size for e in edits)
    if args.json:
        print(json.dumps({"neurons_changed": changed, "results": rows}, indent=1,
                         ensure_ascii=False))
        return 0
    print(f"steering {plural(changed, 'neuron')} "
          f"(deactivate: {args.deactivate or '-'}, activate: {args.activate or '-'}, "
          f"add: {args.add or '-'}, scale: {','.join(args.scale) or '-'})")
    for row in rows:
        print(f"\nprompt: {row['prompt']}")
        print(f"  without steering [{row['language_unsteered']}]: {row['unsteered']}")
        print(f"  with steering    [{row['language_steered']}]: {row['steered']}")
    return 0
