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
(`torch.backends.cuda.matmul.fp32_precision == "tf32"`), mirroring what `nn.Linear` would do.

Launch grid: one axis of cdiv(M, BLOCK_M) * cdiv(I, BLOCK_N) programs in grouped ("super-row")
order of GROUP_M row tiles, so programs running together share x and W tiles in L2. On a GPU
BLOCK_M / BLOCK_N / BLOCK_K / GROUP_M, num_warps and num_stages are autotuned (configs in
`_GPU_CONFIGS` pruned by M and by sm_90's shared memory; key: M rounded up to a power of two,
I, H and every flag that changes the compiled kernel, triton adds the dtypes); the autotuner
restores the statistic buffers after its trial runs. During CUDA-graph capture nothing is tuned
(`CAPTURE_CONFIG` is launched). Launches run under a device guard of x's device. Under the
interpreter a fixed 16 x 32 x 32 tile is used and operands are upcast to fp32 before tl.dot
(the interpreter cannot multiply bf16).

Registers itself with `ops.dispatch` as the "triton_gemm" implementation of the op
`gated_mlp_stats` (priority 10, picked automatically on CUDA only where the measured choice says
it is faster; under the interpreter on request). `applies` / `gemm_act_stats` are a direct entry
point on 2-D operands.
"""
from __future__ import annotations

from typing import List, Optional

import torch
from torch import Tensor

from . import dispatch
from .args import GatedArgs
from .triton_common import (
    FLOAT_DTYPES,
    INTERPRET,
    act_code,
    capturing,
    device_supported,
    dummy_if_none,
    fp32_matmul_uses_tf32,
    launch_guard,
    triton,
    triton_available,
)

INTERPRET_BLOCKS = (16, 32, 32)   # BLOCK_M, BLOCK_N, BLOCK_K under the interpreter
CAPTURE_CONFIG = (64, 64, 64, 4, 3)   # BM, BN, BK, warps, stages launched during graph capture
# The tile of the self-check on a GPU (one compile per case instead of autotuning).
CHECK_TILE = (64, 64, 32)

if triton is not None:
    import triton.language as tl

    from .triton_common import activation, tile_hist_amax, tile_statistics, tile_steering

    @triton.jit
    def _gemm_act_stats_kernel(x_ptr, wg_ptr, wu_ptr, h_ptr, row_lang_ptr, counts_ptr,
                               sums_ptr, sumsq_ptr, row_group_ptr, mode_ptr, value_ptr,
                               hist_ptr, edges_ptr, amax_ptr,
                               M, I, H, K, G, NE, M_BUCKET, stride_xm, stride_xh,
                               stride_gi, stride_gh, stride_ui, stride_uh,
                               ACT: tl.constexpr, HAS_LANG: tl.constexpr,
                               HAS_COUNTS: tl.constexpr, HAS_SUMS: tl.constexpr,
                               HAS_SUMSQ: tl.constexpr, HAS_STEER: tl.constexpr,
                               HAS_GROUP: tl.constexpr, HAS_HIST: tl.constexpr,
                               HAS_AMAX: tl.constexpr, DOT_FP32: tl.constexpr,
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
            tile_statistics(a, rm, rn, M, I, K, row_lang_ptr, counts_ptr, sums_ptr, sumsq_ptr,
                            HAS_LANG, HAS_COUNTS, HAS_SUMS, HAS_SUMSQ)
        if HAS_HIST or HAS_AMAX:
            tile_hist_amax(a, rm, rn, M, I, K, row_lang_ptr, hist_ptr, edges_ptr, amax_ptr, NE,
                           HAS_LANG, HAS_HIST, HAS_AMAX)
        if HAS_STEER:
            a = tile_steering(a, rm, rn, M, I, G, row_group_ptr, mode_ptr, value_ptr, HAS_GROUP)
        h = a.to(h_ptr.dtype.element_ty).to(tl.float32) * u   # a' rounded first, as the model
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
    # Hopper's opt-in shared memory per block (227 KiB); configs needing more are dropped.
    SM90_SHARED_BYTES = 227 * 1024

    def shared_bytes(config, elem_bytes: int) -> int:
        """Pipelined operand tiles of one config: num_stages x (x tile + two weight tiles)."""
        kw = config.kwargs
        per_stage = (kw["BLOCK_M"] * kw["BLOCK_K"] + 2 * kw["BLOCK_K"] * kw["BLOCK_N"])
        return config.num_stages * per_stage * elem_bytes

    def _prune(configs, named_args, **kwargs):
        """Keep configs whose row tile fits the batch (BLOCK_M <= max(16, M bucket)) and whose
        pipelined tiles fit sm_90's shared memory; at least one."""
        bucket = max(16, named_args["M_BUCKET"])
        elem = named_args["x_ptr"].element_size()
        kept = [c for c in configs if c.kwargs["BLOCK_M"] <= bucket
                and shared_bytes(c, elem) <= SM90_SHARED_BYTES]
        return kept or [min(configs, key=lambda c: (c.kwargs["BLOCK_M"], shared_bytes(c, elem)))]

    AUTOTUNE_KEY = ["M_BUCKET", "I", "H", "ACT", "HAS_LANG", "HAS_COUNTS", "HAS_SUMS",
                    "HAS_SUMSQ", "HAS_STEER", "HAS_GROUP", "HAS_HIST", "HAS_AMAX", "NE",
                    "DOT_FP32", "INPUT_PRECISION"]
    _gemm_act_stats_kernel_tuned = triton.autotune(
        configs=_GPU_CONFIGS, key=AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune},
        restore_value=["counts_ptr", "sums_ptr", "sumsq_ptr", "hist_ptr", "amax_ptr"],
    )(_gemm_act_stats_kernel)


def not_supported_reasons(args) -> List[str]:
    """Why the GEMM-epilogue kernel cannot compute this gated MLP ([] when it can); `args` is a
    validated `GatedArgs` (shapes, dtypes and devices already agree)."""
    ok, reason = triton_available()
    if not ok:
        return [reason]
    reasons = []
    if not device_supported(args.x.device.type):
        reasons.append(f"tensors on {args.x.device.type} need CUDA (or TRITON_INTERPRET=1 for "
                       f"CPU tensors)")
    if args.I == 0 or args.H == 0:
        reasons.append("the weights are empty")
    return reasons


def _why_not(x2d: Tensor, w_gate: Tensor, w_up: Tensor) -> str:
    """Empty when the GEMM-epilogue kernel can run on these operands, else the reasons."""
    if x2d.dim() != 2:
        return "x must be 2-D [M, H] and the weights 2-D [I, H]"
    try:
        args = GatedArgs.validate(x2d, w_gate, w_up, "silu")
    except (ValueError, TypeError) as exc:
        return str(exc)
    return "; ".join(not_supported_reasons(args))


def applies(x2d: Tensor, w_gate: Tensor, w_up: Tensor) -> bool:
    """Whether `gemm_act_stats` can compute this gated MLP's h (conservative): Triton present,
    CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), one float dtype among fp32 / fp16 /
    bf16 for x and both weights, x [M, H] and weights [I, H] on one device."""
    return _why_not(x2d, w_gate, w_up) == ""


def gemm_act_stats(x2d: Tensor, w_gate: Tensor, w_up: Tensor, act: str,
                   row_lang: Optional[Tensor], counts: Optional[Tensor],
                   sums: Optional[Tensor], sumsq: Optional[Tensor],
                   row_group: Optional[Tensor], steer_mode: Optional[Tensor],
                   steer_value: Optional[Tensor], hist: Optional[Tensor] = None,
                   hist_edges: Optional[Tensor] = None, amax: Optional[Tensor] = None, *,
                   block_m: Optional[int] = None, block_n: Optional[int] = None,
                   block_k: Optional[int] = None) -> Tensor:
    """h = steer(act(x @ W_gate^T)) * (x @ W_up^T) [M, I] in x's dtype, with the fused op's
    statistics (`counts` int64 [K, I], `sums` / `sumsq` fp32 or fp64 [K, I], updated in place,
    per `row_lang` int32 [M], negative = not counted) and steering (`row_group` int32 [M],
    `steer_mode` int8 [G, I], `steer_value` fp32 [G, I]) — the semantics of `ops.reference`
    applied to gate = x @ W_gate^T, up = x @ W_up^T, in one kernel. Ids are not range-checked
    here (no GPU sync); out-of-range ones are ignored by the kernel.

    block_m / block_n / block_k force a tile (tests, benchmarks; on a GPU each must be >= 16);
    by default a GPU autotunes and the interpreter uses 16 x 32 x 32.
    """
    if x2d.dim() != 2:
        raise ValueError("gemm_act_stats cannot run here: x must be 2-D [M, H] and the weights "
                         "2-D [I, H]")
    try:
        args = GatedArgs.validate(x2d, w_gate, w_up, act, row_lang=row_lang, counts=counts,
                                  sums=sums, sumsq=sumsq, row_group=row_group,
                                  steer_mode=steer_mode, steer_value=steer_value, hist=hist,
                                  hist_edges=hist_edges, amax=amax, check_ids=False)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"gemm_act_stats cannot run here: {exc}") from None
    return run(args, block_m=block_m, block_n=block_n, block_k=block_k)


def run(args, act_impl: Optional[str] = None, *, block_m: Optional[int] = None,
        block_n: Optional[int] = None, block_k: Optional[int] = None) -> Tensor:
    """The kernel on a validated `GatedArgs`; returns h [M, I] in x's dtype. `act_impl` (the
    registry's element-wise choice) is not used: the epilogue is the element-wise step."""
    reasons = not_supported_reasons(args)
    if reasons:
        raise ValueError(f"gemm_act_stats cannot run here: {'; '.join(reasons)}")
    x2d, w_gate, w_up, st = args.x2d, args.w_gate, args.w_up, args.stats
    M, H, I = args.M, args.H, args.I
    h = torch.empty((M, I), dtype=x2d.dtype, device=x2d.device)
    if M == 0:
        return h
    K, G = st.K or 1, st.G or 1
    kargs = (x2d, w_gate, w_up, h, dummy_if_none(st.row_lang, x2d),
             dummy_if_none(st.counts, x2d, torch.int64),
             dummy_if_none(st.sums, x2d, torch.float32),
             dummy_if_none(st.sumsq, x2d, torch.float32), dummy_if_none(st.row_group, x2d),
             dummy_if_none(st.steer_mode, x2d), dummy_if_none(st.steer_value, x2d),
             dummy_if_none(st.hist, x2d, torch.int64),
             dummy_if_none(st.hist_edges, x2d, torch.float32),
             dummy_if_none(st.amax, x2d, torch.float32),
             M, I, H, K, G, st.hist_edges.numel() if st.hist_edges is not None else 0,
             triton.next_power_of_2(M), x2d.stride(0), x2d.stride(1),
             w_gate.stride(0), w_gate.stride(1), w_up.stride(0), w_up.stride(1))
    fp32 = x2d.dtype == torch.float32
    tf32 = fp32 and x2d.is_cuda and fp32_matmul_uses_tf32()
    flags = dict(ACT=act_code(args.act), HAS_LANG=st.row_lang is not None and st.has_stats,
                 HAS_COUNTS=st.counts is not None, HAS_SUMS=st.sums is not None,
                 HAS_SUMSQ=st.sumsq is not None, HAS_STEER=st.has_steer,
                 HAS_GROUP=st.row_group is not None and st.has_steer,
                 HAS_HIST=st.hist is not None, HAS_AMAX=st.amax is not None, DOT_FP32=INTERPRET,
                 INPUT_PRECISION=("tf32" if tf32 else "ieee") if fp32 else None)
    forced = (block_m, block_n, block_k) != (None, None, None)
    with launch_guard(x2d.device):
        if x2d.is_cuda and not INTERPRET and not forced and not capturing():
            grid = lambda meta: (triton.cdiv(M, meta["BLOCK_M"])     # noqa: E731
                                 * triton.cdiv(I, meta["BLOCK_N"]),)
            _gemm_act_stats_kernel_tuned[grid](*kargs, **flags)
        else:
            if x2d.is_cuda and not INTERPRET and not forced:   # graph capture: never tune
                bm, bn, bk, warps, stages = CAPTURE_CONFIG
            else:
                bm = block_m or INTERPRET_BLOCKS[0]
                bn = block_n or INTERPRET_BLOCKS[1]
                bk = block_k or INTERPRET_BLOCKS[2]
                warps, stages = 4, 3
            grid = (triton.cdiv(M, bm) * triton.cdiv(I, bn),)
            _gemm_act_stats_kernel[grid](*kargs, **flags, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                                         GROUP_M=4, num_warps=warps, num_stages=stages)
    return h


def _supports(device_type: str, dtype: torch.dtype) -> bool:
    return dtype in FLOAT_DTYPES and device_supported(device_type)


def _check_options(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    return dict(zip(("block_m", "block_n", "block_k"), CHECK_TILE))


dispatch.register(dispatch.Implementation(
    "triton_gemm", 10, run, triton_available, _supports,
    auto=lambda device_type, dtype: device_type == "cuda", op=dispatch.GATED_MLP,
    argument_reasons=not_supported_reasons, check_options=_check_options))
