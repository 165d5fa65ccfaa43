"""The demo's "browse" step: a short examples pass on held-out text for the specific / related /
general neurons, then the offline browser in `<out-dir>/browser/` next to report.md."""
from __future__ import annotations

import json
import time

from ..cli.demo import DemoContext, _require_neurons, _require_stats, add_step, step_load

DEMO_EXAMPLE_TOKENS = 256       # held-out tokens per language: seconds on 2 CPU cores


def step_browse(ctx: DemoContext) -> None:
    """Top examples of the ternary neurons and the neuron browser (browser/index.html)."""
    from ..cli.options import parse_list
    from ..corpus import DebianHandbook
    from ..examples import examples
    from . import build_site, site_size
    stats = _require_stats(ctx)
    neurons = _require_neurons(ctx, "ternary")
    if ctx.model is None:
        step_load(ctx)
    languages = [l for l in parse_list(ctx.args.languages, "--languages")
                 if l in neurons.languages]
    start = time.perf_counter()
    ex = examples(ctx.model, ctx.tokenizer, DebianHandbook(languages, split="heldout"),
                  neurons, k=20, context=16, languages=languages,
                  tokens_per_language=DEMO_EXAMPLE_TOKENS, max_length=128, batch_size=4,
                  progress=not ctx.args.no_progress)
    path = ctx.out_dir / "examples.safetensors"
    ex.save(path)
    nll_file = ctx.out_dir / "nll_lape.json"
    nll = json.loads(nll_file.read_text()) if nll_file.exists() else None
    site = build_site(stats, neurons, ctx.out_dir / "browser", examples=ex, nll=nll)
    ctx.files += [path, site / "index.html"]
    ctx.results["browse"] = {"out": str(site / "index.html"), "examples": str(path),
                             "bytes": site_size(site),
                             "seconds": round(time.perf_counter() - start, 1)}
    ctx.note(f"wrote {site / 'index.html'} (open it in a browser; offline)")


add_step("browse", step_browse, after="report")
