"""Mixture-of-experts models: every expert neuron is a neuron.

Each architecture is a tiny randomly initialised model (2 layers, hidden 32, 4 experts x 16
neurons, top-2 routing; dense first / mlp-only layers and shared experts where the model has
them), run under each experts implementation transformers offers on CPU (eager loop,
batched_mm, grouped_mm). Counts are compared bit-exactly with an independent count: forward
pre-hooks capture the routing the block hands its experts module, and the test recomputes every
routed (token, expert) pre-activation itself.
"""
from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.utils import logging as hf_logging

import langneuron_ext as ln
from langneuron_ext.models import find_mlps, get_handle, patch, patched

hf_logging.set_verbosity_error()

VOCAB, B, T, K = 128, 3, 7, 3
E, W, TOP_K = 4, 16, 2          # experts, neurons per expert, experts per token
DENSE_I, SHARED_I = 40, 24

_BASE = dict(num_hidden_layers=2, hidden_size=32, vocab_size=VOCAB, num_attention_heads=4,
             num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2,
             max_position_embeddings=64, num_experts_per_tok=TOP_K)
_DEEPSEEK = dict(n_routed_experts=E, moe_intermediate_size=W, intermediate_size=DENSE_I,
                 first_k_dense_replace=1, kv_lora_rank=8, q_lora_rank=None,
                 qk_rope_head_dim=4, qk_nope_head_dim=4, v_head_dim=8, n_group=1, topk_group=1)
CONFIGS = {
    "mixtral": dict(num_local_experts=E, intermediate_size=W),
    # layer 0 dense (mlp_only_layers), layer 1 routed + shared expert
    "qwen2_moe": dict(num_experts=E, moe_intermediate_size=W, intermediate_size=DENSE_I,
                      shared_expert_intermediate_size=SHARED_I, mlp_only_layers=[0],
                      decoder_sparse_step=1),
    "qwen3_moe": dict(num_experts=E, moe_intermediate_size=W, intermediate_size=DENSE_I,
                      mlp_only_layers=[1], decoder_sparse_step=1, head_dim=8),
    "olmoe": dict(num_experts=E, intermediate_size=W),
    # layer 0 dense (first_k_dense_replace), layer 1 routed + shared experts
    "deepseek_v3": dict(_DEEPSEEK, n_shared_experts=1),
    "deepseek_v2": dict(_DEEPSEEK, n_shared_experts=1),
}
# neurons per layer: routed E x W, then the shared expert; dense layers their own size
LAYER_SIZES = {
    "mixtral": [E * W, E * W],
    "qwen2_moe": [DENSE_I, E * W + SHARED_I],
    "qwen3_moe": [E * W, DENSE_I],
    "olmoe": [E * W, E * W],
    "deepseek_v3": [DENSE_I, E * W + W],
    "deepseek_v2": [DENSE_I, E * W + W],
}
MOE = list(CONFIGS)
IMPLS = ["eager", "batched_mm", "grouped_mm"]
_MODELS: dict = {}


def tiny_moe(model_type: str, experts_implementation: str = "eager") -> nn.Module:
    if model_type not in _MODELS:
        torch.manual_seed(4321)
        cfg = AutoConfig.for_model(model_type, **_BASE, **CONFIGS[model_type])
        model = AutoModelForCausalLM.from_config(cfg).float().eval()
        with torch.no_grad():       # widen MLP inputs: both signs, visible steering effects
            for site in find_mlps(model):
                site.in_weight.mul_(8.0)
            for name, p in model.named_parameters():   # routers start at zero in some models
                if name.endswith("mlp.gate.weight"):
                    p.normal_(0, 1.0)
        _MODELS[model_type] = model
    model = copy.deepcopy(_MODELS[model_type])
    model.set_experts_implementation(experts_implementation)
    return model


def inputs():
    g = torch.Generator().manual_seed(11)
    ids = torch.randint(3, VOCAB, (B, T), generator=g)
    row_lang = torch.randint(-1, K, (B, T), generator=g, dtype=torch.int32)
    row_lang[1, :] = 1
    row_lang[2, -1] = 2
    row_lang[0, 0] = 0
    return ids, row_lang


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def independent_counts(model, ids, row_lang, k=K):
    """[k, L, N] counts from hooks: routed experts from the routing given to the experts module
    (pre-activations recomputed here), dense MLPs and shared experts from their gate_proj."""
    sites = find_mlps(model)
    L, N = len({s.layer for s in sites}), max(s.offset + s.intermediate_size for s in sites)
    counts = torch.zeros(k, L, N, dtype=torch.int64)
    lang = row_lang.reshape(-1)
    hooks = []
    for site in sites:
        if site.kind == "experts":
            def pre_hook(mod, args, layer=site.layer, off=site.offset):
                x, top_k_index = args[0], args[1]
                Wd = mod.gate_up_proj.shape[1] // 2
                for t in range(x.shape[0]):
                    if lang[t] < 0:
                        continue
                    for e in top_k_index[t].tolist():
                        pre = nn.functional.linear(x[t:t + 1], mod.gate_up_proj[e])[0, :Wd]
                        cols = slice(off + e * Wd, off + (e + 1) * Wd)
                        counts[lang[t], layer, cols] += (pre > 0).long()
            hooks.append(site.module.register_forward_pre_hook(pre_hook))
        else:
            def hook(mod, args, out, layer=site.layer, off=site.offset):
                pre = out.reshape(-1, out.shape[-1])
                for t in range(pre.shape[0]):
                    if lang[t] >= 0:
                        counts[lang[t], layer, off:off + pre.shape[1]] += (pre[t] > 0).long()
            hooks.append(site.child(site.layout.gate).register_forward_hook(hook))
    try:
        logits(model, ids)
    finally:
        for h in hooks:
            h.remove()
    return counts


# ---- the table ------------------------------------------------------------------------------
@pytest.mark.parametrize("model_type", MOE)
def test_sites_and_layer_sizes(model_type):
    model = tiny_moe(model_type)
    sites = find_mlps(model)
    names = dict(model.named_modules())
    for s in sites:
        assert names[s.name] is s.module
    with patch(model, impl="torch") as handle:
        assert handle.layer_sizes == LAYER_SIZES[model_type]
        assert handle.intermediate_size == max(LAYER_SIZES[model_type])
        layout = handle.neuron_layout()
        routed = [seg for segs in layout for seg in segs if seg["kind"] == "routed"]
        assert routed and all(seg["experts"] == E and seg["expert_size"] == W for seg in routed)
        shared = [seg for segs in layout for seg in segs if seg["kind"] == "shared"]
        assert [seg["offset"] for seg in shared] == ([E * W] if model_type in (
            "qwen2_moe", "deepseek_v2", "deepseek_v3") else [])
        meta = handle.stats_metadata()
        assert json.loads(meta["layer_sizes"]) == LAYER_SIZES[model_type]
        assert json.loads(meta["expert_layout"]) == layout


# ---- patched == original, counts exact, unpatch restores --------------------------------------
@pytest.mark.parametrize("experts_implementation", IMPLS)
@pytest.mark.parametrize("model_type", MOE)
def test_logits_counts_and_unpatch(model_type, experts_implementation):
    model = tiny_moe(model_type, experts_implementation)
    ids, row_lang = inputs()
    sites = find_mlps(model)
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    expected_logits = logits(model, ids)
    expected = independent_counts(model, ids, row_lang)

    handle = patch(model, impl="torch")
    assert all("forward" in s.module.__dict__ for s in sites)
    torch.testing.assert_close(logits(model, ids), expected_logits, rtol=1e-5, atol=1e-5)
    handle.set_rows(row_lang)
    handle.start_recording(K, track_sums=True)
    torch.testing.assert_close(logits(model, ids), expected_logits, rtol=1e-5, atol=1e-5)
    handle.stop_recording()
    stats = handle.collect()
    assert stats["counts"].shape == (K, 2, max(LAYER_SIZES[model_type]))
    assert torch.equal(stats["counts"], expected)
    # every expert of every MoE layer was reached by some token (the routing is not trivial)
    for s in sites:
        if s.kind == "experts":
            per_expert = stats["counts"][:, s.layer, :E * W].reshape(K, E, W).sum(dim=(0, 2))
            assert (per_expert > 0).sum() >= 2
    n_expected = torch.bincount(row_lang[row_lang >= 0].long(), minlength=K)
    assert torch.equal(stats["n_tokens"], n_expected)
    # padding columns of the narrower layer stay zero in counts and sums
    for layer, size in enumerate(LAYER_SIZES[model_type]):
        assert not stats["counts"][:, layer, size:].any()
        assert not stats["sums"][:, layer, size:].any()
    assert bool((stats["sums"] != 0).any())

    handle.unpatch()
    assert get_handle(model) is None
    assert all("forward" not in s.module.__dict__ for s in sites)
    for k, v in model.state_dict().items():
        assert torch.equal(v, state_before[k]), k
    assert torch.equal(logits(model, ids), expected_logits)


@pytest.mark.parametrize("model_type", ["mixtral", "qwen2_moe"])
def test_implementations_count_the_same(model_type):
    ids, row_lang = inputs()
    results = []
    for how in IMPLS:
        model = tiny_moe(model_type, how)
        with patched(model, impl="torch") as handle:
            handle.set_rows(row_lang)
            handle.start_recording(K)
            logits(model, ids)
            results.append(handle.collect()["counts"])
    assert torch.equal(results[0], results[1]) and torch.equal(results[0], results[2])


def test_default_cpu_implementation_counts_exactly():
    model = tiny_moe("olmoe", "grouped_mm")
    ids, row_lang = inputs()
    expected = independent_counts(model, ids, row_lang)
    with patched(model) as handle:
        handle.set_rows(row_lang)
        handle.start_recording(K)
        logits(model, ids)
        assert torch.equal(handle.collect()["counts"], expected)


# ---- steering -------------------------------------------------------------------------------
def _zero_column(model, layer: int, neuron: int, sites) -> None:
    """Zero neuron `neuron` of `layer` in the unpatched model by zeroing its down-projection
    column: act(gate) * up times a zero column contributes exactly 0, as if act were 0."""
    for s in sites:
        if s.layer == layer and s.offset <= neuron < s.offset + s.intermediate_size:
            i = neuron - s.offset
            with torch.no_grad():
                if s.kind == "experts":
                    s.module.down_proj[i // s.expert_size, :, i % s.expert_size] = 0
                else:
                    s.child(s.layout.down).weight[:, i] = 0
            return
    raise AssertionError("no such neuron")


@pytest.mark.parametrize("experts_implementation", IMPLS)
@pytest.mark.parametrize("model_type", ["mixtral", "qwen2_moe", "deepseek_v3"])
def test_steering_an_expert_neuron(model_type, experts_implementation):
    model = tiny_moe(model_type, experts_implementation)
    ids, _ = inputs()
    base = logits(model, ids)
    moe_layer = 0 if model_type == "mixtral" else 1
    size = LAYER_SIZES[model_type][moe_layer]
    # neuron 5 of expert 2, and (where there is one) neuron 3 of the shared expert
    targets = [2 * W + 5] + ([E * W + 3] if size > E * W else [])
    reference_model = copy.deepcopy(model)
    for n in targets:
        _zero_column(reference_model, moe_layer, n, find_mlps(reference_model))
    reference = logits(reference_model, ids)
    mode = torch.zeros(1, size, dtype=torch.int8)
    mode[0, targets] = 1
    with patched(model, impl="torch") as handle:
        handle.set_steering(moe_layer, mode, torch.zeros(1, size))
        steered = logits(model, ids)
    assert not torch.allclose(steered, base, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(steered, reference, rtol=1e-5, atol=1e-5)


def test_steering_groups_per_row_on_experts():
    model = tiny_moe("olmoe", "grouped_mm")
    ids, row_lang = inputs()
    base = logits(model, ids)
    reference_model = copy.deepcopy(model)
    _zero_column(reference_model, 1, 3 * W + 7, find_mlps(reference_model))
    reference = logits(reference_model, ids)
    N = E * W
    mode = torch.zeros(2, N, dtype=torch.int8)
    mode[1, 3 * W + 7] = 1                                 # group 1 zeroes it, group 0 keeps
    groups = torch.tensor([1, 0, 1], dtype=torch.int32)[:, None].expand(B, T)
    with patched(model, impl="torch") as handle:
        handle.set_rows(row_lang, groups)
        handle.set_steering(1, mode, torch.zeros(2, N))
        handle.start_recording(K)
        got = logits(model, ids)
        counts = handle.collect()["counts"]
    torch.testing.assert_close(got[1], base[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[[0, 2]], reference[[0, 2]], rtol=1e-5, atol=1e-5)
    assert torch.equal(counts, independent_counts(model, ids, row_lang))   # counts unsteered


def test_steering_padding_is_refused_and_layer_width_accepted():
    model = tiny_moe("qwen2_moe")
    n_max = max(LAYER_SIZES["qwen2_moe"])
    with patched(model, impl="torch") as handle:
        bad = torch.zeros(1, n_max, dtype=torch.int8)
        bad[0, DENSE_I + 1] = 1                     # layer 0 has DENSE_I neurons
        with pytest.raises(ValueError, match="padding"):
            handle.set_steering(0, bad, torch.zeros(1, n_max))
        ok = torch.zeros(1, DENSE_I, dtype=torch.int8)
        ok[0, 3] = 1
        handle.set_steering(0, ok, torch.zeros(1, DENSE_I))
        wide = torch.zeros(1, n_max, dtype=torch.int8)
        wide[0, 3] = 1
        handle.set_steering(0, wide, torch.zeros(1, n_max))   # padded to N: same steering
        assert handle.get_steering(0)[0].shape == (1, DENSE_I)


def test_ln_steer_and_generate_on_moe():
    """ln.steer with a NeuronSet over [L, N_max] works on a model whose layers differ."""
    from langneuron_ext.identify.neuron_set import NeuronSet
    model = tiny_moe("deepseek_v3")
    ids, _ = inputs()
    n_max = max(LAYER_SIZES["deepseek_v3"])
    mask = torch.zeros(2, 2, n_max, dtype=torch.bool)
    mask[0, 1, [5, 2 * W + 1, E * W + 2]] = True        # routed and shared neurons of layer 1
    mask[1, 0, 7] = True
    neurons = NeuronSet.from_masks("lape", {}, ["fr", "de"], mask)
    base = logits(model, ids)
    reference_model = copy.deepcopy(model)
    for n in (5, 2 * W + 1, E * W + 2):
        _zero_column(reference_model, 1, n, find_mlps(reference_model))
    with ln.steer(model, neurons, ["fr"]):
        steered = logits(model, ids)
        kw = dict(max_new_tokens=2, do_sample=False, pad_token_id=0)
        with torch.no_grad():
            model.generate(ids, **kw)
    assert get_handle(model) is None
    assert not torch.allclose(steered, base, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(steered, logits(reference_model, ids), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("experts_implementation,path", [
    ("eager", "eager"), ("batched_mm", "batched"), ("grouped_mm", "grouped")])
def test_the_models_experts_implementation_is_followed(monkeypatch, experts_implementation,
                                                        path):
    from langneuron_ext.models import layouts
    taken = []
    for name in ("eager", "batched", "grouped"):
        real = getattr(layouts._ExpertsCall, name)
        monkeypatch.setattr(layouts._ExpertsCall, name,
                            lambda self, *a, _real=real, _name=name: taken.append(_name)
                            or _real(self, *a))
    model = tiny_moe("mixtral", experts_implementation)
    with patched(model, impl="torch"):
        logits(model, inputs()[0])
        assert taken == [path, path]
        model.set_experts_implementation("eager")      # switching later is followed too
        taken.clear()
        logits(model, inputs()[0])
        assert taken == ["eager", "eager"]


def test_unsupported_experts_are_a_clear_error():
    from langneuron_ext.models import UnsupportedModelError
    model = tiny_moe("olmoe")
    model.model.layers[1].mlp.experts.has_bias = True
    with pytest.raises(UnsupportedModelError, match="has_bias"):
        patch(model)
    assert get_handle(model) is None
    model.model.layers[1].mlp.experts.has_bias = False
    model.model.layers[0].mlp.experts._is_expert_parallel = True
    with pytest.raises(UnsupportedModelError, match="expert parallelism"):
        patch(model)
