"""The second op: a gated MLP's projections with statistics, `gated_mlp_stats`.

Interface contract (what `models/patch.py` relies on)
-----------------------------------------------------
    from langneuron_ext.ops import gated_mlp_stats
    h = gated_mlp_stats(x, w_gate, w_up, act="silu", impl=None, gated_impl=None,
                        row_lang=None, counts=None, sums=None, sumsq=None,
                        row_group=None, steer_mode=None, steer_value=None, hist=None,
                        hist_edges=None, amax=None, check_ids=True)

- x [..., H]; w_gate, w_up [I, H] (nn.Linear weights, no bias). They may be the two row
  halves of one fused [2I, H] weight (`gate_up_proj.weight[:I]`, `[I:]`): the vendor path then
  makes ONE F.linear call with the whole fused weight and slices it, so gate / up equal today's
  `gate_up_proj(x)[..., :I]` / `[..., I:]` bit for bit; with two weights it calls
  F.linear(x, w_gate) and F.linear(x, w_up), exactly what `gate_proj(x)` / `up_proj(x)` do.
- Returns h [..., I] in x's dtype: h = steer(act(x @ w_gate^T)) * (x @ w_up^T), and adds the
  statistics of act(gate) to counts / sums / sumsq / hist / amax in place: exactly `act_stats`
  applied to the two projections (same arguments, same semantics, same errors).
- `impl` names the element-wise implementation the vendor path uses (as for `act_stats`; None =
  the best for the device). `gated_impl` (or LANGNEURON_GATED_IMPL) forces the gated
  implementation: "vendor" (torch's GEMM, then act_stats) or "triton_gemm" (the GEMM-epilogue
  Triton kernel: gate and up never reach memory). Otherwise the choice per (device, dtype, H, I,
  M bucket) comes from a one-time measurement (the first call for that key, where another
  implementation may be picked automatically: on CUDA) cached on disk (`choice_cache_path()`,
  printed by `langneuron info`); until measured, and on CPU, it is "vendor".
- check_ids=False skips the range check of row_lang / row_group (a GPU sync); the kernels then
  ignore out-of-range ids.

Only call it for bias-free projections whose forward may be skipped (no hooks): the
projections' outputs are not materialised on the triton_gemm path.
"""
from __future__ import annotations

import json
import os
import time
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import dispatch, settings
from .args import GatedArgs
from .library import act_stats_op

VENDOR = "vendor"
TRITON_GEMM = "triton_gemm"

_CHOICES: Optional[Dict[str, str]] = None       # measured choices, loaded from disk once
_RESOLVED: Dict[tuple, str] = {}                # per-call cache: key -> implementation name


def m_bucket(M: int) -> int:
    """Rows rounded up to a power of two (at least 16): one measured choice per bucket."""
    return max(16, 1 << max(0, (M - 1).bit_length()))


def choice_cache_path():
    return settings.kernel_cache_dir() / "gated_choice.json"


def _choice_key(device: torch.device, dtype: torch.dtype, H: int, I: int, M: int) -> str:
    from .selfcheck import build_id, device_key
    return f"{device_key(device)}|{dtype}|H={H}|I={I}|M<={m_bucket(M)}|{build_id()}"


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
    path = choice_cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(choices, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except OSError:
        pass


# ---- the implementations ---------------------------------------------------------------------

def _vendor_projections(args: GatedArgs):
    """(gate, up) as [..., I] exactly as the unpatched module computes them."""
    if args.fused is not None:
        gate_up = F.linear(args.x, args.fused)
        return gate_up[..., :args.I], gate_up[..., args.I:]
    return F.linear(args.x, args.w_gate), F.linear(args.x, args.w_up)


def vendor_gated(args: GatedArgs, act_impl: Optional[str] = None) -> Tensor:
    """torch's GEMM (cuBLAS / MKL), then the best element-wise implementation."""
    gate, up = _vendor_projections(args)
    gate2, up2 = gate.reshape(-1, args.I), up.reshape(-1, args.I)
    name = act_impl or dispatch.select_impl(gate.device, gate.dtype)
    dispatch.resolve(name, gate.device, gate.dtype)
    name = dispatch.for_arguments(name, args)
    return act_stats_op(gate2, up2, args.act, *args.stats.op_args(), name)


def _triton_gemm_gated(args: GatedArgs, act_impl: Optional[str] = None) -> Tensor:
    from . import triton_gemm
    return triton_gemm.run(args)


def _triton_gemm_reasons(args: GatedArgs) -> List[str]:
    from . import triton_gemm
    return triton_gemm.not_supported_reasons(args)


def _triton_available():
    from .triton_common import triton_available
    return triton_available()


def _triton_supports(device_type: str, dtype: torch.dtype) -> bool:
    from .triton_common import FLOAT_DTYPES, device_supported
    return dtype in FLOAT_DTYPES and device_supported(device_type)


dispatch.register(dispatch.Implementation(
    VENDOR, 0, vendor_gated, lambda: (True, ""), lambda device_type, dtype: True,
    op=dispatch.GATED_MLP))
dispatch.register(dispatch.Implementation(
    TRITON_GEMM, 10, _triton_gemm_gated, _triton_available, _triton_supports,
    auto=lambda device_type, dtype: device_type == "cuda", op=dispatch.GATED_MLP,
    argument_reasons=_triton_gemm_reasons, features=()))


# ---- selection -------------------------------------------------------------------------------

def select_gated(args: GatedArgs, requested: Optional[str] = None) -> str:
    """The gated implementation for these arguments: `requested`, else LANGNEURON_GATED_IMPL,
    else the measured choice for (device, dtype, H, I, M bucket), else "vendor"."""
    requested = requested or settings.requested_gated_impl()
    device, dtype = args.x.device, args.x.dtype
    if requested:
        impl = dispatch.get(requested, dispatch.GATED_MLP)
        reasons = impl.not_supported_reasons(device, dtype, args)
        if reasons:
            every = dispatch.describe_reasons(dispatch.GATED_MLP, device, dtype, args)
            raise RuntimeError(f"gated implementation {requested!r} cannot run here: "
                               f"{'; '.join(reasons)}. Every implementation: {every}")
        return requested
    key = (device, dtype, args.H, args.I, m_bucket(args.M))
    name = _RESOLVED.get(key)
    if name is not None:
        return name
    name = VENDOR
    disk_key = _choice_key(device, dtype, args.H, args.I, args.M)
    stored = _choices().get(disk_key)
    if stored is None and _contenders(device, dtype) and settings.gated_measure_enabled() \
            and not _busy():
        stored = measure(args)["choice"]
    if stored is not None and stored in dispatch._registry(dispatch.GATED_MLP):
        impl = dispatch.get(stored, dispatch.GATED_MLP)
        if not impl.not_supported_reasons(device, dtype, args):
            name = stored
    _RESOLVED[key] = name
    return name


def _contenders(device: torch.device, dtype: torch.dtype) -> List[str]:
    """Gated implementations besides vendor that automatic selection may pick here (on CPU
    none: triton_gemm there is the interpreter), i.e. whether measuring is worth it."""
    return [i.name for i in dispatch.implementations(dispatch.GATED_MLP)
            if i.name != VENDOR and i.supports(device.type, dtype)
            and (i.auto is None or i.auto(device.type, dtype)) and i.available()[0]]


def _busy() -> bool:
    return torch.compiler.is_compiling() or (torch.cuda.is_available()
                                             and torch.cuda.is_current_stream_capturing())


def _time_ms(fn, reps: int) -> float:
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


def _timed(name: str, fn, reps: int) -> float:
    return _time_ms(fn, reps)


def measure(args: GatedArgs, reps: int = 10, store: bool = True) -> dict:
    """Time every gated implementation that can run on these shapes (fresh random inputs of
    the same shapes, scratch statistic buffers: the caller's buffers are untouched) and store
    the fastest for (device, dtype, H, I, M bucket). Returns {impl: ms, "choice": name}."""
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
    for impl in dispatch.implementations(dispatch.GATED_MLP):
        if impl.not_supported_reasons(device, dtype, probe):
            continue
        if impl.auto is not None and not impl.auto(device.type, dtype):
            continue
        timings[impl.name] = _timed(impl.name, lambda: impl.fn(probe), reps)
    choice = min(timings, key=timings.get) if timings else VENDOR
    if store:
        _store_choice(_choice_key(device, dtype, args.H, args.I, args.M), choice)
    return dict(timings, choice=choice)


def gated_mlp_stats(x: Tensor, w_gate: Tensor, w_up: Tensor, *, act: str = "silu",
                    impl: Optional[str] = None, gated_impl: Optional[str] = None,
                    row_lang: Optional[Tensor] = None, counts: Optional[Tensor] = None,
                    sums: Optional[Tensor] = None, sumsq: Optional[Tensor] = None,
                    row_group: Optional[Tensor] = None, steer_mode: Optional[Tensor] = None,
                    steer_value: Optional[Tensor] = None, hist: Optional[Tensor] = None,
                    hist_edges: Optional[Tensor] = None, amax: Optional[Tensor] = None,
                    check_ids: bool = True) -> Tensor:
    """h = steer(act(x @ w_gate^T)) * (x @ w_up^T) with per-language statistics; see the
    module docstring for the full contract."""
    args = GatedArgs.validate(x, w_gate, w_up, act, row_lang=row_lang, counts=counts,
                              sums=sums, sumsq=sumsq, row_group=row_group,
                              steer_mode=steer_mode, steer_value=steer_value, hist=hist,
                              hist_edges=hist_edges, amax=amax, check_ids=check_ids)
    name = dispatch.for_arguments(select_gated(args, gated_impl), args, dispatch.GATED_MLP)
    h = dispatch.get(name, dispatch.GATED_MLP).fn(args, impl)
    return h.reshape(args.out_shape)
