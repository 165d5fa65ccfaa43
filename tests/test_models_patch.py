"""Patching every supported architecture: same logits, exact counts, reversible, steerable.

Each architecture is a tiny randomly initialised model (2 layers, hidden 32, 64-128 neurons,
vocab 128) built with transformers' from_config. Counts are compared bit-exactly with an
independent count taken by forward hooks on the module that produces the pre-activation.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
from transformers.utils import logging as hf_logging

import langneuron_ext as ln
from langneuron_ext.models import (
    SUPPORTED_MODEL_TYPES,
    PatchError,
    UnsupportedModelError,
    find_mlps,
    get_handle,
    patch,
    unpatch,
)
from langneuron_ext.ops import dispatch
from langneuron_ext.ops.reference import activation_fp32

hf_logging.set_verbosity_error()

GATED = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "gemma3",
         "phi3", "olmo", "olmo2", "granite"]
PLAIN = ["gpt2", "bloom", "gpt_neox", "opt", "falcon", "phi"]
ALL = GATED + PLAIN
MOE = ["mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3"]  # test_moe.py
VOCAB, B, T, K = 128, 3, 7, 3

_TEXT = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, vocab_size=VOCAB,
             num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
             eos_token_id=2, max_position_embeddings=64)
EXTRA = {
    "gemma": dict(head_dim=8), "gemma2": dict(head_dim=8), "gemma3_text": dict(head_dim=8),
    "gpt2": dict(n_inner=64),
    "opt": dict(ffn_dim=64, word_embed_proj_dim=32),
    "falcon": dict(ffn_hidden_size=64),
}
_MODELS: dict = {}


def tiny_config(model_type: str):
    if model_type == "gemma3":   # multimodal wrapper around a gemma3_text decoder
        vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, image_size=28, patch_size=14)
        return AutoConfig.for_model("gemma3", text_config=dict(_TEXT, head_dim=8),
                                    vision_config=vision, mm_tokens_per_image=4)
    return AutoConfig.for_model(model_type, **_TEXT, **EXTRA.get(model_type, {}))


def tiny_model(model_type: str) -> nn.Module:
    """A fresh copy of the tiny fp32 eval-mode model (built once per type, then deep-copied)."""
    if model_type not in _MODELS:
        torch.manual_seed(1234)
        model = AutoModelForCausalLM.from_config(tiny_config(model_type)).float().eval()
        # Random init puts pre-activations near 0 with tiny spread; widen the MLP input weights
        # so every test sees plenty of both signs and visible steering effects.
        for site in find_mlps(model):
            with torch.no_grad():
                site.in_weight.mul_(8.0)
        _MODELS[model_type] = model
    import copy
    return copy.deepcopy(_MODELS[model_type])


def inputs():
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(3, VOCAB, (B, T), generator=g)
    row_lang = torch.randint(-1, K, (B, T), generator=g, dtype=torch.int32)
    row_lang[0, :2] = -1                      # padding-like positions never count
    row_lang[1, :] = 1                        # make sure every language appears
    row_lang[2, -1] = 2
    return ids, row_lang


def logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


def pre_activation_module(site):
    """(module whose output is the pre-activation, slice of that output holding it)."""
    lay = site.layout
    if lay.kind == "gated":
        return site.child(lay.gate), slice(None)
    if lay.kind == "fused_gated":
        return site.child(lay.gate), slice(0, site.intermediate_size)
    return site.child(lay.fc_in), slice(None)


def output_projection(site):
    lay = site.layout
    return site.child(lay.down if lay.gated else lay.fc_out)


def hook_counts(model, ids, row_lang, k=K, with_sums=False):
    """Counts (and fp64 sums of act) per [K, L, I] from forward hooks, independent of the op."""
    sites = find_mlps(model)
    L, I = len(sites), sites[0].intermediate_size
    counts = torch.zeros(k, L, I, dtype=torch.int64)
    sums = torch.zeros(k, L, I, dtype=torch.float64)
    lang = row_lang.reshape(-1)
    keep = lang >= 0
    handles = []
    for site in sites:
        module, cols = pre_activation_module(site)

        def hook(mod, args, out, layer=site.layer, cols=cols, act=site.act):
            pre = out[..., cols].reshape(-1, I)[keep]
            for j, lg in enumerate(lang[keep].tolist()):
                counts[lg, layer] += (pre[j] > 0).long()
                sums[lg, layer] += activation_fp32(pre[j], act).double()
        handles.append(module.register_forward_hook(hook))
    try:
        logits(model, ids)
    finally:
        for h in handles:
            h.remove()
    return (counts, sums) if with_sums else counts


# ---- the table ------------------------------------------------------------------------------
def test_supported_types_are_the_listed_ones():
    assert set(SUPPORTED_MODEL_TYPES) == set(ALL) | set(MOE)


@pytest.mark.parametrize("model_type", ALL)
def test_find_mlps_one_site_per_layer(model_type):
    model = tiny_model(model_type)
    sites = find_mlps(model)
    assert [s.layer for s in sites] == [0, 1]
    names = dict(model.named_modules())
    for s in sites:
        assert names[s.name] is s.module
        assert s.act in ("silu", "gelu", "gelu_tanh", "relu")
    assert sites[0].layout.gated == (model_type in GATED)


@pytest.mark.parametrize("bad", ["t5", "bert"])
def test_unsupported_architecture_names_supported_types(bad):
    cfg = AutoConfig.for_model(bad, vocab_size=VOCAB, d_model=32, hidden_size=32, d_ff=64,
                               intermediate_size=64, num_layers=1, num_hidden_layers=1,
                               num_heads=2, num_attention_heads=2)
    model = AutoModel.from_config(cfg)
    with pytest.raises(UnsupportedModelError) as err:
        patch(model)
    assert isinstance(err.value, ValueError)
    for name in SUPPORTED_MODEL_TYPES:
        assert name in str(err.value)
    assert get_handle(model) is None


def test_unsupported_activation_is_a_clear_error():
    cfg = AutoConfig.for_model("llama", **dict(_TEXT, hidden_act="quick_gelu"))
    model = AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(UnsupportedModelError, match="quick_gelu"):
        find_mlps(model)


# ---- patched model == original model ----------------------------------------------------------
@pytest.mark.parametrize("model_type", ALL)
def test_patched_logits_counts_and_unpatch(model_type):
    model = tiny_model(model_type)
    ids, row_lang = inputs()
    sites = find_mlps(model)
    state_before = {k: v.clone() for k, v in model.state_dict().items()}
    names_before = [n for n, _ in model.named_modules()]
    forward_before = [s.module.__dict__.get("forward") for s in sites]
    expected_logits = logits(model, ids)

    handle = patch(model, impl="torch")
    assert get_handle(model) is handle and handle.impls == ["torch", "torch"]
    assert all("forward" in s.module.__dict__ for s in sites)
    assert handle.num_layers == 2 and handle.intermediate_size == sites[0].intermediate_size
    torch.testing.assert_close(logits(model, ids), expected_logits, rtol=1e-5, atol=1e-5)

    handle.set_rows(row_lang)
    handle.start_recording(K)
    out_recording = logits(model, ids)
    handle.stop_recording()
    torch.testing.assert_close(out_recording, expected_logits, rtol=1e-5, atol=1e-5)
    stats = handle.collect()
    expected_counts = hook_counts(model, ids, row_lang)    # hooks observe the same pre-acts
    assert stats["counts"].dtype == torch.int64
    assert stats["counts"].shape == (K, 2, handle.intermediate_size)
    assert torch.equal(stats["counts"], expected_counts)
    assert stats["counts"].sum() > 0 and (stats["counts"] < (row_lang >= 0).sum()).any()
    n_expected = torch.bincount(row_lang[row_lang >= 0].long(), minlength=K)
    assert torch.equal(stats["n_tokens"], n_expected)
    assert stats["sums"] is None and stats["sumsq"] is None

    unpatch(model)
    assert get_handle(model) is None and not handle.active
    assert [s.module.__dict__.get("forward") for s in sites] == forward_before
    assert all("forward" not in s.module.__dict__ for s in sites)
    assert [n for n, _ in model.named_modules()] == names_before
    state_after = model.state_dict()
    assert list(state_after) == list(state_before)
    for k, v in state_before.items():
        assert torch.equal(state_after[k], v), k
    assert torch.equal(logits(model, ids), expected_logits)


@pytest.mark.parametrize("model_type", ["llama", "phi3", "gpt2", "bloom", "opt"])
def test_output_projection_hook_fires_while_patched(model_type):
    model = tiny_model(model_type)
    ids, _ = inputs()
    seen = []
    for site in find_mlps(model):
        output_projection(site).register_forward_hook(
            lambda mod, args, out, layer=site.layer: seen.append((layer, args[0].shape[-1])))
    with patch(model, impl="torch") as handle:
        logits(model, ids)
    I = handle.intermediate_size
    assert seen == [(0, I), (1, I)]


@pytest.mark.parametrize("model_type", ["llama", "gpt2"])
def test_default_implementation_matches_reference(model_type):
    model = tiny_model(model_type)
    ids, row_lang = inputs()
    expected_logits = logits(model, ids)
    expected = hook_counts(model, ids, row_lang)
    with patch(model) as handle:
        assert handle.impls[0] in dispatch.available_for("cpu", torch.float32)
        handle.set_rows(row_lang)
        handle.start_recording(K)
        got = logits(model, ids)
        stats = handle.collect()
    torch.testing.assert_close(got, expected_logits, rtol=1e-5, atol=1e-5)
    assert torch.equal(stats["counts"], expected)


# ---- recording -----------------------------------------------------------------------------
def test_sums_and_accumulation_over_calls():
    model = tiny_model("qwen2")
    ids, row_lang = inputs()
    counts1, sums1 = hook_counts(model, ids, row_lang, with_sums=True)
    handle = patch(model, impl="torch")
    handle.set_rows(row_lang)
    handle.start_recording(K, track_sums=True, track_sumsq=True)
    logits(model, ids)
    logits(model, ids)
    stats = handle.collect()
    assert torch.equal(stats["counts"], 2 * counts1)
    assert stats["sums"].dtype == torch.float64 and stats["sumsq"].dtype == torch.float64
    torch.testing.assert_close(stats["sums"], 2 * sums1, rtol=1e-5, atol=1e-5)
    assert (stats["sumsq"] >= 0).all() and stats["sumsq"].sum() > 0

    handle.stop_recording()                  # not recording: nothing changes
    logits(model, ids)
    assert torch.equal(handle.collect()["counts"], 2 * counts1)
    handle.resume_recording()
    logits(model, ids)
    assert torch.equal(handle.collect()["counts"], 3 * counts1)
    handle.reset()
    assert handle.collect()["counts"].sum() == 0
    handle.unpatch()


def test_no_rows_counts_everything_in_slot_zero():
    model = tiny_model("gemma3_text")
    ids, _ = inputs()
    all_zero = torch.zeros(B, T, dtype=torch.int32)
    expected = hook_counts(model, ids, all_zero, k=1)
    with patch(model, impl="torch") as handle:
        handle.start_recording(1)
        logits(model, ids)
        assert torch.equal(handle.collect()["counts"], expected)
        assert handle.collect()["n_tokens"].tolist() == [B * T]


def test_row_count_mismatch_while_recording_is_an_error():
    model = tiny_model("llama")
    ids, row_lang = inputs()
    with patch(model, impl="torch") as handle:
        handle.set_rows(row_lang[:, :3])
        logits(model, ids)                    # not recording: rows are not used
        handle.start_recording(K)
        with pytest.raises(PatchError, match="set_rows"):
            logits(model, ids)


def test_bad_arguments():
    model = tiny_model("llama")
    with patch(model, impl="torch") as handle:
        with pytest.raises(TypeError, match="integer"):
            handle.set_rows(torch.zeros(B, T))
        with pytest.raises(ValueError, match="num_languages"):
            handle.start_recording(0)
        with pytest.raises(PatchError, match="start_recording"):
            handle.collect()
        I = handle.intermediate_size
        with pytest.raises(ValueError, match="shape"):
            handle.set_steering(0, torch.zeros(1, I + 1, dtype=torch.int8), torch.zeros(1, I + 1))
        with pytest.raises(ValueError, match="out of range"):
            handle.set_steering(5, torch.zeros(1, I, dtype=torch.int8), torch.zeros(1, I))
        with pytest.raises(ValueError, match="0 \\(keep\\)"):
            handle.set_steering(0, torch.full((1, I), 4, dtype=torch.int8), torch.zeros(1, I))


# ---- lifecycle ------------------------------------------------------------------------------
def test_patch_twice_is_an_error_and_context_manager_unpatches():
    model = tiny_model("mistral")
    with ln.patch(model, impl="torch") as handle:
        with pytest.raises(PatchError, match="already patched"):
            ln.patch(model)
        assert ln.models.get_handle(model) is handle
    assert get_handle(model) is None
    ln.unpatch(model)                         # unpatching an unpatched model does nothing
    assert get_handle(model) is None
    handle.unpatch()                          # a second unpatch is harmless
    again = patch(model, impl="torch")        # and patching works again afterwards
    again.unpatch()


def test_accelerate_hook_is_kept():
    from accelerate.hooks import ModelHook, add_hook_to_module, remove_hook_from_module

    class CountCalls(ModelHook):
        calls = 0

        def pre_forward(self, module, *args, **kwargs):
            CountCalls.calls += 1
            return args, kwargs

    model = tiny_model("llama")
    ids, row_lang = inputs()
    expected_logits = logits(model, ids)
    mlp = find_mlps(model)[0].module
    add_hook_to_module(mlp, CountCalls())
    wrapper = mlp.__dict__["forward"]
    with patch(model, impl="torch") as handle:
        assert mlp.__dict__["forward"] is wrapper          # the accelerate wrapper stays
        handle.set_rows(row_lang)
        handle.start_recording(K)
        torch.testing.assert_close(logits(model, ids), expected_logits, rtol=1e-5, atol=1e-5)
        assert CountCalls.calls == 1
        assert handle.collect()["counts"][:, 0].sum() > 0  # and the patch runs inside it
    assert mlp.__dict__["forward"] is wrapper
    remove_hook_from_module(mlp)           # accelerate restores the class forward, bound
    assert mlp.forward.__func__ is type(mlp).forward


# ---- steering -------------------------------------------------------------------------------
def zero_neuron_reference(model, ids, layer, neuron):
    """Logits of the unpatched model with one neuron's activation zeroed by a pre-hook on the
    output projection (act(gate) * up = 0 there exactly when act(gate) is set to 0)."""
    site = find_mlps(model)[layer]

    def pre_hook(mod, args):
        h = args[0].clone()
        h[..., neuron] = 0
        return (h,) + args[1:]
    handle = output_projection(site).register_forward_pre_hook(pre_hook)
    try:
        return logits(model, ids)
    finally:
        handle.remove()


@pytest.mark.parametrize("model_type", ALL)
def test_steering_set_to_zero_equals_manual_reference(model_type):
    model = tiny_model(model_type)
    ids, _ = inputs()
    base = logits(model, ids)
    layer, neuron = 0, 3
    reference = zero_neuron_reference(model, ids, layer, neuron)
    I = find_mlps(model)[0].intermediate_size
    mode = torch.zeros(1, I, dtype=torch.int8)
    mode[0, neuron] = 1
    with patch(model, impl="torch") as handle:
        handle.set_steering(layer, mode, torch.zeros(1, I))
        steered = logits(model, ids)
        handle.clear_steering()
        torch.testing.assert_close(logits(model, ids), base, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(steered, base, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(steered, reference, rtol=1e-5, atol=1e-5)


def test_steering_per_row_group():
    model = tiny_model("llama")
    ids, row_lang = inputs()
    base = logits(model, ids)
    layer, neuron = 1, 5
    reference = zero_neuron_reference(model, ids, layer, neuron)
    I = find_mlps(model)[0].intermediate_size
    mode = torch.zeros(2, I, dtype=torch.int8)
    mode[1, neuron] = 1                                  # group 1 zeroes the neuron, 0 keeps
    groups = torch.tensor([0, 1, 0], dtype=torch.int32)[:, None].expand(B, T)
    with patch(model, impl="torch") as handle:
        handle.set_rows(row_lang, groups)
        handle.set_steering(layer, mode, torch.zeros(2, I))
        handle.start_recording(K)
        got = logits(model, ids)
        counts = handle.collect()["counts"]
    torch.testing.assert_close(got[[0, 2]], base[[0, 2]], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], reference[1], rtol=1e-5, atol=1e-5)
    assert torch.equal(counts, hook_counts(model, ids, row_lang))   # counts are unsteered


# ---- the gated op (projections + statistics in one op) -----------------------------------------
def _spy_gated(monkeypatch):
    """Record every call of the gated op from the patch (and still compute it)."""
    from langneuron_ext.models import layouts
    calls, real = [], layouts.gated_mlp_stats

    def spy(x, w_gate, w_up, **kw):
        calls.append((x.shape, w_gate, w_up))
        return real(x, w_gate, w_up, **kw)
    monkeypatch.setattr(layouts, "gated_mlp_stats", spy)
    return calls


@pytest.mark.parametrize("model_type", ["llama", "phi3"])
def test_gated_op_replaces_plain_projections(monkeypatch, model_type):
    """Bias-free nn.Linear projections go through ops.gated_mlp_stats with their weights (the
    halves of phi3's fused gate_up weight as views); a hook on a projection, registered after
    patching, sends the call through the modules so that it fires."""
    calls = _spy_gated(monkeypatch)
    model = tiny_model(model_type)
    ids, row_lang = inputs()
    expected_logits = logits(model, ids)
    expected = hook_counts(model, ids, row_lang)
    with patch(model, impl="torch") as handle:
        handle.set_rows(row_lang)
        handle.start_recording(K)
        got = logits(model, ids)
        assert len(calls) == 2 and calls[0][0] == (B, T, 32)
        site = find_mlps(model)[0]
        gate = site.child(site.layout.gate).weight
        w_gate, w_up = calls[0][1], calls[0][2]
        if model_type == "phi3":        # views of the fused weight, no copies
            I = site.intermediate_size
            assert w_gate.data_ptr() == gate.data_ptr()
            assert w_up.data_ptr() == gate[I:].data_ptr() and w_up.shape == (I, 32)
        else:
            assert w_gate is gate and w_up is site.child(site.layout.up).weight
        torch.testing.assert_close(got, expected_logits, rtol=1e-5, atol=1e-5)
        stats = handle.collect()
        assert torch.equal(stats["counts"], expected)
        calls.clear()
        assert torch.equal(hook_counts(model, ids, row_lang), stats["counts"])   # hooks fire
        assert calls == []
        logits(model, ids)
        assert len(calls) == 2                  # hooks removed: back to the gated op


def test_projections_with_bias_are_called(monkeypatch):
    calls = _spy_gated(monkeypatch)
    cfg = AutoConfig.for_model("llama", **dict(_TEXT, mlp_bias=True))
    torch.manual_seed(3)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    ids, row_lang = inputs()
    expected_logits = logits(model, ids)
    expected = hook_counts(model, ids, row_lang)
    with patch(model, impl="torch") as handle:
        handle.set_rows(row_lang)
        handle.start_recording(K)
        torch.testing.assert_close(logits(model, ids), expected_logits, rtol=1e-5, atol=1e-5)
        assert torch.equal(handle.collect()["counts"], expected)
    assert calls == []


def test_real_triton_gemm_path_matches_reference(monkeypatch):
    """The gated op's Triton GEMM-epilogue kernel (interpreted on CPU here, forced with
    LANGNEURON_GATED_IMPL): same logits and exact counts through the patch."""
    import dataclasses
    if "triton" not in dispatch.available_for("cpu", torch.float32):
        pytest.fail("the triton implementation should be usable on CPU under TRITON_INTERPRET=1")
    monkeypatch.setenv("LANGNEURON_GATED_IMPL", "triton_gemm")
    real = dispatch.get("triton_gemm", dispatch.GATED_MLP)
    used = []
    # only this model's calls: a first use may also run the kernel's self-check cases
    spy = dataclasses.replace(real, fn=lambda args, *a, **k: used.append(
        (args.M, args.H, args.I)) or real.fn(args, *a, **k))
    with dispatch.registered(spy):
        model = tiny_model("llama")
        ids, row_lang = inputs()
        expected_logits = logits(model, ids)
        expected = hook_counts(model, ids, row_lang)
        with patch(model, impl="triton") as handle:
            handle.set_rows(row_lang)
            handle.start_recording(K, track_sums=True)
            got = logits(model, ids)
            stats = handle.collect()
        I = find_mlps(model)[0].intermediate_size
        assert [u for u in used if u == (B * T, 32, I)] == [(B * T, 32, I)] * 2
        torch.testing.assert_close(got, expected_logits, rtol=1e-4, atol=1e-4)
        assert torch.equal(stats["counts"], expected)


def test_generate_with_steering_and_kv_cache():
    model = tiny_model("llama")
    ids, row_lang = inputs()
    I = find_mlps(model)[0].intermediate_size
    kw = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        plain = model.generate(ids, **kw)
    with patch(model, impl="torch") as handle:
        with torch.no_grad():
            assert torch.equal(model.generate(ids, **kw), plain)
        handle.set_rows(row_lang)
        handle.start_recording(K)
        with pytest.raises(PatchError, match="KV cache"), torch.no_grad():
            model.generate(ids, **kw)              # later steps have B rows, not B * T
        handle.stop_recording()
        handle.set_steering(0, torch.ones(1, I, dtype=torch.int8), torch.zeros(1, I))
        with torch.no_grad():
            steered = model.generate(ids, **kw)    # row_group None: every row is group 0
    down = output_projection(find_mlps(model)[0])
    hook = down.register_forward_pre_hook(lambda mod, args: (torch.zeros_like(args[0]),))
    with torch.no_grad():
        reference = model.generate(ids, **kw)     # unpatched, layer 0's MLP silenced by a hook
    hook.remove()
    assert torch.equal(steered, reference)


def test_out_of_range_ids_are_caught_once_per_batch_not_per_layer(monkeypatch):
    """The handle checks set_rows' ids against the slots itself, so the op skips its per-call
    range check (a device sync per MLP on a GPU) and a bad id still gets a clear error."""
    from langneuron_ext.models import layouts
    model = tiny_model("llama")
    handle = patch(model)
    try:
        ids = torch.randint(0, 100, (2, 5))
        handle.start_recording(2)
        handle.set_rows(torch.full((2, 5), 2, dtype=torch.int32))
        with pytest.raises(PatchError, match="language id 2 but the recording has 2"), \
                torch.no_grad():
            model(input_ids=ids)
        handle.set_rows(torch.ones(2, 5, dtype=torch.int32))
        flags = []
        for name in ("act_stats", "gated_mlp_stats"):      # whichever op the layout calls
            real = getattr(layouts, name)
            monkeypatch.setattr(layouts, name, lambda *a, _real=real, **k:
                                flags.append(k["check_ids"]) or _real(*a, **k))
        with torch.no_grad():
            model(input_ids=ids)
        assert flags and not any(flags)
        counts = handle.collect()["counts"]
        assert int(counts[0].sum()) == 0 and int(counts[1].sum()) > 0
    finally:
        handle.unpatch()


@pytest.mark.parametrize("model_type", ["llama", "phi3"])
def test_dtype_change_after_patching_is_followed(model_type):
    """The gated op reads the projection weights per call: `.to(bfloat16)` after patching (new
    weight tensors) runs in bf16 with the converted weights, not stale fp32 ones."""
    model = tiny_model(model_type)
    ids, row_lang = inputs()
    with patch(model, impl="torch") as handle:
        model.to(torch.bfloat16)
        handle.set_rows(row_lang)
        handle.start_recording(K)
        got = logits(model, ids)
        counts = handle.collect()["counts"]
        handle.stop_recording()
        expected = hook_counts(model, ids, row_lang)   # same bf16 pre-activations, via hooks
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, logits(model, ids), rtol=2e-2, atol=2e-2)
    assert torch.equal(counts, expected)
