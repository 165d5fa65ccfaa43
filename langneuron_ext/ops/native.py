"""Loading of the built native extensions, once and without ever raising.

- `langneuron_ext._C` defines the op `torch.ops.langneuron_native.act_stats` and its CPU kernel.
- `langneuron_ext._C_cuda` adds the CUDA kernel for the same op (so it loads after `_C`).

A module that is missing or fails to load gives one RuntimeWarning naming what failed and what
is used instead; `cpu_available()` / `cuda_available()` then return the reason, which dispatch
and `langneuron info` show. `build_info()` collects what the build recorded.
"""
from __future__ import annotations

import importlib
import json
import pathlib
import threading
from typing import Any, Callable, Dict, Optional, Tuple

import torch
from torch import Tensor

from . import dispatch, settings

_PACKAGE_DIR = pathlib.Path(__file__).resolve().parents[1]
_LOCK = threading.Lock()
_STATE: Dict[str, Any] = {}    # module name -> loaded module, or the failure reason (str)

_FALLBACK = {
    "_C": "the C++ CPU kernel is unavailable; CPU tensors use the pure-PyTorch reference",
    "_C_cuda": "the CUDA kernel is unavailable; CUDA tensors use the Triton kernel "
               "(or the pure-PyTorch reference)",
}
_IMPL_NAME = {"_C": "cpu", "_C_cuda": "cuda"}
_HOW_TO_BUILD = ("reinstall with a C++ compiler and torch present: "
                 "pip install -e . --no-build-isolation")


def _load(name: str):
    """Import `langneuron_ext.<name>` once; returns the module or None (reason in _STATE)."""
    with _LOCK:
        if name in _STATE:
            value = _STATE[name]
            return None if isinstance(value, str) else value
        if settings.native_disabled():
            _STATE[name] = "disabled by LANGNEURON_NO_NATIVE"
        else:
            _import_into_state(name)
        value = _STATE[name]
        if not isinstance(value, str):
            return value
    # The CUDA module only matters (and is only worth a warning) where a GPU is visible. The
    # warning goes through dispatch's warn-once under the implementation's name, so that this
    # and dispatch's own "implementation unavailable" notice are one warning, not two.
    if name == "_C" or torch.cuda.is_available():
        dispatch.warn_once(_IMPL_NAME[name], f"langneuron_ext: {value}; {_FALLBACK[name]}.")
    return None


def _import_into_state(name: str) -> None:
    try:
        module = importlib.import_module(f"langneuron_ext.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"langneuron_ext.{name}":
            _STATE[name] = f"importing langneuron_ext.{name} failed: {exc}"
        else:
            _STATE[name] = f"langneuron_ext.{name} is not built"
    except Exception as exc:  # a broken build (ABI mismatch, missing symbol) must not raise
        _STATE[name] = f"loading langneuron_ext.{name} failed: {type(exc).__name__}: {exc}"
    else:
        _STATE[name] = module


def _has_kernel(dispatch_key: str) -> bool:
    try:
        return torch._C._dispatch_has_kernel_for_dispatch_key(
            "langneuron_native::act_stats", dispatch_key)
    except RuntimeError:  # the op is not defined at all
        return False


def cpu_available() -> Tuple[bool, str]:
    """(True, "") when the C++ CPU kernel is loaded, else (False, why not and what to do)."""
    if _load("_C") is None:
        return False, f"{_STATE['_C']} ({_HOW_TO_BUILD})"
    if not _has_kernel("CPU"):
        return False, "langneuron_ext._C loaded but registered no CPU kernel"
    return True, ""


def cuda_available() -> Tuple[bool, str]:
    """(True, "") when the CUDA kernel is loaded and a GPU is visible, else (False, reason)."""
    if torch.version.cuda is None:
        return False, "torch is a CPU-only build"
    if _load("_C") is None:
        return False, f"the op library langneuron_ext._C is missing ({_STATE['_C']})"
    if _load("_C_cuda") is None:
        return False, (f"{_STATE['_C_cuda']} (build it with LANGNEURON_BUILD_CUDA=1 "
                       f"pip install -e . --no-build-isolation)")
    if not _has_kernel("CUDA"):
        return False, "langneuron_ext._C_cuda loaded but registered no CUDA kernel"
    if not torch.cuda.is_available():
        return False, "no CUDA device is visible"
    return True, ""


def native_op():
    """The native op `torch.ops.langneuron_native.act_stats` (load the modules first)."""
    return torch.ops.langneuron_native.act_stats


NATIVE_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def register_native(name: str, device_type: str, priority: int,
                    available: Callable[[], Tuple[bool, str]],
                    module: str) -> Callable[..., Tensor]:
    """Register the compiled op as implementation `name` for `device_type` tensors (the C++ and
    CUDA kernels share one op and differ only in where they run). Returns the function, which
    takes the arguments of `reference.act_stats_torch` on 2-D tensors and is named after the
    registering `module` (the self-check's cache key and error messages use that name)."""
    def act_stats_native(gate: Tensor, up: Optional[Tensor], act: str,
                         row_lang: Optional[Tensor], counts: Optional[Tensor],
                         sums: Optional[Tensor], sumsq: Optional[Tensor],
                         row_group: Optional[Tensor], steer_mode: Optional[Tensor],
                         steer_value: Optional[Tensor], hist: Optional[Tensor] = None,
                         hist_edges: Optional[Tensor] = None,
                         amax: Optional[Tensor] = None) -> Tensor:
        ok, reason = available()
        if not ok:
            raise RuntimeError(f"the {name} implementation is not available: {reason}")
        return native_op()(gate, up, act, row_lang, counts, sums, sumsq, row_group,
                           steer_mode, steer_value, hist, hist_edges, amax)

    def supports(device: str, dtype: torch.dtype) -> bool:
        return device == device_type and dtype in NATIVE_DTYPES

    act_stats_native.__name__ = act_stats_native.__qualname__ = f"act_stats_{name}"
    act_stats_native.__module__ = module
    dispatch.register(dispatch.Implementation(name, priority, act_stats_native, available,
                                              supports))
    return act_stats_native


def _module_info(name: str) -> Dict[str, Any]:
    info: Dict[str, Any] = {}
    module = _load(name)
    if module is None:
        info["loaded"] = False
        info["reason"] = _STATE[name]
        return info
    info["loaded"] = True
    info["path"] = getattr(module, "__file__", None)
    try:
        info.update(json.loads(getattr(module, "BUILD_INFO", "{}")))
    except ValueError:
        pass
    recorded = _PACKAGE_DIR / f"{name}.build.json"
    if recorded.is_file():
        try:
            info["build"] = json.loads(recorded.read_text())
        except (OSError, ValueError) as exc:
            info["build"] = {"error": f"unreadable {recorded.name}: {exc}"}
    return info


def build_info() -> Dict[str, Any]:
    """Build metadata of the native modules and the runtime they run in.

    Keys: `cpu` and `cuda` (each: loaded, reason or path, compiler, flags, torch version built
    against, CUDA version and architecture list for cuda), plus `torch_version`,
    `torch_cuda_version`, `num_threads` (intra-op threads, what at::parallel_for uses) and
    `parallel_info` (torch's OpenMP / MKL summary).
    """
    info: Dict[str, Any] = {"cpu": _module_info("_C")}
    if torch.version.cuda is not None:
        info["cuda"] = _module_info("_C_cuda")
    else:
        info["cuda"] = {"loaded": False, "reason": "torch is a CPU-only build"}
    info["torch_version"] = torch.__version__
    info["torch_cuda_version"] = torch.version.cuda
    info["num_threads"] = torch.get_num_threads()
    info["parallel_info"] = _parallel_summary()
    return info


def _parallel_summary() -> Optional[str]:
    try:
        lines = torch.__config__.parallel_info().splitlines()
    except Exception:  # noqa: BLE001 - informational only
        return None
    keep = [line.strip() for line in lines
            if line.strip().startswith(("ATen parallel backend", "OpenMP", "MKL", "at::get"))]
    return "; ".join(keep) or None
