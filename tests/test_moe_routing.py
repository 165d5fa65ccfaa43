"""Routing statistics of mixture-of-experts models: `routed` and `route_weight`.

Every MoE family (tests/test_moe.py's six tiny random models) under each experts implementation:
the scan's routed-token counts and router-weight sums equal a brute-force count from the router
outputs, captured by a forward hook on the router (its returned scores and indices), token by
token; the routed-conditional activation probabilities equal a direct count of (pre-activation
> 0) over the tokens each expert received. The statistics are additive: merged, saved and loaded,
resumed from a checkpoint, all-reduced over torchrun ranks and gathered from offloaded layers
like the counts.
"""
from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_moe import _BASE, CONFIGS, IMPLS, MOE, inputs, tiny_moe
from test_scan import OPTS, TEXTS, tiny_llama, write_corpus
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM

from langneuron_ext.models import find_mlps, patched
from langneuron_ext.models.toy import BYTE_VOCAB_SIZE, byte_tokenizer
from langneuron_ext.routing_stats import (
    language_share,
    routed_denominators,
    routed_share,
    routing_divergence,
    routing_entropy,
    top_k_per_token,
)
from langneuron_ext.scan import scan
from langneuron_ext.stats import ActivationStats, StatsError

K = 3
BIN = Path(sys.executable).parent


def brute_force(model, ids, row_lang, k=K):
    """From the routers' own outputs (hooked): routed [k, L, E], route_weight [k, L, E]; and for
    each routed neuron the tokens it was active on, [k, L, N] (pre-activations recomputed)."""
    sites = find_mlps(model)
    L = len({s.layer for s in sites})
    N = max(s.offset + s.intermediate_size for s in sites)
    E = max(s.experts for s in sites)
    routed = torch.zeros(k, L, E, dtype=torch.int64)
    weight = torch.zeros(k, L, E, dtype=torch.float64)
    active = torch.zeros(k, L, N, dtype=torch.int64)
    lang = row_lang.reshape(-1)
    choice = {}
    hooks = []
    for site in sites:
        if site.kind != "experts":
            continue
        router = site.router

        def router_hook(mod, args, out, layer=site.layer):
            _, scores, index = out
            choice[layer] = (scores, index)
            for t in range(index.shape[0]):
                if lang[t] < 0:
                    continue
                for j, e in enumerate(index[t].tolist()):
                    routed[lang[t], layer, e] += 1
                    weight[lang[t], layer, e] += float(scores[t, j])

        def experts_hook(mod, args, layer=site.layer, off=site.offset):
            x = args[0]
            _, index = choice[layer]
            assert torch.equal(args[1], index), "the block hands the router's choice on"
            Wd = mod.gate_up_proj.shape[1] // 2
            for t in range(x.shape[0]):
                if lang[t] < 0:
                    continue
                for e in index[t].tolist():
                    pre = nn.functional.linear(x[t:t + 1], mod.gate_up_proj[e])[0, :Wd]
                    active[lang[t], layer, off + e * Wd:off + (e + 1) * Wd] += (pre > 0).long()
        hooks.append(router.register_forward_hook(router_hook))
        hooks.append(site.module.register_forward_pre_hook(experts_hook))
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        for h in hooks:
            h.remove()
    return routed, weight, active


def _stats_of(handle, got, languages):
    return ActivationStats(got["counts"], got["n_tokens"], languages, model_type="moe",
                           extra=handle.stats_metadata(), routed=got.get("routed"),
                           route_weight=got.get("route_weight"))


@pytest.mark.parametrize("experts_implementation", IMPLS)
@pytest.mark.parametrize("model_type", MOE)
def test_routed_and_route_weight_equal_the_routers_outputs(model_type, experts_implementation):
    model = tiny_moe(model_type, experts_implementation)
    ids, row_lang = inputs()
    routed, weight, active = brute_force(model, ids, row_lang)
    with patched(model, impl="torch") as handle:
        handle.set_rows(row_lang)
        handle.start_recording(K)
        with torch.no_grad():
            model(input_ids=ids)
        got = handle.collect()
        stats = _stats_of(handle, got, ["a", "b", "c"])
    assert got["routed"].dtype == torch.int64 and got["route_weight"].dtype == torch.float64
    assert torch.equal(got["routed"], routed)
    torch.testing.assert_close(got["route_weight"], weight, rtol=1e-12, atol=1e-12)
    assert int(routed.sum()) > 0
    # every counted token picks top_k experts in each MoE layer, none in a dense layer
    moe_layers = [s.layer for s in find_mlps(model) if s.kind == "experts"]
    n = int((row_lang >= 0).sum())
    for layer in range(routed.shape[1]):
        assert int(routed[:, layer].sum()) == (2 * n if layer in moe_layers else 0)
    # routed-conditional probabilities: active tokens / tokens the expert received, directly
    p = stats.activation_probability(given="routed")
    for s in find_mlps(model):
        if s.kind != "experts":
            continue
        for e in range(s.experts):
            cols = slice(s.offset + e * s.expert_size, s.offset + (e + 1) * s.expert_size)
            for k in range(K):
                r = int(routed[k, s.layer, e])
                direct = active[k, s.layer, cols].double() / r if r else \
                    torch.zeros(s.expert_size, dtype=torch.float64)
                assert torch.equal(p[k, s.layer, cols], direct)
    # dense layers and shared experts see every token: the same as given="token"
    token = stats.activation_probability(given="token")
    assert torch.equal(token, stats.probabilities())
    for s in find_mlps(model):
        if s.kind != "experts":
            cols = slice(s.offset, s.offset + s.intermediate_size)
            assert torch.equal(p[:, s.layer, cols], token[:, s.layer, cols])


def test_derived_shares_entropy_and_divergence():
    model = tiny_moe("olmoe", "grouped_mm")
    ids, row_lang = inputs()
    with patched(model, impl="torch") as handle:
        handle.set_rows(row_lang)
        handle.start_recording(K)
        with torch.no_grad():
            model(input_ids=ids)
        stats = _stats_of(handle, handle.collect(), ["en", "fr", "de"])
    share = routed_share(stats)
    torch.testing.assert_close(share.sum(dim=2), torch.ones(K, 2, dtype=torch.float64))
    assert torch.equal(top_k_per_token(stats), torch.tensor([2.0, 2.0], dtype=torch.float64))
    lang = language_share(stats)
    reached = share.sum(dim=0) > 0
    torch.testing.assert_close(lang.sum(dim=0)[reached],
                               torch.ones(int(reached.sum()), dtype=torch.float64))
    H = routing_entropy(stats)
    direct = -(share * share.log()).nan_to_num(0.0).sum(dim=2)
    torch.testing.assert_close(H, direct)
    js = routing_divergence(stats, "en")
    assert torch.equal(js[0], torch.zeros(2, dtype=torch.float64))
    assert bool((js >= 0).all() and (js <= torch.log(torch.tensor(2.0)) + 1e-12).all())
    with pytest.raises(StatsError, match="reference language 'xx'"):
        routing_divergence(stats, "xx")
    denom = routed_denominators(stats)
    assert torch.equal(denom[:, 0, :16], stats.routed[:, 0, :1].double().expand(K, 16))


# ---- the stats object and its file -----------------------------------------------------------
def _routing_stats(languages=("en", "fr"), seed=0) -> ActivationStats:
    g = torch.Generator().manual_seed(seed)
    K_, L, E, W = len(languages), 2, 4, 3
    layout = [[{"kind": "routed", "offset": 0, "experts": E, "expert_size": W}]] * L
    routed = torch.randint(0, 50, (K_, L, E), generator=g)
    counts = (routed.repeat_interleave(W, dim=2) * torch.rand(K_, L, E * W, generator=g)).long()
    return ActivationStats(counts, routed.sum(dim=(1, 2)) // L // 2 + 1, list(languages),
                           model_type="olmoe",
                           extra={"expert_layout": json.dumps(layout),
                                  "layer_sizes": json.dumps([E * W] * L)},
                           routed=routed, route_weight=routed.double() * 0.375)


def test_save_load_merge_select_minus(tmp_path):
    a, b = _routing_stats(seed=1), _routing_stats(("fr", "de"), seed=2)
    path = a.save(tmp_path / "a.safetensors")
    back = ActivationStats.load(path)
    assert torch.equal(back.routed, a.routed) and torch.equal(back.route_weight, a.route_weight)
    merged = a.merge(b)
    assert merged.languages == ["en", "fr", "de"]
    assert torch.equal(merged.routed[1], a.routed[1] + b.routed[0])
    assert torch.equal(merged.route_weight[2], b.route_weight[1])
    picked = merged.select(["de", "en"])
    assert torch.equal(picked.routed, torch.stack([b.routed[1], a.routed[0]]))
    diff = merged.minus(merged)
    assert not diff.routed.any() and not diff.route_weight.any()
    # merging with stats that lack routing drops it (it would no longer add up)
    plain = ActivationStats(a.counts.clone(), a.n_tokens.clone(), ["en", "fr"], extra=a.extra)
    assert a.merge(plain).routed is None


def test_a_file_without_routing_still_loads(tmp_path):
    a = _routing_stats()
    old = ActivationStats(a.counts, a.n_tokens, a.languages, extra=a.extra)
    path = old.save(tmp_path / "old.safetensors")
    back = ActivationStats.load(path)
    assert back.routed is None and torch.equal(back.counts, a.counts)
    assert torch.equal(back.activation_probability(), back.probabilities())
    with pytest.raises(StatsError, match="lack.*rescan"):
        back.activation_probability(given="routed")


def test_bad_routing_fields_are_refused():
    a = _routing_stats()
    with pytest.raises(StatsError, match="both or neither"):
        ActivationStats(a.counts, a.n_tokens, a.languages, routed=a.routed)
    with pytest.raises(StatsError, match=r"\[K, L, E\]"):
        ActivationStats(a.counts, a.n_tokens, a.languages, routed=a.routed[:, :1],
                        route_weight=a.route_weight[:, :1])
    with pytest.raises(StatsError, match="given must be"):
        a.activation_probability(given="expert")


def test_a_dense_model_has_no_routed_probability(tmp_path):
    corpus = write_corpus(tmp_path)
    stats = scan(tiny_llama(), byte_tokenizer(), corpus, progress=False, impl="torch", **OPTS)
    assert stats.routed is None
    with pytest.raises(StatsError) as err:
        stats.activation_probability(given="routed")
    assert "dense model" in str(err.value) and "\n" not in str(err.value)
    # the file of a dense model is unchanged: no routing tensors
    from safetensors import safe_open
    with safe_open(str(stats.save(tmp_path / "d.safetensors")), "pt") as f:
        assert sorted(f.keys()) == ["counts", "n_tokens"]


# ---- the scan: checkpoints, offloading, torchrun --------------------------------------------
def byte_moe(model_type: str = "olmoe", experts_implementation: str = "grouped_mm"):
    """A tiny random MoE model over the byte tokenizer (for scans of text)."""
    torch.manual_seed(5)
    cfg = AutoConfig.for_model(model_type, **{**_BASE, "vocab_size": BYTE_VOCAB_SIZE},
                               **CONFIGS[model_type])
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.normal_(0, 1.0)
    model.set_experts_implementation(experts_implementation)
    return model


@pytest.fixture(scope="module")
def moe_reference(tmp_path_factory):
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"))
    model, tok = byte_moe("qwen2_moe"), byte_tokenizer()
    stats = scan(model, tok, corpus, progress=False, impl="torch", **OPTS)
    return model, tok, corpus, stats


def _same_routing(a: ActivationStats, b: ActivationStats, exact_weight: bool = True) -> None:
    assert torch.equal(a.counts, b.counts) and torch.equal(a.n_tokens, b.n_tokens)
    assert torch.equal(a.routed, b.routed)
    if exact_weight:
        assert torch.equal(a.route_weight, b.route_weight)
    else:
        # router weights are fp32 model outputs: another thread count rounds them differently
        torch.testing.assert_close(a.route_weight, b.route_weight, rtol=1e-6, atol=1e-9)


def test_scan_records_routing_of_every_token(moe_reference, tmp_path):
    model, tok, corpus, stats = moe_reference
    assert stats.routed.shape == (3, 2, 4)
    assert not stats.routed[:, 0].any(), "layer 0 is dense (mlp_only_layers)"
    assert torch.equal(stats.routed[:, 1].sum(dim=1), 2 * stats.n_tokens)
    back = ActivationStats.load(stats.save(tmp_path / "s.safetensors"))
    _same_routing(back, stats)


def test_resume_from_a_checkpoint_is_exact(moe_reference, tmp_path):
    model, tok, corpus, whole = moe_reference
    ckpt = tmp_path / "scan.partial"
    calls = []

    def stop_after_four(module, args, kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
    hook = model.model.register_forward_pre_hook(stop_after_four, with_kwargs=True)
    try:
        with pytest.raises(KeyboardInterrupt):
            scan(model, tok, corpus, progress=False, impl="torch", checkpoint=ckpt,
                 checkpoint_every=2, **OPTS)
    finally:
        hook.remove()
    saved = ActivationStats.load(ckpt)
    assert 0 < int(saved.routed.sum()) < int(whole.routed.sum())
    resumed = scan(model, tok, corpus, progress=False, impl="torch", checkpoint=ckpt, **OPTS)
    _same_routing(resumed, whole, exact_weight=False)


def test_offloaded_model_routes_like_one_piece(moe_reference, tmp_path):
    from accelerate import cpu_offload

    from langneuron_ext.models.loading import dispatch
    model, tok, corpus, one_piece = moe_reference
    offloaded = cpu_offload(copy.deepcopy(model), execution_device=torch.device("cpu"))
    assert offloaded.model.layers[1].mlp.gate.weight.device.type == "meta"
    _same_routing(scan(offloaded, tok, corpus, progress=False, impl="torch", **OPTS), one_piece)
    split = dispatch(copy.deepcopy(model), {
        "model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
        "model.layers.1": "disk", "model.norm": "disk", "lm_head": "cpu"},
        offload_folder=tmp_path / "offload")
    assert split.model.layers[1].mlp.experts.gate_up_proj.device.type == "meta"
    _same_routing(scan(split, tok, corpus, progress=False, impl="torch", **OPTS), one_piece)


@pytest.fixture(scope="module")
def moe_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe")
    model = byte_moe("olmoe", "eager")
    model.save_pretrained(root / "model")
    byte_tokenizer().save_pretrained(root / "model")
    args = []
    for lang, templates in TEXTS.items():
        path = root / f"{lang}.txt"
        path.write_text("\n".join(templates[i % 2].format(i=i) for i in range(40)) + "\n",
                        encoding="utf-8")
        args += ["--text", f"{lang}={path}"]
    common = ["scan", "--model", str(root / "model"), *args, "--tokens-per-language", "600",
              "--max-length", "32", "--batch-size", "2", "--docs-per-block", "4",
              "--no-progress"]
    return root, common


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def test_torchrun_two_ranks_equal_one_process(moe_folder):
    from langneuron_ext.cli import main
    root, common = moe_folder
    one = root / "one.safetensors"
    assert main([*common, "--out", str(one)]) == 0
    two = root / "two.safetensors"
    done = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2",
                           "-m", "langneuron_ext", *common, "--out", str(two)],
                          capture_output=True, text=True, timeout=300, env=_env())
    assert done.returncode == 0, done.stderr[-3000:]
    a, b = ActivationStats.load(one), ActivationStats.load(two)
    assert a.routed is not None and int(a.routed.sum()) > 0
    _same_routing(b, a, exact_weight=False)


def test_sigkill_then_resume_equals_uninterrupted(moe_folder):
    from langneuron_ext.cli import main
    root, common = moe_folder
    common = [*common, "--checkpoint-every", "2"]
    whole = root / "whole.safetensors"
    assert main([*common, "--out", str(whole)]) == 0
    out = root / "killed.safetensors"
    partial = out.with_name(out.name + ".partial")
    proc = subprocess.Popen([str(BIN / "langneuron"), *common, "--out", str(out)], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert partial.exists(), "no checkpoint appeared"
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    saved = ActivationStats.load(partial)
    assert int(saved.routed.sum()) < int(ActivationStats.load(whole).routed.sum())
    assert main([*common, "--out", str(out), "--resume"]) == 0
    # the killed process ran with one thread, this one with more: route weights (fp32 router
    # outputs) may differ in rounding; the integer statistics are exact
    _same_routing(ActivationStats.load(out), ActivationStats.load(whole), exact_weight=False)
    assert not partial.exists()
