"""Steering on tiny random models, checked against a forward-hook reference on the unpatched
model: a hook on the MLP's activation module edits act(gate) exactly as steering should."""
import pytest
import torch
import transformers

import langneuron_ext as ln
from langneuron_ext.identify.neuron_set import NeuronSet
from langneuron_ext.models import get_handle, patch
from langneuron_ext.stats import ActivationStats
from langneuron_ext.steer import (
    SteeringError,
    installed_tables,
    interventions,
    random_mask_like,
    steer,
    steering,
    steering_groups,
)

LANGS = ["en", "fr", "de"]
IMPLS = ln.ops.available_for("cpu")


def tiny_model(model_type: str = "llama"):
    torch.manual_seed(0)
    common = dict(vocab_size=97, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    if model_type == "llama":
        config = transformers.LlamaConfig(**common)
        model = transformers.LlamaForCausalLM(config)
    else:
        config = transformers.Gemma3TextConfig(**common, head_dim=8, sliding_window=16)
        model = transformers.Gemma3ForCausalLM(config)
    return model.eval()


def random_neurons(L=3, I=48, seed=1) -> NeuronSet:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.rand(len(LANGS), L, I, generator=gen) < 0.15
    return NeuronSet.from_masks("test", {}, LANGS, mask)


def random_stats(L=3, I=48, seed=2) -> ActivationStats:
    gen = torch.Generator().manual_seed(seed)
    n = torch.tensor([100, 120, 80])
    counts = (torch.rand(len(LANGS), L, I, generator=gen) * 80).long()
    sums = torch.randn(len(LANGS), L, I, generator=gen, dtype=torch.float64) * n[:, None, None]
    return ActivationStats(counts, n, LANGS, sums=sums)


def hook_reference(model, edits):
    """Forward hooks on each layer's act_fn applying `edits` [(mask [L, I], op, value [L, I])]
    in order; returns the hook handles."""
    hooks = []
    for layer, block in enumerate(model.model.layers):
        def hook(module, inputs, output, layer=layer):
            out = output.clone()
            for mask, op, value in edits:
                m = mask[layer]
                v = value[layer].to(out.dtype)
                if op == "set":
                    out[..., m] = v[m]
                else:
                    out[..., m] = out[..., m] + v[m]
            return out
        hooks.append(block.mlp.act_fn.register_forward_hook(hook))
    return hooks


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def reference_logits(model, ids, edits):
    hooks = hook_reference(model, edits)
    try:
        return logits(model, ids)
    finally:
        for h in hooks:
            h.remove()


IDS = torch.randint(0, 97, (2, 7), generator=torch.Generator().manual_seed(3))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("model_type", ["llama", "gemma3_text"])
def test_deactivate_equals_hook_reference(impl, model_type):
    model, neurons = tiny_model(model_type), random_neurons()
    plain = logits(model, IDS)
    zero = torch.zeros(3, 48)
    expected = reference_logits(model, IDS, [(neurons.mask("fr"), "set", zero)])
    assert not torch.allclose(expected, plain, atol=1e-5)   # the edit matters at all
    with steer(model, neurons, ["fr"], impl=impl) as handle:
        assert handle.impls == [impl] * 3
        got = logits(model, IDS)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert get_handle(model) is None                          # patched here, unpatched on exit
    torch.testing.assert_close(logits(model, IDS), plain)


@pytest.mark.parametrize("impl", IMPLS)
def test_union_of_languages_and_layer_restriction(impl):
    model, neurons = tiny_model(), random_neurons()
    zero = torch.zeros(3, 48)
    keep = torch.tensor([False, True, True])[:, None]
    expected = reference_logits(model, IDS, [(neurons.mask("en") & keep, "set", zero),
                                             (neurons.mask("de") & keep, "set", zero)])
    with steer(model, neurons, ["en", "de"], layers=[1, -1], impl=impl):
        got = logits(model, IDS)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("impl", IMPLS)
def test_activate_mean_and_add(impl):
    model, neurons, stats = tiny_model(), random_neurons(), random_stats()
    mean_de = stats.mean_activation()[LANGS.index("de")].float()
    expected = reference_logits(model, IDS, [(neurons.mask("de"), "set", mean_de)])
    with steer(model, neurons, "de", mode="activate", stats=stats, impl=impl):
        got = logits(model, IDS)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    shift = torch.full((3, 48), 0.5)
    expected = reference_logits(model, IDS, [(neurons.mask("en"), "add", shift)])
    with steer(model, neurons, "en", mode="add", value=0.5, impl=impl):
        got = logits(model, IDS)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)

    three = torch.full((3, 48), 3.0)
    expected = reference_logits(model, IDS, [(neurons.mask("en"), "set", three)])
    with steer(model, neurons, "en", mode="activate", value=3.0, impl=impl):
        got = logits(model, IDS)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_nesting_composes_and_restores():
    model, neurons, stats = tiny_model(), random_neurons(), random_stats()
    plain = logits(model, IDS)
    zero = torch.zeros(3, 48)
    mean_de = stats.mean_activation()[LANGS.index("de")].float()
    outer_only = reference_logits(model, IDS, [(neurons.mask("fr"), "set", zero)])
    both = reference_logits(model, IDS, [(neurons.mask("fr"), "set", zero),
                                         (neurons.mask("de"), "set", mean_de)])
    handle = patch(model)                        # patched by the user: stays patched
    try:
        with steer(model, neurons, "fr"):
            torch.testing.assert_close(logits(model, IDS), outer_only, atol=1e-4, rtol=1e-4)
            with steer(model, neurons, "de", mode="activate", stats=stats):
                torch.testing.assert_close(logits(model, IDS), both, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(logits(model, IDS), outer_only, atol=1e-4, rtol=1e-4)
            # repeated use of the same inner block leaks nothing either
            for _ in range(2):
                with steer(model, neurons, "de", mode="activate", stats=stats):
                    pass
            torch.testing.assert_close(logits(model, IDS), outer_only, atol=1e-4, rtol=1e-4)
        assert get_handle(model) is handle
        assert all(t is None for t in installed_tables(handle))
        torch.testing.assert_close(logits(model, IDS), plain, atol=1e-5, rtol=1e-5)
    finally:
        handle.unpatch()


def test_exception_inside_block_restores_state():
    model, neurons = tiny_model(), random_neurons()
    plain = logits(model, IDS)
    with pytest.raises(RuntimeError, match="boom"):
        with steer(model, neurons, "fr"):
            raise RuntimeError("boom")
    assert get_handle(model) is None
    torch.testing.assert_close(logits(model, IDS), plain)


@pytest.mark.parametrize("impl", IMPLS)
def test_generate_with_kv_cache_matches_hook_reference(impl):
    model, neurons = tiny_model(), random_neurons()
    prompt = IDS[:, :4]
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, use_cache=True)
    hooks = hook_reference(model, [(neurons.mask("en") | neurons.mask("fr"), "set",
                                    torch.zeros(3, 48))])
    try:
        expected = model.generate(prompt, **kwargs)
    finally:
        for h in hooks:
            h.remove()
    plain = model.generate(prompt, **kwargs)
    with steer(model, neurons, ["en", "fr"], impl=impl):
        got = model.generate(prompt, **kwargs)
    assert got.shape == (2, 10)
    assert torch.equal(got, expected)
    assert not torch.equal(got, plain) or torch.equal(expected, plain)


def test_steering_groups_rows_match_single_variants():
    """One forward with the batch replicated per group equals each variant run alone."""
    model, neurons, stats = tiny_model(), random_neurons(), random_stats()
    variants = [[],
                interventions(neurons, "en"),
                interventions(neurons, "fr") + interventions(neurons, "de", "activate",
                                                             stats=stats)]
    alone = []
    for v in variants:
        with steering(model, v):
            alone.append(logits(model, IDS))
    tables = steering_groups(variants, 3, 48)
    assert tables[0][0].shape == (3, 48) and tables[0][0].dtype == torch.int8
    handle = patch(model)
    try:
        for layer, table in enumerate(tables):
            handle.set_steering(layer, *table)
        G, B, T = len(variants), IDS.shape[0], IDS.shape[1]
        group = torch.arange(G, dtype=torch.int32).repeat_interleave(B)[:, None].expand(-1, T)
        handle.set_rows(None, group)
        together = logits(model, IDS.repeat(G, 1)).view(G, B, T, -1)
    finally:
        handle.unpatch()
    for g in range(G):
        torch.testing.assert_close(together[g], alone[g], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(alone[1], alone[0], atol=1e-5)


def test_steering_groups_skip_untouched_layers_and_add_composes():
    mask = torch.zeros(3, 4, dtype=torch.bool)
    mask[1, 2] = True
    from langneuron_ext.ops.reference import STEER_ADD, STEER_SET
    from langneuron_ext.steer import Intervention
    v = torch.full((3, 4), 2.0)
    tables = steering_groups([[Intervention(mask, STEER_ADD, v), Intervention(mask, STEER_ADD, v)],
                              [Intervention(mask, STEER_SET, v), Intervention(mask, STEER_ADD, v)]],
                             3, 4)
    assert tables[0] is None and tables[2] is None
    mode, value = tables[1]
    assert mode[:, 2].tolist() == [STEER_ADD, STEER_SET]
    assert value[:, 2].tolist() == [4.0, 4.0]           # add + add = add 4; set 2 then add 2 = 4
    assert mode[:, [0, 1, 3]].eq(0).all()


def test_random_mask_like_keeps_per_layer_counts_and_is_seeded():
    mask = random_neurons().mask("fr")
    a = random_mask_like(mask, torch.Generator().manual_seed(5))
    b = random_mask_like(mask, torch.Generator().manual_seed(5))
    c = random_mask_like(mask, torch.Generator().manual_seed(6))
    assert torch.equal(a.sum(1), mask.sum(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_bad_input_errors():
    model, neurons, stats = tiny_model(), random_neurons(), random_stats()
    with pytest.raises(SteeringError, match="not in the neuron set"):
        with steer(model, neurons, "xx"):
            pass
    with pytest.raises(SteeringError, match="needs the scan statistics"):
        with steer(model, neurons, "de", mode="activate"):
            pass
    no_sums = ActivationStats(stats.counts, stats.n_tokens, LANGS)
    with pytest.raises(SteeringError, match="no activation sums"):
        with steer(model, neurons, "de", mode="activate", stats=no_sums):
            pass
    with pytest.raises(SteeringError, match="out of range"):
        with steer(model, neurons, "de", layers=[3]):
            pass
    with pytest.raises(SteeringError, match="unknown steering mode"):
        with steer(model, neurons, "de", mode="boost"):
            pass
    other = random_neurons(L=2, I=48)
    with pytest.raises(SteeringError, match="the model has"):
        with steer(model, other, "de"):
            pass
    assert get_handle(model) is None                  # a failed entry leaves no patch behind


def test_public_name_works_after_submodule_import():
    """`ln.steer` stays the function after `import langneuron_ext.steer` (same-named module)."""
    import langneuron_ext.steer  # noqa: F401
    model, neurons = tiny_model(), random_neurons()
    zero = torch.zeros(3, 48)
    expected = reference_logits(model, IDS, [(neurons.mask("fr"), "set", zero)])
    with ln.steer(model, neurons, languages=["fr"], mode="deactivate"):
        got = logits(model, IDS)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_steering_installed_by_hand_is_kept_and_restored():
    model, neurons = tiny_model(), random_neurons()
    handle = patch(model)
    try:
        mode = torch.zeros(1, 48, dtype=torch.int8)
        mode[0, :5] = 1
        handle.set_steering(2, mode, torch.zeros(1, 48))
        by_hand = logits(model, IDS)
        with steer(model, neurons, "fr"):
            pass
        torch.testing.assert_close(logits(model, IDS), by_hand)
        assert installed_tables(handle)[2] is not None
    finally:
        handle.unpatch()
