"""Language-specific, language-related and general neurons (Zhang et al. 2025), as the NJUNLP
Language-Neurons-Alignment code computes them, fully vectorised, with its lambda bisection.

Their code loops over neurons in Python with float32 tensors and float64 Python arithmetic; the
vectorised form below performs the same IEEE operations in the same order per neuron, so scores,
thresholds and torch.topk's tie order are bit for bit those of the reference.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import torch
from torch import Tensor

from ..stats import ActivationStats
from .lape import (
    GIVEN_HELP,
    activation_probabilities,
    check_rate,
    checked_stats,
    parse_given,
    rank_of,
)
from .neuron_set import IdentifyError, NeuronSet
from .registry import Method, Option, parse_lambda, parse_rate, register_method

LAMBDA_LOW, LAMBDA_HIGH = 0.0, 0.2     # the reference's sweep range
LAMBDA_TOLERANCE = 1e-3
LAMBDA_MAX_STEPS = 64


@dataclass
class _Scorer:
    """The lambda-independent parts of the score, computed once per stats."""
    P: Tensor              # float32 [L, I, K]
    entropy: Tensor        # float64 [L, I]: H(p') / ln K, from a float32 entropy
    max_p: Tensor          # float64 [L, I]: max_k p, from float32
    norm_max: float        # H_K / K
    tau: float             # kthvalue threshold on P
    top_k: int
    valid: Optional[Tensor] = None   # bool [L, I]: neurons (None: all; else padding excluded)

    @classmethod
    def build(cls, P: Tensor, top_rate: float, bar_ratio: float,
              valid: Optional[Tensor] = None) -> "_Scorer":
        L, I, K = P.shape
        total = P.sum(dim=-1, keepdim=True)
        # p' = p / sum p; uniform 1/K where nothing fires (reference: torch.full_like(vec, 1/K))
        normed = torch.where(total > 0, P / total, torch.full_like(P, 1.0 / K))
        p = normed.clamp_min(1e-12)
        p = p / p.sum(dim=-1, keepdim=True)
        entropy32 = -(p * (p + 1e-30).log()).sum(dim=-1)
        entropy = entropy32.double() / math.log(K)
        norm_max = sum(1 / k for k in range(1, K + 1)) / K
        flat = P.flatten() if valid is None else P[valid].flatten()
        tau = flat.kthvalue(rank_of(bar_ratio, flat.numel(), "bar_ratio")).values.item()
        n = L * I if valid is None else int(valid.sum())
        return cls(P, entropy, P.amax(dim=-1).double(), norm_max, tau,
                   rank_of(top_rate, n, "top_rate"), valid)

    def select(self, lam: float) -> Tensor:
        """Flat indices (layer * I + neuron) of the top_k lowest scores at this lambda."""
        score = (self.entropy - self.max_p * float(lam) / self.norm_max).to(torch.float32)
        if self.valid is not None:
            score[~self.valid] = torch.nan       # topk orders NaN last: padding never chosen
        return score.flatten().topk(self.top_k, largest=False).indices

    def above(self) -> Tensor:
        """Bool [L, I, K]: p > tau (never on padding)."""
        above = self.P > self.tau
        return above if self.valid is None else above & self.valid[..., None]

    def has_all_language_neuron(self, lam: float, above: Tensor) -> bool:
        """Whether a selected neuron is above tau in every language (N = K)."""
        n_langs = above.flatten(0, 1)[self.select(lam)].sum(dim=-1)
        return bool((n_langs == above.shape[-1]).any())


def search_lambda(scorer: _Scorer, above: Tensor) -> float:
    """The largest lambda in [0, 0.2] with no selected neuron in all K languages, found by the
    reference's bisection (tolerance 1e-3, at most 64 steps; lambda = 0.2 when it already
    qualifies). Raises IdentifyError when even lambda = 0 selects such a neuron."""
    ok = lambda lam: not scorer.has_all_language_neuron(lam, above)  # noqa: E731
    if ok(LAMBDA_HIGH):
        return LAMBDA_HIGH
    best = LAMBDA_LOW if ok(LAMBDA_LOW) else None
    lo, hi = LAMBDA_LOW, LAMBDA_HIGH
    steps = 0
    while hi - lo > LAMBDA_TOLERANCE and steps < LAMBDA_MAX_STEPS:
        steps += 1
        mid = (lo + hi) / 2.0
        if ok(mid):
            best, lo = mid, mid
        else:
            hi = mid
    if best is None:
        raise IdentifyError("no lambda in [0, 0.2] keeps every selected neuron out of at least "
                            "one language (even lambda = 0 selects neurons active in all "
                            "languages); pass an explicit lambda (lam=0.0 / --lambda 0) or a "
                            "smaller top_rate")
    return best


def ternary(stats: ActivationStats, top_rate: float = 0.01, bar_ratio: float = 0.95,
            lam: Union[str, float] = "auto", prefix: Optional[ActivationStats] = None,
            given: str = "token") -> NeuronSet:
    """Language-specific, language-related and general neurons (NJUNLP semantics).

    With p = counts / n_tokens ([L, I, K], float32; `prefix` stats subtracted first, counts and
    tokens clamped at 0, which gives response-only statistics):
    1. p' = p / sum_k p (uniform 1/K where the sum is 0); Hn = H(p') / ln K.
    2. score = Hn - lam * max_k p / (H_K / K), H_K = sum_{j=1..K} 1/j.
    3. Select the round(top_rate * L * I) lowest scores (torch.topk order, as the reference).
    4. tau = kthvalue of p.flatten() at round(bar_ratio * numel); N = #languages with p > tau.
    5. specific: selected with N = 1; related: selected with 1 < N < K. `lam="auto"` takes the
       largest lambda in [0, 0.2] by bisection (tolerance 1e-3, <= 64 steps) for which no
       selected neuron has N = K.
    6. general: every neuron (selected or not) with p > tau in all K languages.
    `neurons[lang]` = the specific and related neurons of `lang`; `types` holds all three
    (general under every language). A selected neuron with N = K (possible with an explicit
    lambda) is general, not a language neuron; `params["selected_all_languages"]` counts them.
    given="routed" (MoE stats only): p of a routed expert's neuron is counts / the tokens routed
    to its expert (`lape.activation_probabilities`); the default "token" is the reference's p.
    """
    top_rate = check_rate("top_rate", top_rate)
    bar_ratio = check_rate("bar_ratio", bar_ratio)
    auto = isinstance(lam, str)
    if auto and lam != "auto":
        raise IdentifyError(f"lam must be 'auto' or a number >= 0, got {lam!r}")
    if not auto:
        try:
            lam = float(lam)
        except (TypeError, ValueError):
            raise IdentifyError(f"lam must be 'auto' or a number >= 0, got {lam!r}") from None
        if not (math.isfinite(lam) and lam >= 0):
            raise IdentifyError(f"lam must be a finite number >= 0, got {lam}")
    stats = checked_stats(stats, prefix)
    scorer = _Scorer.build(activation_probabilities(stats, given), top_rate, bar_ratio,
                           stats.neuron_mask())
    above = scorer.above()                                                    # [L, I, K]
    L, I, K = above.shape
    if auto:
        lam = search_lambda(scorer, above)

    selected = torch.zeros(L * I, dtype=torch.bool)
    selected[scorer.select(lam)] = True
    selected = selected.view(L, I, 1)
    n_langs = above.sum(dim=-1, keepdim=True)
    specific = above & selected & (n_langs == 1)
    related = above & selected & (n_langs > 1) & (n_langs < K)
    general = above.all(dim=-1, keepdim=True).expand(L, I, K)     # above is False on padding
    to_kli = lambda m: m.permute(2, 0, 1)  # noqa: E731
    params = {"top_rate": top_rate, "bar_ratio": bar_ratio, "lambda": lam,
              "lambda_auto": auto, "tau": scorer.tau, "selected": scorer.top_k,
              "selected_all_languages": int((selected & (n_langs == K)).sum()),
              "response_only": prefix is not None}
    if given != "token":
        params["given"] = given
    return NeuronSet.from_masks(
        "ternary", params, stats.languages, to_kli(specific | related),
        {"specific": to_kli(specific), "related": to_kli(related), "general": to_kli(general)})


register_method(Method(
    "ternary", ternary, title="specific / related / general (Zhang et al. 2025)", typed=True,
    options=(Option("top_rate", "--top-rate", parse_rate, 0.01,
                    "share of all neurons to select"),
             Option("bar_ratio", "--bar-ratio", parse_rate, 0.95,
                    "quantile of P above which a neuron belongs to a language"),
             Option("lam", "--lambda", parse_lambda, "auto",
                    "'auto' (bisection in [0, 0.2]) or a number >= 0", metavar="LAMBDA"),
             Option("given", "--given", parse_given, "token", GIVEN_HELP,
                    metavar="token|routed"))))
