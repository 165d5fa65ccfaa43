"""Model adapters (the architecture table) and `patch` / `unpatch` / `patched`.

    from langneuron_ext.models import patched
    with patched(model) as handle:       # reuses an existing patch, else patches and unpatches
        handle.set_rows(row_lang)
        handle.start_recording(num_languages=3)
        model(input_ids)
        stats = handle.collect()

`load_model` (GGUF / Hugging Face loading) lives in `.loading` and is imported on first use.
"""
from __future__ import annotations

import importlib

from .adapters import (
    ADAPTERS,
    HF_ACTIVATIONS,
    SUPPORTED_MODEL_TYPES,
    MLPLayout,
    MLPSite,
    UnsupportedModelError,
    find_mlps,
)
from .patch import PatchError, PatchHandle, get_handle, patch, patched, unpatch

_LAZY = {"load_model": ".loading"}


def __getattr__(name):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["patch", "unpatch", "patched", "get_handle", "find_mlps", "SUPPORTED_MODEL_TYPES",
           "UnsupportedModelError", "PatchError", "PatchHandle", "MLPSite", "MLPLayout",
           "ADAPTERS", "HF_ACTIVATIONS", "load_model"]
