"""Intervals: a bootstrap over evaluation documents and Wilson intervals for shares.

Documents, not tokens, are the resampled units: tokens of one paragraph are not independent
(a paragraph about kernels is hard for every variant), so a per-token interval would be too
narrow. The bootstrap is paired: each resample of documents scores every variant on the same
documents, so a change against the baseline carries only the variance of the change.
"""
from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import torch
from torch import Tensor

# 1000 resamples: the 2.5% / 97.5% quantiles move by about 0.01 of the interval's width between
# seeds, and the whole bootstrap of a 50-variant, 8-language matrix takes well under a second.
BOOTSTRAP_SAMPLES = 1000
LEVEL = 0.95


def bootstrap_nll(doc_sums: Tensor, doc_tokens: Tensor, doc_column: Tensor, columns: int,
                  samples: int = BOOTSTRAP_SAMPLES, level: float = LEVEL, seed: int = 0,
                  baseline: int = 0) -> Tuple[Tensor, Tensor]:
    """Percentile intervals of the mean NLL and of its change against row `baseline`.

    doc_sums: float64 [G, D] summed NLL of each variant on each document; doc_tokens: [D]
    predicted tokens per document; doc_column: [D] the column (language) of each document.
    Returns (nll_ci, delta_ci), float64 [G, C, 2]; NaN for a column with fewer than two
    documents (no spread to resample).
    """
    G = doc_sums.shape[0]
    nll_ci = torch.full((G, columns, 2), float("nan"), dtype=torch.float64)
    delta_ci = nll_ci.clone()
    gen = torch.Generator().manual_seed(seed)
    alpha = (1.0 - level) / 2
    q = torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64)
    for c in range(columns):
        docs = ((doc_column == c) & (doc_tokens > 0)).nonzero().squeeze(1)
        n = docs.numel()
        if n < 2:
            continue
        draws = torch.randint(n, (samples, n), generator=gen)
        weights = torch.zeros(samples, n, dtype=torch.float64)
        weights.scatter_add_(1, draws, torch.ones(samples, n, dtype=torch.float64))
        totals = weights @ doc_sums[:, docs].T                       # [B, G]
        tokens = weights @ doc_tokens[docs].to(torch.float64)        # [B]
        nll = totals / tokens[:, None]
        delta = nll - nll[:, baseline:baseline + 1]
        nll_ci[:, c] = torch.quantile(nll, q, dim=0).T
        delta_ci[:, c] = torch.quantile(delta, q, dim=0).T
    return nll_ci, delta_ci


def wilson_interval(successes: int, trials: int, level: float = LEVEL) -> Tuple[float, float]:
    """Wilson score interval of a binomial share (sound at 0 and 1, unlike the normal one)."""
    if trials <= 0:
        return float("nan"), float("nan")
    z = _normal_quantile(1 - (1 - level) / 2)
    p = successes / trials
    denom = 1 + z * z / trials
    centre = (p + z * z / (2 * trials)) / denom
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _normal_quantile(p: float) -> float:
    return float(torch.distributions.Normal(0.0, 1.0).icdf(torch.tensor(p, dtype=torch.float64)))


def json_safe(value: Any) -> Any:
    """`value` with every NaN / inf float replaced by None, so json.dumps writes valid JSON."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def interval_text(ci: Optional[Tuple[float, float]], digits: int = 2, signed: bool = True) -> str:
    """" [+0.80, +1.12]" (empty when there is no interval)."""
    if ci is None or any(v is None or not math.isfinite(v) for v in ci):
        return ""
    fmt = f"{{:+.{digits}f}}" if signed else f"{{:.{digits}f}}"
    return f" [{fmt.format(ci[0])}, {fmt.format(ci[1])}]"
