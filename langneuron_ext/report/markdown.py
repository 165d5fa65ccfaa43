"""`report.md`: one page that gathers a study's results (tables and the plots of `plots.py`)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import plots


def layer_profile(neuron_set):
    """Per-layer share of language neurons (distinct, over languages) and of general neurons."""
    from ..identify.phases import layer_counts
    counts = layer_counts(neuron_set).double() / neuron_set.intermediate_size   # [L, 1 or 2]
    general = counts[:, 1] if counts.shape[1] > 1 else torch.zeros(neuron_set.num_layers)
    return counts[:, 0].numpy(), general.numpy()


def neuron_table(neuron_set) -> str:
    """Markdown table: neurons per language (and per type when the set has types)."""
    types = getattr(neuron_set, "types", None) or {}
    type_names = [t for t in ("specific", "related", "general") if t in types]
    header = "| language | neurons |" + "".join(f" {t} |" for t in type_names)
    lines = [header, "|---|---:|" + "---:|" * len(type_names)]
    for lang in neuron_set.languages:
        total = sum(len(v) for v in neuron_set.neurons.get(lang, {}).values())
        cells = [str(sum(len(v) for v in types[t].get(lang, {}).values())) for t in type_names]
        lines.append(f"| {lang} | {total} |" + "".join(f" {c} |" for c in cells))
    return "\n".join(lines)


def phase_table(neuron_set) -> str:
    spans = plots.phase_spans(getattr(neuron_set, "phases", None))
    if not spans:
        return "_no phases computed_"
    lines = ["| phase | layers |", "|---|---|"]
    lines += [f"| {name} | {start}–{stop - 1} |" for name, start, stop in spans]
    return "\n".join(lines)


def write_report(out_dir, neuron_set, stats=None, nll: Optional[dict] = None,
                 language_control: Optional[str] = None, command: str = "") -> Path:
    """Write plots and `report.md` into `out_dir`; returns the report's path.

    nll: the JSON form of an NLL matrix ({"rows", "columns", "delta", ...}, as
    `NllMatrix.to_dict()` gives); language_control: markdown tables of output-language control
    (`LanguageControl.to_markdown()`).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    parts = ["# Language neuron report", ""]
    if command:
        parts += ["Produced by:", "", f"```\n{command}\n```", ""]
    if stats is not None:
        parts += ["## Statistics", "", "```", stats.summary(), "```", ""]
    parts += [f"## Neurons ({neuron_set.method})", "", neuron_table(neuron_set), ""]
    plots.plot_layer_distribution(neuron_set, out / "layers.png")
    parts += ["![neurons per layer](layers.png)", ""]
    plots.plot_overlap(neuron_set, out / "overlap.png")
    parts += ["![overlap](overlap.png)", ""]
    language, general = layer_profile(neuron_set)
    plots.plot_phase_profile(language, general, getattr(neuron_set, "phases", None),
                             out / "phases.png")
    parts += ["## Phases", "", phase_table(neuron_set), "", "![phases](phases.png)", ""]
    if nll:
        delta = np.asarray(nll["delta"], dtype=float)
        plots.plot_matrix(delta, nll["rows"], nll["columns"], out / "nll_delta.png",
                          "NLL change vs baseline (rows: neurons deactivated)")
        header = "| deactivated | " + " | ".join(nll["columns"]) + " |"
        rows = [header, "|---|" + "---:|" * len(nll["columns"])]
        for name, vals in zip(nll["rows"], delta):
            rows.append(f"| {name} | " + " | ".join(f"{v:+.3f}" for v in vals) + " |")
        parts += ["## NLL change against the baseline", "", *rows, "",
                  "![NLL change](nll_delta.png)", ""]
    if language_control:
        parts += ["## Output-language control", "", language_control, ""]
    path = out / "report.md"
    path.write_text("\n".join(parts))
    return path
