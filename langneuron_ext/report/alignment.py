"""The alignment study's report: markdown tables and plots from the JSON of
`ln.alignment.compare(...).to_dict()` (so `langneuron report --alignment FILE` rebuilds them
from the file alone)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Mapping, Optional

import numpy as np

from . import plots
from .cells import cell

TYPES = ("specific", "related", "general")
PLOTS = {"layers": "alignment_layers.png", "shared_by": "alignment_shared_by.png",
         "activation": "alignment_activation_change.png"}
# Every file `write_alignment_report` writes into its folder (checked against the inputs).
REPORT_FILES = ("alignment.json", "alignment.md", *PLOTS.values())


def _data(comparison) -> dict:
    return comparison if isinstance(comparison, Mapping) else comparison.to_dict()


def _group(data, lang) -> str:
    return "trained" if lang in data["trained"] else "untrained"


def counts_table(data) -> str:
    """Per language and type: before -> after (change); trained languages first."""
    langs = ([lg for lg in data["languages"] if lg in data["trained"]]
             + [lg for lg in data["languages"] if lg not in data["trained"]])
    lines = ["| language | group | specific | related | specific + related |",
             "|---|---|---:|---:|---:|"]
    for lang in langs:
        b, a = data["before"][lang], data["after"][lang]
        cells = []
        for bv, av in ((b["specific"], a["specific"]), (b["related"], a["related"]),
                       (b["specific"] + b["related"], a["specific"] + a["related"])):
            cells.append(f"{bv} → {av} ({av - bv:+d})")
        lines.append(f"| {lang} | {_group(data, lang)} | " + " | ".join(cells) + " |")
    g0 = data["before"][data["languages"][0]]["general"]
    g1 = data["after"][data["languages"][0]]["general"]
    lines.append(f"| all | general | | | {g0} → {g1} ({g1 - g0:+d}) |")
    return "\n".join(lines)


def overlap_table(data) -> str:
    lines = ["| language | group | before | after | kept | gained | lost | Jaccard |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for lang in data["languages"]:
        o = data["overlap_detail"][lang]
        lines.append(f"| {lang} | {_group(data, lang)} | {o['before']} | {o['after']} | "
                     f"{o['kept']} | {o['gained']} | {o['lost']} | {o['jaccard']:.3f} |")
    return "\n".join(lines)


def shared_by_table(data) -> str:
    lines = ["| shared by n languages | before | after |", "|---:|---:|---:|"]
    for n, (b, a) in enumerate(zip(data["shared_by"]["before"], data["shared_by"]["after"]), 1):
        lines.append(f"| {n} | {b} | {a} |")
    return "\n".join(lines)


def _phase_of(phases, layer) -> str:
    for p in phases or []:
        if p["start"] <= layer < p["stop"]:
            return p["name"]
    return ""


def layer_table(data) -> str:
    """Per layer and type: neurons before / after, and each model's phase."""
    pl, ph = data["per_layer"], data["phases"]
    lines = ["| layer | specific | related | general | phase before | phase after |",
             "|---:|---:|---:|---:|---|---|"]
    for layer in range(data["num_layers"]):
        cells = [f"{pl['before'][t][layer]} / {pl['after'][t][layer]}" for t in TYPES]
        lines.append(f"| {layer} | " + " | ".join(cells)
                     + f" | {_phase_of(ph['before'], layer)} | {_phase_of(ph['after'], layer)} |")
    return "\n".join(lines)


def activation_table(data) -> str:
    """Per language: mean and largest activation-probability change over layers."""
    lines = ["| language | group | mean ΔP over layers | largest \\|ΔP\\| (layer) |",
             "|---|---|---:|---:|"]
    for lang in data["languages"]:
        vals = [(v, layer) for layer, v in enumerate(data["activation_change"][lang])
                if v is not None]
        if not vals:
            lines.append(f"| {lang} | {_group(data, lang)} | – | – |")
            continue
        mean = sum(v for v, _ in vals) / len(vals)
        big, layer = max(vals, key=lambda x: abs(x[0]))
        lines.append(f"| {lang} | {_group(data, lang)} | {mean:+.4f} | {big:+.4f} ({layer}) |")
    return "\n".join(lines)


def spread_table(main, spreads: Mapping[str, Mapping]) -> str:
    """The headline change next to the spreads (same metrics for every comparison)."""
    lines = ["| comparison | mean Jaccard trained | mean Jaccard untrained | "
             "Δ specific+related trained | Δ specific+related untrained | Δ general | "
             "mean abs ΔP trained | mean abs ΔP untrained |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, d in [("**alignment** (before → after)", main), *spreads.items()]:
        s = d["summary"]
        cells = []
        for key in ("mean_jaccard",):
            cells += [f"{s[g][key]:.3f}" if g in s else "–" for g in ("trained", "untrained")]
        for g in ("trained", "untrained"):
            if g in s:
                delta = (s[g]["specific_after"] + s[g]["related_after"]
                         - s[g]["specific_before"] - s[g]["related_before"])
                cells.append(f"{delta:+d}")
            else:
                cells.append("–")
        cells.append(f"{s['general']['after'] - s['general']['before']:+d}")
        cells += [f"{s[g]['mean_abs_activation_change']:.4f}" if g in s else "–"
                  for g in ("trained", "untrained")]
        lines.append(f"| {cell(name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def spread_by_language(main, spreads: Mapping[str, Mapping]) -> str:
    """Per language: Jaccard and the change in specific + related neurons, for the alignment
    and for each spread comparison."""
    names = ["alignment", *spreads]
    datas = [main, *spreads.values()]
    lines = ["| language | group | " + " | ".join(f"Jaccard: {cell(n)}" for n in names) + " | "
             + " | ".join(f"Δ neurons: {cell(n)}" for n in names) + " |",
             "|---|---|" + "---:|" * (2 * len(names))]
    for lang in main["languages"]:
        jac = [f"{d['overlap'][lang]:.3f}" for d in datas]
        delta = [f"{d['change'][lang]['specific'] + d['change'][lang]['related']:+d}"
                 for d in datas]
        lines.append(f"| {lang} | {_group(main, lang)} | " + " | ".join(jac + delta) + " |")
    return "\n".join(lines)


# ---- plots ------------------------------------------------------------------------------------
def plot_layers(data, path) -> Path:
    """Three panels (specific, related, general): neurons per layer before and after, each
    model's phase boundaries marked."""
    plt = plots._pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), sharex=True)
    layers = np.arange(data["num_layers"])
    for n, (ax, t) in enumerate(zip(axes, TYPES)):
        ax.plot(layers, data["per_layer"]["before"][t], marker="o", ms=3, label="before")
        ax.plot(layers, data["per_layer"]["after"][t], marker="s", ms=3, label="after")
        plots._shade_phases(ax, data["phases"]["before"], label=n == 0)
        for k, p in enumerate((data["phases"]["after"] or [])[1:]):
            ax.axvline(p["start"] - 0.5, color="C1", ls=":", lw=1,
                       label="phase boundary after" if n == 0 and k == 0 else None)
        plots.set_title(ax, f"{t} neurons per layer")
        ax.set_xlabel("layer")
        plots.integer_axes(ax, x=True, y=True)
    axes[0].set_ylabel("neurons (distinct over languages)")
    handles, labels = axes[0].get_legend_handles_labels()
    axes[-1].legend(handles, [label.replace("phase:", "phase before:") for label in labels],
                    fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return plots._save(fig, path)


def plot_shared_by(data, path) -> Path:
    plt = plots._pyplot()
    K = len(data["languages"])
    n = np.arange(1, K + 1)
    fig, ax = plt.subplots(figsize=(7, 3.8))
    ax.bar(n - 0.2, data["shared_by"]["before"], width=0.4, label="before")
    ax.bar(n + 0.2, data["shared_by"]["after"], width=0.4, label="after")
    ax.set_xticks(n)
    ax.set_xlabel("number of languages a neuron belongs to")
    ax.set_ylabel("neurons")
    ax.set_yscale("symlog")
    plots.set_title(ax, "Neurons shared by exactly n languages")
    ax.legend(fontsize=8)
    return plots._save(fig, path)


def plot_activation_change(data, path) -> Path:
    langs = data["languages"]
    matrix = np.array([[np.nan if v is None else v for v in data["activation_change"][lg]]
                       for lg in langs], dtype=float)
    labels = [f"{lg} ({'T' if lg in data['trained'] else 'U'})" for lg in langs]
    plt = plots._pyplot()
    fig, ax = plt.subplots(figsize=(min(16, 2 + 0.4 * data["num_layers"]), 1 + 0.45 * len(langs)))
    lim = float(np.nanmax(np.abs(matrix))) if np.isfinite(matrix).any() else 1.0
    # no neurons in a layer (no value) is grey; no change (0) is white
    im = ax.imshow(matrix, cmap=plots._with_missing("RdBu_r"), vmin=-(lim or 1.0),
                   vmax=lim or 1.0, aspect="auto")
    ax.set_yticks(range(len(langs)), labels)
    ax.set_xlabel("layer" + ("\ngrey: no neurons in the layer; white: no change"
                             if np.isnan(matrix).any() else "\nwhite: no change"), fontsize=9)
    plots.integer_axes(ax, x=True)
    plots.set_title(ax, "Change in activation probability of each language's neurons "
                        "(after − before; T trained, U untrained)")
    fig.colorbar(im, ax=ax, fraction=0.03).set_label("ΔP (after − before)")
    return plots._save(fig, path)


def alignment_section(comparison, out_dir, spreads: Optional[Mapping] = None,
                      run: Optional[Mapping] = None, heading: str = "##") -> str:
    """Write the plots into `out_dir` and return the markdown section that shows them."""
    data = _data(comparison)
    out = Path(out_dir)
    plot_layers(data, out / PLOTS["layers"])
    plot_shared_by(data, out / PLOTS["shared_by"])
    plot_activation_change(data, out / PLOTS["activation"])
    h = heading
    parts = [f"{h} Alignment: language neurons before and after", ""]
    before, after = data.get("before_model") or "before", data.get("after_model") or "after"
    lam_b = data["params"]["before"].get("lambda")
    lam_a = data["params"]["after"].get("lambda")
    parts += [f"{before} → {after}; trained: {', '.join(data['trained']) or 'none'}; "
              f"untrained: {', '.join(data['untrained']) or 'none'}. Specific / related / "
              f"general neurons (`identify.ternary`, top_rate "
              f"{data['params']['before'].get('top_rate')}, lambda {lam_b:.4g} before, "
              f"{lam_a:.4g} after).", ""]
    if run:
        parts += [f"Produced by `{run.get('command', '')}`.", ""]
    parts += [f"{h}# Neurons per language and type", "", counts_table(data), "",
              f"{h}# Overlap of each language's neurons", "", overlap_table(data), "",
              f"{h}# Neurons shared by n languages", "", shared_by_table(data), "",
              f"![shared by n languages]({PLOTS['shared_by']})", "",
              f"{h}# Per layer (before / after) and phases", "", layer_table(data), "",
              f"![neurons per layer]({PLOTS['layers']})", "",
              f"{h}# Activation probability of each language's neurons", "",
              activation_table(data), "", f"![activation change]({PLOTS['activation']})", ""]
    if spreads:
        spreads = {k: _data(v) for k, v in spreads.items()}
        parts += [f"{h}# Against the spread", "",
                  "The same metrics for comparisons where nothing was aligned (two scans of "
                  "one model on different text) or where only the seed differs.", "",
                  spread_table(data, spreads), "", spread_by_language(data, spreads), ""]
    if data.get("representation"):
        from .representation import representation_section
        parts.append(representation_section(data["representation"], data["trained"], out,
                                            heading=f"{h}#"))
    if run and run.get("translation_loss"):
        parts += [f"{h}# Translation loss (X → English, held-out pairs)", "",
                  loss_table(run["translation_loss"], data["trained"]), ""]
    return "\n".join(parts)


def loss_table(loss: Mapping[str, Mapping[str, float]], trained) -> str:
    models = list(loss)
    langs = list(next(iter(loss.values())))
    lines = ["| model | " + " | ".join(f"{lg}{' (T)' if lg in trained else ''}" for lg in langs)
             + " |", "|---|" + "---:|" * len(langs)]
    for m in models:
        lines.append(f"| {m} | " + " | ".join(f"{loss[m][lg]:.3f}" for lg in langs) + " |")
    return "\n".join(lines)


def write_alignment_report(out_dir, comparison, spreads: Optional[Mapping] = None,
                           run: Optional[Mapping] = None) -> Dict[str, Path]:
    """Write `alignment.json` (the comparison's keys at the top level, plus `spreads` and
    `run` when given), `alignment.md` and the plots into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = dict(_data(comparison))
    if spreads:
        data["spreads"] = {k: _data(v) for k, v in spreads.items()}
    if run:
        data["run"] = dict(run)
    json_path = out / "alignment.json"
    from ..stats import write_atomic
    write_atomic(json_path, (json.dumps(data, indent=1) + "\n").encode())
    md = alignment_section(data, out, spreads=data.get("spreads"), run=run, heading="#")
    md_path = out / "alignment.md"
    md_path.write_text(md + "\n")
    return {"json": json_path, "markdown": md_path, **{k: out / v for k, v in PLOTS.items()}}


def load_alignment(path) -> dict:
    """The JSON written by `write_alignment_report` or `langneuron alignment --out`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"alignment file {path} does not exist; write it with "
                                f"`langneuron alignment BEFORE AFTER --trained ... --out {path}`")
    data = json.loads(path.read_text())
    missing = [k for k in ("languages", "trained", "before", "after", "shared_by", "overlap",
                           "per_layer", "phases", "activation_change") if k not in data]
    if missing:
        raise ValueError(f"{path} lacks key(s) {missing}; is it from `langneuron alignment`?")
    return data


def append_alignment_section(out_dir, report_path, alignment_json) -> list:
    """Add the alignment section (and its plots) to an existing report.md; returns the plots.
    Used by `langneuron report --alignment FILE`."""
    data = load_alignment(alignment_json)
    section = alignment_section(data, out_dir, spreads=data.get("spreads"), run=data.get("run"))
    report_path = Path(report_path)
    report_path.write_text(report_path.read_text().rstrip("\n") + "\n\n" + section + "\n")
    return [Path(out_dir) / name for name in PLOTS.values()]
