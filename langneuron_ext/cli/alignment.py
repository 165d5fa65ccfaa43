"""`langneuron alignment`: what aligning a model changed in its language neurons."""
from __future__ import annotations

import json

from .options import (
    add_output_options,
    check_out_dir,
    check_out_file,
    fail,
    parse_languages,
    produced_by,
)
from .outputs import check_outputs, keep_json


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "alignment", help="language neurons of a model before and after alignment",
        description="Identify specific / related / general neurons in two scans of the same "
                    "model (before and after multilingual alignment) with the same options and "
                    "compare them: neurons per language and type (trained and untrained "
                    "languages apart), per layer with each model's four phases, neurons shared "
                    "by n languages, per-language overlap, and the change in activation "
                    "probability of each language's neurons per layer (Zhang et al. 2025).")
    p.add_argument("before", metavar="BEFORE", help="stats file of the model before alignment")
    p.add_argument("after", metavar="AFTER", help="stats file of the aligned model")
    p.add_argument("--trained", required=True,
                   help="comma-separated languages the alignment trained on, e.g. en,zh")
    p.add_argument("--top-rate", type=float, default=0.01,
                   help="share of all neurons to select (default 0.01), both models")
    p.add_argument("--bar-ratio", type=float, default=0.95,
                   help="quantile of P above which a neuron belongs to a language (default 0.95)")
    p.add_argument("--lambda", dest="lam", default="auto",
                   help="'auto' (default, bisection in [0, 0.2] per model) or a number >= 0")
    add_output_options(p, out="write the comparison JSON to this file",
                       out_dir="write alignment.json, alignment.md and plots into this folder",
                       json_help="print the comparison as one JSON object on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..alignment import compare
    from ..report.alignment import write_alignment_report

    trained = parse_languages(args.trained, "--trained")
    lam = args.lam
    if lam != "auto":
        try:
            lam = float(lam)
        except ValueError:
            fail(f"--lambda must be 'auto' or a number, got {args.lam!r}")
    out_file = check_out_file(args.out, "alignment.json")
    from ..report.alignment import REPORT_FILES
    check_outputs(inputs=[args.before, args.after], files=[("--out", args.out)],
                  dirs=[("--out-dir", args.out_dir, REPORT_FILES)])
    out_dir = check_out_dir(args.out_dir) if args.out_dir else None
    result = compare(args.before, args.after, trained=trained, top_rate=args.top_rate,
                     bar_ratio=args.bar_ratio, lam=lam)
    data = result.to_dict()
    if out_file is not None:
        keep_json(out_file, data, "--out", "comparison")
    if out_dir is not None:
        write_alignment_report(out_dir, data, run={"command": produced_by(args)})
    if args.json:
        print(json.dumps(data, indent=1))
        return 0
    print(result.summary())
    for path in filter(None, (out_file, out_dir)):
        print(f"wrote {path}")
    return 0
