"""Per-phase steering: which of the four phases carries a language.

Two measurements, each restricted to one phase's layers (the phases `identify.phases` stores):
- NLL: a language's neurons deactivated only in that phase (the "phase" rows of
  `nll_matrix(..., phases=...)`): how much its own NLL rises, against the other languages;
- control: the source's neurons deactivated in one phase and the target's activated in one
  phase (`langcontrol.phase_control`): the share of generations in the target language.

`phase_markdown` and `plot_phase_steering` turn both into the report's table and figure.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from .uncertainty import interval_text


def phase_rows(matrix) -> List[Dict[str, object]]:
    """Per "phase" row of an NllMatrix: language, phase, neurons, own rise with its interval,
    mean rise of the other languages."""
    d = matrix.delta()
    out = []
    for i, kind in enumerate(matrix.kinds):
        if kind != "phase":
            continue
        lang = matrix.row_languages[i]
        own, own_ci, others = math.nan, None, d[i].tolist()
        if lang in matrix.columns:
            c = matrix.columns.index(lang)
            own = d[i, c].item()
            own_ci = matrix._ci(matrix.delta_ci, i, c)
            others = [d[i, j].item() for j in range(len(matrix.columns)) if j != c]
        others = [v for v in others if not math.isnan(v)]
        out.append({"language": lang, "phase": matrix.phases[i], "neurons": matrix.sizes[i],
                    "own": own, "own_ci": own_ci,
                    "others_mean": sum(others) / len(others) if others else math.nan})
    return out


def phase_markdown(matrix, control: Optional[Sequence[dict]] = None, source: str = "",
                   target: str = "") -> str:
    """The NLL table per phase, and the control table per (deactivate, activate) phase."""
    from ..report.cells import cell, num
    parts = []
    rows = phase_rows(matrix) if matrix is not None else []
    if rows:
        parts += ["| deactivated | only in phase | neurons | own NLL rise [95% CI] | "
                  "mean rise, other languages |", "|---|---|---|---|---|"]
        for r in rows:
            others = num(r["others_mean"], "{:+.3f}")
            own = num(r["own"], "{:+.3f}")
            if own != num(None):
                own += interval_text(r["own_ci"], 3)
            parts.append(f"| {cell(r['language'])} | {cell(r['phase'])} | {r['neurons']} | "
                         f"{own} | {others} |")
    if control:
        parts += ["", f"| {source} deactivated in | {target} activated in | neurons | "
                      f"share {target} [95% CI] |", "|---|---|---|---|"]
        for r in control:
            lo, hi = r["target_ci"]
            parts.append(f"| {cell(r['deactivate_phase'])} | {cell(r['activate_phase'])} | "
                         f"{r['neurons']} "
                         f"| {r['target_share']:.2f} [{lo:.2f}, {hi:.2f}] |")
    return "\n".join(parts)


def plot_phase_steering(matrix, control: Optional[Sequence[dict]], path, source: str = "",
                        target: str = "") -> Path:
    """Bars per phase: own NLL rise (with intervals) per language, and the target share of
    per-phase control (with Wilson intervals)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = phase_rows(matrix) if matrix is not None else []
    panels = int(bool(rows)) + int(bool(control))
    fig, axes = plt.subplots(1, max(panels, 1), figsize=(5.5 * max(panels, 1), 3.6),
                             squeeze=False)
    ax_iter = iter(axes[0])
    if rows:
        ax = next(ax_iter)
        phases = list(dict.fromkeys(r["phase"] for r in rows))
        langs = list(dict.fromkeys(r["language"] for r in rows))
        width = 0.8 / len(langs)
        for k, lang in enumerate(langs):
            mine = {r["phase"]: r for r in rows if r["language"] == lang}
            vals = np.array([mine[p]["own"] for p in phases], dtype=float)
            err = np.array([[v - (mine[p]["own_ci"] or [v, v])[0],
                             (mine[p]["own_ci"] or [v, v])[1] - v]
                            for p, v in zip(phases, vals)], dtype=float).T
            ax.bar(np.arange(len(phases)) + k * width, vals, width, yerr=err, capsize=3,
                   label=f"-{lang}")
        ax.set_xticks(np.arange(len(phases)) + width * (len(langs) - 1) / 2)
        ax.set_xticklabels(phases, rotation=15, fontsize=8)
        ax.set_ylabel("own-language NLL rise (nats)")
        ax.set_title("neurons deactivated in one phase only")
        ax.legend(fontsize=8)
    if control:
        ax = next(ax_iter)
        labels = [f"-{r['deactivate_phase']}\n+{r['activate_phase']}"
                  if r["deactivate_phase"] != r["activate_phase"] else r["deactivate_phase"]
                  for r in control]
        vals = np.array([r["target_share"] for r in control], dtype=float)
        err = np.array([[v - r["target_ci"][0], r["target_ci"][1] - v]
                        for v, r in zip(vals, control)], dtype=float).T
        ax.bar(np.arange(len(control)), vals, yerr=err, capsize=3, color="tab:green")
        ax.set_xticks(np.arange(len(control)))
        ax.set_xticklabels(labels, rotation=15, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"share of output in {target}")
        ax.set_title(f"{source} -> {target}, steered in one phase")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
