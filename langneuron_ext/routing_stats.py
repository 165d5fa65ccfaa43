"""Quantities derived from the routing statistics of a mixture-of-experts scan.

`ActivationStats.routed` int64 [K, L, E] counts the tokens of language k that layer l's router
sent to routed expert e; `route_weight` float64 [K, L, E] sums the weights they got there
(models/routing.py records both). From them:

- `routed_denominators(stats)`: per neuron, the tokens that reached it (its expert's routed tokens
  for a routed neuron, all tokens of the language for dense layers and shared experts), the
  denominator of `stats.activation_probability(given="routed")`;
- `routed_share(stats)`: P(expert e | language k, layer l) = routed / (top_k * tokens), the
  routing distribution of a language over a layer's experts (each token picks top_k experts);
- `language_share(stats)`: P(language k | expert e, layer l) after normalising each language by
  its token count, the distribution whose entropy marks a language expert;
- `routing_entropy(stats)` and `routing_divergence(stats, reference="en")`: per language and
  layer, the entropy of its routing distribution and its Jensen-Shannon divergence from the
  reference language's (Bandarkar et al. 2025: routing is language-specific in early and late
  layers and shared in the middle).
"""
from __future__ import annotations

from typing import List

import torch
from torch import Tensor

from .stats import ActivationStats, StatsError


def require_routing(stats: ActivationStats, what: str = "this") -> None:
    """One clear error for stats without experts or without routing counts."""
    if stats.expert_layout() is None or not any(
            seg["kind"] == "routed" for segs in stats.expert_layout() for seg in segs):
        raise StatsError(f"{what} needs a mixture-of-experts model, but the stats of "
                         f"{stats.model_name or 'this model'} ({stats.model_type or '?'}) "
                         f"have no experts: it is a dense model; use given='token' (the default)")
    if stats.routed is None:
        raise StatsError(f"{what} needs the routing counts (routed / route_weight), which these "
                         f"stats of a mixture-of-experts model lack (scanned by an older "
                         f"version); rescan with `langneuron scan` to record them")


def routed_experts(stats: ActivationStats) -> List[int]:
    """Routed experts of each layer (0 for a dense layer)."""
    require_routing(stats)
    out = [0] * stats.num_layers
    for layer, segs in enumerate(stats.expert_layout()):
        for seg in segs:
            if seg["kind"] == "routed":
                out[layer] = int(seg["experts"])
    return out


def routed_denominators(stats: ActivationStats) -> Tensor:
    """Tokens that reached each neuron, float64 [K, L, I]: routed[k, l, e] for neuron i of routed
    expert e, n_tokens[k] elsewhere (dense layers, shared experts, padding)."""
    require_routing(stats, "given='routed'")
    K, L, I = stats.counts.shape
    out = stats.n_tokens.double()[:, None, None].expand(K, L, I).clone()
    for layer, segs in enumerate(stats.expert_layout()):
        for seg in segs:
            if seg["kind"] != "routed":
                continue
            E, W, off = int(seg["experts"]), int(seg["expert_size"]), int(seg["offset"])
            per = stats.routed[:, layer, :E].double()
            out[:, layer, off:off + E * W] = per.repeat_interleave(W, dim=1)
    return out


def top_k_per_token(stats: ActivationStats) -> Tensor:
    """Experts chosen per token in each layer, float64 [L] (0 for dense layers): routed slots
    of all languages / tokens of all languages (an integer for every MoE layer)."""
    require_routing(stats)
    tokens = stats.n_tokens.sum().double().clamp(min=1)
    return stats.routed.sum(dim=(0, 2)).double() / tokens


def routed_share(stats: ActivationStats) -> Tensor:
    """P(expert | language, layer), float64 [K, L, E]: each language's routed slots over its
    layer's experts, summing to 1 per (language, MoE layer); 0 for dense layers."""
    require_routing(stats)
    total = stats.routed.sum(dim=2, keepdim=True).double()
    return torch.where(total > 0, stats.routed.double() / total.clamp(min=1), 0.0)


def language_share(stats: ActivationStats) -> Tensor:
    """P(language | expert, layer), float64 [K, L, E], each language weighted equally: the
    routed share per language normalised over languages (0 for experts no language reached)."""
    share = routed_share(stats)
    total = share.sum(dim=0, keepdim=True)
    return torch.where(total > 0, share / total.clamp(min=1e-300), 0.0)


def _entropy(p: Tensor, dim: int) -> Tensor:
    return -torch.where(p > 0, p * p.clamp(min=1e-300).log(), 0.0).sum(dim=dim)


def routing_entropy(stats: ActivationStats) -> Tensor:
    """Entropy (nats) of each language's routing distribution per layer, float64 [K, L]; NaN for
    dense layers. Low: the language goes to few experts; log E: spread evenly."""
    share = routed_share(stats)
    out = _entropy(share, dim=2)
    dense = torch.tensor(routed_experts(stats)) == 0
    out[:, dense] = float("nan")
    return out


def routing_divergence(stats: ActivationStats, reference: str = "en") -> Tensor:
    """Jensen-Shannon divergence (nats, in [0, ln 2]) of each language's routing distribution
    from `reference`'s, per layer, float64 [K, L]; NaN for dense layers."""
    if reference not in stats.languages:
        raise StatsError(f"reference language {reference!r} is not in the stats "
                         f"({', '.join(stats.languages)}); pick one of them")
    share = routed_share(stats)
    ref = share[stats.languages.index(reference)][None]
    mid = (share + ref) / 2
    js = (_entropy(mid, 2) - (_entropy(share, 2) + _entropy(ref, 2)) / 2).clamp(min=0)
    dense = torch.tensor(routed_experts(stats)) == 0
    js[:, dense] = float("nan")
    return js


__all__ = ["require_routing", "routed_experts", "routed_denominators", "top_k_per_token",
           "routed_share", "language_share", "routing_entropy", "routing_divergence"]
