"""First-use self-check: an implementation proves itself on this device before it is trusted.

The first time an implementation of either op is about to run on a (device, dtype, build), it
is run on the conformance cases of `ops/conformance.py` (every activation, several language
slots, padding rows, steering groups and modes, sums / sums of squares, histograms and maxima,
`gate_up` views; for the gated op a fused [2I, H] weight) and compared with the reference under
its tolerance policy. A mismatch or a crash disables it for that key, with ONE warning naming
the case, and dispatch moves on to the next implementation. Results are cached in memory and on
disk (`kernel_cache_dir()/selfcheck.json`, printed by `langneuron info`), keyed by a build id
that changes with the package's op sources, the native modules and the torch / triton versions,
so a rebuilt kernel is checked again. `langneuron info --selftest` reruns every check.

`ops/dispatch.py` decides when a check runs (never for the reference, nor while torch.compile
traces or a CUDA graph is captured; LANGNEURON_SELFCHECK=0 turns it off) and passes the
function to check, with whatever options the implementation asks for (a fixed GPU tile).
"""
from __future__ import annotations

import hashlib
import json
import pathlib
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Callable, Dict, Optional

import torch

from . import conformance, settings

_LOCK = threading.RLock()   # re-entrant: checking "vendor" may resolve its element-wise impl
_MEMORY: Dict[str, "Result"] = {}
_DISK: Optional[Dict[str, dict]] = None
_BUILD_ID: Optional[str] = None
_WARNED: set = set()

@dataclass
class Result:
    ok: bool
    key: str
    case: str = ""          # the failing case, in words
    message: str = ""       # what differed
    seconds: float = 0.0

    def reason(self) -> str:
        return (f"failed its self-check on the case '{self.case}' ({self.message}); "
                f"`langneuron info --selftest` reruns it")


def cache_path() -> pathlib.Path:
    return settings.kernel_cache_dir() / "selfcheck.json"


def build_id() -> str:
    """Changes whenever the code that could make a kernel wrong changes."""
    global _BUILD_ID
    if _BUILD_ID is None:
        h = hashlib.sha1()
        h.update(torch.__version__.encode())
        try:
            import triton
            h.update(triton.__version__.encode())
        except Exception:  # noqa: BLE001 - triton is optional
            h.update(b"no-triton")
        here = pathlib.Path(__file__).resolve().parent
        for path in sorted(here.glob("*.py")):
            h.update(path.name.encode() + path.read_bytes())
        for path in sorted(here.parent.glob("_C*")):
            st = path.stat()
            h.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns}".encode())
        _BUILD_ID = h.hexdigest()[:16]
    return _BUILD_ID


def device_key(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{torch.cuda.get_device_name(index)}"
    return device.type


def _fn_id(impl) -> str:
    fn = impl.fn
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def key_of(impl, device: torch.device, dtype: torch.dtype) -> str:
    return "|".join((impl.op, impl.name, _fn_id(impl), device_key(device), str(dtype),
                     build_id()))


def forget() -> None:
    """Forget the results held in memory (the disk cache is read again on the next check)."""
    global _DISK
    with _LOCK:
        _MEMORY.clear()
        _WARNED.clear()
        _DISK = None


def store_json(path: pathlib.Path, data: Any) -> None:
    """Write a kernel cache file atomically; a read-only home only means the work is redone in
    the next process, so errors are swallowed."""
    from ..stats import write_atomic
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(data, indent=1, sort_keys=True).encode())
    except OSError:
        pass


def _load_disk() -> Dict[str, dict]:
    global _DISK
    if _DISK is None:
        try:
            _DISK = json.loads(cache_path().read_text())
        except (OSError, ValueError):
            _DISK = {}
    return _DISK


def _save(result: Result) -> None:
    disk = _load_disk()
    disk[result.key] = asdict(result)
    store_json(cache_path(), disk)


def failure(impl, device: torch.device, dtype: torch.dtype, target: Callable) -> str:
    """'' when `impl` may run on (device, dtype), else the reason it is disabled. Runs the
    check of `target` (impl's function with its check options) on first use."""
    key = key_of(impl, device, dtype)
    result = _MEMORY.get(key) or check(impl, device, dtype, target, key=key)
    if result.ok:
        return ""
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(f"langneuron_ext: the {impl.op} implementation {impl.name!r} is disabled "
                      f"on {device_key(device)} for {dtype}: it {result.reason()}. The next "
                      f"implementation is used; the result is cached in {cache_path()}.",
                      RuntimeWarning, stacklevel=5)
    return f"disabled: it {result.reason()}"


def check(impl, device: torch.device, dtype: torch.dtype, target: Callable, *,
          key: Optional[str] = None, force: bool = False) -> Result:
    """Run (or with `force`, rerun) the self-check of `impl` by calling `target`; cached in
    memory and on disk."""
    key = key or key_of(impl, device, dtype)
    with _LOCK:
        if not force:
            if key in _MEMORY:
                return _MEMORY[key]
            stored = _load_disk().get(key)
            if stored is not None:
                _MEMORY[key] = Result(**stored)
                return _MEMORY[key]
        start = time.perf_counter()
        case, message = _run_cases(impl.op, target, device, dtype)
        result = Result(ok=not case, key=key, case=case, message=message,
                        seconds=round(time.perf_counter() - start, 3))
        _MEMORY[key] = result
        _save(result)
        return result


def _run_cases(op: str, target: Callable, device: torch.device, dtype: torch.dtype):
    """('', '') when every conformance case of `op` matches, else (failing case, what
    differed); a crash counts as a mismatch."""
    try:
        return conformance.first_mismatch(op, target, device, dtype)
    except Exception as exc:  # noqa: BLE001 - a crash disables it just like a mismatch
        return "any", f"{type(exc).__name__}: {conformance.first_line(exc)}"
