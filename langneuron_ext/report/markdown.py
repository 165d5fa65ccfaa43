"""`report.md`: one page that gathers a study's results (tables and the plots of `plots.py`)."""
from __future__ import annotations

from pathlib import Path
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch

from . import plots
from .cells import cell, num


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
        lines.append(f"| {cell(lang)} | {total} |" + "".join(f" {c} |" for c in cells))
    return "\n".join(lines)


def phase_table(neuron_set) -> str:
    spans = plots.phase_spans(getattr(neuron_set, "phases", None))
    if not spans:
        return "_no phases computed_"
    lines = ["| phase | layers |", "|---|---|"]
    lines += [f"| {name} | {start}–{stop - 1} |" for name, start, stop in spans]
    return "\n".join(lines)


# Every file `write_report_files` writes into its folder (checked against the inputs).
REPORT_FILES = ("report.md", "layers.png", "overlap.png", "phases.png", "nll_delta.png")


class ReportError(ValueError):
    """Report inputs that do not belong together or cannot be read; says what to pass instead."""


def nll_from_json(data: Mapping, source: str = "the NLL file") -> Tuple[dict, List[dict]]:
    """(NLL matrix dict, language-control dicts) from any file that holds an NLL matrix:
    `langneuron evaluate --out` (`{"nll_matrix": {...}, "language_control": [...]}`) or
    `NllMatrix.to_json()` / the demo's `nll_*.json` (the matrix at the top level)."""
    if not isinstance(data, Mapping):
        raise ReportError(f"{source} holds a JSON {type(data).__name__}, not an NLL matrix; "
                          f"write it with `langneuron evaluate ... --out FILE`")
    matrix = data.get("nll_matrix", data)
    controls = list(data.get("language_control") or []) if "nll_matrix" in data else []
    missing = [k for k in ("rows", "columns", "delta") if not isinstance(matrix, Mapping)
               or k not in matrix]
    if missing:
        raise ReportError(f"{source} has no NLL matrix (no {', '.join(missing)}); write it "
                          f"with `langneuron evaluate ... --out FILE`")
    return dict(matrix), controls


def control_markdown(controls: Sequence[Mapping]) -> str:
    """Markdown tables of output-language control results given as dicts
    (`LanguageControl.to_dict()`, as `langneuron evaluate --out` and the demo write them)."""
    from dataclasses import fields

    from ..evaluate.langcontrol import LanguageControl
    names = {f.name for f in fields(LanguageControl)}   # the dict also holds derived values
    return "\n\n".join(LanguageControl(**{k: v for k, v in c.items() if k in names}).to_markdown()
                       for c in controls)


def _shape(num_layers, intermediate_size) -> str:
    return f"{num_layers} layers x {intermediate_size} neurons"


def same_model(a: str, b: str) -> bool:
    """Model names as files record them (alias, folder or hub id) name the same model: equal
    last path components, so `./m`, `/abs/m` and `org/m` agree; unknown ('') agrees with all."""
    return not a or not b or Path(str(a).rstrip("/")).name == Path(str(b).rstrip("/")).name


def check_inputs(neuron_set, stats=None, nll: Optional[Mapping] = None) -> None:
    """Refuse statistics or NLL results of another model than the neuron set's (shape, or the
    model name where both files record one, compared by `same_model`)."""
    set_model = str(neuron_set.params.get("model") or "")
    set_shape = (neuron_set.num_layers, neuron_set.intermediate_size)
    if stats is not None:
        stats_shape = (stats.num_layers, stats.intermediate_size)
        if stats_shape != set_shape:
            raise ReportError(f"the stats are for {_shape(*stats_shape)} but the neuron set for "
                              f"{_shape(*set_shape)}: pass the stats of the neuron set's model")
        if not same_model(stats.model_name, set_model):
            raise ReportError(f"the stats are of model {stats.model_name!r} but the neuron set "
                              f"of {set_model!r}: pass the files of one model")
    if nll:
        nll_model = str((nll.get("meta") or {}).get("model") or "")
        known = set_model or (stats.model_name if stats is not None else "")
        if not same_model(nll_model, known):
            raise ReportError(f"the NLL matrix is of model {nll_model!r} but the neuron set "
                              f"{'' if set_model else '(its stats) '}of {known!r}: pass the "
                              f"files of one model")
        for sizes in nll.get("layer_sizes") or []:
            if sizes and len(sizes) != neuron_set.num_layers:     # baseline: [] or None
                raise ReportError(f"the NLL matrix is of a model with {len(sizes)} layers, the "
                                  f"neuron set has {neuron_set.num_layers}: pass the files of "
                                  f"one model")


def write_report(out_dir, neuron_set, stats=None, nll: Optional[dict] = None,
                 language_control: Optional[str] = None, command: str = "") -> Path:
    """Write plots and `report.md` into `out_dir`; returns the report's path (see
    `write_report_files`)."""
    return write_report_files(out_dir, neuron_set, stats, nll, language_control, command)[0]


def write_report_files(out_dir, neuron_set, stats=None, nll: Optional[dict] = None,
                       language_control: Optional[str] = None, command: str = "") -> List[Path]:
    """Write plots and `report.md` into `out_dir`; returns the files written, report.md first.

    nll: the JSON form of an NLL matrix ({"rows", "columns", "delta", ...}, as
    `NllMatrix.to_dict()` gives; `nll_from_json` reads any file that holds one);
    language_control: markdown tables of output-language control (`control_markdown`).
    command: the command line that made the report ("Produced by"). Statistics or an NLL
    matrix of another model than the neuron set's are a `ReportError`.
    """
    from ..identify.registry import title_of
    check_inputs(neuron_set, stats, nll)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "report.md"
    written = [path]
    parts = ["# Language neuron report", ""]
    if command:
        parts += ["Produced by:", "", f"```\n{command}\n```", ""]
    if stats is not None:
        parts += ["## Statistics", "", "```", stats.summary(), "```", ""]
    parts += [f"## Neurons: {title_of(neuron_set.method)}", "", neuron_table(neuron_set), ""]
    written.append(plots.plot_layer_distribution(neuron_set, out / "layers.png"))
    parts += ["![neurons per layer](layers.png)", ""]
    written.append(plots.plot_overlap(neuron_set, out / "overlap.png"))
    parts += ["![overlap](overlap.png)", ""]
    language, general = layer_profile(neuron_set)
    if "general" not in (getattr(neuron_set, "types", None) or {}):
        general = None                        # LAPE and imported sets have no general neurons
    written.append(plots.plot_phase_profile(language, general,
                                            getattr(neuron_set, "phases", None),
                                            out / "phases.png"))
    parts += ["## Phases", "", phase_table(neuron_set), "", "![phases](phases.png)", ""]
    if nll:
        delta = np.asarray(nll["delta"], dtype=float)
        written.append(plots.plot_matrix(delta, nll["rows"], nll["columns"],
                                         out / "nll_delta.png",
                                         "NLL change vs baseline (rows: neurons deactivated)"))
        header = "| deactivated | " + " | ".join(map(cell, nll["columns"])) + " |"
        rows = [header, "|---|" + "---:|" * len(nll["columns"])]
        for name, vals in zip(nll["rows"], delta):
            rows.append(f"| {cell(name)} | " + " | ".join(num(v, "{:+.3f}") for v in vals)
                        + " |")
        parts += ["## NLL change against the baseline", "", *rows, "",
                  "![NLL change](nll_delta.png)", ""]
    if language_control:
        parts += ["## Output-language control", "", language_control, ""]
    path.write_text("\n".join(parts))
    return written
