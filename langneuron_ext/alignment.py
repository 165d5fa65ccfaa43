"""What multilingual alignment changes in a model's language neurons (Zhang et al. 2025,
arXiv 2505.21505): scan a model before and after alignment, classify the neurons of both into
specific / related / general with the same options, and compare.

    cmp = ln.alignment.compare(before_stats, after_stats, trained=["fr", "zh"])
    cmp.to_dict()          # the JSON of `langneuron alignment --json`
    print(cmp.summary())

Definitions (all counts are exact integers):
- `counts[model][lang][type]`: neurons of `lang` of each type (general neurons, active in every
  language, are the same number under every language);
- `per_layer[model][type]`: distinct neurons of the type in each layer (over languages);
- `shared_by[model][n - 1]`: neurons (specific, related or general) that belong to exactly n
  languages; n = K are the general neurons;
- `overlap[lang]`: the language's neurons (specific + related) in the two models: kept (in
  both), gained (after only), lost (before only) and Jaccard = kept / (kept + gained + lost);
- `activation_change[lang][layer]`: over the language's neurons in that layer in either model
  (before or after), the mean of P_after - P_before, P = the share of that language's tokens on
  which the neuron fires; None where the layer has no neuron of the language. Neurons whose
  counts did not change contribute exactly 0.

The direct measure of alignment on parallel text (`representation_similarity`, `load_parallel`,
`write_parallel`) lives in `langneuron_ext.representation` and is re-exported here.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Union

import torch
from torch import Tensor

from .identify import NeuronSet, phases, ternary
from .identify.neuron_set import TYPE_NAMES
from .representation import (  # noqa: F401  (ln.alignment.representation_similarity, ...)
    ParallelTextError,
    load_parallel,
    representation_similarity,
    write_parallel,
)
from .stats import ActivationStats

MODELS = ("before", "after")


class AlignmentError(ValueError):
    """Two scans that cannot be compared; the message says what to do."""


def _as_stats(x, which: str) -> ActivationStats:
    if isinstance(x, ActivationStats):
        return x
    if isinstance(x, (str, os.PathLike)):
        return ActivationStats.load(x)
    raise AlignmentError(f"{which} must be ActivationStats or a stats file path, got "
                         f"{type(x).__name__}")


def check_pair(before: ActivationStats, after: ActivationStats) -> ActivationStats:
    """Raise AlignmentError unless the two scans describe the same architecture and languages;
    returns `after` with its languages in `before`'s order."""
    if (before.num_layers, before.intermediate_size) != (after.num_layers,
                                                         after.intermediate_size):
        raise AlignmentError(
            f"the scans have different shapes: before {before.num_layers} layers x "
            f"{before.intermediate_size} neurons, after {after.num_layers} x "
            f"{after.intermediate_size}; compare two scans of the same architecture")
    if before.model_type and after.model_type and before.model_type != after.model_type:
        raise AlignmentError(
            f"the scans come from different model types ({before.model_type!r} before, "
            f"{after.model_type!r} after); compare a model with its own aligned version")
    if before.activation_site != after.activation_site:
        raise AlignmentError(
            f"the scans count different activation sites ({before.activation_site!r} vs "
            f"{after.activation_site!r}); scan both models the same way")
    if set(before.languages) != set(after.languages):
        only_b = [lg for lg in before.languages if lg not in after.languages]
        only_a = [lg for lg in after.languages if lg not in before.languages]
        raise AlignmentError(
            f"the scans cover different languages (only before: {only_b or 'none'}; only "
            f"after: {only_a or 'none'}); scan both models on the same languages "
            f"(langneuron scan --languages LIST)")
    return after if after.languages == before.languages else after.select(before.languages)


def _type_masks(neurons: NeuronSet) -> Dict[str, Tensor]:
    """{type: bool [K, L, I]}."""
    return {t: torch.stack([_layer_mask(neurons.types[t][lang], neurons)
                            for lang in neurons.languages]) for t in TYPE_NAMES}


def _layer_mask(per_layer, neurons: NeuronSet) -> Tensor:
    out = torch.zeros(neurons.num_layers, neurons.intermediate_size, dtype=torch.bool)
    for layer, ids in per_layer.items():
        if ids:
            out[layer, ids] = True
    return out


@dataclass
class AlignmentComparison:
    """The comparison of one model before and after alignment (see the module docstring)."""
    languages: List[str]
    trained: List[str]
    before: NeuronSet
    after: NeuronSet
    p_before: Tensor          # float64 [K, L, I]
    p_after: Tensor
    before_model: str = ""
    after_model: str = ""
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def untrained(self) -> List[str]:
        return [lg for lg in self.languages if lg not in self.trained]

    @property
    def num_layers(self) -> int:
        return self.before.num_layers

    def _sets(self):
        return {"before": self.before, "after": self.after}

    def _masks(self, name: str) -> Dict[str, Tensor]:
        """{type: bool [K, L, I]} and "language": the languages' neurons (specific + related),
        built once per model."""
        if name not in self._cache:
            ns = self._sets()[name]
            masks = _type_masks(ns)
            masks["language"] = ns.masks()
            self._cache[name] = masks
        return self._cache[name]

    # ---- the tables ----
    def counts(self) -> Dict[str, Dict[str, Dict[str, int]]]:
        """{model: {lang: {type: n}}}."""
        out = {}
        for name, ns in self._sets().items():
            tc = ns.type_counts()
            out[name] = {lang: {t: tc[t][lang] for t in TYPE_NAMES} for lang in self.languages}
        return out

    def per_layer(self) -> Dict[str, Dict[str, List[int]]]:
        """{model: {type: [distinct neurons of the type per layer]}}."""
        out = {}
        for name in MODELS:
            masks = self._masks(name)
            out[name] = {t: masks[t].any(dim=0).sum(dim=1).tolist() for t in TYPE_NAMES}
        return out

    def shared_by(self) -> Dict[str, List[int]]:
        """{model: [neurons in exactly n languages, n = 1..K]}."""
        K = len(self.languages)
        out = {}
        for name in MODELS:
            masks = self._masks(name)
            member = masks["specific"] | masks["related"] | masks["general"]    # [K, L, I]
            n = member.sum(dim=0).flatten()
            out[name] = torch.bincount(n, minlength=K + 1)[1:K + 1].tolist()
        return out

    def overlap_detail(self) -> Dict[str, Dict[str, float]]:
        """{lang: {before, after, kept, gained, lost, jaccard}} over specific + related."""
        out = {}
        mb, ma = self._masks("before")["language"], self._masks("after")["language"]
        for k, lang in enumerate(self.languages):
            b, a = mb[k], ma[k]
            kept, gained, lost = int((a & b).sum()), int((a & ~b).sum()), int((b & ~a).sum())
            union = kept + gained + lost
            out[lang] = {"before": int(b.sum()), "after": int(a.sum()), "kept": kept,
                         "gained": gained, "lost": lost,
                         "jaccard": kept / union if union else 1.0}
        return out

    def activation_change(self) -> Dict[str, List[Optional[float]]]:
        """{lang: per layer, mean P_after - P_before over the language's neurons in either
        model (None where the layer has none)}."""
        out = {}
        mb, ma = self._masks("before")["language"], self._masks("after")["language"]
        for k, lang in enumerate(self.languages):
            union = (mb[k] | ma[k]).double()                                            # [L, I]
            n = union.sum(dim=1)
            delta = ((self.p_after[k] - self.p_before[k]) * union).sum(dim=1)
            out[lang] = [float(d / c) if c > 0 else None for d, c in zip(delta, n)]
        return out

    def activation_probability(self) -> Dict[str, Dict[str, List[Optional[float]]]]:
        """{model: {lang: per layer, mean P of the language over its own neurons in that
        model}}."""
        out = {}
        for name, p in (("before", self.p_before), ("after", self.p_after)):
            out[name] = {}
            masks = self._masks(name)["language"]
            for k, lang in enumerate(self.languages):
                m = masks[k].double()
                n = m.sum(dim=1)
                s = (p[k] * m).sum(dim=1)
                out[name][lang] = [float(a / c) if c > 0 else None for a, c in zip(s, n)]
        return out

    def group_summary(self) -> Dict[str, Dict[str, float]]:
        """Per group (trained, untrained): neurons per type before and after (summed over the
        group's languages), mean Jaccard, and the mean |activation change| over layers."""
        counts, overlap, change = self.counts(), self.overlap_detail(), self.activation_change()
        out = {}
        for group, langs in (("trained", self.trained), ("untrained", self.untrained)):
            if not langs:
                continue
            row: Dict[str, float] = {"languages": len(langs)}
            for t in ("specific", "related"):
                row[f"{t}_before"] = sum(counts["before"][lg][t] for lg in langs)
                row[f"{t}_after"] = sum(counts["after"][lg][t] for lg in langs)
            row["mean_jaccard"] = sum(overlap[lg]["jaccard"] for lg in langs) / len(langs)
            values = [abs(v) for lg in langs for v in change[lg] if v is not None]
            row["mean_abs_activation_change"] = sum(values) / len(values) if values else 0.0
            out[group] = row
        general = {m: next(iter(counts[m].values()))["general"] for m in MODELS}
        out["general"] = {"before": general["before"], "after": general["after"]}
        return out

    def to_dict(self) -> dict:
        """The JSON object of `langneuron alignment --json`."""
        counts = self.counts()
        per_layer = self.per_layer()
        overlap = self.overlap_detail()
        return {
            "languages": list(self.languages), "trained": list(self.trained),
            "untrained": self.untrained,
            "before_model": self.before_model, "after_model": self.after_model,
            "method": self.before.method,
            "params": {"before": self.before.params, "after": self.after.params},
            "num_layers": self.num_layers,
            "intermediate_size": self.before.intermediate_size,
            "before": counts["before"], "after": counts["after"],
            "change": {lang: {t: counts["after"][lang][t] - counts["before"][lang][t]
                              for t in TYPE_NAMES} for lang in self.languages},
            "per_layer": per_layer,
            "phases": {"before": self.before.phases, "after": self.after.phases},
            "shared_by": self.shared_by(),
            "overlap": {lang: v["jaccard"] for lang, v in overlap.items()},
            "overlap_detail": overlap,
            "activation_change": self.activation_change(),
            "activation_probability": self.activation_probability(),
            "summary": self.group_summary(),
        }

    def summary(self) -> str:
        """A text table per language: types before -> after, and the overlap."""
        counts, overlap = self.counts(), self.overlap_detail()
        lines = [f"alignment: {self.before_model or 'before'} -> {self.after_model or 'after'}, "
                 f"{self.num_layers} layers x {self.before.intermediate_size} neurons, "
                 f"lambda {self.before.params.get('lambda'):.4g} -> "
                 f"{self.after.params.get('lambda'):.4g}",
                 f"{'language':<9} {'group':<9} {'specific':>13} {'related':>13} "
                 f"{'kept':>6} {'gained':>6} {'lost':>6} {'jaccard':>7}"]
        for lang in self.languages:
            b, a, o = counts["before"][lang], counts["after"][lang], overlap[lang]
            group = "trained" if lang in self.trained else "untrained"
            lines.append(f"{lang:<9} {group:<9} "
                         f"{b['specific']:>5} -> {a['specific']:<5} "
                         f"{b['related']:>5} -> {a['related']:<5} "
                         f"{o['kept']:>6} {o['gained']:>6} {o['lost']:>6} {o['jaccard']:>7.3f}")
        g = self.group_summary()["general"]
        lines.append(f"general neurons (all languages): {g['before']} -> {g['after']}")
        sb = self.shared_by()
        lines.append("shared by n = 1..K languages: before " + " ".join(map(str, sb["before"]))
                     + "; after " + " ".join(map(str, sb["after"])))
        for name in MODELS:
            ph = self._sets()[name].phases
            if ph:
                lines.append(f"phases {name}: " + "; ".join(
                    f"{p['name']} {p['start']}-{p['stop'] - 1}" for p in ph))
        return "\n".join(lines)


def compare(before: Union[ActivationStats, str, os.PathLike],
            after: Union[ActivationStats, str, os.PathLike], trained: Sequence[str] = (), *,
            top_rate: float = 0.01, bar_ratio: float = 0.95, lam: Union[str, float] = "auto"
            ) -> AlignmentComparison:
    """Compare the language neurons of a model before and after alignment.

    before / after: the two scans (ActivationStats or stats file paths) of the same
        architecture, layers, neurons and languages (`after` is reordered to `before`'s
        language order).
    trained: the languages the alignment trained on (a subset of the languages); the others
        are reported as untrained.
    top_rate / bar_ratio / lam: the options of `identify.ternary`, the same for both models.
    Raises AlignmentError (a ValueError) for scans that cannot be compared.
    """
    before, after = _as_stats(before, "before"), _as_stats(after, "after")
    after = check_pair(before, after)
    trained = [str(t) for t in trained]
    unknown = [t for t in trained if t not in before.languages]
    if unknown:
        raise AlignmentError(f"trained language(s) {unknown} are not among the scanned "
                             f"languages {before.languages}")
    if len(set(trained)) != len(trained):
        raise AlignmentError(f"trained languages repeat: {trained}")
    sets = []
    for stats in (before, after):
        if sets and torch.equal(before.counts, after.counts) \
                and torch.equal(before.n_tokens, after.n_tokens):
            sets.append(copy.deepcopy(sets[0]))   # identification is deterministic
            break
        ns = ternary(stats, top_rate=top_rate, bar_ratio=bar_ratio, lam=lam)
        if ns.num_layers >= 4:
            phases(ns)
        sets.append(ns)
    return AlignmentComparison(list(before.languages), trained, sets[0], sets[1],
                               before.probabilities(), after.probabilities(),
                               before.model_name, after.model_name)
