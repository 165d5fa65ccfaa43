"""Four phases: the DP equals an exhaustive search (with its tie rule), shapes, errors."""
import itertools
from fractions import Fraction

import pytest
import torch

from langneuron_ext.identify import PHASE_NAMES, IdentifyError, NeuronSet, phases
from langneuron_ext.identify.phases import layer_counts


def typed_set(lang_counts, general_counts, I=64):
    """A ternary-style set whose layer l has lang_counts[l] language and general_counts[l]
    general neurons."""
    L = len(lang_counts)
    spec = torch.zeros(2, L, I, dtype=torch.bool)
    gen = torch.zeros(2, L, I, dtype=torch.bool)
    for l, (a, g) in enumerate(zip(lang_counts, general_counts)):
        spec[l % 2, l, :a] = True
        gen[:, l, I - g:] = True
    none = torch.zeros_like(spec)
    return NeuronSet.from_masks("ternary", {}, ["a", "b"], spec,
                                {"specific": spec, "related": none, "general": gen})


def brute_force(counts_by_layer):
    """Exhaustive search over all splits, in lexicographic order, exact arithmetic."""
    columns = list(zip(*counts_by_layer))
    ranked = [[Fraction(sum(w < v for w in col)) + Fraction(sum(w == v for w in col) + 1, 2)
               for v in col] for col in columns]
    L = len(counts_by_layer)

    def sse(a, b):
        total = Fraction(0)
        for col in ranked:
            seg = col[a:b]
            mean = sum(seg) / len(seg)
            total += sum((x - mean) ** 2 for x in seg)
        return total

    best = None
    for cut in itertools.combinations(range(1, L), 3):
        bounds = (0, *cut, L)
        cost = sum(sse(bounds[j], bounds[j + 1]) for j in range(4))
        if best is None or cost < best[0]:
            best = (cost, bounds)
    return [(best[1][j], best[1][j + 1]) for j in range(4)]


@pytest.mark.parametrize("seed", range(6))
def test_dp_equals_exhaustive_search(seed):
    g = torch.Generator().manual_seed(seed)
    L = 5 + seed * 2
    lang = torch.randint(0, 6, (L,), generator=g).tolist()     # small range: many ties
    gen = torch.randint(0, 6, (L,), generator=g).tolist()
    ns = typed_set(lang, gen)
    got = phases(ns)
    assert [(p.start, p.stop) for p in got] == brute_force(layer_counts(ns).tolist())
    assert [p.name for p in got] == list(PHASE_NAMES)
    assert ns.phases == [p.as_dict() for p in got]           # recorded in the set


def test_paper_shape_is_recovered():
    # language neurons high early, ~0 in the middle, high late; general peaks at the end
    lang = [30, 28, 31, 2, 1, 0, 2, 1, 25, 27, 26, 24, 5, 4]
    gen = [10, 11, 9, 40, 42, 41, 39, 40, 12, 10, 11, 13, 60, 62]
    got = phases(typed_set(lang, gen))
    assert [(p.start, p.stop) for p in got] == [(0, 3), (3, 8), (8, 12), (12, 14)]


def test_set_without_types_uses_language_profile():
    mask = torch.zeros(2, 8, 32, dtype=torch.bool)
    for l, n in enumerate([9, 9, 1, 1, 7, 7, 3, 3]):
        mask[0, l, :n] = True
    ns = NeuronSet.from_masks("lape", {}, ["a", "b"], mask)
    assert layer_counts(ns).shape == (8, 1)
    assert [(p.start, p.stop) for p in phases(ns)] == [(0, 2), (2, 4), (4, 6), (6, 8)]


def test_empty_set_takes_earliest_split_and_round_trips(tmp_path):
    ns = NeuronSet.from_masks("lape", {}, ["a", "b"], torch.zeros(2, 6, 4, dtype=torch.bool))
    got = phases(ns)
    assert [(p.start, p.stop) for p in got] == [(0, 1), (1, 2), (2, 3), (3, 6)]
    assert NeuronSet.load(ns.save(tmp_path / "p.json")).phases == ns.phases
    assert list(got[3].layers) == [3, 4, 5]


def test_too_few_layers_and_wrong_input():
    ns = NeuronSet.from_masks("lape", {}, ["a", "b"], torch.ones(2, 3, 4, dtype=torch.bool))
    with pytest.raises(IdentifyError, match="at least 4 layers"):
        phases(ns)
    with pytest.raises(IdentifyError, match="needs a NeuronSet"):
        phases({"a": {}})
