"""The `triton` implementation of the fused op: an element-wise kernel over gate/up tiles.

One program handles a tile of BLOCK_M rows x BLOCK_N neurons:
    load gate (and up) with arbitrary row / column strides (views of a fused gate_up are fine),
    upcast to fp32, a = act(gate), per-tile statistics of a (one atomic per language, neuron
    and tile; see `triton_common.tile_statistics`), steering, h = a' * up stored in gate's dtype.

Launch grid: (cdiv(M, BLOCK_M), cdiv(I, BLOCK_N)); row tiles on axis 0 because M can exceed
the 65,535 limit of the other grid axes. On a GPU the tile shape is autotuned per (I, M bucket,
flags) over the configs in `_GPU_CONFIGS`; the autotuner restores the statistic buffers after
its trial runs, so tuning never double counts. Under the Triton interpreter (TRITON_INTERPRET=1,
CPU tensors) a fixed tile is used, as DESIGN.md requires.

Registered with `ops.dispatch` as "triton" (priority 20). It supports CUDA tensors, and CPU
tensors only under the interpreter; on CPU it is never chosen automatically (the C++ `cpu`
implementation is the right choice there), so request it with `impl="triton"`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import dispatch
from .triton_common import (FLOAT_DTYPES, INTERPRET, act_code, device_supported,
                            dummy_if_none, triton, triton_available)

# Fixed tile under the interpreter: small enough that test shapes span several tiles.
INTERPRET_BLOCK_M = 32
INTERPRET_BLOCK_N = 64

if triton is not None:
    import triton.language as tl

    from .triton_common import activation, tile_statistics, tile_steering

    @triton.jit
    def _act_stats_kernel(gate_ptr, up_ptr, h_ptr, row_lang_ptr, counts_ptr, sums_ptr,
                          sumsq_ptr, row_group_ptr, mode_ptr, value_ptr,
                          M, I, M_BUCKET, stride_gm, stride_gi, stride_um, stride_ui,
                          ACT: tl.constexpr, HAS_UP: tl.constexpr, HAS_LANG: tl.constexpr,
                          HAS_COUNTS: tl.constexpr, HAS_SUMS: tl.constexpr,
                          HAS_SUMSQ: tl.constexpr, HAS_STEER: tl.constexpr,
                          HAS_GROUP: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        mask = (rm < M)[:, None] & (rn < I)[None, :]
        rm64 = rm.to(tl.int64)   # M * stride can exceed 2**31 on large batches
        rn64 = rn.to(tl.int64)
        g = tl.load(gate_ptr + rm64[:, None] * stride_gm + rn64[None, :] * stride_gi,
                    mask=mask, other=0.0).to(tl.float32)
        a = activation(g, ACT)
        if HAS_COUNTS or HAS_SUMS or HAS_SUMSQ:
            tile_statistics(a, rm, rn, M, I, row_lang_ptr, counts_ptr, sums_ptr, sumsq_ptr,
                            HAS_LANG, HAS_COUNTS, HAS_SUMS, HAS_SUMSQ)
        if HAS_STEER:
            a = tile_steering(a, rm, rn, M, I, row_group_ptr, mode_ptr, value_ptr, HAS_GROUP)
        if HAS_UP:
            u = tl.load(up_ptr + rm64[:, None] * stride_um + rn64[None, :] * stride_ui,
                        mask=mask, other=0.0).to(tl.float32)
            a = a * u
        tl.store(h_ptr + rm64[:, None] * I + rn64[None, :],
                 a.to(h_ptr.dtype.element_ty), mask=mask)

    _GPU_CONFIGS = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w)
        for bm, bn, w in ((16, 256, 4), (32, 128, 4), (32, 256, 8), (64, 128, 8),
                          (64, 64, 4), (128, 128, 8))
    ]
    _act_stats_kernel_tuned = triton.autotune(
        configs=_GPU_CONFIGS,
        key=["I", "M_BUCKET", "ACT", "HAS_UP", "HAS_COUNTS", "HAS_SUMS", "HAS_SUMSQ",
             "HAS_STEER"],
        restore_value=["counts_ptr", "sums_ptr", "sumsq_ptr"],
    )(_act_stats_kernel)


def _check_device(t: Tensor, what: str) -> None:
    if not device_supported(t.device.type):
        raise RuntimeError(f"the triton implementation runs on CUDA tensors (or on CPU tensors "
                           f"with TRITON_INTERPRET=1 set before triton is imported); {what} is "
                           f"on {t.device}. Use impl='cpu' or impl='torch' here.")


def act_stats_triton(gate: Tensor, up: Optional[Tensor], act: str, row_lang: Optional[Tensor],
                     counts: Optional[Tensor], sums: Optional[Tensor], sumsq: Optional[Tensor],
                     row_group: Optional[Tensor], steer_mode: Optional[Tensor],
                     steer_value: Optional[Tensor], *, block_m: Optional[int] = None,
                     block_n: Optional[int] = None) -> Tensor:
    """The fused op with the Triton element-wise kernel; same contract as
    `reference.act_stats_torch` (2-D gate/up [M, I], any strides, inputs validated by
    `ops.api`). Returns a contiguous h [M, I] in gate's dtype; counts / sums / sumsq are
    updated in place.

    block_m / block_n force a tile shape (tests, benchmarks); by default the interpreter uses
    32 x 64 and a GPU autotunes.
    """
    ok, reason = triton_available()
    if not ok:
        raise RuntimeError(f"the triton implementation is not available: {reason}")
    if gate.dim() != 2 or gate.dtype not in FLOAT_DTYPES:
        raise ValueError(f"gate must be a 2-D float32/float16/bfloat16 tensor, got "
                         f"{gate.dtype} {list(gate.shape)}")
    _check_device(gate, "gate")
    M, I = gate.shape
    h = torch.empty((M, I), dtype=gate.dtype, device=gate.device)
    if M == 0 or I == 0:
        return h
    K = next((b.shape[0] for b in (counts, sums, sumsq) if b is not None), 1)
    if K * I >= 2 ** 31:
        raise ValueError(f"K * I = {K * I} is too large for the kernel's int32 offsets")
    has_stats = counts is not None or sums is not None or sumsq is not None
    has_steer = steer_mode is not None
    up_strides = up.stride() if up is not None else (0, 0)
    args = (gate, dummy_if_none(up, gate), h, dummy_if_none(row_lang, gate), counts, sums,
            sumsq, dummy_if_none(row_group, gate), dummy_if_none(steer_mode, gate),
            dummy_if_none(steer_value, gate),
            M, I, triton.next_power_of_2(M), gate.stride(0), gate.stride(1),
            up_strides[0], up_strides[1])
    flags = dict(ACT=act_code(act), HAS_UP=up is not None,
                 HAS_LANG=row_lang is not None and has_stats,
                 HAS_COUNTS=counts is not None, HAS_SUMS=sums is not None,
                 HAS_SUMSQ=sumsq is not None, HAS_STEER=has_steer,
                 HAS_GROUP=row_group is not None and has_steer)
    if block_m is None and block_n is None and gate.is_cuda and not INTERPRET:
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]), triton.cdiv(I, meta["BLOCK_N"]))
        _act_stats_kernel_tuned[grid](*args, **flags)
    else:
        bm = block_m or INTERPRET_BLOCK_M
        bn = block_n or INTERPRET_BLOCK_N
        _act_stats_kernel[(triton.cdiv(M, bm), triton.cdiv(I, bn))](
            *args, **flags, BLOCK_M=bm, BLOCK_N=bn)
    return h


def _supports(device_type: str, dtype: torch.dtype) -> bool:
    return dtype in FLOAT_DTYPES and device_supported(device_type)


def _auto(device_type: str, dtype: torch.dtype) -> bool:
    # The interpreter is a correctness tool, far slower than the C++ kernel: never auto-pick it.
    return device_type == "cuda"


dispatch.register(dispatch.Implementation(
    "triton", 20, act_stats_triton, triton_available, _supports, auto=_auto))
