"""`langneuron steer`: generate with and without steering language neurons, side by side.

    langneuron steer --model gemma-3-270m --neurons neurons.json --stats stats.safetensors \\
        --deactivate fr --activate de --prompt "Le système Debian est"
"""
from __future__ import annotations

import json
from typing import List, Optional

from . import CliError


def register(subparsers) -> None:
    from .scan import add_model_arguments
    p = subparsers.add_parser(
        "steer", help="generate with language neurons deactivated / activated",
        description="Generate from prompts twice, without and with steering: --deactivate sets "
                    "the given languages' neurons to 0, --activate sets them to their mean "
                    "activation from --stats (or to --value), --add shifts them by --value.")
    add_model_arguments(p)
    p.add_argument("--neurons", required=True, metavar="FILE",
                   help="neuron set JSON written by `langneuron identify`")
    p.add_argument("--stats", metavar="FILE",
                   help="stats file of a scan with --sums (needed by --activate with the "
                        "default --value mean)")
    p.add_argument("--deactivate", metavar="LANGS", help="comma-separated languages to set to 0")
    p.add_argument("--activate", metavar="LANGS",
                   help="comma-separated languages to set to --value (default: their mean)")
    p.add_argument("--add", metavar="LANGS", help="comma-separated languages to shift by --value")
    p.add_argument("--value", default=None,
                   help="'mean' or a number: the activation for --activate (default mean) and "
                        "the shift for --add (required with --add)")
    p.add_argument("--layers", metavar="LIST",
                   help="steer only these layers, e.g. 0-3,15,16 (default: all)")
    p.add_argument("--prompt", action="append", default=[], required=True,
                   help="a prompt (repeat for several)")
    p.add_argument("--max-new-tokens", type=int, default=32, metavar="N",
                   help="tokens to generate per prompt (default 32)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def parse_languages(text: Optional[str], option: str) -> List[str]:
    if text is None:
        return []
    langs = [part.strip() for part in text.split(",") if part.strip()]
    if not langs:
        raise CliError(f"{option} is empty; give comma-separated languages such as fr,de")
    return langs


def parse_layers(text: Optional[str]) -> Optional[List[int]]:
    """'0-3,15' -> [0, 1, 2, 3, 15]; None -> None (all layers)."""
    if text is None:
        return None
    layers: List[int] = []
    for part in text.split(","):
        part = part.strip()
        try:
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, part)
                layers += list(range(int(lo), int(hi) + 1))
            elif part:
                layers.append(int(part))
        except ValueError:
            raise CliError(f"--layers {text!r} is not a list of layers such as 0-3,15") from None
    if not layers:
        raise CliError("--layers is empty; give layers such as 0-3,15 or leave it out")
    return layers


def parse_value(text: Optional[str], default="mean"):
    if text is None:
        return default
    if text == "mean":
        return "mean"
    try:
        return float(text)
    except ValueError:
        raise CliError(f"--value must be 'mean' or a number, got {text!r}") from None


def build_edits(neurons, stats, args, layers):
    """The interventions the options ask for, in order: deactivate, activate, add."""
    from ..steer import interventions
    deactivate = parse_languages(args.deactivate, "--deactivate")
    activate = parse_languages(args.activate, "--activate")
    add = parse_languages(args.add, "--add")
    if not (deactivate or activate or add):
        raise CliError("nothing to steer: give --deactivate, --activate and/or --add languages")
    if add and args.value is None:
        raise CliError("--add needs --value (the shift, a number)")
    for lang in deactivate + activate + add:
        if lang not in neurons.languages:
            raise CliError(f"language {lang!r} is not in {args.neurons} (it has "
                           f"{', '.join(neurons.languages)})")
    edits = []
    if deactivate:
        edits += interventions(neurons, deactivate, "deactivate", layers=layers)
    if activate:
        value = parse_value(args.value)
        if value == "mean" and stats is None:
            raise CliError("--activate with the default --value mean needs --stats (a scan "
                           "with --sums); or give --value NUMBER")
        edits += interventions(neurons, activate, "activate", value=value, stats=stats,
                               layers=layers)
    if add:
        edits += interventions(neurons, add, "add", value=parse_value(args.value), stats=stats,
                               layers=layers)
    return edits


def run(args) -> int:
    from ..evaluate.langcontrol import generate_texts, identify_language
    from ..identify.neuron_set import NeuronSet
    from ..models.loading import load_model
    from ..stats import ActivationStats
    from ..steer import steering

    if args.max_new_tokens < 1:
        raise CliError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    neurons = NeuronSet.load(args.neurons)
    stats = ActivationStats.load(args.stats) if args.stats else None
    layers = parse_layers(args.layers)
    edits = build_edits(neurons, stats, args, layers)
    model, tokenizer = load_model(args.model, gguf_file=args.gguf, dtype=args.dtype,
                                  device=args.device)
    plain = generate_texts(model, tokenizer, args.prompt, args.max_new_tokens)
    with steering(model, edits, impl=args.impl):
        steered = generate_texts(model, tokenizer, args.prompt, args.max_new_tokens)
    rows = [{"prompt": p, "unsteered": a, "steered": b,
             "language_unsteered": identify_language(a), "language_steered": identify_language(b)}
            for p, a, b in zip(args.prompt, plain, steered)]
    if args.json:
        print(json.dumps({"neurons_changed": sum(e.size for e in edits), "results": rows},
                         indent=1, ensure_ascii=False))
        return 0
    print(f"steering {sum(e.size for e in edits)} neurons "
          f"(deactivate: {args.deactivate or '-'}, activate: {args.activate or '-'}, "
          f"add: {args.add or '-'})")
    for row in rows:
        print(f"\nprompt: {row['prompt']}")
        print(f"  without steering [{row['language_unsteered']}]: {row['unsteered']}")
        print(f"  with steering    [{row['language_steered']}]: {row['steered']}")
    return 0
