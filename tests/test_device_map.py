"""Layers across devices on the CPU: accelerate's hooks move the weights (CPU offload, disk
offload) and the activations; the patch keeps counters on each layer's device and the scan
gathers them. Counts must equal the scan of the same model in one piece, exactly."""
from __future__ import annotations

import copy
import json

import pytest
import torch
from test_loading import _tiny_folder
from test_scan import OPTS, tiny_llama, write_corpus

from langneuron_ext.cli import main
from langneuron_ext.models import get_handle
from langneuron_ext.models.loading import ModelLoadError, dispatch, load_model, resolve_dtype_for
from langneuron_ext.models.toy import byte_tokenizer
from langneuron_ext.scan import scan
from langneuron_ext.stats import ActivationStats

SPLIT = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
         "model.layers.1": "disk", "model.norm": "disk", "lm_head": "cpu"}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    corpus = write_corpus(tmp_path_factory.mktemp("corpus"))
    model, tok = tiny_llama(), byte_tokenizer()
    stats = scan(model, tok, corpus, progress=False, impl="torch", track_sums=True, **OPTS)
    return model, tok, corpus, stats


def _equal(a: ActivationStats, b: ActivationStats) -> None:
    assert torch.equal(a.n_tokens, b.n_tokens)
    assert torch.equal(a.counts, b.counts)
    assert int(a.counts[:, -1].sum()) > 0, "the offloaded last layer must count too"


def test_disk_offloaded_layers_count_like_one_piece(reference, tmp_path):
    model, tok, corpus, one_piece = reference
    split = dispatch(copy.deepcopy(model), SPLIT, offload_folder=tmp_path / "offload")
    layer1 = split.model.layers[1].mlp.gate_proj
    assert layer1.weight.device.type == "meta", "layer 1 must live on disk, not in memory"
    assert (tmp_path / "offload").is_dir() and any((tmp_path / "offload").iterdir())
    stats = scan(split, tok, corpus, progress=False, impl="torch", track_sums=True, **OPTS)
    _equal(stats, one_piece)
    torch.testing.assert_close(stats.sums, one_piece.sums, rtol=0, atol=0)
    assert get_handle(split) is None
    assert layer1.weight.device.type == "meta", "the scan must not pull offloaded weights in"


def test_cpu_offload_hooks_count_like_one_piece(reference):
    from accelerate import cpu_offload
    model, tok, corpus, one_piece = reference
    offloaded = cpu_offload(copy.deepcopy(model), execution_device=torch.device("cpu"))
    assert offloaded.model.layers[0].mlp.up_proj.weight.device.type == "meta"
    _equal(scan(offloaded, tok, corpus, progress=False, impl="torch", **OPTS), one_piece)


def test_load_model_with_a_device_map(tmp_path):
    folder = _tiny_folder(tmp_path / "tiny", layers=2, neurons=32)
    corpus = write_corpus(tmp_path)
    whole, tok = load_model(str(folder), device="cpu", progress=False)
    split, _ = load_model(str(folder), device_map=SPLIT, offload_folder=tmp_path / "off",
                          progress=False)
    assert split.hf_device_map["model.layers.1"] == "disk"
    assert split.model.layers[1].mlp.gate_proj.weight.device.type == "meta"
    assert whole.model.layers[0].mlp.gate_proj.weight.dtype == torch.float32   # auto on a CPU
    _equal(scan(split, tok, corpus, progress=False, **OPTS),
           scan(whole, tok, corpus, progress=False, **OPTS))


def test_cli_device_map_file_equals_plain_scan(tmp_path, capsys):
    folder = _tiny_folder(tmp_path / "tiny", layers=2, neurons=32)
    write_corpus(tmp_path)
    texts = [a for lang in ("en", "fr", "ru") for a in ("--text", f"{lang}={tmp_path}/{lang}.txt")]
    common = ["scan", "--model", str(folder), *texts, "--tokens-per-language", "200",
              "--max-length", "32", "--no-progress"]
    device_map = tmp_path / "map.json"
    device_map.write_text(json.dumps(SPLIT))
    assert main([*common, "--out", str(tmp_path / "a.safetensors")]) == 0
    assert main([*common, "--device-map", str(device_map),
                 "--out", str(tmp_path / "b.safetensors")]) == 0
    _equal(ActivationStats.load(tmp_path / "a.safetensors"),
           ActivationStats.load(tmp_path / "b.safetensors"))


def test_device_map_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="GPU 3"):
        load_model(str(tmp_path), device_map={"model": 3} if not torch.cuda.device_count() > 3
                   else {"model": 99})
    with pytest.raises(ModelLoadError, match="not both"):
        load_model(str(tmp_path), device="cpu", device_map="auto")
    with pytest.raises(ModelLoadError, match="'tpu'"):
        load_model(str(tmp_path), device_map={"model": "tpu"})


def test_auto_dtype(monkeypatch):
    monkeypatch.setenv("LANGNEURON_CPU_BF16", "0")    # a CPU without native bf16
    assert resolve_dtype_for("auto", "cpu") == "float32"
    assert resolve_dtype_for(None, "cuda") == "bfloat16"
    assert resolve_dtype_for("auto", None, {"model.layers.0": 0, "lm_head": "cpu"}) == "bfloat16"
    assert resolve_dtype_for("auto", None, {"model": "cpu"}) == "float32"
    assert resolve_dtype_for("float16", "cpu") == "float16"


def test_steering_on_a_split_model_equals_the_one_piece_model(reference, tmp_path):
    """Steering tables are copied to each layer's device: the steered logits of the disk/CPU
    split model equal the one-piece model's."""
    from langneuron_ext.ops.reference import STEER_SET
    from langneuron_ext.steer import Intervention, steering
    model, tok, _, _ = reference
    split = dispatch(copy.deepcopy(model), SPLIT, offload_folder=tmp_path / "offload")
    L, I = len(model.model.layers), model.config.intermediate_size
    mask = torch.zeros(L, I, dtype=torch.bool)
    mask[:, ::3] = True
    edit = Intervention(mask, STEER_SET, torch.full((L, I), 0.5))
    ids = tok(["Le renard brun saute."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        plain = model(ids).logits
        with steering(model, [edit], impl="torch"):
            steered = model(ids).logits
        with steering(split, [edit], impl="torch"):
            steered_split = split(ids).logits
    assert not torch.equal(plain, steered), "the steering must change the logits"
    torch.testing.assert_close(steered_split, steered, rtol=0, atol=0)


def test_nll_matrix_on_a_cpu_offloaded_model_equals_the_one_piece_model(reference, monkeypatch):
    """Offloaded weights sit on 'meta': the NLL matrix must put its inputs where the hooks
    expect them (the scan's rule), and give the one-piece model's numbers."""
    from accelerate import cpu_offload

    from langneuron_ext.evaluate import lm_head, nll_matrix
    from langneuron_ext.identify import lape
    model, tok, corpus, stats = reference
    neurons = lape(stats, top_rate=0.2)
    opts = dict(random_sets=1, max_tokens_per_language=64, max_length=32, impl="torch",
                progress=False, bootstrap_samples=20)
    offloaded = cpu_offload(copy.deepcopy(model), execution_device=torch.device("cpu"))
    assert offloaded.model.layers[0].mlp.up_proj.weight.device.type == "meta"
    # accelerate places the offloaded head, so it scores through the full logits; the one-piece
    # model must too for a bit-exact comparison (the chunked head sums in another order).
    assert lm_head.ChunkedHead.for_model(offloaded) is None
    with monkeypatch.context() as m:
        m.setattr(lm_head.ChunkedHead, "for_model", classmethod(lambda cls, model: None))
        one_piece = nll_matrix(model, tok, neurons, corpus, **opts)
    split = nll_matrix(offloaded, tok, neurons, corpus, **opts)
    torch.testing.assert_close(split.nll, one_piece.nll, rtol=0, atol=0, equal_nan=True)
    assert int(torch.isfinite(split.nll).sum()) >= 15, "most cells are scored"
