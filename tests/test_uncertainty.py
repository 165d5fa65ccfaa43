"""Intervals of the NLL matrix and of language control: the bootstrap over documents, Wilson
intervals, random sets with their language's per-layer sizes, valid JSON without random sets."""
import json
import math

import pytest
import torch
from test_evaluate import IMPL, TEXTS, tiny_byte_model
from test_steer import LANGS, random_neurons

from langneuron_ext.evaluate import NllMatrix, nll_matrix
from langneuron_ext.evaluate.uncertainty import bootstrap_nll, json_safe, wilson_interval
from langneuron_ext.identify.neuron_set import NeuronSet
from langneuron_ext.models.toy import byte_tokenizer


def test_wilson_interval_known_values():
    # textbook values (Newcombe 1998, method 3)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    lo, hi = wilson_interval(14, 20)
    assert (lo, hi) == (pytest.approx(0.4810, abs=1e-4), pytest.approx(0.8545, abs=1e-4))
    assert wilson_interval(20, 20)[1] == 1.0
    assert all(math.isnan(v) for v in wilson_interval(0, 0))


def test_bootstrap_covers_the_true_mean_about_95_percent():
    """Documents with a known mean NLL per token: the interval of the mean covers it in about
    95% of repeated draws (a too narrow, per-token interval would cover far less)."""
    gen = torch.Generator().manual_seed(0)
    covered, trials = 0, 200
    for t in range(trials):
        n = 40
        tokens = torch.randint(20, 80, (n,), generator=gen)
        # documents differ in difficulty: per-document mean NLL ~ N(3, 0.5)
        doc_mean = 3.0 + 0.5 * torch.randn(n, generator=gen, dtype=torch.float64)
        sums = (doc_mean * tokens)[None]
        ci, delta = bootstrap_nll(sums, tokens, torch.zeros(n, dtype=torch.long), 1,
                                  samples=400, seed=t)
        covered += int(ci[0, 0, 0] <= 3.0 <= ci[0, 0, 1])
        assert torch.equal(delta, torch.zeros_like(delta))     # row 0 is its own baseline
    assert 0.88 <= covered / trials <= 0.99, covered


def test_bootstrap_is_paired_and_needs_two_documents():
    tokens = torch.tensor([10, 20, 30, 40])
    base = torch.tensor([30.0, 80.0, 60.0, 160.0], dtype=torch.float64)
    # variant = baseline + exactly 0.5 nats per token on every document: the paired change has
    # no spread at all, although the NLL itself does
    sums = torch.stack([base, base + 0.5 * tokens])
    ci, delta = bootstrap_nll(sums, tokens, torch.zeros(4, dtype=torch.long), 1, seed=1)
    torch.testing.assert_close(delta[1, 0], torch.tensor([0.5, 0.5], dtype=torch.float64))
    assert ci[0, 0, 1] - ci[0, 0, 0] > 0.1
    one = bootstrap_nll(sums[:, :1], tokens[:1], torch.zeros(1, dtype=torch.long), 1)
    assert torch.isnan(one[0]).all()


@pytest.fixture(scope="module")
def model_tok():
    return tiny_byte_model(), byte_tokenizer()


def skewed_neurons() -> NeuronSet:
    """Per-layer sizes that differ between layers and between languages (3, 0, 7 / ...), so a
    random set with the layers' sizes reversed or another language's sizes is caught."""
    mask = torch.zeros(len(LANGS), 3, 48, dtype=torch.bool)
    for k, sizes in enumerate([(3, 0, 7), (9, 2, 1), (0, 5, 4)]):
        for layer, n in enumerate(sizes):
            mask[k, layer, torch.arange(n) * 5 + k] = True
    return NeuronSet.from_masks("test", {}, LANGS, mask)


def check_random_sets_match(matrix: NllMatrix, neurons: NeuronSet) -> None:
    """Every random row has exactly its language's per-layer neuron counts."""
    randoms = [i for i, k in enumerate(matrix.kinds) if k == "random"]
    assert randoms
    for i in randoms:
        want = neurons.mask(matrix.row_languages[i]).sum(dim=1).tolist()
        assert matrix.layer_sizes[i] == want, (matrix.rows[i], matrix.layer_sizes[i], want)
        assert matrix.sizes[i] == sum(want)


def test_random_sets_have_their_languages_per_layer_sizes(model_tok, monkeypatch):
    model, tok = model_tok
    neurons = skewed_neurons()
    kw = dict(random_sets=3, max_tokens_per_language=40, max_length=24, progress=False,
              impl=IMPL, bootstrap_samples=50)
    m = nll_matrix(model, tok, neurons, TEXTS, ["en", "fr"], **kw)
    assert sum(k == "random" for k in m.kinds) == 3 * len(LANGS)
    check_random_sets_match(m, neurons)

    # a random set drawn with the layers' sizes reversed must fail the check
    import langneuron_ext.evaluate.nll as nll_module
    real = nll_module.random_mask_like
    monkeypatch.setattr(nll_module, "random_mask_like",
                        lambda mask, gen, *rest: real(mask.flip(0), gen, *rest))
    reversed_m = nll_matrix(model, tok, neurons, TEXTS, ["en"], **kw)
    with pytest.raises(AssertionError):
        check_random_sets_match(reversed_m, neurons)


def test_matrix_intervals_bracket_the_estimates_and_json_is_valid(model_tok):
    model, tok = model_tok
    neurons = random_neurons()
    m = nll_matrix(model, tok, neurons, TEXTS, LANGS, random_sets=2, max_tokens_per_language=80,
                   max_length=24, progress=False, impl=IMPL, bootstrap_samples=200)
    d = m.delta()
    assert all(n >= 2 for n in m.documents)
    ok = ~torch.isnan(m.nll)
    # random sets are scored on their own language's column only (random_columns="own")
    assert ok.sum() == ok.numel() - 2 * 3 * 2
    assert (m.nll_ci[..., 0] <= m.nll + 1e-9)[ok].all()
    assert (m.nll <= m.nll_ci[..., 1] + 1e-9)[ok].all()
    assert (m.delta_ci[..., 0] <= d + 1e-9)[ok].all() and (d <= m.delta_ci[..., 1] + 1e-9)[ok].all()
    full = nll_matrix(model, tok, neurons, TEXTS, LANGS, random_sets=2,
                      max_tokens_per_language=80, max_length=24, progress=False, impl=IMPL,
                      bootstrap_samples=200, random_columns="all")
    assert not torch.isnan(full.nll).any()
    torch.testing.assert_close(full.nll[ok], m.nll[ok], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(full.delta_ci[ok], m.delta_ci[ok])
    spec = m.specificity()
    for lang, s in spec.items():
        assert s["random_sets"] == 2 and isinstance(s["separated"], bool)
        assert s["separated"] == (s["own_ci"][0] > s["random_own_high"])
    back = NllMatrix.from_dict(json.loads(m.to_json()))
    torch.testing.assert_close(back.delta_ci, m.delta_ci, equal_nan=True)
    assert back.layer_sizes == m.layer_sizes

    none = nll_matrix(model, tok, neurons, TEXTS, ["en"], random_sets=0,
                      max_tokens_per_language=40, max_length=24, progress=False, impl=IMPL)
    text = none.to_json()
    assert "NaN" not in text
    data = json.loads(text)
    assert data["specificity"]["en"]["random_own"] is None
    assert data["specificity"]["en"]["separated"] is None


def test_separation_mark_in_markdown():
    """A cell whose interval overlaps the random sets is marked; a clear one is not."""
    nll = torch.tensor([[3.0, 3.0], [3.5, 3.01], [3.02, 3.3], [3.01, 3.0], [3.0, 3.29]],
                       dtype=torch.float64)
    ci = torch.stack([nll - 0.02, nll + 0.02], dim=-1)
    delta = nll - nll[0]
    delta_ci = torch.stack([delta - 0.02, delta + 0.02], dim=-1)
    m = NllMatrix(["baseline", "-en", "-fr", "random(en)#0", "random(fr)#0"],
                  ["baseline", "language", "language", "random", "random"],
                  [None, "en", "fr", "en", "fr"], [0, 4, 4, 4, 4], ["en", "fr"], nll,
                  [100, 100], {}, ci, delta_ci, [10, 10])
    spec = m.specificity()
    assert spec["en"]["separated"] is True          # +0.50 [0.48, 0.52] vs random <= 0.03
    assert spec["fr"]["separated"] is False         # +0.30 [0.28, 0.32] vs random up to 0.31
    md = m.to_markdown()
    assert "**+0.500 [+0.480, +0.520]** |" in md
    assert "**+0.300 [+0.280, +0.320]** \u2020" in md


def test_json_safe():
    assert json_safe({"a": [float("nan"), 1.0, float("inf")], "b": (2, "x")}) == \
        {"a": [None, 1.0, None], "b": [2, "x"]}


def test_phase_rows_deactivate_one_phase_only(model_tok):
    """A per-phase row equals the language deactivated with layers= that phase's layers."""
    model, tok = model_tok
    neurons = random_neurons()
    phases = [{"name": "early", "start": 0, "stop": 1}, {"name": "late", "start": 1, "stop": 3}]
    kw = dict(random_sets=0, max_tokens_per_language=40, max_length=24, progress=False,
              impl=IMPL, bootstrap_samples=0)
    m = nll_matrix(model, tok, neurons, TEXTS, ["en", "fr"], deactivate=["fr"], phases=phases,
                   **kw)
    assert m.rows == ["baseline", "-fr", "-fr@early", "-fr@late"]
    late = nll_matrix(model, tok, neurons, TEXTS, ["en", "fr"], deactivate=["fr"],
                      layers=[1, 2], **kw)
    torch.testing.assert_close(m.nll[3], late.nll[1], rtol=1e-6, atol=1e-9)
    want = neurons.mask("fr").sum(dim=1).tolist()
    assert m.layer_sizes[2] == [want[0], 0, 0] and m.layer_sizes[3] == [0, *want[1:]]
    own = nll_matrix(model, tok, neurons, TEXTS, ["en", "fr"], deactivate=["fr"],
                     phases=phases, phase_columns="own", **kw)
    assert torch.isnan(own.nll[2:, 0]).all()
    torch.testing.assert_close(own.nll[2:, 1], m.nll[2:, 1], rtol=1e-6, atol=1e-9)
    assert "| fr | late |" in m.phase_table() and "| fr | late |" in own.phase_table()
