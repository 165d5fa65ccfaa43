"""`langneuron alignment`: what aligning a model changed in its language neurons."""
from __future__ import annotations

import json

from .options import (
    DTYPES,
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
    g = p.add_argument_group(
        "representation similarity on parallel text",
        "Also measure alignment directly: per layer, how close each language's mean hidden "
        "state of a paragraph is to that of its English version, against the other English "
        "paragraphs (cosine margin and retrieval accuracy), in both models.")
    g.add_argument("--parallel", metavar="FILE.tsv",
                   help="parallel paragraphs: a header row of language codes (with en, all "
                        "among the scanned languages), then one paragraph per language a row, "
                        "tab-separated; needs --model-before and --model-after")
    g.add_argument("--model-before", metavar="NAME_OR_PATH",
                   help="the model BEFORE was scanned from (built-in name, folder or HF id)")
    g.add_argument("--model-after", metavar="NAME_OR_PATH",
                   help="the model AFTER was scanned from (a folder of the merged weights)")
    g.add_argument("--dtype", default="float32", choices=DTYPES,
                   help="dtype the two models are loaded in (default float32)")
    g.add_argument("--batch-size", type=int, default=8, metavar="B",
                   help="paragraphs per forward (default 8)")
    g.add_argument("--max-length", type=int, default=256, metavar="T",
                   help="tokens kept of each paragraph (default 256)")
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
    from ..report.representation import PLOT
    check_outputs(inputs=[args.before, args.after, args.parallel], files=[("--out", args.out)],
                  dirs=[("--out-dir", args.out_dir, (*REPORT_FILES, PLOT))])
    out_dir = check_out_dir(args.out_dir) if args.out_dir else None
    parallel = _check_parallel_options(args)
    result = compare(args.before, args.after, trained=trained, top_rate=args.top_rate,
                     bar_ratio=args.bar_ratio, lam=lam)
    data = result.to_dict()
    if parallel is not None:
        data["representation"] = _representation(args, parallel, result.num_layers)
    if out_file is not None:
        keep_json(out_file, data, "--out", "comparison")
    if out_dir is not None:
        try:
            write_alignment_report(out_dir, data, run={"command": produced_by(args)})
        except OSError as exc:           # the comparison (and the models' measure) is kept
            kept = keep_json(out_dir / "alignment.json", data, "--out-dir", "comparison")
            fail(f"cannot write the report into {out_dir} ({exc.strerror or exc}); the "
                 f"comparison is safe in {kept}")
    if args.json:
        print(json.dumps(data, indent=1))
        return 0
    print(result.summary())
    if parallel is not None:
        print(_representation_summary(data["representation"]))
    for path in filter(None, (out_file, out_dir)):
        print(f"wrote {path}")
    return 0


def _check_parallel_options(args):
    """The parallel text ({lang: [paragraph]}) when --parallel is given, after checking, before
    any model loads, that its languages are among those both scans cover."""
    from ..representation import ParallelTextError, load_parallel
    from ..stats import ActivationStats

    given = {"--parallel": args.parallel, "--model-before": args.model_before,
             "--model-after": args.model_after}
    if not any(given.values()):
        return None
    missing = [name for name, value in given.items() if not value]
    if missing:
        fail(f"{', '.join(missing)} missing: the representation measure needs --parallel "
             f"FILE.tsv, --model-before and --model-after together")
    if args.batch_size < 1 or args.max_length < 1:
        fail("--batch-size and --max-length must be at least 1")
    try:
        parallel = load_parallel(args.parallel)
    except ParallelTextError as exc:
        fail(str(exc))
    scanned = [lg for lg in ActivationStats.load(args.before).languages
               if lg in ActivationStats.load(args.after).languages]
    outside = [lg for lg in parallel if lg not in scanned]
    if outside:
        fail(f"--parallel {args.parallel} has language(s) {', '.join(outside)} the models were "
             f"not scanned on (scanned: {', '.join(scanned)}); give a file whose columns are "
             f"among the scanned languages")
    return parallel


def _representation(args, parallel, num_layers: int) -> dict:
    """{"before": ..., "after": ...}: `representation_similarity` of each model, loaded one at
    a time."""
    from ..models.loading import load_model
    from ..representation import representation_similarity

    out = {}
    for which, name in (("before", args.model_before), ("after", args.model_after)):
        model, tok = load_model(name, dtype=args.dtype, progress=False)
        result = representation_similarity(model, tok, parallel, batch_size=args.batch_size,
                                           max_length=args.max_length, model_name=name)
        del model
        if result["num_layers"] != num_layers:
            fail(f"--model-{which} {name} has {result['num_layers']} decoder layers, the scans "
                 f"{num_layers}; give the models the scans come from")
        out[which] = result
    return out


def _representation_summary(rep: dict) -> str:
    """Per language: mean over layers of retrieval and margin, before -> after."""
    def mean(values):
        return sum(values) / len(values)

    before, after = rep["before"], rep["after"]
    lines = [f"representation similarity to English ({before['paragraphs']} parallel "
             f"paragraphs, mean over layers): retrieval before -> after, margin before -> after"]
    for lang in before["languages"]:
        b, a = before["layers"][lang], after["layers"][lang]
        lines.append(f"{lang:<9} {mean(b['retrieval']):.3f} -> {mean(a['retrieval']):.3f}   "
                     f"{mean(b['margin']):+.4f} -> {mean(a['margin']):+.4f}")
    return "\n".join(lines)
