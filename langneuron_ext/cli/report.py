"""`langneuron report`: plots and a report.md for a neuron set (with stats and NLL results)."""
from __future__ import annotations

import json
import shlex
import sys
from pathlib import Path

from . import CliError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "report", help="write plots and report.md for a neuron set",
        description="Write plots (neurons per layer, overlap between languages, the four phases, "
                    "the NLL change matrix) and a report.md that gathers them.")
    p.add_argument("neurons", metavar="NEURONS", help="neuron set JSON (langneuron identify)")
    p.add_argument("--stats", help="stats file, for the token summary")
    p.add_argument("--nll", help="NLL matrix JSON written by `langneuron evaluate --out`")
    p.add_argument("--out-dir", required=True, help="folder for report.md and the PNGs")
    p.add_argument("--json", action="store_true", help="print the written paths as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..identify import NeuronSet, phases
    from ..report import write_report
    from ..stats import ActivationStats

    neuron_set = NeuronSet.load(args.neurons)
    if neuron_set.phases is None and neuron_set.num_layers >= 4:
        phases(neuron_set)
    stats = ActivationStats.load(args.stats) if args.stats else None
    nll = None
    if args.nll:
        path = Path(args.nll)
        if not path.exists():
            raise CliError(f"NLL file {path} does not exist; write it with "
                           f"`langneuron evaluate ... --out {path}`")
        nll = json.loads(path.read_text())
        if "delta" not in nll:
            raise CliError(f"{path} has no `delta` matrix; is it from `langneuron evaluate`?")
    report = write_report(args.out_dir, neuron_set, stats=stats, nll=nll,
                          command="langneuron " + " ".join(map(shlex.quote, sys.argv[2:])))
    files = sorted(str(p) for p in Path(args.out_dir).glob("*") if p.suffix in (".md", ".png"))
    if args.json:
        print(json.dumps({"report": str(report), "files": files}))
    else:
        print(f"wrote {report}")
        for f in files:
            print(f"  {f}")
    return 0
