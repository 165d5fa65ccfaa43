"""Which implementation of the fused op runs where.

Each implementation registers itself here with a priority and two predicates:
`available()` (is the code importable / built at all; returns a reason when not) and
`supports(device_type, dtype)`. `select_impl` walks the list by priority, once per patched
module, so nothing is decided per call. `LANGNEURON_IMPL=cuda|triton|cpu|torch` overrides.
A missing native build never fails at import: it warns once and the next entry is used.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch

ImplFn = Callable[..., torch.Tensor]


@dataclass
class Implementation:
    name: str
    priority: int                                   # higher runs first
    fn: ImplFn                                      # same signature as reference.act_stats_torch
    available: Callable[[], Tuple[bool, str]]       # (ok, reason when not ok)
    supports: Callable[[str, torch.dtype], bool]    # (device type, dtype) -> bool
    # May automatic selection pick it for (device type, dtype)? None = wherever it supports.
    # (triton runs on CPU only under the slow interpreter: explicit requests only.)
    auto: Optional[Callable[[str, torch.dtype], bool]] = None


_REGISTRY: Dict[str, Implementation] = {}
_WARNED: set = set()


def register(impl: Implementation) -> None:
    _REGISTRY[impl.name] = impl


def _load_builtin() -> None:
    """Import the implementation modules; each registers itself if it can."""
    if _REGISTRY:
        return
    from . import reference  # noqa: F401  (always present)

    register(Implementation("torch", 0, reference.act_stats_torch,
                            lambda: (True, ""), lambda device, dtype: True))
    for module in ("cpu", "triton_elementwise", "cuda"):
        try:
            __import__(f"{__package__}.{module}")
        except Exception as exc:  # a broken optional backend must never break import
            _warn_once(module, f"langneuron_ext: the {module} implementation could not be "
                               f"loaded ({exc}); falling back to the next one.")


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def implementations() -> List[Implementation]:
    _load_builtin()
    return sorted(_REGISTRY.values(), key=lambda i: -i.priority)


def get(name: str) -> Implementation:
    _load_builtin()
    if name not in _REGISTRY:
        raise ValueError(f"unknown implementation {name!r}; known: {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def select_impl(device: torch.device | str, dtype: torch.dtype = torch.float32,
                requested: Optional[str] = None) -> str:
    """Name of the implementation to use for tensors on `device` with `dtype`.

    `requested` (or the LANGNEURON_IMPL environment variable) forces one; if it cannot run here
    the error says why and what can.
    """
    _load_builtin()
    device_type = torch.device(device).type
    requested = requested or os.environ.get("LANGNEURON_IMPL") or None
    if requested:
        impl = get(requested)
        ok, reason = impl.available()
        if not ok:
            raise RuntimeError(f"implementation {requested!r} is not available: {reason}. "
                               f"Available here: {', '.join(available_for(device_type, dtype))}.")
        if not impl.supports(device_type, dtype):
            raise RuntimeError(f"implementation {requested!r} does not run on {device_type} "
                               f"with {dtype}; use one of "
                               f"{', '.join(available_for(device_type, dtype))}.")
        return requested
    for impl in implementations():
        ok, reason = impl.available()
        if not ok:
            if impl.supports(device_type, dtype):
                _warn_once(impl.name, f"langneuron_ext: {impl.name} implementation unavailable "
                                      f"({reason}); using a slower one.")
            continue
        if impl.supports(device_type, dtype) and (impl.auto is None
                                                  or impl.auto(device_type, dtype)):
            return impl.name
    return "torch"


def available_for(device_type: str, dtype: torch.dtype = torch.float32) -> List[str]:
    return [i.name for i in implementations()
            if i.available()[0] and i.supports(device_type, dtype)]
