"""Tests that fail for one-line changes of the evaluation code that the other tests let pass:
the token-weighted mean in the bootstrap, an interval level that is decisively 95%, the rule of
`LanguageControl.controlled()`, and the target (not the source) in the shares."""
import contextlib

import pytest
import torch

from langneuron_ext.evaluate import langcontrol
from langneuron_ext.evaluate.langcontrol import LanguageControl
from langneuron_ext.evaluate.uncertainty import bootstrap_nll, wilson_interval


def test_the_bootstrap_mean_weights_documents_by_their_tokens():
    """Short documents are hard (5 nats/token), long ones easy (1): the mean NLL per token is
    Σ sums / Σ tokens = 1.4, while the mean of per-document means would be 3.0."""
    tokens = torch.tensor([10, 90] * 20)
    per_token = torch.tensor([5.0, 1.0] * 20, dtype=torch.float64)
    sums = (per_token * tokens)[None]
    ci, _ = bootstrap_nll(sums, tokens, torch.zeros(40, dtype=torch.long), 1, samples=400)
    low, high = ci[0, 0].tolist()
    assert low <= 1.4 <= high
    assert high < 2.0                     # nowhere near the unweighted 3.0
    # with unequal lengths in the other direction the weighting moves the interval the other way
    ci2, _ = bootstrap_nll((torch.tensor([1.0, 5.0] * 20, dtype=torch.float64) * tokens)[None],
                           tokens, torch.zeros(40, dtype=torch.long), 1, samples=400)
    assert ci2[0, 0, 0] > 4.0             # (20*10 + 20*450) / 2000 = 4.6


def _coverage(level, trials=1000, n=80):
    gen = torch.Generator().manual_seed(0)
    covered = 0
    for t in range(trials):
        tokens = torch.randint(20, 80, (n,), generator=gen)
        doc_mean = 3.0 + 0.5 * torch.randn(n, generator=gen, dtype=torch.float64)
        ci, _ = bootstrap_nll((doc_mean * tokens)[None], tokens,
                              torch.zeros(n, dtype=torch.long), 1, samples=400, seed=t,
                              level=level)
        covered += int(ci[0, 0, 0] <= 3.0 <= ci[0, 0, 1])
    return covered / trials


def test_the_default_interval_is_95_percent_not_90():
    """1,000 draws of 80 documents: the default interval covers the true mean 94% of the time
    here; a 90% interval covers 89% (sd of a coverage over 1,000 draws: 0.007-0.01), so the
    bound 0.92 tells them apart, as the second half shows."""
    from langneuron_ext.evaluate.uncertainty import LEVEL
    assert LEVEL == 0.95
    assert 0.92 <= _coverage(LEVEL) <= 0.975
    assert _coverage(0.90) < 0.92


def control(no_steering, steered, randoms, target="fr", source="en"):
    """A LanguageControl from label lists (target hits first, the rest the source)."""
    labels = {"no steering": no_steering, f"-{source} +{target}": steered}
    labels.update({f"random#{i}": r for i, r in enumerate(randoms)})
    share = {c: 0.0 for c in labels}
    return LanguageControl(source, target, list(labels), share, dict(share),
                           {c: 1 for c in labels}, {c: [""] * len(v) for c, v in labels.items()},
                           labels)


def hits(n_target, n, target="fr", other="en"):
    return [target] * n_target + [other] * (n - n_target)


def test_controlled_needs_the_steered_interval_above_the_unsteered_upper_end():
    # steered 20/20 -> [0.839, 1.0]; unsteered 14/20 -> [0.481, 0.854]: the steered lower end
    # lies above the unsteered lower end but not its upper end: not controlled
    c = control(hits(14, 20), hits(20, 20), [hits(0, 20), hits(0, 20)])
    assert wilson_interval(14, 20)[0] < c.target_interval(c.steered)[0] < wilson_interval(14, 20)[1]
    assert c.controlled() is False
    # the same with an unsteered share of 0/20 -> [0, 0.161]: controlled
    assert control(hits(0, 20), hits(20, 20), [hits(0, 20), hits(0, 20)]).controlled() is True


def test_controlled_needs_the_steered_interval_above_the_random_sets():
    # random sets pooled 30/40 -> upper end above the steered lower end: not controlled
    c = control(hits(0, 20), hits(20, 20), [hits(15, 20), hits(15, 20)])
    assert c.controlled() is False
    assert control(hits(0, 20), hits(20, 20), []).controlled() is None


def test_shares_count_the_target_and_the_source_by_their_base_codes(monkeypatch):
    """Source en, target pt-BR: the target share counts 'pt' labels, the source share 'en'."""
    texts = iter([["a", "b", "c", "d"], ["e", "f", "g", "h"]])
    label = {"a": "en", "b": "en", "c": "pt", "d": "fr", "e": "pt", "f": "pt", "g": "pt",
             "h": "en"}
    monkeypatch.setattr(langcontrol, "generate_texts", lambda *a, **k: next(texts))
    monkeypatch.setattr(langcontrol, "identify_language", lambda text, candidates=None:
                        label[text])
    monkeypatch.setattr(langcontrol, "interventions", lambda *a, **k: [])
    monkeypatch.setattr(langcontrol, "steering", lambda *a, **k: contextlib.nullcontext())
    res = langcontrol.language_control(None, None, None, None, ["p1", "p2", "p3", "p4"], "en",
                                       "pt-BR", random_sets=0, progress=False)
    assert res.conditions == ["no steering", "-en +pt-BR"]
    assert res.target_share == {"no steering": 0.25, "-en +pt-BR": 0.75}
    assert res.source_share == {"no steering": 0.5, "-en +pt-BR": 0.25}
    assert res.target_interval("-en +pt-BR") == pytest.approx(wilson_interval(3, 4))
    assert res.to_dict()["target_ci"]["no steering"] == pytest.approx(list(wilson_interval(1, 4)))
