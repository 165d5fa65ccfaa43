"""Plots of neuron sets, phases and NLL changes (matplotlib, no screen needed).

Every function takes plain data (a NeuronSet, a per-layer profile, a matrix) and a path, writes
one PNG and returns the path, so the CLI, the demo and notebooks share them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def per_layer_counts(neurons: Dict[str, Dict], languages: Sequence[str], num_layers: int
                     ) -> np.ndarray:
    """[K, L] number of neurons per language and layer from a `{lang: {layer: ids}}` map."""
    out = np.zeros((len(languages), num_layers), dtype=np.int64)
    for k, lang in enumerate(languages):
        for layer, ids in neurons.get(lang, {}).items():
            out[k, int(layer)] = len(ids)
    return out


def phase_spans(phases) -> List[tuple]:
    """(name, start, stop) for phases stored as objects or dicts; empty when absent."""
    spans = []
    for p in phases or []:
        if isinstance(p, dict):
            spans.append((p["name"], int(p["start"]), int(p["stop"])))
        else:
            spans.append((p.name, int(p.start), int(p.stop)))
    return spans


def plot_layer_distribution(neuron_set, path, title: Optional[str] = None) -> Path:
    """Neurons per layer for each language (one line each), general neurons dashed."""
    plt = _pyplot()
    counts = per_layer_counts(neuron_set.neurons, neuron_set.languages, neuron_set.num_layers)
    fig, ax = plt.subplots(figsize=(9, 4.5))
    layers = np.arange(neuron_set.num_layers)
    for k, lang in enumerate(neuron_set.languages):
        ax.plot(layers, counts[k], marker="o", ms=3, label=lang)
    types = getattr(neuron_set, "types", None) or {}
    if "general" in types:
        general = types["general"]
        any_lang = next(iter(general), None)
        if any_lang is not None:
            g = per_layer_counts({any_lang: general[any_lang]}, [any_lang],
                                 neuron_set.num_layers)[0]
            ax.plot(layers, g, "k--", label="general (all languages)")
    _shade_phases(ax, getattr(neuron_set, "phases", None))
    ax.set_xlabel("layer")
    ax.set_ylabel("neurons")
    integer_axes(ax, x=True, y=True)
    set_title(ax, title or f"Language neurons per layer ({neuron_set.method})")
    legend_outside(ax)
    return _save(fig, path)


def plot_phase_profile(language_share: Sequence[float], general_share: Optional[Sequence[float]],
                       phases, path, title: str = "Four phases of multilingual inference"
                       ) -> Path:
    """Per-layer share of language (and, when the method has them, general) neurons with the
    phase segments shaded and named in the key. general_share None: no general line (LAPE)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    layers = np.arange(len(language_share))
    ax.plot(layers, language_share, marker="o", ms=3, label="language neurons (share)")
    if general_share is not None:
        ax.plot(layers, general_share, marker="s", ms=3, label="general neurons (share)")
    _shade_phases(ax, phases)
    ax.set_xlabel("layer")
    ax.set_ylabel("share of the layer's neurons")
    integer_axes(ax, x=True)
    set_title(ax, title)
    legend_outside(ax)
    return _save(fig, path)


def plot_overlap(neuron_set, path) -> Path:
    """Jaccard overlap of the languages' neuron sets (K x K heatmap)."""
    plt = _pyplot()
    langs = neuron_set.languages
    sets = [{(int(l), i) for l, ids in neuron_set.neurons.get(lang, {}).items() for i in ids}
            for lang in langs]
    K = len(langs)
    jac = np.zeros((K, K))
    for a in range(K):
        for b in range(K):
            union = len(sets[a] | sets[b])
            jac[a, b] = len(sets[a] & sets[b]) / union if union else 0.0
    fig, ax = plt.subplots(figsize=(1 + 0.6 * K, 0.8 + 0.6 * K))
    im = ax.imshow(jac, cmap="viridis", vmin=0, vmax=1)
    _label_matrix(ax, jac, langs, langs, "{:.2f}")
    set_title(ax, "Overlap of neuron sets (Jaccard)")
    fig.colorbar(im, ax=ax, fraction=0.046).set_label("Jaccard")
    return _save(fig, path)


def plot_matrix(matrix: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str], path,
                title: str, fmt: str = "{:+.3f}", center_zero: bool = True,
                value_label: str = "NLL change (nats)") -> Path:
    """A labelled heatmap, e.g. the NLL change (rows: deactivated set, columns: language);
    cells without a value (NaN) are grey and marked "–"."""
    plt = _pyplot()
    matrix = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(max(4.5, 1.5 + 0.8 * len(col_labels)),
                                    1.2 + 0.45 * len(row_labels)))
    finite = np.isfinite(matrix)
    if center_zero:
        lim = float(np.abs(matrix[finite]).max()) if finite.any() else 1.0
        cmap = _with_missing("RdBu_r")
        im = ax.imshow(matrix, cmap=cmap, vmin=-(lim or 1.0), vmax=lim or 1.0, aspect="auto")
    else:
        im = ax.imshow(matrix, cmap=_with_missing("viridis"), aspect="auto")
    _label_matrix(ax, matrix, row_labels, col_labels, fmt)
    set_title(ax, title)
    fig.colorbar(im, ax=ax, fraction=0.046).set_label(value_label)
    return _save(fig, path)


def per_expert_counts(neuron_set, expert_layout: Sequence[Sequence[dict]],
                      languages: Optional[Sequence[str]] = None):
    """([L, C] neurons of `languages` (default all; a neuron counted once) per layer and
    column, column labels): columns are the routed experts e0..e{E-1}, then "shared" and
    "dense" where some layer has them. `expert_layout` is `ActivationStats.expert_layout()`
    (per layer: segments with kind, offset, experts, expert_size)."""
    E = max((seg["experts"] for segs in expert_layout for seg in segs
             if seg["kind"] == "routed"), default=0)
    kinds = {seg["kind"] for segs in expert_layout for seg in segs}
    labels = [f"e{e}" for e in range(E)] + [k for k in ("shared", "dense") if k in kinds]
    col = {label: c for c, label in enumerate(labels)}
    languages = list(languages) if languages is not None else list(neuron_set.languages)
    out = np.zeros((len(expert_layout), len(labels)), dtype=np.int64)
    for layer, segs in enumerate(expert_layout):
        ids = sorted({i for lang in languages
                      for i in neuron_set.neurons.get(lang, {}).get(layer, [])})
        for i in ids:
            for seg in segs:
                size = seg["experts"] * seg["expert_size"]
                if seg["offset"] <= i < seg["offset"] + size:
                    label = (f"e{(i - seg['offset']) // seg['expert_size']}"
                             if seg["kind"] == "routed" else seg["kind"])
                    out[layer, col[label]] += 1
                    break
    return out, labels


def plot_expert_heatmap(neuron_set, expert_layout, path, languages=None,
                        title: Optional[str] = None) -> Path:
    """Language neurons per layer (rows) and expert (columns) of a mixture-of-experts model."""
    counts, labels = per_expert_counts(neuron_set, expert_layout, languages)
    plt = _pyplot()
    L = counts.shape[0]
    fig, ax = plt.subplots(figsize=(2 + 0.45 * len(labels), 1.5 + 0.3 * L))
    im = ax.imshow(counts, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(labels)), labels, rotation=90)
    ax.set_yticks(range(L), [str(layer) for layer in range(L)])
    ax.set_xlabel("expert")
    ax.set_ylabel("layer")
    who = ", ".join(languages) if languages else "all languages"
    set_title(ax, title or f"Language neurons per expert ({neuron_set.method}, {who})")
    fig.colorbar(im, ax=ax, fraction=0.046).set_label("neurons")
    return _save(fig, path)


def _label_matrix(ax, values, rows, cols, fmt):
    from .cells import num
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), rows)
    for r in range(values.shape[0]):
        for c in range(values.shape[1]):
            ax.text(c, r, num(values[r, c], fmt), ha="center", va="center", fontsize=7,
                    color=_text_colour(ax, values[r, c]))


def _text_colour(ax, value) -> str:
    """White on dark cells, black on light ones (the image's own colour map decides)."""
    images = ax.get_images()
    if not images or not np.isfinite(value):
        return "black"
    red, green, blue, _ = images[-1].cmap(images[-1].norm(value))
    return "white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.5 else "black"


MISSING_COLOUR = "#b0b0b0"
PHASE_COLOURS = ["#cfe8ff", "#e8e8e8", "#ffe3c4", "#e3f5d8"]


def _with_missing(name: str):
    """A colour map that draws NaN cells grey, apart from every value (0 is white in RdBu)."""
    import matplotlib
    return matplotlib.colormaps[name].with_extremes(bad=MISSING_COLOUR)


def _shade_phases(ax, phases, label: bool = True):
    """Shade each phase's layers; with `label`, the key names each shade and its layers (a key
    instead of text on the plot: phases one or two layers wide leave no room for names)."""
    for n, (name, start, stop) in enumerate(phase_spans(phases)):
        layers = f"layer {start}" if stop - start == 1 else f"layers {start}–{stop - 1}"
        ax.axvspan(start - 0.5, stop - 0.5, color=PHASE_COLOURS[n % 4], alpha=0.6, zorder=0,
                   label=f"phase: {name} ({layers})" if label else None)


def integer_axes(ax, x: bool = False, y: bool = False) -> None:
    """Whole-number ticks on axes that count layers or neurons (no "2.5 layers")."""
    from matplotlib.ticker import MaxNLocator
    if x:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if y:
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        low, high = ax.get_ylim()
        if high - low < 1:                   # all zero: show 0 and 1, not -0.045 .. 0.045
            ax.set_ylim(min(low, -0.05), max(high, 1.05))


def set_title(ax, text: str, fontsize: float = 11) -> None:
    """A title wrapped to the width of its axes, so a long one is never clipped."""
    import textwrap
    fig = ax.get_figure()
    width_in = fig.get_figwidth() * ax.get_position().width
    chars = max(16, int(width_in * 72 / (fontsize * 0.55)))
    ax.set_title(textwrap.fill(text, chars), fontsize=fontsize)


def legend_outside(ax, **kwargs) -> None:
    """The key to the right of the axes, where it covers no data."""
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0,
              **kwargs)


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    import matplotlib.pyplot as plt
    plt.close(fig)
    return path
