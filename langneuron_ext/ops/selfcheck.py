"""First-use self-check: an implementation proves itself on this device before it is trusted.

The first time an implementation of either op is about to run on a (device, dtype, build), it
is compared with the reference on a small random case that covers every activation, several
language slots, padding rows (negative language ids), both steering modes and rows outside
any steering group, the sums / sums of squares, and a `gate_up` view (the gated op: a fused
[2I, H] weight). A mismatch or a crash disables it for that key, with ONE warning naming the
case, and dispatch moves on to the next implementation. Results are cached in memory and on
disk (`kernel_cache_dir()/selfcheck.json`, printed by `langneuron info`), keyed by a build id
that changes with the package's op sources, the native modules and the torch / triton versions,
so a rebuilt kernel is checked again. `langneuron info --selftest` reruns every check.

The reference ("torch") is never checked against itself. Nothing is checked while torch.compile
traces or a CUDA graph is being captured (the check would launch kernels there); it happens on
the next eager call. LANGNEURON_SELFCHECK=0 turns it off.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pathlib
import threading
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional

import torch

from . import settings
from .reference import ACTIVATIONS

_LOCK = threading.RLock()   # re-entrant: checking "vendor" checks its element-wise impl
_MEMORY: Dict[str, "Result"] = {}
_DISK: Optional[Dict[str, dict]] = None
_BUILD_ID: Optional[str] = None
_WARNED: set = set()
REFERENCE = "torch"


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


def _busy() -> bool:
    """True while torch.compile traces or a CUDA graph is captured: no kernels may run."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


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
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(disk, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass   # a read-only home: the check is simply repeated next process


def failure(impl, device: torch.device, dtype: torch.dtype) -> str:
    """'' when `impl` may run on (device, dtype) (passed, not applicable, or deferred), else
    the reason it is disabled. Runs the check on first use."""
    if impl.name == REFERENCE or not settings.selfcheck_enabled():
        return ""
    if device.type == "meta":
        return ""
    key = key_of(impl, device, dtype)
    result = _MEMORY.get(key)
    if result is None:
        if _busy():
            return ""
        result = check(impl, device, dtype, key=key)
    if result.ok:
        return ""
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(f"langneuron_ext: the {impl.op} implementation {impl.name!r} is disabled "
                      f"on {device_key(device)} for {dtype}: it {result.reason()}. The next "
                      f"implementation is used; the result is cached in {cache_path()}.",
                      RuntimeWarning, stacklevel=4)
    return f"disabled: it {result.reason()}"


def check(impl, device: torch.device, dtype: torch.dtype, *, key: Optional[str] = None,
          force: bool = False) -> Result:
    """Run (or with `force`, rerun) the self-check of `impl`; cached in memory and on disk."""
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
        case, message = _run_cases(impl, device, dtype)
        result = Result(ok=not case, key=key, case=case, message=message,
                        seconds=round(time.perf_counter() - start, 3))
        _MEMORY[key] = result
        _save(result)
        return result


def _act_cases(device, dtype):
    """(name, make_inputs kwargs) covering activations, slots, padding, steering, views."""
    cases = []
    for i, act in enumerate(ACTIVATIONS):
        layout = ("contiguous", "gate_up")[i % 2]
        cases.append((f"act={act} layout={layout} K=3 padding rows, 3 steering groups",
                      dict(M=37, I=45, K=3, act=act, layout=layout, negative_fraction=0.25,
                           sums_dtype=torch.float64, sumsq_dtype=torch.float32,
                           steer_groups=3, negative_group_fraction=0.25, seed=100 + i)))
    cases.append(("plain MLP (no up), default language and steering group",
                  dict(M=21, I=33, K=1, act="gelu", gated=False, default_lang=True,
                       sums_dtype=torch.float32, steer_groups=1, default_group=True, seed=99)))
    return [(n, dict(kw, dtype=dtype, device=device)) for n, kw in cases]


@contextlib.contextmanager
def _fixed_triton_tiles(device: torch.device):
    """On a GPU the Triton kernels are checked with one fixed tile: autotuning every case's
    flag combination (6-7 configs each) would make the first use take about a minute; the
    tile changes how work is split, not what is computed."""
    if device.type != "cuda":
        yield
        return
    try:
        from . import triton_elementwise as te
        from . import triton_gemm as tg
    except Exception:  # noqa: BLE001 - triton absent: nothing to fix
        yield
        return
    saved = te.FORCED_TILE, tg.FORCED_TILE
    te.FORCED_TILE, tg.FORCED_TILE = saved[0] or (32, 128), saved[1] or (64, 64, 32)
    try:
        yield
    finally:
        te.FORCED_TILE, tg.FORCED_TILE = saved


def _run_cases(impl, device, dtype):
    """('', '') when every case matches, else (failing case, what differed)."""
    with _fixed_triton_tiles(device):
        return _run_cases_unguarded(impl, device, dtype)


def _run_cases_unguarded(impl, device, dtype):
    from . import testing
    try:
        if impl.op == "act_stats":
            for name, kwargs in _act_cases(device, dtype):
                inputs = testing.make_inputs(**kwargs)
                try:
                    testing.assert_matches_reference(impl.fn, **inputs)
                except AssertionError as exc:
                    return name, _first_line(exc)
        else:
            for name, args in _gated_cases(device, dtype):
                mismatch = _compare_gated(impl, args)
                if mismatch:
                    return name, mismatch
    except Exception as exc:  # noqa: BLE001 - a crash disables it just like a mismatch
        return "any", f"{type(exc).__name__}: {_first_line(exc)}"
    return "", ""


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def exact_gated_operands(M: int, H: int, I: int, dtype, device, seed: int, fused: bool):
    """x [M, H] and weights [I, H] whose products and sums are exact in every dtype (small
    dyadic values), so every summation order of the GEMM gives the same gate and up."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randint(-4, 5, (M, H), generator=gen).float() / 4).to(dtype).to(device)
    w = (torch.randint(-4, 5, (2 * I, H), generator=gen).float() / 8).to(dtype).to(device)
    if fused:
        return x, w[:I], w[I:]
    return x, w[:I].clone(), w[I:].clone()


def _gated_cases(device, dtype):
    from .args import GatedArgs
    out = []
    for i, act in enumerate(ACTIVATIONS):
        fused = i % 2 == 1
        x, w_gate, w_up = exact_gated_operands(29, 24, 40, dtype, device, 200 + i, fused)
        gen = torch.Generator().manual_seed(300 + i)
        row_lang = torch.randint(-1, 3, (29,), generator=gen, dtype=torch.int32).to(device)
        row_group = torch.randint(-1, 2, (29,), generator=gen, dtype=torch.int32).to(device)
        mode = torch.randint(0, 3, (2, 40), generator=gen).to(torch.int8).to(device)
        value = torch.randn(2, 40, generator=gen).to(device)
        counts = torch.randint(0, 9, (3, 40), generator=gen).to(device)
        sums = torch.rand(3, 40, generator=gen, dtype=torch.float64).to(device)
        args = GatedArgs.validate(x, w_gate, w_up, act, row_lang=row_lang, counts=counts,
                                  sums=sums, row_group=row_group, steer_mode=mode,
                                  steer_value=value)
        out.append((f"gated act={act} {'fused gate_up weight' if fused else 'two weights'} K=3 "
                    f"padding rows, 2 steering groups", args))
    return out


def _compare_gated(impl, args) -> str:
    """'' when impl's h and buffers match the reference on `args`, else what differs."""
    import dataclasses

    from . import testing
    from .args import StatArgs
    from .reference import act_stats_torch

    def fresh(stats: StatArgs) -> StatArgs:
        return dataclasses.replace(stats, counts=_clone(stats.counts), sums=_clone(stats.sums),
                                   sumsq=_clone(stats.sumsq))

    mine = dataclasses.replace(args, stats=fresh(args.stats))
    h = impl.fn(mine)
    ref = fresh(args.stats)
    gate = (args.x2d.float() @ args.w_gate.float().T).to(args.x.dtype)
    up = (args.x2d.float() @ args.w_up.float().T).to(args.x.dtype)
    inputs = dict(gate=gate, up=up, act=args.act, row_lang=ref.row_lang, counts=ref.counts,
                  sums=ref.sums, sumsq=ref.sumsq, row_group=ref.row_group,
                  steer_mode=ref.steer_mode, steer_value=ref.steer_value)
    h_ref = act_stats_torch(gate.float(), up.float(), args.act, *ref.op_args())
    h = h.reshape(-1, args.I)
    if h.shape != h_ref.shape or h.dtype != args.x.dtype:
        return f"h is {h.dtype} {list(h.shape)}, expected {args.x.dtype} {list(h_ref.shape)}"
    if ref.counts is not None and not torch.equal(mine.stats.counts, ref.counts):
        return "counts differ from the reference"
    try:
        expected = h_ref.to(h.dtype).double()
        expected = torch.where(expected.isfinite(), h_ref.double(), expected)
        testing.assert_close_nonfinite(h, expected, testing.h_error_bound(inputs, h_ref), "h")
        for name, bound in testing.stats_error_bounds(dict(inputs, **{
                "counts": args.stats.counts, "sums": args.stats.sums,
                "sumsq": args.stats.sumsq})).items():
            testing.assert_close_nonfinite(getattr(mine.stats, name), getattr(ref, name),
                                           bound, name)
    except AssertionError as exc:
        return _first_line(exc)
    return ""


def _clone(t):
    return t.clone() if t is not None else None


def run_all(devices: List[torch.device], dtypes=(torch.float32, torch.float16, torch.bfloat16)
            ) -> List[dict]:
    """Rerun every self-check for every available implementation (`info --selftest`)."""
    from . import dispatch
    rows = []
    for op in (dispatch.ACT_STATS, dispatch.GATED_MLP):
        for impl in dispatch.implementations(op):
            for device in devices:
                for dtype in dtypes:
                    if impl.name == REFERENCE or not impl.supports(device.type, dtype):
                        continue
                    reasons = impl.not_supported_reasons(device, dtype, selfcheck=False)
                    row = dict(op=op, impl=impl.name, device=str(device), dtype=str(dtype))
                    if reasons:
                        rows.append(dict(row, status="not run", detail="; ".join(reasons)))
                        continue
                    result = check(impl, device, dtype, force=True)
                    rows.append(dict(row, status="pass" if result.ok else "FAIL",
                                     detail="" if result.ok else
                                     f"{result.case}: {result.message}",
                                     seconds=result.seconds))
    return rows
