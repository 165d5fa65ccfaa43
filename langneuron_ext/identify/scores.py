"""Per-neuron scores behind both identification methods, as tensors and a safetensors file.

    s = ln.identify.scores(stats)
    s.probabilities        # float32 [K, L, I]: P(act > 0) per language (the methods' precision)
    s.lape_entropy         # float32 [L, I]: LAPE's entropy of the normalised probabilities
    s.ternary_entropy      # float64 [L, I]: the ternary method's entropy / ln K
    s.medians              # float32 [K, L, I]: each language's median activation (scan --hist)
    s.mass_above_median    # float32 [K, L, I]: share of the neuron's activations above it
    s.save("scores.safetensors")

The values are those the methods rank: `lape` selects the smallest `lape_entropy` among the
neurons with some language above its filter quantile (`lape_filtered`, +inf elsewhere), and
`ternary`'s score is `ternary_entropy - lam * max_probability / (H_K / K)`.
Padding columns of MoE stats with narrower layers (`stats.neuron_mask()`) are no neurons: the
thresholds leave them out, as the methods do, and their entropies are NaN.

From stats with histograms (`scan --hist`) also: `medians[k]`, language k's median activation
per neuron (`ActivationStats.median`, within one bin), and `mass_above_median[k]`, the share of
the neuron's activations over all languages (each language weighted equally) that lie above
language k's median: near 0.5 for a language typical of the neuron, near 0 when the language
sits at the bottom of its range, near 1 when the neuron fires above its usual range there.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import torch
from torch import Tensor

from ..stats import ActivationStats
from .lape import activation_probabilities, check_rate, checked_stats, rank_of
from .neuron_set import IdentifyError
from .ternary import _Scorer

SCORES_FORMAT = "langneuron-scores-1"
_OPTIONAL = ("medians", "mass_above_median")          # only from stats with histograms


def lape_entropy(P: Tensor) -> Tensor:
    """LAPE's entropy over languages of P [L, I, K] (float32), as `lape` computes it:
    Pn = P / sum_k P (0 where the sum is 0), H = -sum Pn ln Pn with 0 ln 0 = 0."""
    normed = P / P.sum(dim=-1, keepdim=True)
    normed[torch.isnan(normed)] = 0
    log_normed = torch.where(normed > 0, normed.log(), 0)
    return -torch.sum(normed * log_normed, dim=-1)


@dataclass
class NeuronScores:
    """Scores per neuron; see the module docstring."""
    languages: List[str]
    probabilities: Tensor      # float32 [K, L, I]
    lape_entropy: Tensor       # float32 [L, I]
    lape_filtered: Tensor      # float32 [L, I]: lape_entropy, +inf where no language > filter
    ternary_entropy: Tensor    # float64 [L, I]: H(p') / ln K
    max_probability: Tensor    # float32 [L, I]: max over languages of P
    filter_value: float
    model_name: str = ""
    medians: Optional[Tensor] = None            # float32 [K, L, I] (stats with histograms)
    mass_above_median: Optional[Tensor] = None  # float32 [K, L, I]

    @property
    def num_layers(self) -> int:
        return self.lape_entropy.shape[0]

    def tensors(self) -> dict:
        out = {"probabilities": self.probabilities.contiguous(),
               "lape_entropy": self.lape_entropy.contiguous(),
               "lape_filtered": self.lape_filtered.contiguous(),
               "ternary_entropy": self.ternary_entropy.contiguous(),
               "max_probability": self.max_probability.contiguous()}
        for name in _OPTIONAL:
            if getattr(self, name) is not None:
                out[name] = getattr(self, name).contiguous()
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write a safetensors file (atomically) with the tensors above and metadata
        `languages` (JSON), `filter_value`, `model_name`, `format`."""
        from safetensors.torch import save as serialize

        from ..stats import write_atomic
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"languages": json.dumps(self.languages), "filter_value": repr(self.filter_value),
                "model_name": self.model_name, "format": SCORES_FORMAT}
        write_atomic(path, serialize(self.tensors(), metadata=meta))   # fsync + rename
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NeuronScores":
        from safetensors import safe_open
        path = Path(path)
        if not path.exists():
            raise IdentifyError(f"scores file {path} does not exist; write it with "
                                f"`langneuron identify STATS --scores {path}`")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                t = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise IdentifyError(f"{path} is not a safetensors scores file: {exc}") from None
        if meta.get("format") != SCORES_FORMAT:
            raise IdentifyError(f"{path} is not a scores file (format {meta.get('format')!r})")
        return cls(json.loads(meta["languages"]), t["probabilities"], t["lape_entropy"],
                   t["lape_filtered"], t["ternary_entropy"], t["max_probability"],
                   float(meta["filter_value"]), meta.get("model_name", ""),
                   **{name: t.get(name) for name in _OPTIONAL})

    def entropy_by_layer(self, quantile: float = 0.01) -> dict:
        """Per layer: mean and `quantile` (default 1 %, the share both methods select) of the
        ternary normalised entropy and of the LAPE entropy / ln K, both in [0, 1]. LAPE's values
        are over the neurons that fire in some language (a silent neuron has LAPE entropy 0
        by its formula, but LAPE's filter never selects it); None for a silent layer."""
        K = len(self.languages)
        lape = self.lape_entropy.double() / math.log(K)
        firing = (self.max_probability > 0) & ~torch.isnan(self.lape_entropy)   # no padding
        ternary = self.ternary_entropy
        out = {"ternary_mean": ternary.nanmean(dim=1).tolist(),
               "ternary_quantile": ternary.nanquantile(quantile, dim=1).tolist(),
               "lape_mean": [], "lape_quantile": [], "quantile": quantile}
        for layer in range(self.num_layers):
            values = lape[layer][firing[layer]]
            out["lape_mean"].append(float(values.mean()) if values.numel() else None)
            out["lape_quantile"].append(float(values.quantile(quantile)) if values.numel()
                                        else None)
        return out


def scores(stats: ActivationStats, filter_rate: float = 0.95,
           prefix: Optional[ActivationStats] = None) -> NeuronScores:
    """Per-neuron activation probabilities, LAPE entropies (plain and with LAPE's filter at
    `filter_rate`) and the ternary method's normalised entropies, computed exactly as `lape`
    and `ternary` compute them. `prefix` stats are subtracted first, as in both methods."""
    filter_rate = check_rate("filter_rate", filter_rate)
    stats = checked_stats(stats, prefix)
    P = activation_probabilities(stats)                                    # [L, I, K] float32
    valid = stats.neuron_mask()          # None: every column is a neuron (dense models)
    entropy = lape_entropy(P)
    flat = P.flatten() if valid is None else P[valid].flatten()
    filter_value = flat.kthvalue(rank_of(filter_rate, flat.numel(), "filter_rate")).values.item()
    filtered = entropy.clone()
    filtered[(P > filter_value).sum(dim=-1) == 0] = torch.inf
    # the ternary scorer's lambda-independent part; top_rate / bar_ratio do not enter it
    scorer = _Scorer.build(P, top_rate=1.0, bar_ratio=0.95, valid=valid)
    ternary_entropy = scorer.entropy.clone()
    if valid is not None:
        for t in (entropy, filtered, ternary_entropy):
            t[~valid] = torch.nan
    medians, above = median_scores(stats)
    return NeuronScores(list(stats.languages), P.permute(2, 0, 1).contiguous(), entropy,
                        filtered, ternary_entropy, P.amax(dim=-1), filter_value,
                        stats.model_name, medians, above)


def median_scores(stats: ActivationStats) -> tuple:
    """(medians, mass_above_median), float32 [K, L, I] each, or (None, None) for stats without
    histograms; see the module docstring. NaN on padding and for languages without tokens."""
    if stats.hist is None:
        return None, None
    medians = stats.median()                                               # float64
    n = stats.hist.sum(-1, keepdim=True).double()
    share = torch.where(n > 0, stats.hist.double() / n.clamp(min=1), 0.0)
    present = (n > 0).double()                     # languages that saw the neuron
    pooled = share.sum(0) / present.sum(0).clamp(min=1)                    # [L, I, B]
    edges = stats.hist_edges.double()
    B = edges.numel() + 1
    # bin of each median and the part of that bin above it (tokens spread evenly in a bin;
    # the open end bins span edges[0] and up to the largest activation seen)
    b = torch.bucketize(medians.nan_to_num(0.0), edges, right=True).clamp(max=B - 1)
    top = (stats.amax.double().amax(0) if stats.amax is not None
           else torch.full(medians.shape[1:], -torch.inf, dtype=torch.float64))
    inf = torch.tensor([torch.inf], dtype=torch.float64)
    lo, hi = torch.cat([-inf, edges])[b], torch.cat([edges, inf])[b]
    closed = ((hi - medians) / (hi - lo)).clamp(0, 1)
    up_to_max = ((top - medians) / (top - lo)).clamp(0, 1)
    part = torch.where(torch.isinf(lo), 0.0, closed)          # the median is edges[0]
    part = torch.where(torch.isinf(hi), torch.where(top > lo, up_to_max, 1.0), part)
    tail = pooled.flip(-1).cumsum(-1).flip(-1)                             # mass in bins >= b
    above_bins = torch.cat([tail[..., 1:], torch.zeros_like(tail[..., :1])], -1)  # bins > b
    pooled_k = pooled.expand(stats.num_languages, *pooled.shape)
    above = above_bins.expand_as(pooled_k).gather(-1, b[..., None]).squeeze(-1) \
        + part * pooled_k.gather(-1, b[..., None]).squeeze(-1)
    above = torch.where(torch.isnan(medians), torch.nan, above)
    return medians.float(), above.float()


def plot_entropy_by_layer(s: NeuronScores, path) -> Path:
    """Mean and 1 % quantile of the normalised entropy per layer (ternary H(p')/ln K and LAPE
    H/ln K): low values mark layers holding language-specific neurons."""
    from ..report import plots
    plt = plots._pyplot()
    e = s.entropy_by_layer()
    q = f"{100 * e['quantile']:g} % quantile"
    nan = lambda v: [float("nan") if x is None else x for x in v]  # noqa: E731
    layers = range(s.num_layers)
    fig, ax = plt.subplots(figsize=(9, 4))
    ax.plot(layers, e["ternary_mean"], marker="o", ms=3, label="ternary H(p')/ln K, mean")
    ax.plot(layers, e["ternary_quantile"], marker="v", ms=3, label=f"ternary, {q}")
    ax.plot(layers, nan(e["lape_mean"]), ls="--", label="LAPE H/ln K, mean (firing neurons)")
    ax.plot(layers, nan(e["lape_quantile"]), ls="--", label=f"LAPE, {q}")
    ax.set_xlabel("layer")
    ax.set_ylabel("normalised entropy over languages")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Entropy of activation probability by layer ({len(s.languages)} languages)")
    ax.legend(fontsize=8)
    return plots._save(fig, path)


def write_scores(stats: ActivationStats, path, prefix: Optional[ActivationStats] = None
                 ) -> List[Path]:
    """Write the scores file and, beside it, `<name>.entropy.png` (entropy by layer); used by
    `langneuron identify --scores FILE`. Returns both paths."""
    s = scores(stats, prefix=prefix)
    path = s.save(path)
    name = path.name[:-len(path.suffix)] if path.suffix else path.name
    return [path, plot_entropy_by_layer(s, path.with_name(name + ".entropy.png"))]
