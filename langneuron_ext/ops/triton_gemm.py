"""The GEMM-epilogue Triton kernel: the gated MLP's two projections and the fused op in one pass.

Given x [M, H] and the nn.Linear weights W_gate, W_up [I, H] (no bias), one program computes a
tile [BLOCK_M, BLOCK_N] of

    gate = x @ W_gate^T,  up = x @ W_up^T        (tl.dot, fp32 accumulators, loop over H)

and then, in the epilogue, exactly what the element-wise op does (`triton_common`): the
activation, the per-language counts / sums / sums of squares (one atomic per language, neuron and
tile), steering, and h = act'(gate) * up stored in x's dtype. gate and up never reach memory,
which saves writing and re-reading 2 x M x I values per layer.

The accumulators are rounded to x's dtype before the activation, as the unfused model's
`gate_proj(x)` output is: so fp16/bf16 results equal "matmul, round, then the op" up to the
summation order of the matmul. That order differs from cuBLAS / MKL, so a gate value within a few
ulps of 0 can change sign between this kernel and `act_stats(x @ W_gate.T, ...)`: counts are
bit-exact with the reference applied to the *same* gate values (tests use integer / dyadic inputs
for which every summation order is exact), not necessarily with a separately computed matmul.
fp32 inputs use IEEE fp32 dot products unless torch allows TF32 matmuls
(`torch.backends.cuda.matmul.allow_tf32`), mirroring what `nn.Linear` would do.

Launch grid: one axis of cdiv(M, BLOCK_M) * cdiv(I, BLOCK_N) programs in grouped ("super-row")
order of GROUP_M row tiles, so programs running together share x and W tiles in L2. On a GPU
BLOCK_M / BLOCK_N / BLOCK_K / GROUP_M, num_warps and num_stages are autotuned (configs in
`_GPU_CONFIGS`, key: M rounded up to a power of two, I, H and the flags); the autotuner restores
the statistic buffers after its trial runs. Under the interpreter a fixed 16 x 32 x 32 tile is
used and operands are upcast to fp32 before tl.dot (the interpreter cannot multiply bf16).

The patch (`models/patch.py`) calls `applies` once and then `gemm_act_stats` for gated MLPs when
the chosen implementation is "triton".
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .triton_common import (FLOAT_DTYPES, INTERPRET, act_code, device_supported,
                            dummy_if_none, triton, triton_available)

INTERPRET_BLOCKS = (16, 32, 32)   # BLOCK_M, BLOCK_N, BLOCK_K under the interpreter

if triton is not None:
    import triton.language as tl

    from .triton_common import activation, tile_statistics, tile_steering

    @triton.jit
    def _gemm_act_stats_kernel(x_ptr, wg_ptr, wu_ptr, h_ptr, row_lang_ptr, counts_ptr,
                               sums_ptr, sumsq_ptr, row_group_ptr, mode_ptr, value_ptr,
                               M, I, H, M_BUCKET, stride_xm, stride_xh,
                               stride_gi, stride_gh, stride_ui, stride_uh,
                               ACT: tl.constexpr, HAS_LANG: tl.constexpr,
                               HAS_COUNTS: tl.constexpr, HAS_SUMS: tl.constexpr,
                               HAS_SUMSQ: tl.constexpr, HAS_STEER: tl.constexpr,
                               HAS_GROUP: tl.constexpr, DOT_FP32: tl.constexpr,
                               INPUT_PRECISION: tl.constexpr,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                               BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        # Grouped program order: GROUP_M row tiles sweep the neuron tiles together.
        pid = tl.program_id(0)
        num_pid_m = tl.cdiv(M, BLOCK_M)
        num_pid_n = tl.cdiv(I, BLOCK_N)
        num_pid_in_group = GROUP_M * num_pid_n
        first_pid_m = (pid // num_pid_in_group) * GROUP_M
        group_size_m = tl.minimum(num_pid_m - first_pid_m, GROUP_M)
        pid_m = first_pid_m + (pid % num_pid_in_group) % group_size_m
        pid_n = (pid % num_pid_in_group) // group_size_m

        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        rm64 = rm.to(tl.int64)
        rn64 = rn.to(tl.int64)
        row_in = rm < M
        col_in = rn < I
        x_ptrs = x_ptr + rm64[:, None] * stride_xm + rk[None, :] * stride_xh      # [BM, BK]
        g_ptrs = wg_ptr + rk[:, None] * stride_gh + rn64[None, :] * stride_gi     # [BK, BN]
        u_ptrs = wu_ptr + rk[:, None] * stride_uh + rn64[None, :] * stride_ui
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, H, BLOCK_K):
            k_in = (k0 + rk) < H
            xa = tl.load(x_ptrs, mask=row_in[:, None] & k_in[None, :], other=0.0)
            wg = tl.load(g_ptrs, mask=k_in[:, None] & col_in[None, :], other=0.0)
            wu = tl.load(u_ptrs, mask=k_in[:, None] & col_in[None, :], other=0.0)
            if DOT_FP32:
                xa = xa.to(tl.float32)
                wg = wg.to(tl.float32)
                wu = wu.to(tl.float32)
            acc_g = tl.dot(xa, wg, acc_g, input_precision=INPUT_PRECISION)
            acc_u = tl.dot(xa, wu, acc_u, input_precision=INPUT_PRECISION)
            x_ptrs += BLOCK_K * stride_xh
            g_ptrs += BLOCK_K * stride_gh
            u_ptrs += BLOCK_K * stride_uh

        # Round like the unfused projections' outputs, then the element-wise op's epilogue.
        g = acc_g.to(h_ptr.dtype.element_ty).to(tl.float32)
        u = acc_u.to(h_ptr.dtype.element_ty).to(tl.float32)
        a = activation(g, ACT)
        if HAS_COUNTS or HAS_SUMS or HAS_SUMSQ:
            tile_statistics(a, rm, rn, M, I, row_lang_ptr, counts_ptr, sums_ptr, sumsq_ptr,
                            HAS_LANG, HAS_COUNTS, HAS_SUMS, HAS_SUMSQ)
        if HAS_STEER:
            a = tile_steering(a, rm, rn, M, I, row_group_ptr, mode_ptr, value_ptr, HAS_GROUP)
        h = a * u
        tl.store(h_ptr + rm64[:, None] * I + rn64[None, :], h.to(h_ptr.dtype.element_ty),
                 mask=row_in[:, None] & col_in[None, :])

    _GPU_CONFIGS = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                      num_warps=w, num_stages=s)
        for bm, bn, bk, w, s in ((16, 64, 128, 4, 4),     # decode-sized M
                                 (32, 64, 64, 4, 4),
                                 (64, 64, 64, 4, 3),
                                 (64, 128, 32, 4, 4),
                                 (128, 64, 32, 4, 4),
                                 (128, 128, 32, 8, 3),
                                 (128, 128, 64, 8, 3))
    ]
    _gemm_act_stats_kernel_tuned = triton.autotune(
        configs=_GPU_CONFIGS,
        key=["M_BUCKET", "I", "H", "ACT", "HAS_COUNTS", "HAS_SUMS", "HAS_SUMSQ", "HAS_STEER"],
        restore_value=["counts_ptr", "sums_ptr", "sumsq_ptr"],
    )(_gemm_act_stats_kernel)


def _why_not(x2d: Tensor, w_gate: Tensor, w_up: Tensor) -> str:
    """Empty when the GEMM-epilogue kernel can run on these operands, else the reason."""
    ok, reason = triton_available()
    if not ok:
        return reason
    if x2d.dim() != 2 or w_gate.dim() != 2 or w_up.dim() != 2:
        return "x must be 2-D [M, H] and the weights 2-D [I, H]"
    if w_gate.shape != w_up.shape or w_gate.shape[1] != x2d.shape[1]:
        return (f"shapes do not chain: x {list(x2d.shape)}, W_gate {list(w_gate.shape)}, "
                f"W_up {list(w_up.shape)} (expected x [M, H], both weights [I, H])")
    if not (x2d.dtype == w_gate.dtype == w_up.dtype) or x2d.dtype not in FLOAT_DTYPES:
        return (f"x and the weights must share one dtype among float32/float16/bfloat16, got "
                f"{x2d.dtype}, {w_gate.dtype}, {w_up.dtype}")
    if not (x2d.device == w_gate.device == w_up.device):
        return "x and the weights must be on one device"
    if not device_supported(x2d.device.type):
        return (f"tensors on {x2d.device.type} need CUDA (or TRITON_INTERPRET=1 for CPU "
                f"tensors)")
    if w_gate.shape[0] == 0 or w_gate.shape[1] == 0:
        return "the weights are empty"
    return ""


def applies(x2d: Tensor, w_gate: Tensor, w_up: Tensor) -> bool:
    """Whether `gemm_act_stats` can compute this gated MLP's h (conservative): Triton present,
    CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), one float dtype among fp32 / fp16 /
    bf16 for x and both weights, x [M, H] and weights [I, H] on one device."""
    return _why_not(x2d, w_gate, w_up) == ""


def _check_rows(t: Optional[Tensor], M: int, name: str) -> None:
    if t is not None and (t.dtype != torch.int32 or t.numel() != M or not t.is_contiguous()):
        raise ValueError(f"{name} must be a contiguous int32 tensor with one entry per row "
                         f"({M}), got {t.dtype} {list(t.shape)}")


def _check_buffer(t: Optional[Tensor], name: str, I: int, dtypes) -> Optional[int]:
    if t is None:
        return None
    if t.dim() != 2 or t.shape[1] != I or t.dtype not in dtypes or not t.is_contiguous():
        raise ValueError(f"{name} must be a contiguous [K, {I}] tensor of "
                         f"{' or '.join(map(str, dtypes))}, got {t.dtype} {list(t.shape)}")
    return t.shape[0]


def gemm_act_stats(x2d: Tensor, w_gate: Tensor, w_up: Tensor, act: str,
                   row_lang: Optional[Tensor], counts: Optional[Tensor],
                   sums: Optional[Tensor], sumsq: Optional[Tensor],
                   row_group: Optional[Tensor], steer_mode: Optional[Tensor],
                   steer_value: Optional[Tensor], *, block_m: Optional[int] = None,
                   block_n: Optional[int] = None, block_k: Optional[int] = None) -> Tensor:
    """h = steer(act(x @ W_gate^T)) * (x @ W_up^T) [M, I] in x's dtype, with the fused op's
    statistics (`counts` int64 [K, I], `sums` / `sumsq` fp32 or fp64 [K, I], updated in place,
    per `row_lang` int32 [M], negative = not counted) and steering (`row_group` int32 [M],
    `steer_mode` int8 [G, I], `steer_value` fp32 [G, I]) — the semantics of `ops.reference`
    applied to gate = x @ W_gate^T, up = x @ W_up^T, in one kernel.

    block_m / block_n / block_k force a tile (tests, benchmarks; on a GPU each must be >= 16);
    by default a GPU autotunes and the interpreter uses 16 x 32 x 32.
    """
    reason = _why_not(x2d, w_gate, w_up)
    if reason:
        raise ValueError(f"gemm_act_stats cannot run here: {reason}")
    M, H = x2d.shape
    I = w_gate.shape[0]
    K = None
    for name, buf, dtypes in (("counts", counts, (torch.int64,)),
                              ("sums", sums, (torch.float32, torch.float64)),
                              ("sumsq", sumsq, (torch.float32, torch.float64))):
        k = _check_buffer(buf, name, I, dtypes)
        if k is not None and K is not None and k != K:
            raise ValueError(f"{name} has {k} language slots but another buffer has {K}")
        K = k if k is not None else K
    _check_rows(row_lang, M, "row_lang")
    _check_rows(row_group, M, "row_group")
    if (steer_mode is None) != (steer_value is None):
        raise ValueError("steer_mode and steer_value must be given together")
    if steer_mode is not None and (steer_mode.shape != steer_value.shape
                                   or steer_mode.dim() != 2 or steer_mode.shape[1] != I):
        raise ValueError(f"steer_mode / steer_value must both be [G, {I}], got "
                         f"{list(steer_mode.shape)} and {list(steer_value.shape)}")
    if (K or 1) * I >= 2 ** 31:
        raise ValueError(f"K * I = {(K or 1) * I} is too large for the kernel's int32 offsets")
    h = torch.empty((M, I), dtype=x2d.dtype, device=x2d.device)
    if M == 0:
        return h
    has_stats = K is not None
    has_steer = steer_mode is not None
    if has_steer:
        steer_mode = steer_mode.to(torch.int8).contiguous()
        steer_value = steer_value.to(torch.float32).contiguous()
    args = (x2d, w_gate, w_up, h, dummy_if_none(row_lang, x2d), counts, sums, sumsq,
            dummy_if_none(row_group, x2d), dummy_if_none(steer_mode, x2d),
            dummy_if_none(steer_value, x2d),
            M, I, H, triton.next_power_of_2(M), x2d.stride(0), x2d.stride(1),
            w_gate.stride(0), w_gate.stride(1), w_up.stride(0), w_up.stride(1))
    tf32 = x2d.dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32
    flags = dict(ACT=act_code(act), HAS_LANG=row_lang is not None and has_stats,
                 HAS_COUNTS=counts is not None, HAS_SUMS=sums is not None,
                 HAS_SUMSQ=sumsq is not None, HAS_STEER=has_steer,
                 HAS_GROUP=row_group is not None and has_steer, DOT_FP32=INTERPRET,
                 INPUT_PRECISION=("tf32" if tf32 else "ieee")
                 if x2d.dtype == torch.float32 else None)
    forced = (block_m, block_n, block_k) != (None, None, None)
    if x2d.is_cuda and not INTERPRET and not forced:
        grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"]) * triton.cdiv(I, meta["BLOCK_N"]),)
        _gemm_act_stats_kernel_tuned[grid](*args, **flags)
    else:
        bm = block_m or INTERPRET_BLOCKS[0]
        bn = block_n or INTERPRET_BLOCKS[1]
        bk = block_k or INTERPRET_BLOCKS[2]
        grid = (triton.cdiv(M, bm) * triton.cdiv(I, bn),)
        _gemm_act_stats_kernel[grid](*args, **flags, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                                     GROUP_M=4)
    return h
