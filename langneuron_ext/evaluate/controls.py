"""Random neuron sets for controls: plain, or matched on activation frequency.

A random set has as many neurons per layer as the set it controls for (`steer.random_mask_like`).
Single neurons have heavy-tailed effects, so a handful of random sets is a weak control; these
helpers make many sets cheap to describe and let them match the own set on P(act > 0) layer by
layer: each own neuron is replaced by a random neuron of the same layer from the same frequency
bin (quantile bins of the pooled P(act > 0) over all languages), drawn without replacement and
never from the own set.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..steer import SteeringError, random_mask_like

MATCHES = ("none", "frequency")
FREQUENCY_BINS = 10


def pooled_frequency(stats) -> Tensor:
    """P(act > 0) pooled over all languages' tokens, float64 [L, I]."""
    n = stats.n_tokens.double().sum()
    if n <= 0:
        raise SteeringError("the stats have no counted tokens; frequency matching needs a scan")
    return stats.counts.double().sum(0) / n


def frequency_matched_mask(mask: Tensor, frequency: Tensor, generator: torch.Generator,
                           bins: int = FREQUENCY_BINS,
                           layer_sizes: Optional[Sequence[int]] = None) -> Tensor:
    """Random bool [L, I] mask with, in every layer and frequency bin, as many neurons as `mask`
    has there (outside `mask`; a bin that runs short borrows from the layer's nearest bins)."""
    if frequency.shape != mask.shape:
        raise SteeringError(f"frequencies {list(frequency.shape)} do not match the neurons "
                            f"{list(mask.shape)}; use stats of the same model")
    L, I = mask.shape
    out = torch.zeros(L, I, dtype=torch.bool)
    for layer in range(L):
        own = mask[layer].nonzero().squeeze(1)
        if own.numel() == 0:
            continue
        size = I if layer_sizes is None else int(layer_sizes[layer])
        freq = frequency[layer, :size]
        edges = torch.quantile(freq, torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1])
        which = torch.bucketize(freq, edges)                # bin of every neuron of the layer
        free = ~mask[layer, :size]
        need = torch.bincount(which[own], minlength=bins)
        for b in range(bins):
            for _ in range(int(need[b])):
                pick = None
                for dist in range(bins):        # this bin first, then the nearest ones
                    for cand in (b - dist, b + dist):
                        if 0 <= cand < bins:
                            pool = (free & (which == cand)).nonzero().squeeze(1)
                            if pool.numel():
                                pick = pool[torch.randint(pool.numel(), (1,),
                                                          generator=generator)]
                                break
                    if pick is not None:
                        break
                if pick is None:
                    raise SteeringError(f"layer {layer} has too few neurons outside the set "
                                        f"to draw a matched random set")
                out[layer, pick] = True
                free[pick] = False
    return out


def random_control_mask(mask: Tensor, generator: torch.Generator, match: str = "none",
                        frequency: Optional[Tensor] = None,
                        layer_sizes: Optional[Sequence[int]] = None) -> Tensor:
    """One random control set for `mask`: plain (`match="none"`) or frequency-matched."""
    if match == "none":
        return random_mask_like(mask, generator, layer_sizes)
    if match == "frequency":
        if frequency is None:
            raise SteeringError("frequency-matched random sets need the scan statistics "
                                "(P(act > 0) per neuron)")
        return frequency_matched_mask(mask, frequency, generator, layer_sizes=layer_sizes)
    raise SteeringError(f"unknown random-set matching {match!r}; use one of "
                        f"{', '.join(MATCHES)}")
