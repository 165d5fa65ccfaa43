"""`patched(model)`: reuse the model's patch, or patch for the block and unpatch on exit."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import langneuron_ext as ln
from langneuron_ext import models


def tiny():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)
    return LlamaForCausalLM(cfg).eval()


def test_exported_from_package_and_models():
    import sys
    patch_module = sys.modules["langneuron_ext.models.patch"]   # `models.patch` is the function
    assert ln.patched is models.patched is patch_module.patched
    from langneuron_ext.models.patch import PatchError, PatchHandle, get_handle, patch, unpatch
    assert (ln.patch, ln.unpatch) == (patch, unpatch) == (models.patch, models.unpatch)
    assert models.PatchHandle is PatchHandle and models.PatchError is PatchError
    assert models.get_handle is get_handle


def test_patches_for_the_block_and_unpatches():
    model = tiny()
    with ln.patched(model, impl="torch") as handle:
        assert models.get_handle(model) is handle and handle.impls == ["torch", "torch"]
    assert models.get_handle(model) is None and not handle.active


def test_unpatches_on_error():
    model = tiny()
    with pytest.raises(KeyError):
        with ln.patched(model):
            raise KeyError("boom")
    assert models.get_handle(model) is None


def test_reuses_an_existing_patch_and_leaves_it():
    model = tiny()
    outer = ln.patch(model, impl="torch")
    try:
        with ln.patched(model, impl="cpu") as handle:     # impl is for a patch made here only
            assert handle is outer
        with pytest.raises(RuntimeError):
            with ln.patched(model) as handle:
                raise RuntimeError("inner failure")
        assert models.get_handle(model) is outer and outer.active
        with ln.patched(model) as a, ln.patched(model) as b:   # nesting shares the patch
            assert a is b is outer
        assert outer.active
    finally:
        outer.unpatch()


def test_unpatch_of_an_unpatched_model_is_a_no_op():
    model = tiny()
    ln.unpatch(model)
    models.unpatch(model)
    assert models.get_handle(model) is None
    with ln.patched(model) as handle:
        pass
    handle.unpatch()                                      # and twice on a handle, too
    ln.unpatch(model)
