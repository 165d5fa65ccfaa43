"""LAPE: language activation probability entropy (Tang et al. 2024), as the official
RUCAIBox/Language-Specific-Neurons `identify.py` computes it, fully vectorised.

Also home of the input checks and the float32 activation probabilities shared with `ternary`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from ..stats import ActivationStats
from .neuron_set import IdentifyError, NeuronSet
from .registry import Method, Option, parse_rate, register_method


def check_rate(name: str, value: float) -> float:
    """A rate must be a number in (0, 1]."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise IdentifyError(f"{name} must be a number in (0, 1], got {value!r}") from None
    if not 0.0 < value <= 1.0:
        raise IdentifyError(f"{name} must be in (0, 1], got {value}")
    return value


def rank_of(rate: float, numel: int, name: str) -> int:
    """The official codes' rank: round(numel * rate), which must be a valid 1-based rank."""
    k = round(numel * rate)
    if k < 1:
        raise IdentifyError(f"{name}={rate} selects round({numel} * {rate}) = 0 of {numel} "
                            f"elements; raise {name}")
    return min(k, numel)


def checked_stats(stats: ActivationStats, prefix: Optional[ActivationStats] = None
                  ) -> ActivationStats:
    """Validate stats for identification (after subtracting `prefix`, if given)."""
    if not isinstance(stats, ActivationStats):
        raise IdentifyError(f"expected ActivationStats, got {type(stats).__name__}; load a "
                            f"stats file with ActivationStats.load(path)")
    if prefix is not None:
        if not isinstance(prefix, ActivationStats):
            raise IdentifyError(f"prefix must be ActivationStats, got {type(prefix).__name__}")
        stats = stats.minus(prefix)
    if stats.num_languages < 2:
        raise IdentifyError(f"identification compares languages: these stats hold "
                            f"{stats.num_languages} ({stats.languages}); scan at least two")
    empty = [l for l, n in zip(stats.languages, stats.n_tokens.tolist()) if n <= 0]
    if empty:
        raise IdentifyError(f"language(s) {empty} have no counted tokens"
                            + (" after subtracting the prefix stats" if prefix is not None
                               else "") + "; scan text for them, or scan without them "
                            "(`langneuron scan --languages` lists the languages to count)")
    if bool((stats.counts < 0).any()):
        raise IdentifyError("counts are negative somewhere; the stats file is corrupt")
    # counts above n_tokens are accepted: the published NJUNLP full-minus-prefix statistics
    # have them (their prefix pass counts tokens differently), and P > 1 breaks nothing.
    if not bool(stats.counts.any()):
        raise IdentifyError("all activation counts are zero: no neuron was ever active, so "
                            "nothing can be identified (was the scan's count mask empty?)")
    return stats


def activation_probabilities(stats: ActivationStats, given: str = "token") -> Tensor:
    """P(act > 0) as float32 [L, I, K] (languages last), the layout and precision of both
    reference codes, so that thresholds and ties come out bit for bit the same.

    given="token" (default, the reference codes'): count / the language's tokens. given="routed"
    (mixture-of-experts stats): a routed expert's neuron is divided by the tokens of the language
    its expert received instead (`ActivationStats.activation_probability`), so the probability
    no longer includes how often the router picks the expert."""
    counts = stats.counts.permute(1, 2, 0).to(torch.float32)
    if given == "token":
        return (counts / stats.n_tokens.to(torch.float32)).contiguous()
    if given != "routed":
        raise IdentifyError(f"given must be 'token' or 'routed', got {given!r}")
    from ..routing_stats import routed_denominators
    denominators = routed_denominators(stats).permute(1, 2, 0).clamp(min=1).to(torch.float32)
    return (counts / denominators).contiguous()


def parse_given(text: str) -> str:
    """The --given flag: 'token' or 'routed'."""
    if text not in ("token", "routed"):
        raise ValueError(f"must be 'token' or 'routed', got {text!r}")
    return text


GIVEN_HELP = ("denominator of P(act>0): 'token' (all tokens of the language) or 'routed' "
              "(MoE: the tokens routed to the neuron's expert)")


def lape(stats: ActivationStats, top_rate: float = 0.01, filter_rate: float = 0.95,
         activation_bar_ratio: float = 0.95, prefix: Optional[ActivationStats] = None,
         given: str = "token") -> NeuronSet:
    """Language-specific neurons by LAPE, exactly as the official identify.py.

    With P = counts / n_tokens ([L, I, K], float32):
    1. Pn = P / sum_k P (0 where the sum is 0); H = -sum_k Pn ln Pn (0 ln 0 = 0).
    2. q = kthvalue of P.flatten() at k = round(filter_rate * numel) (1-based).
    3. H = +inf for neurons with no language above q.
    4. Select the round(top_rate * L * I) smallest H (torch.topk, largest=False, as the
       official code; its tie order is kept).
    5. Assign each selected neuron to every language with P > bar, bar = kthvalue at
       round(activation_bar_ratio * numel). A neuron may get several languages, or none.
    Every language keeps an entry, also an empty one. `prefix` stats are subtracted first
    (full - prefix, clamped at 0). given="routed" (MoE stats only) divides a routed expert's
    neuron by the tokens routed to its expert instead of all tokens (see
    `activation_probabilities`); the default "token" is the reference codes' P.
    """
    top_rate = check_rate("top_rate", top_rate)
    filter_rate = check_rate("filter_rate", filter_rate)
    activation_bar_ratio = check_rate("activation_bar_ratio", activation_bar_ratio)
    stats = checked_stats(stats, prefix)
    P = activation_probabilities(stats, given)
    L, I, K = P.shape
    # MoE models with dense layers: padding columns are no neurons. None (dense models) keeps
    # every step below exactly the reference's.
    valid = stats.neuron_mask()

    normed = P / P.sum(dim=-1, keepdim=True)
    normed[torch.isnan(normed)] = 0
    log_normed = torch.where(normed > 0, normed.log(), 0)
    entropy = -torch.sum(normed * log_normed, dim=-1)                      # [L, I]

    flat_p = P.flatten() if valid is None else P[valid].flatten()
    filter_value = flat_p.kthvalue(rank_of(filter_rate, flat_p.numel(), "filter_rate")
                                   ).values.item()
    entropy[(P > filter_value).sum(dim=-1) == 0] = torch.inf
    if valid is not None:
        entropy[~valid] = torch.nan          # topk orders NaN after +inf: padding comes last

    top_k = rank_of(top_rate, L * I if valid is None else int(valid.sum()), "top_rate")
    _, index = entropy.flatten().topk(top_k, largest=False)
    bar = flat_p.kthvalue(rank_of(activation_bar_ratio, flat_p.numel(), "activation_bar_ratio")
                          ).values.item()

    selected = torch.zeros(L * I, dtype=torch.bool)
    selected[index] = True
    if valid is not None:
        selected &= valid.flatten()
    mask = (P > bar).permute(2, 0, 1) & selected.view(1, L, I)             # [K, L, I]
    params = {"top_rate": top_rate, "filter_rate": filter_rate,
              "activation_bar_ratio": activation_bar_ratio, "selected": top_k,
              "filter_value": filter_value, "activation_bar": bar,
              "response_only": prefix is not None}
    if given != "token":
        params["given"] = given
    return NeuronSet.from_masks("lape", params, stats.languages, mask)


register_method(Method(
    "lape", lape, title="LAPE (Tang et al. 2024)",
    options=(Option("top_rate", "--top-rate", parse_rate, 0.01,
                    "share of all neurons to select"),
             Option("filter_rate", "--filter-rate", parse_rate, 0.95,
                    "quantile of P a neuron must exceed in some language"),
             Option("activation_bar_ratio", "--bar-ratio", parse_rate, 0.95,
                    "quantile of P above which a neuron belongs to a language"),
             Option("given", "--given", parse_given, "token", GIVEN_HELP,
                    metavar="token|routed"))))
