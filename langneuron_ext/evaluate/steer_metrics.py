"""Per-generation metrics of the steering benchmark and their 95% intervals over prompts.

- success: the generation is identified as the target language, by `langid` (as the language
  control does) and by a second identifier, `lingua-language-detector`, reported beside it
  (short texts are where identifiers disagree);
- fluency: the *unsteered* model's mean per-token NLL of the generated tokens on their own
  (BOS + generation, no prompt): lower is more fluent; a steering method that breaks the text
  pays here even when the language switches;
- content: chrF (sacrebleu) of the generation against the target-language paragraph aligned
  with the prompt's source paragraph;
- summary score: the harmonic mean of the langid success share s and the normalised content
  c = min(1, chrF / chrF_native), where chrF_native is the mean chrF of the unsteered model's
  continuations of the *target-language* openings of the same paragraphs (what a native
  continuation scores against that reference): score = 2 s c / (s + c), 0 when both are 0.
  Fluency is reported beside it, never folded in.

Shares get Wilson intervals; means (NLL, chrF) a percentile bootstrap over prompts.
"""
from __future__ import annotations

import functools
import math
from typing import List, Optional, Sequence, Tuple

import torch

from .langcontrol import identify_language, langid_code
from .uncertainty import BOOTSTRAP_SAMPLES, LEVEL, wilson_interval


def _import_extra(module: str, package: str):
    """Import a steer-bench dependency, or say which extra installs it."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"steer-bench needs {package}: pip install 'langneuron-ext[steer-bench]'"
                          f" (or pip install {package})") from err


@functools.lru_cache(maxsize=1)
def _lingua_detector():
    LanguageDetectorBuilder = _import_extra("lingua", "lingua-language-detector"
                                            ).LanguageDetectorBuilder
    return LanguageDetectorBuilder.from_all_languages().build()


def identify_lingua(text: str) -> str:
    """ISO 639-1 code that lingua assigns to `text` ("" for empty or undecided text)."""
    if not text.strip():
        return ""
    found = _lingua_detector().detect_language_of(text)
    return "" if found is None else found.iso_code_639_1.name.lower()


def identify_langid(text: str) -> str:
    return identify_language(text)


def is_target(code: str, target: str) -> bool:
    return bool(code) and code == langid_code(target)


def chrf(hypothesis: str, reference: str) -> float:
    """Sentence-level chrF (0..100) of `hypothesis` against one reference (sacrebleu)."""
    CHRF = _import_extra("sacrebleu.metrics", "sacrebleu").CHRF
    return float(_chrf_metric(CHRF).sentence_score(hypothesis, [reference]).score)


@functools.lru_cache(maxsize=1)
def _chrf_metric(cls):
    return cls()


def bootstrap_mean(values: Sequence[float], samples: int = BOOTSTRAP_SAMPLES,
                   level: float = LEVEL, seed: int = 0) -> Tuple[float, float, float]:
    """(mean, low, high): the mean of the finite values and its percentile-bootstrap interval
    over them (NaN interval with fewer than two values)."""
    x = torch.tensor([v for v in values if v is not None and math.isfinite(v)],
                     dtype=torch.float64)
    if x.numel() == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if x.numel() < 2:
        return mean, float("nan"), float("nan")
    gen = torch.Generator().manual_seed(seed)
    draws = torch.randint(x.numel(), (samples, x.numel()), generator=gen)
    means = x[draws].mean(dim=1)
    alpha = (1 - level) / 2
    lo, hi = torch.quantile(means, torch.tensor([alpha, 1 - alpha], dtype=torch.float64))
    return mean, float(lo), float(hi)


def share(hits: Sequence[bool]) -> Tuple[float, float, float]:
    """(share, low, high) with the Wilson interval."""
    n = len(hits)
    k = sum(bool(h) for h in hits)
    lo, hi = wilson_interval(k, n)
    return (k / n if n else float("nan")), lo, hi


def summary_score(success: float, chrf_mean: float, chrf_native: float) -> float:
    """Harmonic mean of the success share and min(1, chrF / chrF_native) (module docstring)."""
    if not (math.isfinite(success) and math.isfinite(chrf_mean)) or not chrf_native > 0:
        return float("nan")
    content = min(1.0, max(0.0, chrf_mean / chrf_native))
    if success + content == 0:
        return 0.0
    return 2 * success * content / (success + content)


def empirical_p(own: float, random: Sequence[float], larger_is_stronger: bool = True
                ) -> Tuple[Optional[float], Optional[int]]:
    """(p, rank): p = (1 + #random sets at least as strong as `own`) / (1 + R), the
    permutation-style p-value of "own beats random sets of its size"; rank 1 = strongest of all.
    (None, None) without random sets."""
    vals = [v for v in random if v is not None and math.isfinite(v)]
    if not vals or own is None or not math.isfinite(own):
        return None, None
    at_least = sum((v >= own) if larger_is_stronger else (v <= own) for v in vals)
    return (1 + at_least) / (1 + len(vals)), 1 + at_least


def token_nll_means(sums: Sequence[float], counts: Sequence[int]) -> List[float]:
    return [s / c if c else float("nan") for s, c in zip(sums, counts)]
