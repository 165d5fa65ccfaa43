"""`langneuron report`: plots and a report.md for a neuron set (with stats and NLL results)."""
from __future__ import annotations

import json
from pathlib import Path

from .options import add_output_options, check_out_dir, fail, produced_by
from .outputs import check_outputs


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="write plots and report.md for a neuron set",
        description="Write plots (neurons per layer, overlap between languages, the four phases, "
                    "the NLL change matrix) and a report.md that gathers them. All inputs must "
                    "come from the same model.")
    p.add_argument("neurons", metavar="NEURONS", help="neuron set JSON (langneuron identify)")
    p.add_argument("--stats", metavar="FILE", help="stats file, for the token summary")
    p.add_argument("--nll", metavar="FILE",
                   help="NLL matrix JSON: the file of `langneuron evaluate --out` (its "
                        "output-language control is reported too) or of the demo")
    p.add_argument("--language-control", action="append", default=[], metavar="FILE",
                   help="output-language control JSON (the demo's control_SRC_TGT.json); "
                        "repeatable")
    p.add_argument("--alignment", metavar="FILE",
                   help="alignment JSON (`langneuron alignment --out`): adds its section and plots")
    p.add_argument("--experts", metavar="FILE",
                   help="language experts JSON (`langneuron identify --experts --out`, MoE "
                        "models): adds their section and routing plots")
    p.add_argument("--steer-bench", metavar="FILE",
                   help="steering-benchmark JSON (`langneuron steer-bench`): its table, summary "
                        "and success-against-fluency plot")
    add_output_options(p, out_dir="folder for report.md and the PNGs", out_dir_required=True,
                       json_help="print the written files as JSON on stdout")
    p.set_defaults(func=run)


def _read_json(path_text: str, option: str, writer: str):
    path = Path(path_text)
    if not path.exists():
        fail(f"{option} {path} does not exist; write it with `{writer}`")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        fail(f"{option} {path} is not JSON ({exc}); write it with `{writer}`")


def run(args) -> int:
    from ..identify import NeuronSet, phases
    from ..report import ReportError, control_markdown, nll_from_json, write_report_files
    from ..report.alignment import REPORT_FILES as ALIGNMENT_FILES
    from ..report.experts import REPORT_FILES as EXPERTS_FILES
    from ..report.markdown import REPORT_FILES
    from ..stats import ActivationStats
    check_outputs(inputs=[args.neurons, args.stats, args.nll, *args.language_control,
                          args.alignment, args.experts, args.steer_bench],
                  dirs=[("--out-dir", args.out_dir,
                         (*REPORT_FILES, *ALIGNMENT_FILES, *EXPERTS_FILES,
                          "steer_bench.csv", "steer_bench.png"))])
    out_dir = check_out_dir(args.out_dir)
    neuron_set = NeuronSet.load(args.neurons)
    if neuron_set.phases is None and neuron_set.num_layers >= 4:
        phases(neuron_set)
    stats = ActivationStats.load(args.stats) if args.stats else None
    nll, controls = None, []
    try:
        if args.nll:
            data = _read_json(args.nll, "--nll", f"langneuron evaluate ... --out {args.nll}")
            nll, controls = nll_from_json(data, source=f"--nll {args.nll}")
        given = {}                                   # one file given twice is read once
        for path in args.language_control:
            given.setdefault(Path(path).resolve(), path)
        for path in given.values():
            data = _read_json(path, "--language-control", "langneuron demo")
            found = data if isinstance(data, list) else data.get("language_control", [data])
            if not all(isinstance(c, dict) and "target_share" in c for c in found):
                fail(f"--language-control {path} holds no output-language control result; "
                     f"give the demo's control_SRC_TGT.json or `langneuron evaluate --out` file")
            controls += found
        # a result given twice (the same file twice, or in --nll and --language-control) is
        # one section
        unique = {json.dumps(c, sort_keys=True, default=str): c for c in controls}
        controls = list(unique.values())
        files = write_report_files(out_dir, neuron_set, stats=stats, nll=nll,
                                   language_control=control_markdown(controls) or None,
                                   command=produced_by(args))
        if args.alignment:
            from ..report.alignment import append_alignment_section
            files += append_alignment_section(out_dir, files[0], args.alignment)
        if args.experts:
            from ..report.experts import append_experts_section
            files += append_experts_section(out_dir, files[0], args.experts)
        if args.steer_bench:
            from ..report.steer_bench import append_section
            files += append_section(out_dir, files[0],
                                    _read_json(args.steer_bench, "--steer-bench",
                                               "langneuron steer-bench --out-dir DIR"))
    except ReportError as exc:
        fail(f"{exc} (NEURONS {args.neurons}"
             + (f", --stats {args.stats}" if args.stats else "")
             + (f", --nll {args.nll}" if args.nll else "") + ")")
    if args.json:
        print(json.dumps({"report": str(files[0]), "files": [str(f) for f in files]}))
    else:
        print(f"wrote {files[0]}")
        for f in files[1:]:
            print(f"  {f}")
    return 0
