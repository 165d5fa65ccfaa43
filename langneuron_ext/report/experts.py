"""Plots of the routing of mixture-of-experts models (matplotlib, no screen needed).

- `plot_routing_divergence`: per layer, each language's Jensen-Shannon divergence of routing from
  the reference language (Bandarkar et al. 2025's figure: layer on x, divergence on y, one line
  per language; dense layers are gaps).
- `plot_routed_share`: for chosen layers, a heatmap of the routed share per language x expert,
  selected language experts outlined.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .plots import _pyplot, _save


def plot_routing_divergence(language_experts, path, title: Optional[str] = None) -> Path:
    """Divergence of each language's routing from the reference language, per layer."""
    plt = _pyplot()
    div = language_experts.divergence.numpy()
    layers = np.arange(div.shape[1])
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for k, lang in enumerate(language_experts.languages):
        if lang == language_experts.reference:
            continue
        ax.plot(layers, div[k], marker="o", ms=3, label=lang)
    ax.set_xlabel("layer")
    ax.set_ylabel(f"JS divergence of routing from {language_experts.reference} (nats)")
    ax.set_ylim(bottom=0)
    ax.set_title(title or "routing divergence per layer")
    if len(language_experts.languages) > 1:
        ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


def default_layers(language_experts, count: int = 3) -> list:
    """First, middle and last MoE layer (where routing is most and least language-specific)."""
    moe = [l for l in range(language_experts.num_layers)
           if not bool(np.isnan(language_experts.routing_entropy[:, l].numpy()).all())]
    if len(moe) <= count:
        return moe
    return sorted({moe[0], moe[len(moe) // 2], moe[-1]})


def plot_routed_share(language_experts, path, layers: Optional[Sequence[int]] = None) -> Path:
    """Heatmaps of P(expert | language) for `layers` (default: first, middle, last MoE layer);
    the language's own experts are outlined."""
    plt = _pyplot()
    layers = list(layers) if layers is not None else default_layers(language_experts)
    if not layers:
        raise ValueError("no mixture-of-experts layers to plot")
    share = language_experts.probability.numpy()
    mask = language_experts.mask.numpy()
    langs = language_experts.languages
    E = share.shape[2]
    fig, axes = plt.subplots(len(layers), 1, figsize=(max(6, 0.25 * E + 2),
                                                      1.2 + 0.35 * len(langs) * len(layers)),
                             squeeze=False)
    for ax, layer in zip(axes[:, 0], layers):
        im = ax.imshow(share[:, layer, :], aspect="auto", cmap="viridis", vmin=0)
        for k, e in zip(*np.nonzero(mask[:, layer, :])):
            ax.add_patch(plt.Rectangle((e - 0.5, k - 0.5), 1, 1, fill=False, ec="red", lw=1.5))
        ax.set_yticks(range(len(langs)), langs)
        ax.set_ylabel(f"layer {layer}")
        fig.colorbar(im, ax=ax, fraction=0.03)
    axes[-1, 0].set_xlabel("expert (red: language experts)")
    axes[0, 0].set_title("routed share of each language's tokens per expert")
    return _save(fig, path)


__all__ = ["plot_routing_divergence", "plot_routed_share", "default_layers"]
