"""Controls that hold up: frequency-matched random sets in the NLL matrix, the own effect's
empirical p-value and rank among the random sets, and single-neuron effects."""
import pytest
import torch
from test_evaluate import IMPL, TEXTS, tiny_byte_model
from test_steer import random_neurons, random_stats

from langneuron_ext.evaluate import nll_matrix
from langneuron_ext.evaluate.controls import pooled_frequency, single_neuron_effects
from langneuron_ext.evaluate.nll import _pad, row_token_nll
from langneuron_ext.evaluate.texts import iter_texts, token_windows
from langneuron_ext.models.toy import byte_tokenizer
from langneuron_ext.ops.reference import STEER_SET
from langneuron_ext.steer import Intervention, steering


def test_specificity_reports_the_empirical_p_value_and_rank():
    model, tok, neurons = tiny_byte_model(), byte_tokenizer(), random_neurons()
    m = nll_matrix(model, tok, neurons, TEXTS, ["en", "fr"], deactivate=["fr"], random_sets=4,
                   seed=1, max_tokens_per_language=60, max_length=32, progress=False,
                   impl=IMPL, random_match="frequency", frequency=pooled_frequency(random_stats()))
    spec = m.specificity()["fr"]
    d = m.delta()
    c = m.columns.index("fr")
    own = d[m.rows.index("-fr"), c].item()
    sets = [d[m.rows.index(f"random(fr)#{r}"), c].item() for r in range(4)]
    beaten = sum(v >= own for v in sets)
    assert spec["random_rank"] == 1 + beaten
    assert spec["random_p"] == pytest.approx((1 + beaten) / 5)
    assert m.sizes[m.rows.index("random(fr)#0")] == m.sizes[m.rows.index("-fr")]


def test_single_neuron_effects_equal_one_neuron_at_a_time():
    model, tok = tiny_byte_model(), byte_tokenizer()
    mask = random_neurons().mask("fr").bool()
    mask &= torch.arange(mask.shape[1])[None, :] < 20          # a few neurons keep it quick
    got = single_neuron_effects(model, tok, mask, TEXTS, "fr", max_tokens=60, max_length=32,
                                groups_per_pass=3, impl=IMPL)
    assert len(got) == int(mask.sum())
    assert [g["rise"] for g in got] == sorted((g["rise"] for g in got), reverse=True)
    ids, att = _pad(token_windows(tok, iter_texts(TEXTS, "fr"), 60, 32), 0)
    with torch.inference_mode(), steering(model, [], impl=IMPL):
        base = row_token_nll(model, ids, att).sum().item()
    n = int(att[:, 1:].sum())
    for g in got[:3]:
        one = torch.zeros_like(mask)
        one[g["layer"], g["neuron"]] = True
        with torch.inference_mode(), steering(model, [Intervention(one, STEER_SET,
                                                                   torch.zeros(mask.shape))],
                                              impl=IMPL):
            alone = row_token_nll(model, ids, att).sum().item()
        assert g["rise"] == pytest.approx((alone - base) / n, abs=1e-5)
