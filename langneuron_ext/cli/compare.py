"""`langneuron compare`: how much two neuron sets agree, language by language."""
from __future__ import annotations

import json
from pathlib import Path

from . import CliError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="overlap of two neuron sets per language",
        description="Compare two neuron sets (our JSON, a LAPE *.neuron.pth or an NJUNLP mask) "
                    "per language: sizes, intersection, Jaccard, and recall of B in A.")
    p.add_argument("a", metavar="A")
    p.add_argument("b", metavar="B")
    p.add_argument("--languages", help="comma-separated language names for a torch-format file "
                                       "(LAPE .neuron.pth or NJUNLP mask), in the file's order")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=run)


def load_any(path: str, languages):
    """A NeuronSet from our JSON, or from a torch-format mask when language names are given."""
    from ..identify import NeuronSet, load_lape_masks
    p = Path(path)
    if not p.exists():
        raise CliError(f"{p} does not exist")
    if p.suffix == ".json":
        return NeuronSet.load(p)
    if not languages:
        raise CliError(f"{p} is a torch-format mask; give its language names with "
                       f"--languages en,zh,... in the file's order")
    return load_lape_masks(p, languages)


def compare(a, b) -> list:
    """Per shared language: |A|, |B|, |A & B|, Jaccard and the share of B found in A."""
    if (a.num_layers, a.intermediate_size) != (b.num_layers, b.intermediate_size):
        raise CliError(f"the sets are for different shapes: {a.num_layers}x"
                       f"{a.intermediate_size} vs {b.num_layers}x{b.intermediate_size}")
    shared = [lang for lang in a.languages if lang in b.languages]
    if not shared:
        raise CliError(f"no language in common: {a.languages} vs {b.languages}")
    rows = []
    for lang in shared:
        ma, mb = a.mask(lang), b.mask(lang)
        inter, union = int((ma & mb).sum()), int((ma | mb).sum())
        nb = int(mb.sum())
        rows.append({"language": lang, "a": int(ma.sum()), "b": nb, "both": inter,
                     "jaccard": inter / union if union else 1.0,
                     "b_found_in_a": inter / nb if nb else 1.0})
    return rows


def run(args) -> int:
    languages = args.languages.split(",") if args.languages else None
    rows = compare(load_any(args.a, languages), load_any(args.b, languages))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'language':<10} {'A':>7} {'B':>7} {'both':>7} {'jaccard':>8} {'B in A':>7}")
    for r in rows:
        print(f"{r['language']:<10} {r['a']:>7} {r['b']:>7} {r['both']:>7} "
              f"{r['jaccard']:>8.3f} {r['b_found_in_a']:>7.3f}")
    return 0
