"""The four phases of multilingual inference (Zhang et al. 2025), by an exact segmentation.

Neither the paper nor its code gives a procedure; this module defines one (see `phases`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import List

import torch
from torch import Tensor

from .neuron_set import IdentifyError, NeuronSet

PHASE_NAMES = ("understanding", "shared reasoning", "output transformation", "vocabulary output")


@dataclass(frozen=True)
class Phase:
    """Layers `start` .. `stop - 1` form the phase `name`."""
    name: str
    start: int
    stop: int

    @property
    def layers(self) -> range:
        return range(self.start, self.stop)

    def as_dict(self) -> dict:
        return asdict(self)


def layer_counts(neurons: NeuronSet) -> Tensor:
    """LongTensor [L, D]: per layer, the distinct language neurons (specific + related, or all
    selected neurons of a set without types) and, when the set has types, the general neurons."""
    language = neurons.masks().any(dim=0).sum(dim=1)                        # [L]
    columns = [language]
    if neurons.types is not None:
        general = torch.zeros(neurons.num_layers, dtype=torch.int64)
        any_lang = neurons.languages[0]  # general neurons are listed under every language
        for layer, ids in neurons.types["general"][any_lang].items():
            general[layer] = len(ids)
        columns.append(general)
    return torch.stack(columns, dim=1)


def layer_profile(neurons: NeuronSet) -> List[List[Fraction]]:
    """The profile that `phases` segments: per layer and per column of `layer_counts`, the
    average rank (1-based, ties share the mean rank) of that layer's share among all layers."""
    columns = layer_counts(neurons).T.tolist()
    ranked = []
    for values in columns:
        ranked.append([Fraction(sum(w < v for w in values))
                       + Fraction(sum(w == v for w in values) + 1, 2) for v in values])
    return [list(row) for row in zip(*ranked)]


def _segment_costs(profile: List[List[Fraction]]) -> List[List[Fraction]]:
    """cost[a][b] = squared error of layers a..b-1 around their mean profile, exact."""
    L, D = len(profile), len(profile[0])
    cost = [[Fraction(0)] * (L + 1) for _ in range(L + 1)]
    for a in range(L):
        s = [Fraction(0)] * D
        sq = [Fraction(0)] * D
        for b in range(a + 1, L + 1):
            for d in range(D):
                x = profile[b - 1][d]
                s[d] += x
                sq[d] += x * x
            n = b - a
            cost[a][b] = sum(sq[d] - s[d] * s[d] / n for d in range(D))
    return cost


def phases(neurons: NeuronSet) -> List[Phase]:
    """Split the layers into the four phases of multilingual inference; also stored in
    `neurons.phases`.

    Algorithm. For every layer l count the distinct language neurons in it (specific and
    related; for a set without types, such as LAPE, the selected neurons of any language) and
    the general neurons in it; a count is proportional to that layer's share of the kind. Each
    kind becomes one coordinate of the profile x_l by ranking the layers by that share (1-based
    average ranks, ties sharing the mean rank), so that the few layers holding most neurons do
    not dominate the error and both kinds weigh the same; a set without types has only the
    language coordinate. Split the layers 0..L-1 into four contiguous non-empty segments
    minimising the total within-segment squared error
    sum_segments sum_{l in segment} ||x_l - mean(segment)||^2. The minimum is found exactly by
    dynamic programming over (segments left, first layer) in O(4 L^2), in exact rational
    arithmetic, so no rounding can change the answer; among optimal splits the one with the
    earliest boundaries (lexicographically smallest) is taken. The segments are labelled, in
    layer order: understanding, shared reasoning, output transformation, vocabulary output.
    On the published Mistral / MGSM counts this gives layers 0-4, 5-18, 19-29 and 30-31:
    language neurons high early, near zero in the middle, high again late, and the general
    neurons peaking in the last two layers, the shape the paper describes. Needs at least four
    layers.
    """
    if not isinstance(neurons, NeuronSet):
        raise IdentifyError(f"phases needs a NeuronSet, got {type(neurons).__name__}")
    L, parts = neurons.num_layers, len(PHASE_NAMES)
    if L < parts:
        raise IdentifyError(f"four phases need at least {parts} layers; this set has {L}")
    cost = _segment_costs(layer_profile(neurons))

    # best[j][s]: least cost of layers s..L-1 cut into j segments (None: impossible)
    best = [[None] * (L + 1) for _ in range(parts + 1)]
    best[0][L] = Fraction(0)
    for j in range(1, parts + 1):
        for s in range(L - j, -1, -1):
            best[j][s] = min(cost[s][e] + best[j - 1][e] for e in range(s + 1, L - j + 2)
                             if best[j - 1][e] is not None)
    # walk forward taking the earliest boundary that keeps the optimum
    bounds, start = [], 0
    for j in range(parts, 0, -1):
        stop = next(e for e in range(start + 1, L - j + 2) if best[j - 1][e] is not None
                    and cost[start][e] + best[j - 1][e] == best[j][start])
        bounds.append((start, stop))
        start = stop
    result = [Phase(name, a, b) for name, (a, b) in zip(PHASE_NAMES, bounds)]
    neurons.phases = [p.as_dict() for p in result]
    return result
