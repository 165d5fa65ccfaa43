"""`ln.examples` / `langneuron examples`: top-k activating positions of selected neurons.

The oracle is a brute force: the same batches (iter_batches is deterministic) run through the
patched model with forward hooks on the gate projections (dense) or pre-hooks on the experts
module (MoE, pre-activations recomputed like the eager loop); every (language, neuron) list of
all positions is sorted by the documented rule (larger activation, then earlier position in
corpus order) and cut at k. The recorded values, positions and context windows must equal it
exactly, ties included (a relu model has many exact zeros), also after a resume, under
torchrun with two gloo ranks, and after SIGKILL + --resume.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_loading import _tiny_folder
from test_moe import tiny_moe
from test_scan import LANGS, tiny_llama, write_corpus
from transformers import LlamaConfig, LlamaForCausalLM

from langneuron_ext.cli import main
from langneuron_ext.corpus import iter_batches
from langneuron_ext.examples import (
    Examples,
    ExamplesError,
    TopK,
    columns_of,
    decode_key,
    examples,
)
from langneuron_ext.identify.neuron_set import NeuronSet
from langneuron_ext.models import find_mlps, patched
from langneuron_ext.models.recording import tap_activation as activation_fp32
from langneuron_ext.models.toy import byte_tokenizer

OPTS = dict(tokens_per_language=300, max_length=32, batch_size=3, docs_per_block=8)
K_TOP, CONTEXT = 4, 3
BIN = Path(sys.executable).parent


def _dense_acts(model):
    """Hooks that collect act_fp32(gate) [rows, N] per layer of a dense llama-like model."""
    store, hooks = {}, []
    act = find_mlps(model)[0].act
    for li, layer in enumerate(model.model.layers):
        def hook(module, inputs, output, li=li):
            store[li] = activation_fp32(output.reshape(-1, output.shape[-1]), act)
        hooks.append(layer.mlp.gate_proj.register_forward_hook(hook))
    return store, hooks


def _moe_acts(model):
    """{layer: [rows, N]} for a MoE model: routed neurons from the routing handed to the
    experts module (NaN where the token did not go to the expert), dense / shared from hooks."""
    store, hooks = {}, []
    for site in find_mlps(model):
        if site.kind == "experts":
            def pre(mod, args, site=site):
                x, top_k_index = args[0], args[1]
                E, Wd = site.experts, site.expert_size
                out = store.setdefault(site.layer, {})
                full = torch.full((x.shape[0], E * Wd), float("nan"))
                mask = torch.nn.functional.one_hot(top_k_index, E + 1).permute(2, 1, 0)
                for e in range(E):
                    _, token = torch.where(mask[e])       # the eager loop's row order
                    if token.numel():
                        gate = torch.nn.functional.linear(x[token], mod.gate_up_proj[e])[:, :Wd]
                        full[token, e * Wd:(e + 1) * Wd] = activation_fp32(gate, site.act)
                out[site.offset] = full
            hooks.append(site.module.register_forward_pre_hook(pre))
        else:
            def hook(mod, inputs, output, site=site):
                out = store.setdefault(site.layer, {})
                out[site.offset] = activation_fp32(output.reshape(-1, output.shape[-1]),
                                                   site.act)
            hooks.append(site.child(site.layout.gate).register_forward_hook(hook))

    def layer_acts():
        return {l: torch.cat([parts[o] for o in sorted(parts)], dim=1)
                for l, parts in store.items()}
    return layer_acts, hooks


def brute_force(model, tokenizer, corpus, columns, languages, k, context, moe=False, **opts):
    """Every position of every (language, column), sorted by the rule, cut at k:
    {(lang, m): [(value, batch#, row, token, window ids, window acts)]}."""
    lists = {}
    with patched(model, impl="torch"):
        if moe:
            layer_acts, hooks = _moe_acts(model)
        else:
            store, hooks = _dense_acts(model)
            layer_acts = lambda: store  # noqa: E731
        try:
            for g, batch in enumerate(iter_batches(corpus, tokenizer, languages, **opts)):
                with torch.no_grad():
                    model.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
                acts = layer_acts()
                B, T = batch.input_ids.shape
                for m, (l, i) in enumerate(columns.tolist()):
                    a = acts[l][:, i].reshape(B, T)
                    for r in range(B):
                        for t in range(T):
                            lang = int(batch.row_lang[r, t])
                            if lang < 0 or torch.isnan(a[r, t]):
                                continue
                            lo, hi = t - context, t + context + 1
                            ids = [int(batch.input_ids[r, p]) if 0 <= p < T
                                   and batch.attention_mask[r, p] else -1
                                   for p in range(lo, hi)]
                            win = [float(a[r, p]) if ids[p - lo] >= 0
                                   and not torch.isnan(a[r, p]) else None
                                   for p in range(lo, hi)]
                            lists.setdefault((lang, m), []).append(
                                (float(a[r, t]), g, r, t, ids, win))
        finally:
            for h in hooks:
                h.remove()
    return {key: sorted(v, key=lambda e: (-e[0], e[1], e[2], e[3]))[:k]
            for key, v in lists.items()}


def assert_equal_to_brute_force(ex: Examples, expected: dict):
    batch_of = {}                      # brute-force batch number -> (round, batch) of the key
    K, M = len(ex.languages), ex.columns.shape[0]
    for lang in range(K):
        for m in range(M):
            want = expected.get((lang, m), [])
            keys = ex.keys[lang, m].tolist()
            assert sum(key >= 0 for key in keys) == len(want)
            for j, (value, g, r, t, ids, win) in enumerate(want):
                got = float(ex.values[lang, m, j])
                assert got == value, (lang, m, j)
                rnd, b, row, token = decode_key(keys[j])
                assert (row, token) == (r, t), (lang, m, j)
                assert batch_of.setdefault(g, (rnd, b)) == (rnd, b)
                assert ex.tokens[lang, m, j].tolist() == ids
                acts = [None if a != a else a for a in ex.window[lang, m, j].tolist()]
                assert acts == win
    # the keys order batches like the corpus does
    assert [batch_of[g] for g in sorted(batch_of)] == sorted(batch_of.values())


@pytest.fixture(scope="module")
def dense(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ex")
    return tiny_llama(), byte_tokenizer(), write_corpus(folder, lines_per_language=30), folder


def test_dense_equals_brute_force(dense):
    model, tok, corpus, _ = dense
    columns = torch.tensor([[0, 3], [0, 17], [1, 0], [1, 40], [1, 47]])
    ex = examples(model, tok, corpus, columns.tolist(), k=K_TOP, context=CONTEXT,
                  progress=False, impl="torch", **OPTS)
    expected = brute_force(model, tok, corpus, columns, LANGS, K_TOP, CONTEXT,
                           max_length=32, batch_size=3, tokens_per_language=300,
                           docs_per_block=8)
    assert ex.languages == LANGS and torch.equal(ex.columns, columns)
    assert_equal_to_brute_force(ex, expected)
    assert all(len(v) == K_TOP for v in expected.values())
    # the token texts cover every recorded id
    assert set(ex.tokens[ex.tokens >= 0].tolist()) <= set(ex.vocab)


def test_ties_follow_the_documented_rule(dense, tmp_path):
    """relu: most activations are exactly 0, so the top-k of a quiet neuron is all ties."""
    torch.manual_seed(3)
    config = LlamaConfig(vocab_size=259, hidden_size=16, intermediate_size=24,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=64, hidden_act="relu", bos_token_id=1,
                         eos_token_id=2, pad_token_id=0)
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        model.model.layers[0].mlp.gate_proj.weight[:12] = 0.0   # silent: act exactly 0
    _, tok, corpus, _ = dense
    columns = torch.tensor([[0, i] for i in range(24)])
    ex = examples(model, tok, corpus, {0: list(range(24))}, k=6, context=1, progress=False,
                  impl="torch", **OPTS)
    expected = brute_force(model, tok, corpus, columns, LANGS, 6, 1, max_length=32,
                           batch_size=3, tokens_per_language=300, docs_per_block=8)
    ties = sum(1 for v in expected.values() for e in v if e[0] == 0.0)
    assert ties > 20, "the test needs tied activations"
    assert_equal_to_brute_force(ex, expected)


class _FoldedTok:
    """The byte tokenizer with ids folded into the tiny MoE vocabulary (128)."""
    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __init__(self, tok):
        self.tok = tok

    def __call__(self, texts, add_special_tokens=False):
        enc = self.tok(texts, add_special_tokens=False)
        return {"input_ids": [[3 + i % 120 for i in ids] for ids in enc["input_ids"]]}

    def decode(self, ids):
        return f"<{ids[0]}>"


def _moe_columns(model):
    return torch.tensor(sorted({(s.layer, c) for s in find_mlps(model)
                                for c in (s.offset, s.offset + s.intermediate_size - 1,
                                          s.offset + 21 % s.intermediate_size)}))


@pytest.mark.parametrize("model_type", ["mixtral", "qwen2_moe", "olmoe"])
def test_moe_equals_brute_force(dense, model_type):
    """The eager experts loop, recomputed by the hooks in its own row order: exact."""
    model = tiny_moe(model_type, "eager")
    _, tok, corpus, _ = dense
    columns = _moe_columns(model)
    ex = examples(model, _FoldedTok(tok), corpus, columns.tolist(), k=K_TOP, context=2,
                  progress=False, impl="torch", **OPTS)
    expected = brute_force(model, _FoldedTok(tok), corpus, columns, LANGS, K_TOP, 2, moe=True,
                           max_length=32, batch_size=3, tokens_per_language=300,
                           docs_per_block=8)
    assert_equal_to_brute_force(ex, expected)
    assert any(e[5].count(None) > 1 for v in expected.values() for e in v), \
        "some window tokens went to other experts"


@pytest.mark.parametrize("how", ["grouped_mm", "batched_mm"])
def test_moe_implementations_record_the_same_positions(dense, how):
    """batched / grouped GEMMs round differently from the eager loop in the last bit: the
    positions are the same and the values within float rounding."""
    _, tok, corpus, _ = dense
    runs = []
    for impl in ("eager", how):
        model = tiny_moe("qwen2_moe", impl)
        runs.append(examples(model, _FoldedTok(tok), corpus, _moe_columns(model).tolist(),
                             k=K_TOP, context=2, progress=False, impl="torch", **OPTS))
    assert torch.equal(runs[0].keys, runs[1].keys)
    torch.testing.assert_close(runs[0].values, runs[1].values, equal_nan=True)


def test_streaming_merge_is_order_free():
    """Merging candidates in any grouping gives one result (the order is total)."""
    g = torch.Generator().manual_seed(0)
    K, M, k, W = 1, 5, 3, 1
    values = torch.randint(0, 4, (M, 40), generator=g).float()   # many ties
    keys = torch.randperm(40, generator=g).repeat(M, 1)
    one = TopK(K, M, k, 0)
    one.merge(0, values, keys, keys[:, :, None], values[:, :, None])
    parts = TopK(K, M, k, 0)
    for sl in (slice(30, 40), slice(0, 7), slice(7, 30)):
        parts.merge(0, values[:, sl], keys[:, sl], keys[:, sl, None], values[:, sl, None])
    assert torch.equal(one.keys, parts.keys) and torch.equal(one.values, parts.values)
    for m in range(M):
        want = sorted(zip((-values[m]).tolist(), keys[m].tolist()))[:k]
        assert one.keys[0, m].tolist() == [key for _, key in want]
    assert one.tokens.shape[-1] == W


def test_resume_equals_one_shot(dense, tmp_path):
    model, tok, corpus, _ = dense
    cols = {0: [1, 2, 30], 1: [5]}
    whole = examples(model, tok, corpus, cols, k=K_TOP, context=CONTEXT, progress=False,
                     impl="torch", **OPTS)
    ckpt = tmp_path / "ex.partial"
    calls = {"n": 0}

    def stop_after(module, args, kwargs):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
    h = model.model.register_forward_pre_hook(stop_after, with_kwargs=True)
    with pytest.raises(KeyboardInterrupt):
        examples(model, tok, corpus, cols, k=K_TOP, context=CONTEXT, progress=False,
                 impl="torch", checkpoint=ckpt, checkpoint_every=2, **OPTS)
    h.remove()
    assert ckpt.exists()
    resumed = examples(model, tok, corpus, cols, k=K_TOP, context=CONTEXT, progress=False,
                       impl="torch", checkpoint=ckpt, checkpoint_every=2, **OPTS)
    for name in ("values", "keys", "tokens", "window"):
        assert torch.equal(getattr(resumed, name).nan_to_num(-7),
                           getattr(whole, name).nan_to_num(-7)), name
    with pytest.raises(ExamplesError, match="other options"):
        examples(model, tok, corpus, cols, k=K_TOP + 1, context=CONTEXT, progress=False,
                 impl="torch", checkpoint=ckpt, **OPTS)


def test_files_round_trip(dense, tmp_path):
    model, tok, corpus, _ = dense
    ex = examples(model, tok, corpus, {1: [3, 9]}, k=3, context=2, progress=False, **OPTS)
    a = Examples.load(ex.save(tmp_path / "e.safetensors"))
    assert torch.equal(a.keys, ex.keys) and a.vocab == ex.vocab and a.digest == ex.digest
    b = Examples.load(ex.save(tmp_path / "e.json"))
    assert torch.equal(b.keys, ex.keys) and torch.equal(b.values, ex.values)
    assert b.of(1, 9, "fr") == ex.of(1, 9, "fr")
    with pytest.raises(ExamplesError, match="not an examples file"):
        (tmp_path / "x.safetensors").write_bytes(b"junk")
        Examples.load(tmp_path / "x.safetensors")


def test_neurons_of_another_model_are_refused(dense):
    model, tok, corpus, _ = dense
    with pytest.raises(ExamplesError, match="another model"):
        examples(model, tok, corpus, {1: [48]}, progress=False, **OPTS)
    with pytest.raises(ExamplesError, match="no neurons"):
        examples(model, tok, corpus, {1: [3]}, layers=[0], progress=False, **OPTS)


# ---- the command ------------------------------------------------------------------------------
def _cli_setup(root: Path, neurons: int = 32):
    model = _tiny_folder(root / "tiny", layers=2, neurons=neurons)
    write_corpus(root, lines_per_language=40)
    texts = [a for lang in LANGS for a in ("--text", f"{lang}={root / f'{lang}.txt'}")]
    ns = NeuronSet("test", {}, LANGS, 2, neurons,
                   {"en": {0: [1, 5]}, "fr": {1: [2, 31]}, "ru": {0: [5], 1: [7]}})
    ns.save(root / "neurons.json")
    common = ["examples", "--model", str(model), *texts, "--neurons",
              str(root / "neurons.json"), "--tokens-per-language", "600", "--max-length", "32",
              "--batch-size", "2", "--docs-per-block", "8", "-k", "3", "--context", "2",
              "--no-progress"]
    return common


def test_cli_writes_and_refuses_bad_input(tmp_path, capsys):
    common = _cli_setup(tmp_path)
    out = tmp_path / "ex.safetensors"
    assert main([*common, "--out", str(out)]) == 0
    ex = Examples.load(out)
    assert ex.columns.tolist() == [[0, 1], [0, 5], [1, 2], [1, 7], [1, 31]]
    assert ex.languages == LANGS
    # a neuron set of a wider model: one line, before the model loads, nothing written
    NeuronSet("test", {}, LANGS, 2, 64, {"en": {0: [60]}}).save(tmp_path / "wide.json")
    before = out.read_bytes()
    args = [a if a != str(tmp_path / "neurons.json") else str(tmp_path / "wide.json")
            for a in common]
    capsys.readouterr()
    assert main([*args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "another model" in err
    assert out.read_bytes() == before
    assert main([*common, "--out", str(tmp_path / "neurons.json")]) == 2   # an input


def test_cli_sigkill_then_resume_equals_uninterrupted(tmp_path):
    common = _cli_setup(tmp_path)
    whole = tmp_path / "whole.safetensors"
    assert main([*common, "--out", str(whole), "--checkpoint-every", "1"]) == 0
    out = tmp_path / "killed.safetensors"
    partial = out.with_name(out.name + ".partial")
    proc = subprocess.Popen([str(BIN / "langneuron"), *common, "--out", str(out),
                             "--checkpoint-every", "1"], env={**os.environ,
                                                              "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert partial.exists(), proc.stderr.read().decode() if proc.poll() is not None else ""
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    assert main([*common, "--out", str(out), "--checkpoint-every", "1"]) == 2   # needs --resume
    assert main([*common, "--out", str(out), "--checkpoint-every", "1", "--resume"]) == 0
    assert out.read_bytes() == whole.read_bytes()
    assert not partial.exists()


def test_torchrun_two_ranks_equal_one_process(tmp_path):
    common = _cli_setup(tmp_path)
    one = tmp_path / "one.safetensors"
    assert main([*common, "--out", str(one)]) == 0
    two = tmp_path / "two.safetensors"
    done = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc-per-node", "2",
                           "-m", "langneuron_ext", *common, "--out", str(two)],
                          capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1",
                               "TOKENIZERS_PARALLELISM": "false"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert two.read_bytes() == one.read_bytes()
    assert list(tmp_path.glob("two.*partial*")) == []


def test_columns_of_a_neuron_set():
    ns = NeuronSet("t", {}, ["a", "b"], 2, 8, {"a": {0: [1, 2]}, "b": {0: [2], 1: [7]}})
    assert columns_of(ns).tolist() == [[0, 1], [0, 2], [1, 7]]
    assert columns_of(ns, layers=[1]).tolist() == [[1, 7]]
    assert columns_of(ns, languages=["b"]).tolist() == [[0, 2], [1, 7]]
