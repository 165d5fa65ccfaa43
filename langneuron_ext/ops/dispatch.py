"""Which implementation of each op runs where: one registry for both ops.

Two ops share this registry:
- `act_stats` (ACT_STATS): the element-wise op `h = steer(act(gate)) * up` with statistics;
  implementations "cuda", "triton", "cpu", "torch" (the reference).
- `gated_mlp_stats` (GATED_MLP): the same with the two projections, `gate = x @ W_gate^T`,
  `up = x @ W_up^T`; implementations "vendor" (torch's GEMM, then the best act_stats) and
  "triton_gemm" (the GEMM-epilogue kernel). Selection for it lives in `ops/gated.py`.

Each implementation registers with a priority and says why it cannot run rather than just
that it cannot (`not_supported_reasons`): the build is missing, the device or dtype is wrong,
or its first-use self-check (`ops/selfcheck.py`) failed on this device. `select_impl` walks
the act_stats list by priority, once per patched module; `resolve` is the cheap per-call path
for an explicitly named implementation (a dict lookup after the first call).
`LANGNEURON_IMPL=cuda|triton|cpu|torch` overrides. A missing native build never fails at
import: it warns once and the next entry is used.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch

from . import settings

ImplFn = Callable[..., torch.Tensor]

ACT_STATS = "act_stats"
GATED_MLP = "gated_mlp_stats"


@dataclass
class Implementation:
    name: str
    priority: int                                   # higher runs first
    # act_stats: same signature as reference.act_stats_torch; gated_mlp_stats: fn(GatedArgs)
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
    features: Tuple[str, ...] = ("hist", "amax", "scale")

    def missing_features(self, args: Any) -> List[str]:
        """Reasons, one per optional part of the op that `args` uses and this lacks ([] when
        it has them all: then `args` is not even looked at)."""
        from .args import FEATURES
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
        if selfcheck and not reasons:
            from . import selfcheck as sc
            failure = sc.failure(self, device, dtype)
            if failure:
                reasons.append(failure)
        return reasons


_FEATURE_WORDS = {"hist": "hist (histograms)", "amax": "amax (running maxima)",
                  "scale": "steer_mode 3 (scale)"}

_REGISTRY: Dict[str, Implementation] = {}          # act_stats implementations
_GATED_REGISTRY: Dict[str, Implementation] = {}    # gated_mlp_stats implementations
_WARNED: set = set()
_LOADED = False
_RESOLVED: Dict[tuple, Implementation] = {}         # (op, name, device, dtype) -> checked impl


def _registry(op: str) -> Dict[str, Implementation]:
    if op == ACT_STATS:
        return _REGISTRY
    if op == GATED_MLP:
        return _GATED_REGISTRY
    raise ValueError(f"unknown op {op!r}; expected {ACT_STATS!r} or {GATED_MLP!r}")


def register(impl: Implementation) -> None:
    _registry(impl.op)[impl.name] = impl


def _load_builtin() -> None:
    """Import the implementation modules once; each registers itself if it can."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    from . import reference  # noqa: F401  (always present)

    register(Implementation("torch", 0, reference.act_stats_torch,
                            lambda: (True, ""), lambda device, dtype: True))
    for module in ("cpu", "triton_elementwise", "cuda", "gated"):
        try:
            __import__(f"{__package__}.{module}")
        except Exception as exc:  # a broken optional backend must never break import
            _warn_once(module, f"langneuron_ext: the {module} implementation could not be "
                               f"loaded ({exc}); falling back to the next one.")


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def implementations(op: str = ACT_STATS) -> List[Implementation]:
    _load_builtin()
    return sorted(_registry(op).values(), key=lambda i: -i.priority)


def get(name: str, op: str = ACT_STATS) -> Implementation:
    _load_builtin()
    registry = _registry(op)
    if name not in registry:
        raise ValueError(f"unknown implementation {name!r} of {op}; known: "
                         f"{', '.join(registry)}")
    return registry[name]


def describe_reasons(op: str, device: torch.device | str, dtype: torch.dtype,
                     args: Any = None) -> str:
    """'name: reason; ...' for every implementation of `op` that cannot run here."""
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
    if impl is not None and _registry(op).get(name) is impl and args is None:
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

    `requested` (or the LANGNEURON_IMPL environment variable) forces one; if it cannot run here
    the error lists why, for every implementation. Otherwise the first by priority that can run
    (available, supports the device and dtype, allowed automatically, passed its self-check).
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
                _warn_once(impl.name, f"langneuron_ext: {impl.name} implementation unavailable "
                                      f"({reason}); using a slower one.")
            continue
        if not impl.supports(device.type, dtype) or not (impl.auto is None
                                                         or impl.auto(device.type, dtype)):
            continue
        if impl.not_supported_reasons(device, dtype):   # e.g. its self-check failed here
            continue
        return impl.name
    return "torch"


def for_arguments(name: str, args: Any, op: str = ACT_STATS) -> str:
    """`name`, or when it lacks an optional part of the op that `args` uses (hist, amax,
    scale), the first implementation by priority that has it and can run here, with one
    warning giving the reason. A dict lookup when `name` has every feature."""
    impl = get(name, op)
    missing = impl.missing_features(args)
    if not missing:
        return name
    device, dtype = _device_dtype(args)
    for other in implementations(op):
        if other is impl or other.missing_features(args):
            continue
        if other.auto is not None and not other.auto(device.type, dtype):
            continue
        if other.not_supported_reasons(device, dtype, args):
            continue
        _warn_once(f"{op}:{name}->{other.name}:{missing}",
                   f"langneuron_ext: {'; '.join(missing)}; using {other.name} for these calls.")
        return other.name
    raise RuntimeError(f"no {op} implementation can run this call: "
                       f"{describe_reasons(op, device, dtype, args)}")


def _device_dtype(args: Any) -> Tuple[torch.device, torch.dtype]:
    x = getattr(args, "gate", None)
    if x is None:
        x = args.x
    return x.device, x.dtype


def available_for(device_type: str, dtype: torch.dtype = torch.float32) -> List[str]:
    return [i.name for i in implementations()
            if i.available()[0] and i.supports(device_type, dtype)]
