"""The registry of implementations and the one place that decides which one runs.

Two ops share it (`ops/library.py` defines them):
- `act_stats` (ACT_STATS): `h = steer(act(gate)) * up` with statistics; implementations "cuda",
  "triton", "cpu", "torch" (the reference).
- `gated_mlp_stats` (GATED_MLP): the same with the two projections, `gate = x @ W_gate^T`,
  `up = x @ W_up^T`; implementations "triton_gemm" (the GEMM-epilogue kernel) and "vendor"
  (torch's GEMM, then the best act_stats).

Every implementation lives in one module `ops/impl_<name>.py` that calls `register` at import;
this module imports every `impl_*` module it finds in the package on first use (adding a backend
is one new module, docs/contributing.md). An implementation says *why* it cannot run an input
(`not_supported_reasons`: the build is missing, the device or dtype is wrong, the arguments need
a feature it lacks, or its first-use self-check failed on this device, `ops/selfcheck.py`), and
an error that finds none lists every implementation's reasons.

The implementation name is validated here only (`get`). `select_impl` walks the act_stats list
by priority once per patched module; `resolve` is the per-call path for a named implementation
(one dict lookup after its first call). `select_gated` picks the gated implementation, from a
one-time measurement cached on disk where another one than "vendor" may run automatically.
The environment switches (LANGNEURON_IMPL, LANGNEURON_GATED_IMPL, ...) are read in
`ops/settings.py`. A missing native build never fails at import: it warns once and the next
implementation is used.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import pathlib
import pkgutil
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import torch

from . import selfcheck, settings
from .args import FEATURES, ActArgs, GatedArgs

ImplFn = Callable[..., torch.Tensor]

ACT_STATS = "act_stats"
GATED_MLP = "gated_mlp_stats"
OPS = (ACT_STATS, GATED_MLP)
REFERENCE = "torch"          # act_stats' oracle, always present
VENDOR = "vendor"            # gated_mlp_stats' default
IMPL_PREFIX = "impl_"        # modules of the package that register implementations

_FEATURE_WORDS = {"hist": "hist (histograms)", "amax": "amax (running maxima)",
                  "scale": "steer_mode 3 (scale)"}


@dataclass
class Implementation:
    """One backend of one op.

    act_stats' `fn` takes the arguments of `reference.act_stats_torch` (2-D, validated);
    gated_mlp_stats' `fn` takes `(args: GatedArgs, act_impl: Optional[str])`. Both may take
    keyword options (`check_options`) that change how, never what, they compute.
    """
    name: str
    priority: int                                   # higher runs first
    fn: ImplFn
    available: Callable[[], Tuple[bool, str]]       # (ok, reason when not ok)
    supports: Callable[[str, torch.dtype], bool]    # (device type, dtype) -> bool
    # May automatic selection pick it for (device type, dtype)? None = wherever it supports.
    # (triton runs on CPU only under the slow interpreter: explicit requests only.)
    auto: Optional[Callable[[str, torch.dtype], bool]] = None
    op: str = ACT_STATS
    # Reasons it cannot take these arguments (the op's validated argument object); [] = can.
    argument_reasons: Optional[Callable[[Any], List[str]]] = None
    # The optional parts of the op (args.FEATURES: "hist", "amax", "scale") it computes; a call
    # that uses one it lacks goes to the next implementation that has it (`for_arguments`).
    features: Tuple[str, ...] = FEATURES
    # Keyword arguments its self-check passes to `fn` on a device, e.g. a fixed tile instead of
    # autotuning every case (a GPU autotunes 6-7 configs per flag combination: about a minute).
    check_options: Callable[[torch.device], Dict[str, Any]] = field(
        default=lambda device: {})

    def missing_features(self, args: Any) -> List[str]:
        """Reasons, one per optional part of the op that `args` uses and this lacks ([] when
        it has them all: then `args` is not even looked at)."""
        lacking = [f for f in FEATURES if f not in self.features]
        if not lacking or args is None:
            return []
        stats = getattr(args, "stats", args)
        return [f"{_FEATURE_WORDS[f]} is not implemented in {self.name} yet"
                for f in lacking if stats.needs(f)]

    def not_supported_reasons(self, device: torch.device | str,
                              dtype: torch.dtype = torch.float32, args: Any = None,
                              selfcheck: bool = True) -> List[str]:
        """Why this implementation cannot run here ([] when it can): build, device / dtype,
        the arguments (when given), and a failed first-use self-check on this device."""
        device = torch.device(device)
        reasons = []
        ok, why = self.available()
        if not ok:
            reasons.append(why)
        if not self.supports(device.type, dtype):
            reasons.append(f"does not run on {device.type} tensors of {dtype}")
        if args is not None and self.argument_reasons is not None:
            reasons += self.argument_reasons(args)
        reasons += self.missing_features(args)
        if selfcheck and not reasons and self.name != REFERENCE:
            failure = _selfcheck_failure(self, device, dtype)
            if failure:
                reasons.append(failure)
        return reasons

    def picks_automatically(self, device_type: str, dtype: torch.dtype) -> bool:
        return self.auto is None or self.auto(device_type, dtype)


_REGISTRY: Dict[str, Dict[str, Implementation]] = {op: {} for op in OPS}
_WARNED: set = set()
_LOADED = False
_RESOLVED: Dict[tuple, Implementation] = {}     # (op, name, device, dtype) -> checked impl
_GATED_CHOSEN: Dict[tuple, str] = {}            # (device, dtype, H, I, M bucket) -> name
_CHOICES: Optional[Dict[str, str]] = None       # measured gated choices, read from disk once


def _ops_registry(op: str) -> Dict[str, Implementation]:
    if op not in _REGISTRY:
        raise ValueError(f"unknown op {op!r}; expected one of {', '.join(OPS)}")
    return _REGISTRY[op]


def register(impl: Implementation) -> Implementation:
    """Add (or replace) `impl` for its op; returns it."""
    _ops_registry(impl.op)[impl.name] = impl
    forget()
    return impl


def unregister(name: str, op: str = ACT_STATS) -> None:
    _ops_registry(op).pop(name, None)
    forget()


@contextlib.contextmanager
def registered(impl: Implementation) -> Iterator[Implementation]:
    """`with registered(impl):` the implementation exists inside the block only (tests,
    experiments); whatever it replaced comes back afterwards."""
    _load_builtin()
    before = _ops_registry(impl.op).get(impl.name)
    register(impl)
    try:
        yield impl
    finally:
        if before is None:
            unregister(impl.name, impl.op)
        else:
            register(before)


def forget() -> None:
    """Drop every in-memory decision (resolved names, gated choices, self-check results read
    so far): the next call decides again, reading the disk caches anew."""
    global _CHOICES
    _RESOLVED.clear()
    _GATED_CHOSEN.clear()
    _CHOICES = None
    selfcheck.forget()


def _load_builtin() -> None:
    """Import every `impl_*` module of the package once; each registers what it can."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    here = pathlib.Path(__file__).resolve().parent
    for module in sorted(m.name for m in pkgutil.iter_modules([str(here)])
                         if m.name.startswith(IMPL_PREFIX)):
        try:
            importlib.import_module(f"{__package__}.{module}")
        except Exception as exc:  # a broken optional backend must never break import
            warn_once(module, f"langneuron_ext: the implementations in ops/{module}.py could "
                              f"not be loaded ({type(exc).__name__}: {exc}); the others are "
                              f"used.")


def warn_once(key: str, message: str) -> None:
    """One RuntimeWarning per key and process (native loading shares the keys, so a missing
    build and the fallback it causes are one warning)."""
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def implementations(op: str = ACT_STATS) -> List[Implementation]:
    """Every registered implementation of `op`, highest priority first."""
    _load_builtin()
    return sorted(_ops_registry(op).values(), key=lambda i: -i.priority)


def get(name: str, op: str = ACT_STATS) -> Implementation:
    """The implementation called `name`: the one place an implementation name is checked."""
    _load_builtin()
    registry = _ops_registry(op)
    impl = registry.get(name) if isinstance(name, str) else None
    if impl is None:
        raise ValueError(f"unknown implementation {name!r} of {op}; known: "
                         f"{', '.join(registry)}")
    return impl


def describe_reasons(op: str, device: torch.device | str, dtype: torch.dtype,
                     args: Any = None) -> str:
    """'name: reason; ...' for every implementation of `op` ('ok' for those that can run)."""
    parts = []
    for impl in implementations(op):
        reasons = impl.not_supported_reasons(device, dtype, args)
        parts.append(f"{impl.name}: {'; '.join(reasons) if reasons else 'ok'}")
    return " | ".join(parts)


def resolve(name: str, device: torch.device | str, dtype: torch.dtype,
            op: str = ACT_STATS, args: Any = None) -> Implementation:
    """The implementation `name` of `op`, checked to run on (device, dtype): after the first
    call per key this is one dict lookup (the patch names its implementation once per module
    and calls the op with it on every forward). Raises with the reasons when it cannot run."""
    key = (op, name, device, dtype)
    impl = _RESOLVED.get(key)
    if impl is not None and args is None:
        return impl
    impl = get(name, op)
    reasons = impl.not_supported_reasons(device, dtype, args)
    if reasons:
        raise RuntimeError(f"{op} implementation {name!r} cannot run on {device} with {dtype}: "
                           f"{'; '.join(reasons)}. Every implementation: "
                           f"{describe_reasons(op, device, dtype, args)}")
    if args is None:
        _RESOLVED[key] = impl
    return impl


def select_impl(device: torch.device | str, dtype: torch.dtype = torch.float32,
                requested: Optional[str] = None) -> str:
    """Name of the act_stats implementation to use for tensors on `device` with `dtype`.

    `requested` (or LANGNEURON_IMPL) forces one; if it cannot run here the error lists why, for
    every implementation. Otherwise the first by priority that can run (available, supports the
    device and dtype, allowed automatically, passed its self-check).
    """
    _load_builtin()
    device = torch.device(device)
    requested = requested or settings.requested_impl()
    if requested:
        return resolve(requested, device, dtype).name
    for impl in implementations():
        ok, reason = impl.available()
        if not ok:
            if impl.supports(device.type, dtype):
                warn_once(impl.name, f"langneuron_ext: {impl.name} implementation unavailable "
                                     f"({reason}); using a slower one.")
            continue
        if not impl.supports(device.type, dtype) \
                or not impl.picks_automatically(device.type, dtype):
            continue
        if impl.not_supported_reasons(device, dtype):   # e.g. its self-check failed here
            continue
        return impl.name
    return REFERENCE


def for_arguments(name: str, args: Any, op: str = ACT_STATS) -> str:
    """`name`, or when it lacks an optional part of the op that `args` uses (hist, amax,
    scale), the first implementation by priority that has it and can run here, with one
    warning giving the reason. A dict lookup when `name` has every feature."""
    impl = get(name, op)
    missing = impl.missing_features(args)
    if not missing:
        return name
    x = _input(args)
    for other in implementations(op):
        if other is impl or other.missing_features(args) \
                or not other.picks_automatically(x.device.type, x.dtype) \
                or other.not_supported_reasons(x.device, x.dtype, args):
            continue
        warn_once(f"{op}:{name}->{other.name}:{missing}",
                  f"langneuron_ext: {'; '.join(missing)}; using {other.name} for these calls.")
        return other.name
    raise RuntimeError(f"no {op} implementation can run this call: "
                       f"{describe_reasons(op, x.device, x.dtype, args)}")


def choose_act(args: Any, requested: Optional[str] = None) -> str:
    """The act_stats implementation for a validated `ActArgs` (or the element-wise step of a
    `GatedArgs`): `requested`, LANGNEURON_IMPL or the best for the device, then `for_arguments`."""
    x = _input(args)
    if requested is None:
        name = select_impl(x.device, x.dtype)
    else:
        name = resolve(requested, x.device, x.dtype).name
    return for_arguments(name, args)


def _input(args: Any) -> torch.Tensor:
    """The tensor whose device and dtype a validated ActArgs / GatedArgs runs on."""
    return args.gate if isinstance(args, ActArgs) else args.x


def available_for(device_type: str, dtype: torch.dtype = torch.float32) -> List[str]:
    """Names of the act_stats implementations built here that run on (device type, dtype)."""
    return [i.name for i in implementations()
            if i.available()[0] and i.supports(device_type, dtype)]


def under_test(device_type: str = "cpu", op: str = ACT_STATS) -> List[str]:
    """Names of the implementations of `op` that can run on `device_type` here, including those
    automatic selection never picks there (triton under the interpreter): what tests cover."""
    return [i.name for i in implementations(op) if i.available()[0]
            and any(i.supports(device_type, d) for d in (torch.float32, torch.float16,
                                                          torch.bfloat16))]


# ---- self-checks -----------------------------------------------------------------------------

def _selfcheck_failure(impl: Implementation, device: torch.device, dtype: torch.dtype) -> str:
    """'' when `impl` passed (or need not pass) its self-check on (device, dtype), else why it
    is disabled; the check runs on first use, never while torch.compile traces or a CUDA graph
    is captured (it would launch kernels there)."""
    if not settings.selfcheck_enabled() or device.type == "meta" or _busy():
        return ""
    return selfcheck.failure(impl, device, dtype, selfcheck_target(impl, device))


def selfcheck_target(impl: Implementation, device: torch.device) -> Callable:
    """What the self-check of `impl` on `device` calls: `impl.fn` with the keyword options of
    its self-check (for the gated op's vendor glue: the reference as the element-wise step,
    which is checked on its own)."""
    options = impl.check_options(device)
    if not options:
        return impl.fn

    def call(*args):
        return impl.fn(*args, **options)
    call.__name__ = impl.name
    return call


def run_selfchecks(devices: List[torch.device],
                   dtypes=(torch.float32, torch.float16, torch.bfloat16)) -> List[dict]:
    """Rerun every self-check for every implementation on `devices` (`info --selftest`)."""
    rows = []
    for op in OPS:
        for impl in implementations(op):
            for device in devices:
                for dtype in dtypes:
                    if impl.name == REFERENCE or not impl.supports(device.type, dtype):
                        continue
                    reasons = impl.not_supported_reasons(device, dtype, selfcheck=False)
                    row = dict(op=op, impl=impl.name, device=str(device), dtype=str(dtype))
                    if reasons:
                        rows.append(dict(row, status="not run", detail="; ".join(reasons)))
                        continue
                    result = selfcheck.check(impl, device, dtype, selfcheck_target(impl, device),
                                             force=True)
                    rows.append(dict(row, status="pass" if result.ok else "FAIL",
                                     detail="" if result.ok else
                                     f"{result.case}: {result.message}",
                                     seconds=result.seconds))
    return rows


def _busy() -> bool:
    """True while torch.compile traces or a CUDA graph is captured: no kernels may run."""
    if torch.compiler.is_compiling():
        return True
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


# ---- the gated op: measured choice -----------------------------------------------------------

def m_bucket(M: int) -> int:
    """Rows rounded up to a power of two (at least 16): one measured choice per bucket."""
    return max(16, 1 << max(0, (M - 1).bit_length()))


def choice_cache_path() -> pathlib.Path:
    return settings.kernel_cache_dir() / "gated_choice.json"


def _choice_key(device: torch.device, dtype: torch.dtype, H: int, I: int, M: int) -> str:
    return (f"{selfcheck.device_key(device)}|{dtype}|H={H}|I={I}|M<={m_bucket(M)}|"
            f"{selfcheck.build_id()}")


def _choices() -> Dict[str, str]:
    global _CHOICES
    if _CHOICES is None:
        try:
            _CHOICES = json.loads(choice_cache_path().read_text())
        except (OSError, ValueError):
            _CHOICES = {}
    return _CHOICES


def _store_choice(key: str, name: str) -> None:
    choices = _choices()
    choices[key] = name
    selfcheck.store_json(choice_cache_path(), choices)


def select_gated(args: GatedArgs, requested: Optional[str] = None) -> str:
    """The gated implementation for these arguments: `requested`, else LANGNEURON_GATED_IMPL,
    else the measured choice for (device, dtype, H, I, M bucket), else "vendor"; then
    `for_arguments` (an implementation lacking a feature the call uses hands it on)."""
    requested = requested or settings.requested_gated_impl()
    device, dtype = args.x.device, args.x.dtype
    if requested:
        return for_arguments(resolve(requested, device, dtype, GATED_MLP, args).name, args,
                             GATED_MLP)
    key = (device, dtype, args.H, args.I, m_bucket(args.M))
    name = _GATED_CHOSEN.get(key)
    if name is None:
        name = VENDOR
        stored = _choices().get(_choice_key(device, dtype, args.H, args.I, args.M))
        if stored is None and _contenders(device, dtype) and settings.gated_measure_enabled() \
                and not _busy():
            stored = measure(args)["choice"]
        impl = _ops_registry(GATED_MLP).get(stored) if stored is not None else None
        if impl is not None and not impl.not_supported_reasons(device, dtype, args):
            name = stored
        _GATED_CHOSEN[key] = name
    return for_arguments(name, args, GATED_MLP)


def _contenders(device: torch.device, dtype: torch.dtype) -> List[str]:
    """Gated implementations besides vendor that automatic selection may pick here (on CPU
    none: triton_gemm there is the interpreter), i.e. whether measuring is worth it."""
    return [i.name for i in implementations(GATED_MLP)
            if i.name != VENDOR and i.supports(device.type, dtype)
            and i.picks_automatically(device.type, dtype) and i.available()[0]]


def time_ms(fn: Callable[[], object], reps: int) -> float:
    """Median wall time of `fn` in milliseconds (after one warm-up call; GPUs synchronised)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    fn()
    sync()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    times.sort()
    return 1e3 * times[len(times) // 2]


def measure(args: GatedArgs, reps: int = 10, store: bool = True,
            timer: Callable[[str, Callable[[], object], int], float] = None) -> dict:
    """Time every gated implementation that can run on these shapes (fresh random inputs of
    the same shapes, scratch statistic buffers: the caller's buffers are untouched) and store
    the fastest for (device, dtype, H, I, M bucket). Returns {impl: ms, "choice": name}.
    `timer(name, fn, reps)` replaces the clock (tests)."""
    device, dtype = args.x.device, args.x.dtype
    M = m_bucket(args.M)
    x = torch.randn(M, args.H, device=device, dtype=dtype)
    w = torch.randn(2 * args.I, args.H, device=device, dtype=dtype) / args.H ** 0.5
    K = args.stats.K or 1
    probe = GatedArgs.validate(
        x, w[:args.I], w[args.I:], args.act,
        row_lang=torch.zeros(M, dtype=torch.int32, device=device),
        counts=torch.zeros(K, args.I, dtype=torch.int64, device=device))
    timings: Dict[str, float] = {}
    for impl in implementations(GATED_MLP):
        if impl.not_supported_reasons(device, dtype, probe) \
                or not impl.picks_automatically(device.type, dtype):
            continue
        def run(impl=impl):
            return impl.fn(probe, None)
        timings[impl.name] = timer(impl.name, run, reps) if timer else time_ms(run, reps)
    choice = min(timings, key=timings.get) if timings else VENDOR
    if store:
        _store_choice(_choice_key(device, dtype, args.H, args.I, args.M), choice)
    return dict(timings, choice=choice)
