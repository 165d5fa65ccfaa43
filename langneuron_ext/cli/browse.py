"""`langneuron browse`: write the offline neuron browser (index.html + data) into a folder.

    langneuron browse --stats stats.safetensors --neurons neurons.json \\
        --examples examples.safetensors --nll nll.json --out-dir browser/
    # then open browser/index.html (no server, no network)

Every input is read and checked against the others before anything is written: a neuron set of
another model, examples of another neuron set or language experts of another model is a one-line
error; an input that lacks what a panel needs (no histograms, no types, no examples, no routing
counts) gives that panel a visible note. Mixture-of-experts stats also get the routing panel.
An existing --out-dir must be empty or an earlier site; it is replaced only once the new site is
complete.
"""
from __future__ import annotations

import json
from pathlib import Path

from . import options
from .options import fail
from .outputs import check_outputs


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "browse", help="write an offline page to explore the language neurons",
        description="Write one self-contained offline site (index.html, app.js, style.css and "
                    "data/) that shows the neurons per language and layer, their types and "
                    "phases, the NLL matrix, a sortable neuron table and a page per neuron "
                    "with its activation probabilities, histograms and top examples.")
    p.add_argument("--stats", required=True, metavar="FILE", help="stats file of the scan")
    p.add_argument("--neurons", required=True, metavar="FILE", help="neuron set (JSON)")
    p.add_argument("--examples", metavar="FILE",
                   help="top examples from `langneuron examples` with this neuron set")
    p.add_argument("--nll", metavar="FILE", help="NLL matrix JSON from `langneuron evaluate`")
    p.add_argument("--alignment", action="append", default=[], metavar="FILE",
                   help="`langneuron alignment` JSON (types before/after per language) or the "
                        "aligned model's neuron set (each neuron's type after); repeatable")
    p.add_argument("--steer-bench", metavar="FILE", help="steering benchmark JSON (shown as is)")
    p.add_argument("--experts", metavar="FILE",
                   help="language experts JSON (`langneuron identify STATS --experts --out`); "
                        "mixture-of-experts stats only. Without it a MoE model's language "
                        "experts are computed from the stats with the defaults")
    p.add_argument("--context", type=int, default=None, metavar="N",
                   help="tokens shown on each side of an example (default 8, at most the "
                        "recorded context)")
    options.add_output_options(p, out_dir="folder for the site (created; must be empty or an "
                                          "earlier site)", out_dir_required=True)
    p.set_defaults(func=run)


def _json(path: str, option: str):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        fail(f"{option} {path} does not exist")
    except (ValueError, UnicodeDecodeError) as exc:
        fail(f"{option} {path} is not JSON ({exc})")


def run(args) -> int:
    from ..browse import DEFAULT_CONTEXT, BrowseError, build_site, site_size
    from ..examples import Examples
    from ..identify.neuron_set import NeuronSet
    from ..stats import ActivationStats

    out = Path(args.out_dir)
    inputs = [Path(p).resolve() for p in (args.stats, args.neurons, args.examples, args.nll,
                                          args.steer_bench, args.experts, *args.alignment)
              if p]
    check_outputs(inputs=inputs, dirs=[("--out-dir", out, ("index.html", "app.js",
                                                            "style.css", "data"))])
    target = out.resolve()
    for path in inputs:
        if path == target or target in path.parents:
            fail(f"--out-dir {out} holds the input {path}; choose another folder")
    options.check_min(args, "context", 0, "tokens")
    stats = ActivationStats.load(args.stats)
    neurons = NeuronSet.load(args.neurons)
    examples = Examples.load(args.examples) if args.examples else None
    nll = _json(args.nll, "--nll") if args.nll else None
    alignment = []
    for path in args.alignment:
        data = _json(path, "--alignment")
        if isinstance(data, dict) and "neurons" in data and "method" in data:
            alignment.append(NeuronSet.from_dict(data))
        elif isinstance(data, dict) and "before" in data and "after" in data:
            alignment.append(data)
        else:
            fail(f"--alignment {path} is neither `langneuron alignment` JSON nor a neuron set")
    steer = _json(args.steer_bench, "--steer-bench") if args.steer_bench else None
    found = None
    if args.experts:
        from ..identify.experts import LanguageExperts
        from ..identify.neuron_set import IdentifyError
        if not Path(args.experts).exists():
            fail(f"--experts {args.experts} does not exist")
        try:
            found = LanguageExperts.load(args.experts)
        except IdentifyError as exc:
            fail(f"--experts: {exc}")
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            fail(f"--experts {args.experts} is an incomplete language experts file ({exc!r}); "
                 f"write it again with `langneuron identify STATS --experts --out FILE`")
    context = DEFAULT_CONTEXT if args.context is None else args.context
    if examples is not None:
        context = min(context, examples.context)
    try:
        site = build_site(stats, neurons, out, examples=examples, nll=nll,
                          alignment=alignment or None, steer_bench=steer, context=context,
                          language_experts=found)
    except BrowseError as exc:
        fail(str(exc))
    except OSError as exc:
        fail(f"cannot write the site into {out}: {exc.strerror or exc}; choose another "
             f"--out-dir (nothing was replaced)")
    size = site_size(site)
    if args.json:
        print(json.dumps({"out_dir": str(site), "index": str(site / "index.html"),
                          "bytes": size}))
    else:
        print(f"wrote {site / 'index.html'} ({size / 1e6:.1f} MB); open it in a browser "
              f"(works offline, from the file system)")
    return 0
