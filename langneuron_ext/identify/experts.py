"""Language experts of a mixture-of-experts model: LAPE over (layer, expert) pairs.

An expert's "activation probability" for language k is the share of k's tokens its router sends
there, P[k, l, e] = routed[k, l, e] / n_tokens[k] (each token picks top_k experts, so P sums to
top_k over a layer's experts). The steps are LAPE's (`lape.py`), over experts instead of neurons:

1. Pn = P / sum_k P; H = -sum_k Pn ln Pn (the entropy of the expert's routing over languages).
2. q = kthvalue of P over all (layer, expert, language) at round(filter_rate * numel); an expert
   with no language above q gets H = +inf.
3. Select the round(top_rate * #experts) smallest H (torch.topk order).
4. Assign each selected expert to every language with P > bar, bar = kthvalue at
   round(activation_bar_ratio * numel).

Also per language and layer: the entropy of its routing distribution over the layer's experts
and its Jensen-Shannon divergence from a reference language's (`routing_stats.py`).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import torch
from torch import Tensor

from ..routing_stats import (
    require_routing,
    routed_experts,
    routed_share,
    routing_divergence,
    routing_entropy,
)
from ..stats import ActivationStats, StatsError, write_atomic
from .lape import check_rate, rank_of
from .neuron_set import IdentifyError

FORMAT = "langneuron-language-experts"


@dataclass
class LanguageExperts:
    """Language-specific experts and the routing profile they come from.

    languages: the K languages. mask: bool [K, L, E], expert e of layer l is language k's.
    probability: float64 [K, L, E], routed share of k's tokens. entropy: float64 [L, E], the
    expert's routing entropy over languages (inf: no language above the filter; NaN: no such
    expert, e.g. a dense layer). routing_entropy / divergence: float64 [K, L], per language and
    layer (NaN for dense layers); `reference`: the language of the divergence.
    """
    languages: List[str]
    mask: Tensor
    probability: Tensor
    entropy: Tensor
    routing_entropy: Tensor
    divergence: Tensor
    reference: str
    params: Dict[str, object] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return self.mask.shape[1]

    @property
    def num_experts(self) -> int:
        return self.mask.shape[2]

    def experts(self, language: str) -> Dict[int, List[int]]:
        """layer -> the language's experts there (layers without any are left out)."""
        if language not in self.languages:
            raise IdentifyError(f"language {language!r} has no entry (languages: "
                                f"{', '.join(self.languages)})")
        m = self.mask[self.languages.index(language)]
        return {layer: m[layer].nonzero().flatten().tolist() for layer in range(m.shape[0])
                if bool(m[layer].any())}

    def count(self, language: str) -> int:
        return int(self.mask[self.languages.index(language)].sum())

    def block_mask(self, languages) -> Tensor:
        """Bool [L, E]: the experts of any of `languages`."""
        if isinstance(languages, str):
            languages = [l for l in languages.split(",") if l]
        out = torch.zeros(self.mask.shape[1:], dtype=torch.bool)
        for lang in languages:
            if lang not in self.languages:
                raise IdentifyError(f"language {lang!r} has no experts entry (languages: "
                                    f"{', '.join(self.languages)})")
            out |= self.mask[self.languages.index(lang)]
        return out

    def summary(self) -> str:
        lines = [f"language experts (LAPE over experts): {self.num_layers} layers x "
                 f"{self.num_experts} experts, top_rate={self.params.get('top_rate')}, "
                 f"{self.params.get('selected')} selected",
                 f"{'language':<10} {'experts':>8}  per layer"]
        for lang in self.languages:
            per = {l: len(e) for l, e in self.experts(lang).items()}
            lines.append(f"{lang:<10} {self.count(lang):>8}  "
                         + (", ".join(f"L{l}:{n}" for l, n in per.items()) or "-"))
        lines.append(f"routing divergence from {self.reference} (Jensen-Shannon, nats), "
                     f"mean over MoE layers:")
        for k, lang in enumerate(self.languages):
            d = self.divergence[k]
            d = d[~torch.isnan(d)]
            mean = float(d.mean()) if d.numel() else float("nan")
            lines.append(f"  {lang:<8} {mean:.4f}")
        return "\n".join(lines)

    # ---- file ----
    def to_dict(self) -> dict:
        def plain(t: Tensor):
            return [[None if v != v or v in (float("inf"), float("-inf")) else v for v in row]
                    for row in t.tolist()]
        return {"format": FORMAT, "languages": self.languages, "reference": self.reference,
                "params": self.params, "shape": list(self.mask.shape),
                "experts": {lang: {str(l): e for l, e in self.experts(lang).items()}
                            for lang in self.languages},
                "probability": [plain(p) for p in self.probability],
                "entropy": [[None if v != v else ("inf" if v == float("inf") else v)
                             for v in row] for row in self.entropy.tolist()],
                "routing_entropy": plain(self.routing_entropy),
                "divergence": plain(self.divergence)}

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, (json.dumps(self.to_dict(), allow_nan=False) + "\n").encode())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LanguageExperts":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise IdentifyError(f"cannot read language experts from {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise IdentifyError(f"{path} is not a language experts file (write one with "
                                f"`langneuron identify STATS --experts --out FILE`)")
        K, L, E = data["shape"]
        mask = torch.zeros(K, L, E, dtype=torch.bool)
        for k, lang in enumerate(data["languages"]):
            for layer, ids in data["experts"][lang].items():
                mask[k, int(layer), ids] = True

        def tensor(rows):
            return torch.tensor([[float("nan") if v is None else float(v) for v in r]
                                 for r in rows], dtype=torch.float64)
        return cls(list(data["languages"]), mask,
                   torch.stack([tensor(p) for p in data["probability"]]),
                   tensor(data["entropy"]), tensor(data["routing_entropy"]),
                   tensor(data["divergence"]), data["reference"], dict(data["params"]))


def experts(stats: ActivationStats, top_rate: float = 0.05, filter_rate: float = 0.9,
            activation_bar_ratio: float = 0.9, reference: Optional[str] = None
            ) -> LanguageExperts:
    """Language-specific experts by the entropy of their routing over languages (see the module
    docstring; defaults select 5% of all routed experts, with the filter and bar at the 90%
    quantile of P, because a model has far fewer experts than neurons). `reference`: the
    language of the divergence curves (default "en" if scanned, else the first language).
    Raises a one-line error for stats of a dense model or without routing counts."""
    top_rate = check_rate("top_rate", top_rate)
    filter_rate = check_rate("filter_rate", filter_rate)
    activation_bar_ratio = check_rate("activation_bar_ratio", activation_bar_ratio)
    if not isinstance(stats, ActivationStats):
        raise IdentifyError(f"expected ActivationStats, got {type(stats).__name__}")
    try:
        require_routing(stats, "language experts")
    except StatsError as exc:
        raise IdentifyError(str(exc)) from None
    if stats.num_languages < 2:
        raise IdentifyError(f"language experts compare languages: these stats hold "
                            f"{stats.num_languages}; scan at least two")
    empty = [l for l, n in zip(stats.languages, stats.n_tokens.tolist()) if n <= 0]
    if empty:
        raise IdentifyError(f"language(s) {empty} have no counted tokens; scan text for them")
    if reference is None:
        reference = "en" if "en" in stats.languages else stats.languages[0]
    K, L, E = stats.routed.shape
    per_layer = torch.tensor(routed_experts(stats))
    valid = torch.arange(E)[None, :] < per_layer[:, None]                    # [L, E]
    P = (stats.routed.permute(1, 2, 0).to(torch.float32)
         / stats.n_tokens.to(torch.float32))                                  # [L, E, K]
    normed = P / P.sum(dim=-1, keepdim=True)
    normed[torch.isnan(normed)] = 0
    entropy = -torch.sum(normed * torch.where(normed > 0, normed.log(), 0), dim=-1)
    flat_p = P[valid].flatten()
    filter_value = flat_p.kthvalue(rank_of(filter_rate, flat_p.numel(), "filter_rate")
                                   ).values.item()
    entropy[(P > filter_value).sum(dim=-1) == 0] = torch.inf
    entropy[~valid] = torch.nan
    top_k = rank_of(top_rate, int(valid.sum()), "top_rate")
    _, index = entropy.flatten().topk(top_k, largest=False)
    bar = flat_p.kthvalue(rank_of(activation_bar_ratio, flat_p.numel(), "activation_bar_ratio")
                          ).values.item()
    selected = torch.zeros(L * E, dtype=torch.bool)
    selected[index] = True
    selected &= valid.flatten()
    mask = (P > bar).permute(2, 0, 1) & selected.view(1, L, E)
    params = {"method": "lape-experts", "top_rate": top_rate, "filter_rate": filter_rate,
              "activation_bar_ratio": activation_bar_ratio, "selected": top_k,
              "filter_value": filter_value, "activation_bar": bar,
              "model": stats.model_name}
    return LanguageExperts(list(stats.languages), mask, routed_share(stats), entropy.double(),
                           routing_entropy(stats), routing_divergence(stats, reference),
                           reference, params)


__all__ = ["LanguageExperts", "experts"]
