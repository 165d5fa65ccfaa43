"""`scan(..., hist_bins=B)` / `langneuron scan --hist`: histograms and maxima of every neuron's
activation per language, against activations recorded by hooks on the unpatched model
(bit for bit), through checkpoints and resume, on MoE models with padded layers, and the
memory estimate that refuses histograms that would not fit, before the model loads."""
from __future__ import annotations

import json

import pytest
import torch
from test_scan import LANGS, OPTS, _interrupt_after, tiny_llama, write_corpus

from langneuron_ext.cli import main
from langneuron_ext.corpus import iter_batches
from langneuron_ext.models import get_handle, patch
from langneuron_ext.ops import default_hist_edges
from langneuron_ext.ops.reference import activation_fp32
from langneuron_ext.scan import ScanError, scan
from langneuron_ext.scan_memory import HistMemory, check_fits, config_dimensions
from langneuron_ext.stats import ActivationStats

BINS = 16


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from langneuron_ext.models.toy import byte_tokenizer
    return tiny_llama(), byte_tokenizer(), write_corpus(tmp_path_factory.mktemp("corpus"))


def hook_activations(model, tokenizer, corpus, languages, **opts):
    """acts[k][l]: fp32 act(gate) [tokens, I] of language k at layer l, from hooks on the
    unpatched model's gate_proj over the scan's batches."""
    assert get_handle(model) is None
    layers = model.model.layers
    K, I = len(languages), model.config.intermediate_size
    acts = [[[] for _ in layers] for _ in range(K)]
    current = {}

    def hook_for(layer):
        def hook(module, inputs, output):
            a = activation_fp32(output.reshape(-1, I).float(), "silu")
            rows = current["row_lang"].reshape(-1)
            for k in range(K):
                acts[k][layer].append(a[rows == k])
        return hook

    hooks = [layer.mlp.gate_proj.register_forward_hook(hook_for(i))
             for i, layer in enumerate(layers)]
    try:
        for batch in iter_batches(corpus, tokenizer, languages, **opts):
            current["row_lang"] = batch.row_lang
            with torch.no_grad():
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
    finally:
        for h in hooks:
            h.remove()
    return [[torch.cat(per_layer) for per_layer in per_lang] for per_lang in acts]


def reference_hist(acts, edges):
    """hist [K, L, I, B] and amax [K, L, I] of hooked activations by the op's rule."""
    B = edges.numel() + 1
    hist = torch.stack([torch.stack([
        torch.nn.functional.one_hot(torch.bucketize(a, edges, right=True), B).sum(0)
        for a in per_lang]) for per_lang in acts])
    amax = torch.stack([torch.stack([a.amax(0) for a in per_lang]) for per_lang in acts])
    return hist.long(), amax


@pytest.mark.parametrize("impl", ["torch", "cpu"])
def test_histograms_and_maxima_equal_hooked_activations(tiny, impl):
    model, tok, corpus = tiny
    stats = scan(model, tok, corpus, progress=False, impl=impl, hist_bins=BINS, **OPTS)
    edges = default_hist_edges(BINS)
    assert torch.equal(stats.hist_edges, edges) and stats.hist_bins == BINS
    acts = hook_activations(model, tok, corpus, LANGS, **OPTS)
    hist, amax = reference_hist(acts, edges)
    assert torch.equal(stats.hist, hist)
    assert torch.equal(stats.amax, amax)
    # every counted token lands in exactly one bin; mass at and above 0 less exact zeros
    assert torch.equal(stats.hist.sum(-1), stats.n_tokens[:, None, None].expand_as(stats.counts))
    zero = int((edges == 0).nonzero())
    zeros = torch.stack([torch.stack([(a == 0).sum(0) for a in per_lang]) for per_lang in acts])
    assert torch.equal(stats.hist[..., zero + 1:].sum(-1) - zeros, stats.counts)
    # and the plain counts are those of a scan without histograms
    plain = scan(model, tok, corpus, progress=False, impl=impl, **OPTS)
    assert torch.equal(plain.counts, stats.counts) and plain.hist is None


def test_median_within_one_bin_of_torch_quantile(tiny):
    from test_stats_distributions import one_bin_bound
    model, tok, corpus = tiny
    stats = scan(model, tok, corpus, progress=False, hist_bins=32, **OPTS)
    acts = hook_activations(model, tok, corpus, LANGS, **OPTS)
    est = stats.median()
    for k, per_lang in enumerate(acts):
        for layer, a in enumerate(per_lang):
            true, bound, closed = one_bin_bound(a.T, 50, stats.hist_edges)
            err = (est[k, layer] - true).abs()
            assert bool((err[closed] <= bound[closed] + 1e-9).all())
            assert float(closed.double().mean()) > 0.5       # SiLU dips below -0.2, bin 0


def test_resumed_scan_with_histograms_equals_one_shot(tiny, tmp_path):
    model, tok, corpus = tiny
    opts = dict(OPTS, hist_bins=BINS)
    one_shot = scan(model, tok, corpus, progress=False, **opts)
    ckpt = tmp_path / "scan.partial"
    hook, _ = _interrupt_after(model, 5)
    with pytest.raises(Exception):
        scan(model, tok, corpus, progress=False, checkpoint=ckpt, checkpoint_every=2, **opts)
    hook.remove()
    partial = ActivationStats.load(ckpt)
    assert partial.hist is not None and 0 < int(partial.hist.sum()) < int(one_shot.hist.sum())
    resumed = scan(model, tok, corpus, progress=False, checkpoint=ckpt, checkpoint_every=2,
                   **opts)
    assert torch.equal(resumed.hist, one_shot.hist)
    assert torch.equal(resumed.amax, one_shot.amax)
    assert torch.equal(resumed.counts, one_shot.counts)


def test_checkpoint_without_histograms_is_refused(tiny, tmp_path):
    model, tok, corpus = tiny
    ckpt = tmp_path / "scan.partial"
    scan(model, tok, corpus, progress=False, checkpoint=ckpt, **OPTS)
    with pytest.raises(ScanError, match="hist"):
        scan(model, tok, corpus, progress=False, checkpoint=ckpt, hist_bins=BINS, **OPTS)
    assert get_handle(model) is None


def test_recording_api_and_custom_edges(tiny):
    model, tok, corpus = tiny
    edges = torch.tensor([-0.1, 0.0, 0.5, 2.0])
    stats = scan(model, tok, corpus, progress=False, hist_edges=edges, **OPTS)
    assert stats.hist.shape[-1] == 5 and torch.equal(stats.hist_edges, edges)
    with patch(model) as handle:
        handle.start_recording(1, hist_edges=edges, track_amax=True)
        ids = torch.randint(3, 200, (2, 9))
        handle.set_rows(torch.zeros_like(ids, dtype=torch.int32))
        with torch.no_grad():
            model(input_ids=ids)
        got = handle.collect()
        assert got["hist"].shape == (1, 2, 48, 5) and got["amax"].shape == (1, 2, 48)
        assert bool((got["hist"].sum(-1) == 18).all())
        with pytest.raises(ValueError, match="strictly increasing"):
            handle.start_recording(1, hist_edges=torch.tensor([1.0, 0.0]))


@pytest.mark.parametrize("bins, match", [(2, "bins"), (1.5, "integer"),
                                         ("32", "integer")])
def test_bad_bins_are_a_clear_error(tiny, bins, match):
    model, tok, corpus = tiny
    with pytest.raises(ScanError, match=match):
        scan(model, tok, corpus, progress=False, hist_bins=bins, **OPTS)
    with pytest.raises(ScanError, match="strictly increasing"):
        scan(model, tok, corpus, progress=False, hist_edges=torch.tensor([0.0, 0.0]), **OPTS)
    assert get_handle(model) is None


@pytest.mark.parametrize("experts_implementation", ["eager", "grouped_mm"])
def test_moe_histograms_and_padding(experts_implementation):
    """qwen2_moe: layer 0 dense (40 neurons, padded to 88), layer 1 four routed experts of 16
    neurons, then a shared expert of 24."""
    from test_moe import DENSE_I, SHARED_I, E, W, inputs, tiny_moe
    model = tiny_moe("qwen2_moe", experts_implementation)
    ids, row_lang = inputs()
    with patch(model) as handle:
        handle.start_recording(3, hist_edges=default_hist_edges(BINS), track_amax=True)
        handle.set_rows(row_lang)
        with torch.no_grad():
            model(input_ids=ids)
        got = handle.collect()
    hist, amax, n = got["hist"], got["amax"], got["n_tokens"]
    totals = hist.sum(-1)
    assert int(hist[:, 0, DENSE_I:].sum()) == 0                       # padding: never counted
    assert bool(torch.isneginf(amax[:, 0, DENSE_I:]).all())
    assert torch.equal(totals[:, 0, :DENSE_I], n[:, None].expand(3, DENSE_I))
    shared = slice(E * W, E * W + SHARED_I)
    assert torch.equal(totals[:, 1, shared], n[:, None].expand(3, SHARED_I))
    routed = totals[:, 1, :E * W].view(3, E, W)                       # tokens per expert
    assert torch.equal(routed, routed[..., :1].expand_as(routed))
    assert int(routed[..., 0].sum()) == 2 * int(n.sum())              # top-2 routing
    assert torch.equal(totals > 0, amax > -torch.inf)
    zero = int((default_hist_edges(BINS) == 0).nonzero())
    assert bool((hist[..., zero + 1:].sum(-1) >= got["counts"]).all())


# ---- memory ------------------------------------------------------------------------------
def test_memory_estimate_and_refusal():
    m = HistMemory(languages=10, layers=36, neurons=18944, bins=32)
    assert m.stats_bytes == 10 * 36 * 18944 * (32 * 8 + 4)
    assert m.host_bytes(resuming=True) == 3 * m.stats_bytes
    check_fits(m, torch.device("cpu"), host=4 * m.stats_bytes)
    with pytest.raises(ScanError, match=r"--hist 32 needs about .* GiB.*--hist 16"):
        check_fits(m, torch.device("cpu"), host=2 * m.stats_bytes)
    with pytest.raises(ScanError, match="cuda:0 has"):
        check_fits(m, torch.device("cuda:0"), host=10 * m.stats_bytes,
                   device_free=m.stats_bytes // 2)
    check_fits(m, torch.device("cuda:0"), host=3 * m.stats_bytes, device_free=m.stats_bytes)


def test_config_dimensions():
    from transformers import LlamaConfig, Qwen2MoeConfig
    assert config_dimensions(LlamaConfig(num_hidden_layers=3, intermediate_size=40)) == (3, 40)
    moe = Qwen2MoeConfig(num_hidden_layers=2, intermediate_size=64, num_experts=4,
                         moe_intermediate_size=16, shared_expert_intermediate_size=32)
    assert config_dimensions(moe) == (2, 4 * 16 + 32)


def test_cli_refuses_histograms_that_do_not_fit_before_loading(tmp_path, capsys,
                                                               monkeypatch):
    from test_loading import _tiny_folder

    from langneuron_ext import scan_memory
    from langneuron_ext.models import loading
    model = _tiny_folder(tmp_path / "tiny", layers=2, neurons=32)
    text = tmp_path / "en.txt"
    text.write_text("hello world\n" * 20, encoding="utf-8")
    monkeypatch.setattr(scan_memory, "available_host_bytes", lambda: 1000)
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    out = tmp_path / "s.safetensors"
    capsys.readouterr()
    assert main(["scan", "--model", str(model), "--text", f"en={text}", "--out", str(out),
                 "--hist", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--hist 32 needs about" in err and "free" in err
    assert not out.exists()


def test_cli_scan_with_hist_reports_its_memory(tmp_path, capsys):
    from test_loading import _tiny_folder
    model = _tiny_folder(tmp_path / "tiny", layers=2, neurons=32)
    args = ["scan", "--model", str(model), "--tokens-per-language", "200", "--max-length",
            "32", "--no-progress"]
    for lang in ("en", "fr"):
        text = tmp_path / f"{lang}.txt"
        text.write_text(f"{lang} text number {{}}\n" * 30, encoding="utf-8")
        args += ["--text", f"{lang}={text}"]
    out = tmp_path / "s.safetensors"
    capsys.readouterr()
    assert main([*args, "--out", str(out), "--hist", "16", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["hist_bins"] == 16
    assert report["hist_bytes"] == HistMemory(2, 2, 32, 16).stats_bytes
    stats = ActivationStats.load(out)
    assert stats.hist.shape == (2, 2, 32, 16)
    assert torch.equal(stats.hist.sum(-1), stats.n_tokens[:, None, None].expand(2, 2, 32))
    assert main([*args, "--out", str(tmp_path / "t.safetensors"), "--hist"]) == 0
    printed = capsys.readouterr().out
    assert "histograms: " in printed and "x 32 bins" in printed
    assert main([*args, "--out", str(tmp_path / "u.safetensors"), "--hist", "3"]) == 2
    assert "--hist 3" in capsys.readouterr().err
