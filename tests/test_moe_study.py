"""The study on a mixture-of-experts model whose layers differ (qwen2_moe: a dense layer from
`mlp_only_layers`, then routed experts + a shared expert): scan, stats file, identification that
never selects padding, the per-expert plot, steering and the NLL matrix."""
from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.utils import logging as hf_logging

import langneuron_ext as ln
from langneuron_ext.corpus import PlainTextFiles
from langneuron_ext.models import find_mlps, get_handle
from langneuron_ext.models.toy import BYTE_VOCAB_SIZE, byte_tokenizer
from langneuron_ext.stats import ActivationStats

hf_logging.set_verbosity_error()

E, W, SHARED, DENSE = 4, 16, 24, 40
SIZES = [DENSE, E * W + SHARED]              # layer 0 dense, layer 1 routed + shared
TEXTS = {"en": "the quick brown fox {i} jumps over the lazy dog and runs away",
         "fr": "le renard brun {i} saute par-dessus le chien paresseux et part",
         "de": "der schnelle braune Fuchs {i} springt über den faulen Hund"}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(99)
    cfg = AutoConfig.for_model(
        "qwen2_moe", num_hidden_layers=2, hidden_size=32, vocab_size=BYTE_VOCAB_SIZE,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, max_position_embeddings=64, num_experts=E, num_experts_per_tok=2,
        moe_intermediate_size=W, shared_expert_intermediate_size=SHARED,
        intermediate_size=DENSE, mlp_only_layers=[0], decoder_sparse_step=1)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():
        for site in find_mlps(model):
            site.in_weight.mul_(8.0)
        model.model.layers[1].mlp.gate.weight.normal_(0, 1.0)
    folder = tmp_path_factory.mktemp("moe_corpus")
    files = {}
    for lang, text in TEXTS.items():
        files[lang] = folder / f"{lang}.txt"
        files[lang].write_text("\n".join(text.format(i=i) for i in range(30)) + "\n",
                               encoding="utf-8")
    tok = byte_tokenizer()
    stats = ln.scan(model, tok, PlainTextFiles(files), tokens_per_language=600, max_length=32,
                    batch_size=4, progress=False, impl="torch", track_sums=True)
    return model, tok, PlainTextFiles(files), stats


def test_scan_records_the_layout_and_never_counts_padding(setup, tmp_path):
    model, _, _, stats = setup
    assert get_handle(model) is None                       # scan's own patch is undone
    assert stats.counts.shape == (3, 2, max(SIZES))
    assert stats.layer_sizes() == SIZES
    assert not stats.counts[:, 0, DENSE:].any() and not stats.sums[:, 0, DENSE:].any()
    layout = stats.expert_layout()
    assert [seg["kind"] for seg in layout[0]] == ["dense"]
    assert [(seg["kind"], seg["offset"]) for seg in layout[1]] == [("routed", 0),
                                                                   ("shared", E * W)]
    back = ActivationStats.load(stats.save(tmp_path / "moe.safetensors"))
    assert back.layer_sizes() == SIZES and back.expert_layout() == layout
    mask = back.neuron_mask()
    assert mask.shape == (2, max(SIZES)) and int(mask.sum()) == sum(SIZES)


@pytest.mark.parametrize("method", ["lape", "ternary"])
def test_identification_never_selects_padding(setup, method):
    _, _, _, stats = setup
    identify = getattr(ln.identify, method)
    kw = dict(top_rate=0.5) if method == "lape" else dict(top_rate=0.5, lam=0.0)
    neurons = identify(stats, **kw)
    padded = [i for lang in neurons.languages for i in neurons.neurons[lang].get(0, [])
              if i >= DENSE]
    assert padded == []
    for kind_map in (neurons.types or {}).values():
        assert not [i for lang in kind_map for i in kind_map[lang].get(0, []) if i >= DENSE]
    valid_p = (stats.counts.double() / stats.n_tokens.double()[:, None, None]).permute(1, 2, 0)
    if method == "lape":
        flat = valid_p.float()[stats.neuron_mask()].flatten()
        k = round(0.95 * flat.numel())
        assert neurons.params["filter_value"] == flat.kthvalue(k).values.item()
        assert neurons.params["selected"] == round(0.5 * sum(SIZES))


def test_ternary_padding_would_be_selected_without_the_mask(setup):
    """ternary scores never-active neurons 1.0 (uniform entropy): with a large top_rate the
    padding of the dense layer would be picked without the mask."""
    _, _, _, stats = setup
    bare = ActivationStats(stats.counts, stats.n_tokens, stats.languages)
    from langneuron_ext.identify.lape import activation_probabilities
    from langneuron_ext.identify.ternary import _Scorer
    P = activation_probabilities(bare)
    unmasked = _Scorer.build(P, 0.9, 0.95).select(0.0)
    masked = _Scorer.build(P, 0.9, 0.95, stats.neuron_mask()).select(0.0)
    layer0_padding = lambda idx: [int(i) for i in idx if i // max(SIZES) == 0  # noqa: E731
                                  and i % max(SIZES) >= DENSE]
    assert layer0_padding(unmasked)
    assert layer0_padding(masked) == []
    assert len(masked) == round(0.9 * sum(SIZES))


def test_per_expert_plot(setup, tmp_path):
    from langneuron_ext.report.plots import per_expert_counts, plot_expert_heatmap
    _, _, _, stats = setup
    neurons = ln.identify.lape(stats, top_rate=0.2)
    counts, labels = per_expert_counts(neurons, stats.expert_layout())
    assert labels == ["e0", "e1", "e2", "e3", "shared", "dense"]
    union = [len({i for lang in neurons.languages for i in neurons.neurons[lang].get(layer, [])})
             for layer in range(2)]
    assert counts.sum(axis=1).tolist() == union
    assert counts[0, :E].sum() == 0 and counts[1, -1] == 0    # layer 0 dense, layer 1 MoE
    layer1 = {i for lang in neurons.languages for i in neurons.neurons[lang].get(1, [])}
    assert counts[1, :E].tolist() == [sum(1 for i in layer1 if i < E * W and i // W == e)
                                      for e in range(E)]
    assert counts[1, E] == sum(1 for i in layer1 if i >= E * W)
    assert counts[1, :E + 1].sum() > 0
    first = neurons.languages[0]
    single = per_expert_counts(neurons, stats.expert_layout(), [first])[0]
    assert single.sum() == sum(len(ids) for ids in neurons.neurons[first].values())
    path = plot_expert_heatmap(neurons, stats.expert_layout(), tmp_path / "experts.png")
    assert path.stat().st_size > 1000


def test_steer_and_nll_matrix(setup):
    model, tok, corpus, stats = setup
    neurons = ln.identify.lape(stats, top_rate=0.2)
    ids = tok("le renard", return_tensors="pt")["input_ids"]
    with ln.steer(model, neurons, ["fr"]) as handle:
        assert handle.get_steering(0)[0].shape[1] == DENSE      # each layer's own width
        with torch.no_grad():
            model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert get_handle(model) is None
    m = ln.evaluate.nll_matrix(model, tok, neurons, corpus, ["en", "fr"], random_sets=3,
                               max_tokens_per_language=200, max_length=32, progress=False,
                               bootstrap_samples=0)
    assert torch.isfinite(m.nll[0]).all()
    fr_row = m.rows.index("-fr")
    assert not torch.equal(m.nll[fr_row], m.nll[0])
    data = json.loads(m.to_json())
    assert data["rows"][0] == "baseline"


def test_random_sets_stay_inside_each_layer():
    from langneuron_ext.steer import random_mask_like
    mask = torch.zeros(2, 10, dtype=torch.bool)
    mask[0, :4] = True
    mask[1, :7] = True
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        out = random_mask_like(mask, g, [5, 10])
        assert out.sum(dim=1).tolist() == [4, 7] and not out[0, 5:].any()
    a = random_mask_like(mask, torch.Generator().manual_seed(3))
    b = random_mask_like(mask, torch.Generator().manual_seed(3), [10, 10])
    assert torch.equal(a, b)                  # dense models draw exactly as before
