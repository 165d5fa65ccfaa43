"""Plots and tables of the representation measure (`ln.alignment.representation_similarity`)
and the alignment study's format-only control: does the aligned model gain more in the
untrained languages than a model trained on the same format alone, beyond the seed spread?"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from . import plots

PLOT = "representation_layers.png"
CONTROL_FILES = ("control.json", "control.md", PLOT)
GROUPS = ("trained", "untrained")
# metric -> (label, how it is computed from one model against the base)
CONTROL_METRICS = {
    "loss_drop": "held-out translation loss, base − model (nats)",
    "retrieval_gain": "retrieval accuracy, model − base (mean over layers)",
    "margin_gain": "cosine margin parallel − non-parallel, model − base (mean over layers)",
    "neuron_turnover": "1 − Jaccard of the language's neurons, base vs model",
    "related_change": "related neurons, model − base (summed over the group)",
    "mean_abs_dP": "mean |ΔP| of the language's neurons over layers",
}


def group_languages(languages: Sequence[str], trained: Sequence[str]) -> Dict[str, List[str]]:
    """trained and untrained languages of the control. English is in neither: it is the target
    of every training pair and the source of the format-only pairs."""
    return {"trained": [lg for lg in languages if lg in trained],
            "untrained": [lg for lg in languages if lg not in trained and lg != "en"]}


def layer_means(result: Mapping, langs: Sequence[str], metric: str) -> List[float]:
    """Per layer, the mean of `metric` over `langs`."""
    return [float(np.mean([result["layers"][lg][metric][k] for lg in langs]))
            for k in range(result["num_layers"])]


NEURON_METRICS = ("neuron_turnover", "related_change", "mean_abs_dP")
# control arm -> its name in tables and verdicts
CONTROL_LABELS = {"format": "format-only", "format-other": "format-other"}


def neuron_metrics(langs: Sequence[str], neurons: Mapping) -> Dict[str, float]:
    """The NEURON_METRICS of one comparison (`AlignmentComparison.to_dict()`) for `langs`."""
    out = {"neuron_turnover": float(np.mean([1.0 - neurons["overlap"][lg] for lg in langs])),
           "related_change": float(sum(neurons["change"][lg]["related"] for lg in langs))}
    changes = [abs(v) for lg in langs for v in neurons["activation_change"][lg] if v is not None]
    out["mean_abs_dP"] = float(np.mean(changes)) if changes else 0.0
    return out


def model_metrics(langs: Sequence[str], *, loss: Mapping, base_loss: Mapping,
                  rep: Mapping, base_rep: Mapping, neurons: Mapping) -> Dict[str, float]:
    """The CONTROL_METRICS of one model for one group of languages."""
    out = {"loss_drop": float(np.mean([base_loss[lg] - loss[lg] for lg in langs]))}
    for metric, key in (("retrieval", "retrieval_gain"), ("margin", "margin_gain")):
        out[key] = float(np.mean(np.array(layer_means(rep, langs, metric))
                                 - np.array(layer_means(base_rep, langs, metric))))
    out.update(neuron_metrics(langs, neurons))
    return out


def verdict(aligned: Sequence[float], control: Sequence[float],
            label: str = "format-only") -> Dict[str, object]:
    """gap = mean(aligned) − mean(control); spread = the largest range over seeds within an arm.
    Beyond the spread when every aligned seed lies on one side of every control seed and the
    gap exceeds the spread."""
    a, c = np.asarray(aligned, float), np.asarray(control, float)
    gap = float(a.mean() - c.mean())
    spread = float(max(np.ptp(a), np.ptp(c)))
    if a.min() > c.max() and gap > spread:
        word = f"aligned above {label}, beyond the seed spread"
    elif a.max() < c.min() and -gap > spread:
        word = f"{label} above aligned, beyond the seed spread"
    else:
        word = "within the seed spread"
    return {"aligned": [float(x) for x in a], "control": [float(x) for x in c], "gap": gap,
            "spread": spread, "beyond_spread": word != "within the seed spread",
            "verdict": word}


def control_summary(*, arms: Mapping[str, Mapping[int, str]], trained: Sequence[str],
                    loss: Mapping, representation: Mapping, neurons: Mapping,
                    text_neurons: Optional[Mapping] = None) -> dict:
    """{"groups": {group: languages}, "per_model": {arm: {group: [metrics per seed]}},
    "controls": {control arm: {group: {metric: verdict(...)}}}} from per-model inputs keyed as
    in `arms` ({"aligned": {seed: key}, "format": {seed: key}, ...}); `neurons` is keyed
    "<arm> seed <seed>" (base vs that model, `AlignmentComparison.to_dict()`). `text_neurons`,
    the base model scanned on two texts, adds "text": {group: NEURON_METRICS}, the change where
    nothing was trained."""
    languages = representation["base"]["languages"]
    groups = group_languages(["en", *languages], trained)
    out = {"groups": groups, "per_model": {}, "controls": {}}
    for group, langs in groups.items():
        if not langs:
            continue
        for arm, seeds in arms.items():
            out["per_model"].setdefault(arm, {})[group] = [model_metrics(
                langs, loss=loss[key], base_loss=loss["base"], rep=representation[key],
                base_rep=representation["base"], neurons=neurons[f"{arm} seed {seed}"])
                for seed, key in seeds.items()]
        if text_neurons is not None:
            out.setdefault("text", {})[group] = neuron_metrics(langs, text_neurons)
    per_model = out["per_model"]
    for arm in [a for a in arms if a != "aligned"] if "aligned" in arms else []:
        out["controls"][arm] = {
            group: {m: verdict([r[m] for r in per_model["aligned"][group]],
                               [r[m] for r in per_model[arm][group]],
                               CONTROL_LABELS.get(arm, arm))
                    for m in CONTROL_METRICS}
            for group in per_model["aligned"]}
    return out


def control_table(summary: Mapping, arm: str = "format") -> str:
    """Aligned against the control `arm`, per group and metric, with the text spread where the
    summary has one."""
    label = CONTROL_LABELS.get(arm, arm)
    text = summary.get("text", {})
    lines = [f"| group | metric | aligned (per seed) | {label} (per seed) | gap | seed spread "
             "| base, text A vs B | verdict |", "|---|---|---:|---:|---:|---:|---:|---|"]
    for group, metrics in summary["controls"][arm].items():
        langs = ", ".join(summary["groups"][group])
        for m, v in metrics.items():
            base_text = text.get(group, {}).get(m)
            cells = [" / ".join(f"{x:+.3f}" for x in v["aligned"]),
                     " / ".join(f"{x:+.3f}" for x in v["control"]),
                     f"{v['gap']:+.3f}", f"{v['spread']:.3f}",
                     "–" if base_text is None else f"{base_text:+.3f}", v["verdict"]]
            lines.append(f"| {group} ({langs}) | {CONTROL_METRICS[m]} | " + " | ".join(cells)
                         + " |")
    return "\n".join(lines)


def representation_table(representation: Mapping, trained: Sequence[str]) -> str:
    """Per model and group: mean over layers of retrieval and margin, and the best layer's
    retrieval."""
    groups = group_languages(["en", *next(iter(representation.values()))["languages"]],
                             trained)
    lines = ["| model | group | mean retrieval | best layer: retrieval | mean margin | "
             "mean parallel cosine |", "|---|---|---:|---:|---:|---:|"]
    for name, result in representation.items():
        for group, langs in groups.items():
            if not langs:
                continue
            ret = layer_means(result, langs, "retrieval")
            best = int(np.argmax(ret))
            lines.append(f"| {name} | {group} ({', '.join(langs)}) | {np.mean(ret):.3f} | "
                         f"{ret[best]:.3f} ({best}) | "
                         f"{np.mean(layer_means(result, langs, 'margin')):.4f} | "
                         f"{np.mean(layer_means(result, langs, 'parallel')):.4f} |")
    return "\n".join(lines)


def plot_representation(representation: Mapping, trained: Sequence[str], path,
                        title: str = "") -> Path:
    """Retrieval accuracy and margin per layer (rows), trained and untrained languages
    (columns), one line per model: the base black, aligned models solid, format-only dashed,
    others dotted."""
    plt = plots._pyplot()
    groups = group_languages(["en", *next(iter(representation.values()))["languages"]], trained)
    groups = {g: langs for g, langs in groups.items() if langs}
    fig, axes = plt.subplots(2, len(groups), figsize=(6.2 * len(groups), 7), sharex=True,
                             squeeze=False)
    for col, (group, langs) in enumerate(groups.items()):
        for row, metric in enumerate(("retrieval", "margin")):
            ax = axes[row][col]
            for i, (name, result) in enumerate(representation.items()):
                style = {"color": "black", "lw": 2} if name in ("base", "before") else \
                    {"ls": "--" if name.startswith("format") else
                     ("-" if name.startswith(("seed", "after")) else ":"), "color": f"C{i}"}
                y = layer_means(result, langs, metric)
                ax.plot(range(len(y)), y, marker="o", ms=2.5, label=name, **style)
            ax.set_title(f"{metric}, {group} ({', '.join(langs)})", fontsize=10)
            if col == 0:
                ax.set_ylabel("retrieval accuracy (X → en)" if metric == "retrieval"
                              else "cos parallel − cos non-parallel")
            if row == 1:
                ax.set_xlabel("layer")
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return plots._save(fig, path)


def representation_section(representation: Mapping, trained: Sequence[str], out_dir,
                           heading: str = "##") -> str:
    """Write the plot into `out_dir`; return a markdown section with the table and plot."""
    plot_representation(representation, trained, Path(out_dir) / PLOT)
    first = next(iter(representation.values()))
    return "\n".join([
        f"{heading} Parallel paragraphs: representation similarity to English", "",
        f"{first['paragraphs']} parallel paragraphs; per layer, mean-pooled hidden states; "
        f"retrieval = share of paragraphs whose own English version is the most similar "
        f"(chance {1 / first['paragraphs']:.3f}); margin = mean cosine to the parallel English "
        f"paragraph − mean cosine to the others.", "",
        representation_table(representation, trained), "",
        f"![representation similarity per layer]({PLOT})", ""])


def _atomic_write(path: Path, text: str) -> None:
    from ..stats import write_atomic
    write_atomic(path, text.encode())


def write_control_report(out_dir, *, arms: Mapping[str, Mapping[int, str]],
                         trained: Sequence[str], loss: Mapping, representation: Mapping,
                         neurons: Mapping, run: Optional[Mapping] = None,
                         text_neurons: Optional[Mapping] = None) -> Dict[str, Path]:
    """control.json (the verdicts, every model's representation result, the losses),
    control.md and the per-layer plot, in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = control_summary(arms=arms, trained=trained, loss=loss,
                              representation=representation, neurons=neurons,
                              text_neurons=text_neurons)
    data = {"arms": {a: {str(s): k for s, k in v.items()} for a, v in arms.items()},
            "trained": list(trained), **summary, "translation_loss": dict(loss),
            "representation": dict(representation)}
    if run:
        data["run"] = {k: run[k] for k in ("command", "model", "machine", "load_average_end",
                                           "wall_seconds") if k in run}
    _atomic_write(out / "control.json", json.dumps(data, indent=1) + "\n")
    md = ["# Format-only control and representation similarity", ""]
    if run and run.get("command"):
        md += [f"Produced by `{run['command']}`.", ""]
    for arm in summary["controls"]:
        md += [f"## Aligned vs {CONTROL_LABELS.get(arm, arm)}, against the seed spread", "",
               control_table(summary, arm), ""]
    md.append(representation_section(representation, trained, out))
    _atomic_write(out / "control.md", "\n".join(md) + "\n")
    return {"json": out / "control.json", "markdown": out / "control.md", "plot": out / PLOT}
