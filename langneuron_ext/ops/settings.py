"""Every environment variable the ops read, read here and nowhere else.

- TRITON_INTERPRET=1: Triton kernels run on CPU tensors through the interpreter. Read ONCE at
  import, like Triton itself (`triton.jit` picks the interpreter at decoration time), so a
  later change of the variable cannot make the two disagree.
- LANGNEURON_IMPL=cuda|triton|cpu|torch: force the element-wise implementation.
- LANGNEURON_GATED_IMPL=vendor|triton_gemm: force the gated-MLP implementation.
- LANGNEURON_SELFCHECK=0: skip the first-use self-check (ops/selfcheck.py).
- LANGNEURON_GATED_MEASURE=0: never time the gated-MLP implementations (keep the default).
- LANGNEURON_NO_NATIVE=1: do not load the built C++ / CUDA modules (ops/native.py), as if they
  were missing (tests of the fallback path).
- LANGNEURON_CACHE: root of the on-disk caches (default ~/.cache/langneuron); the kernel
  caches (self-check results, measured gated-MLP choice) live in its `kernels/` folder.
"""
from __future__ import annotations

import os
import pathlib
from typing import Optional

_TRUE = ("1", "true", "yes", "on")

TRITON_INTERPRET: bool = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in _TRUE


def requested_impl() -> Optional[str]:
    """LANGNEURON_IMPL, or None."""
    return os.environ.get("LANGNEURON_IMPL") or None


def requested_gated_impl() -> Optional[str]:
    """LANGNEURON_GATED_IMPL, or None."""
    return os.environ.get("LANGNEURON_GATED_IMPL") or None


def selfcheck_enabled() -> bool:
    return os.environ.get("LANGNEURON_SELFCHECK", "1").strip().lower() not in ("0", "false",
                                                                                "no", "off")


def gated_measure_enabled() -> bool:
    return os.environ.get("LANGNEURON_GATED_MEASURE", "1").strip().lower() not in (
        "0", "false", "no", "off")


def native_disabled() -> bool:
    return bool(os.environ.get("LANGNEURON_NO_NATIVE"))


def kernel_cache_dir() -> pathlib.Path:
    """Folder of the kernel caches: $LANGNEURON_CACHE/kernels (default ~/.cache/langneuron)."""
    root = os.environ.get("LANGNEURON_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "langneuron")
    return pathlib.Path(root) / "kernels"
