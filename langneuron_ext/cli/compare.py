"""`langneuron compare`: how much two neuron sets agree, language by language.

Inputs: our NeuronSet JSON; a bare `{lang: {layer: [ids]}}` JSON map (NJUNLP's released
`mask_released.json`); or a torch-format mask (LAPE `*.neuron.pth`, NJUNLP `mask.*`:
list[language][layer] -> ids). The last two record neither language names nor the MLP width:
the names come from --languages (or --languages-a / --languages-b when the files differ, e.g.
LAPE's Mistral file has 6 entries and its LLaMA file 7), the width from --width, else from the
other input when that records it, else from the largest id (then said so).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

from .options import fail, parse_languages, plural


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="overlap of two neuron sets per language",
        description="Compare two neuron sets (our JSON, a bare {lang: {layer: ids}} JSON such as "
                    "NJUNLP's released mask, a LAPE *.neuron.pth or an NJUNLP mask) per "
                    "language: sizes, intersection, Jaccard, and recall of B in A.")
    p.add_argument("a", metavar="A", help="first neuron set")
    p.add_argument("b", metavar="B", help="second neuron set")
    p.add_argument("--languages", metavar="LIST",
                   help="language names of the entries of a torch-format mask, in the file's "
                        "order (both inputs)")
    p.add_argument("--languages-a", metavar="LIST", help="the same for A only")
    p.add_argument("--languages-b", metavar="LIST", help="the same for B only")
    p.add_argument("--width", type=int, metavar="N",
                   help="neurons per layer (MLP intermediate size) of files that do not record "
                        "it, e.g. 14336 for Mistral-7B, 11008 for LLaMA-2-7B (default: the "
                        "other input's, else the largest id + 1)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON on stdout")
    p.set_defaults(func=run)


def _is_torch_file(path: Path) -> bool:
    return path.suffix != ".json"


def load_any(path: str, languages: Optional[List[str]], width: Optional[int] = None,
             option: str = "--languages"):
    """A NeuronSet from our JSON, a bare JSON map or a torch-format mask.

    width: the intermediate size for files that do not record it (None: largest id + 1, and
    `params["intermediate_size_inferred"]` is set)."""
    from ..filekinds import FOLDER, STATS, kind_of
    from ..identify import NeuronSet, load_lape_masks
    p = Path(path)
    if not p.exists():
        fail(f"{p} does not exist; give a neuron set JSON (`langneuron identify --out`), a "
             f"{{language: {{layer: [ids]}}}} JSON map or a LAPE / NJUNLP mask file")
    kind = kind_of(p)
    if kind == FOLDER:
        fail(f"{p} is a folder; give a neuron set file (e.g. {p / 'neurons.json'})")
    if kind == STATS:
        fail(f"{p} is a stats file (`langneuron scan`), not a neuron set; find its neurons first "
             f"with `langneuron identify {p} --method lape --out neurons.json` and compare that")
    if _is_torch_file(p):
        if not languages:
            fail(f"{p} is a torch-format mask without language names; give them with "
                 f"{option} en,zh,... in the file's order")
        return load_lape_masks(p, languages, intermediate_size=width)
    try:
        data = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        fail(f"{p} is not JSON: {exc}")
    if isinstance(data, dict) and "method" in data:
        return NeuronSet.load(p)
    if not (isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values())):
        fail(f"{p} is neither a neuron set (`langneuron identify --out`) nor a "
             f"{{language: {{layer: [ids]}}}} map")
    if languages:
        fail(f"{p} names its languages itself; {option} is for torch-format masks only")
    layers = [int(k) for per_layer in data.values() for k in per_layer]
    ids = [int(i) for per_layer in data.values() for v in per_layer.values() for i in v]
    largest = max(ids, default=-1)
    params = {"source": str(p)}
    if width is None:
        width, params["intermediate_size_inferred"] = largest + 1 if largest >= 0 else 1, True
    elif largest >= width:
        fail(f"{p} has neuron id {largest}, too large for --width {width}")
    return NeuronSet("imported", params, list(data), max(layers, default=0) + 1, width, data)


def _recorded_width(neurons) -> Optional[int]:
    return None if neurons.params.get("intermediate_size_inferred") else neurons.intermediate_size


def _with_shape(neurons, num_layers: int, width: int, source: str):
    """The same neurons in a set of the given shape (for files that do not record it)."""
    from ..identify import NeuronSet
    params = dict(neurons.params, width_source=source)
    return NeuronSet(neurons.method, params, neurons.languages, num_layers, width,
                     neurons.neurons)


def _layers(neurons, other_layers: int) -> int:
    """A bare JSON map records no layer count (trailing empty layers vanish): take the other's."""
    imported = neurons.method == "imported"
    return max(neurons.num_layers, other_layers) if imported else neurons.num_layers


def load_pair(args):
    """Both inputs, with one width: --width, else the one an input records, else the largest
    id + 1 over both. `params["width_source"]` says where each set's width came from."""
    langs_a = parse_languages(args.languages_a, "--languages-a") or parse_languages(
        args.languages)
    langs_b = parse_languages(args.languages_b, "--languages-b") or parse_languages(
        args.languages)
    if args.width is not None and args.width < 1:
        fail(f"--width must be a positive number of neurons, got {args.width}")
    opt_a = "--languages-a" if args.languages_a else "--languages (or --languages-a)"
    opt_b = "--languages-b" if args.languages_b else "--languages (or --languages-b)"
    sets = [load_any(args.a, langs_a, None, opt_a), load_any(args.b, langs_b, None, opt_b)]
    recorded = [_recorded_width(s) for s in sets]
    if args.width is not None:
        width, source = args.width, "--width"
    elif any(w is not None for w in recorded):
        width, source = next(w for w in recorded if w is not None), "the other input"
    else:
        width, source = max(s.intermediate_size for s in sets), "largest id + 1"
    layers = max(s.num_layers for s in sets)
    out = []
    for name, s, own in zip("AB", sets, recorded):
        if own is not None:
            s.params["width_source"] = "file"
            out.append(s)
            continue
        if s.intermediate_size > width:
            fail(f"{name} has neuron id {s.intermediate_size - 1}, too large for {width} "
                 f"neurons per layer (from {source}): are both sets of one model?")
        out.append(_with_shape(s, _layers(s, layers), width, source))
    return out[0], out[1]


def compare(a, b) -> list:
    """Per shared language: |A|, |B|, |A & B|, Jaccard and the share of B found in A."""
    if (a.num_layers, a.intermediate_size) != (b.num_layers, b.intermediate_size):
        fail(f"the sets are for different shapes: {a.num_layers} layers x "
             f"{a.intermediate_size} neurons vs {b.num_layers} x {b.intermediate_size}; "
             f"compare sets of one model (for masks that do not record the width, give --width)")
    shared = [lang for lang in a.languages if lang in b.languages]
    if not shared:
        fail(f"no language in common: {', '.join(a.languages)} vs {', '.join(b.languages)}; "
             f"name the entries of torch-format masks with --languages-a / --languages-b")
    rows = []
    for lang in shared:
        ma, mb = a.mask(lang), b.mask(lang)
        inter, union = int((ma & mb).sum()), int((ma | mb).sum())
        nb = int(mb.sum())
        rows.append({"language": lang, "a": int(ma.sum()), "b": nb, "both": inter,
                     "jaccard": inter / union if union else 1.0,
                     "b_found_in_a": inter / nb if nb else 1.0})
    return rows


def _describe(path: str, s) -> dict:
    return {"path": path, "method": s.method, "languages": s.languages,
            "num_layers": s.num_layers, "intermediate_size": s.intermediate_size,
            "width_source": s.params.get("width_source")}


def run(args) -> int:
    a, b = load_pair(args)
    rows = compare(a, b)
    if args.json:
        print(json.dumps({"a": _describe(args.a, a), "b": _describe(args.b, b),
                          "rows": rows}, indent=2))
        return 0
    guessed = a.params.get("width_source") == "largest id + 1"
    print(f"{plural(a.num_layers, 'layer')} x {a.intermediate_size} neurons"
          + (" (width guessed from the largest id; give --width N to set it)" if guessed else "")
          + f"; {plural(len(rows), 'language')} in common")
    print(f"{'language':<10} {'A':>7} {'B':>7} {'both':>7} {'jaccard':>8} {'B in A':>7}")
    for r in rows:
        print(f"{r['language']:<10} {r['a']:>7} {r['b']:>7} {r['both']:>7} "
              f"{r['jaccard']:>8.3f} {r['b_found_in_a']:>7.3f}")
    return 0
