"""The `triton` implementation of the fused op: an element-wise kernel over gate/up tiles.

Grid: (cdiv(I, BLOCK_N), row programs). Neuron tiles are on the fast axis 0, so the programs
resident at one time work on different neurons (different counters) instead of all hitting the
same ones; each program then walks a contiguous run of row tiles (about 8 programs per SM in
all, so row programs stay within grid axis 1's 65,535). Per row tile it

    loads gate AND up together (one DRAM round trip, before any atomic),
    upcasts to fp32, a = act(gate),
    statistics: a tile of one language adds its column partials to registers while the
    language stays the same (rows arrive in language runs: one atomic per neuron per run, not
    per tile); a mixed tile adds one atomic per (language present, neuron); languages absent
    from a tile are skipped; ids < 0 or >= K are ignored (never out of bounds),
    steering (groups >= G ignored), h = a' * up stored in gate's dtype.

On a GPU the tile shape is autotuned per (I, M bucket, every flag that changes the compiled
kernel; triton adds the dtypes) over `_GPU_CONFIGS` pruned by M; the autotuner restores the
statistic buffers after its trial runs, so tuning never double counts. While a CUDA graph is
captured nothing is tuned: the best config found so far, else a fixed one, is launched. Under
the Triton interpreter (TRITON_INTERPRET=1, CPU tensors) a fixed tile is used, with two row
tiles per program so the carried partials are exercised.

Registers itself with `ops.dispatch` as "triton" (priority 20). It supports CUDA tensors, and CPU
tensors only under the interpreter; on CPU it is never chosen automatically (the C++ `cpu`
implementation is the right choice there), so request it with `impl="triton"`.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import dispatch
from .triton_common import (
    FLOAT_DTYPES,
    INTERPRET,
    act_code,
    capturing,
    device_supported,
    dummy_if_none,
    launch_guard,
    triton,
    triton_available,
)

# Fixed tile under the interpreter: small enough that test shapes span several tiles.
INTERPRET_BLOCK_M = 32
INTERPRET_BLOCK_N = 64
INTERPRET_TILES_PER_PROGRAM = 2
PROGRAMS_PER_SM = 8
CAPTURE_CONFIG = (32, 128, 4)      # BLOCK_M, BLOCK_N, num_warps launched during graph capture
# The tile of the self-check on a GPU (one compile per case instead of autotuning six configs).
CHECK_TILE = (32, 128)

if triton is not None:
    import triton.language as tl

    from .triton_common import (
        activation,
        flush_partials,
        language_partials,
        tile_hist_amax,
        tile_languages,
        tile_statistics,
        tile_steering,
    )

    @triton.jit
    def _act_stats_kernel(gate_ptr, up_ptr, h_ptr, row_lang_ptr, counts_ptr, sums_ptr,
                          sumsq_ptr, row_group_ptr, mode_ptr, value_ptr, hist_ptr, edges_ptr,
                          amax_ptr, M, I, K, G, NE, M_BUCKET, stride_gm, stride_gi, stride_um,
                          stride_ui,
                          ACT: tl.constexpr, HAS_UP: tl.constexpr, HAS_LANG: tl.constexpr,
                          HAS_COUNTS: tl.constexpr, HAS_SUMS: tl.constexpr,
                          HAS_SUMSQ: tl.constexpr, HAS_STEER: tl.constexpr,
                          HAS_GROUP: tl.constexpr, HAS_HIST: tl.constexpr,
                          HAS_AMAX: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_r = tl.program_id(1)
        row_tiles = tl.cdiv(M, BLOCK_M)
        per_program = tl.cdiv(row_tiles, tl.num_programs(1))
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        col_in = rn < I
        rn64 = rn.to(tl.int64)
        # Partials of the current language run (cur = -1: none yet).
        cur = pid_n * 0 - 1
        pc = tl.zeros([BLOCK_N], dtype=tl.int32)
        ps = tl.zeros([BLOCK_N], dtype=sums_ptr.dtype.element_ty)
        pq = tl.zeros([BLOCK_N], dtype=sumsq_ptr.dtype.element_ty)
        for t in range(0, per_program):
            rm = (pid_r * per_program + t) * BLOCK_M + tl.arange(0, BLOCK_M)
            row_in = rm < M
            mask = row_in[:, None] & col_in[None, :]
            rm64 = rm.to(tl.int64)   # M * stride can exceed 2**31 on large batches
            g = tl.load(gate_ptr + rm64[:, None] * stride_gm + rn64[None, :] * stride_gi,
                        mask=mask, other=0.0).to(tl.float32)
            if HAS_UP:   # loaded with gate: one round trip to memory per tile
                u = tl.load(up_ptr + rm64[:, None] * stride_um + rn64[None, :] * stride_ui,
                            mask=mask, other=0.0).to(tl.float32)
            a = activation(g, ACT)
            if HAS_COUNTS or HAS_SUMS or HAS_SUMSQ:
                lang = tile_languages(rm, M, K, row_lang_ptr, HAS_LANG)
                lo = tl.min(tl.where(lang >= 0, lang, 2147483647), axis=0)
                hi = tl.max(lang, axis=0)
                if lo == hi:     # one language in the tile: carry its partials
                    tc, ts, tq = language_partials(a, lang, lo, sums_ptr, sumsq_ptr)
                    if lo == cur:
                        pc += tc
                        ps += ts
                        pq += tq
                    else:
                        if cur >= 0:
                            flush_partials(cur, pc, ps, pq, rn, I, counts_ptr, sums_ptr,
                                           sumsq_ptr, HAS_COUNTS, HAS_SUMS, HAS_SUMSQ)
                        cur = lo
                        pc = tc
                        ps = ts
                        pq = tq
                elif lo < hi:    # several languages: one atomic per language present
                    tile_statistics(a, rm, rn, M, I, K, row_lang_ptr, counts_ptr, sums_ptr,
                                    sumsq_ptr, HAS_LANG, HAS_COUNTS, HAS_SUMS, HAS_SUMSQ)
            if HAS_HIST or HAS_AMAX:
                tile_hist_amax(a, rm, rn, M, I, K, row_lang_ptr, hist_ptr, edges_ptr, amax_ptr,
                               NE, HAS_LANG, HAS_HIST, HAS_AMAX)
            if HAS_STEER:
                a = tile_steering(a, rm, rn, M, I, G, row_group_ptr, mode_ptr, value_ptr,
                                  HAS_GROUP)
            if HAS_UP:   # a' rounded to h's dtype first, as the model's own act(gate) * up
                a = a.to(h_ptr.dtype.element_ty).to(tl.float32) * u
            tl.store(h_ptr + rm64[:, None] * I + rn64[None, :],
                     a.to(h_ptr.dtype.element_ty), mask=mask)
        if HAS_COUNTS or HAS_SUMS or HAS_SUMSQ:
            if cur >= 0:
                flush_partials(cur, pc, ps, pq, rn, I, counts_ptr, sums_ptr, sumsq_ptr,
                               HAS_COUNTS, HAS_SUMS, HAS_SUMSQ)

    _GPU_CONFIGS = [
        triton.Config({"BLOCK_M": bm, "BLOCK_N": bn}, num_warps=w)
        for bm, bn, w in ((16, 256, 4), (32, 128, 4), (32, 256, 8), (64, 128, 8),
                          (64, 64, 4), (128, 128, 8))
    ]

    def _prune(configs, named_args, **kwargs):
        """Drop row tiles far taller than the batch (M = 20 never needs 128-row tiles): keep
        configs with BLOCK_M <= max(16, M bucket), at least one."""
        bucket = max(16, named_args["M_BUCKET"])
        kept = [c for c in configs if c.kwargs["BLOCK_M"] <= bucket]
        return kept or [min(configs, key=lambda c: c.kwargs["BLOCK_M"])]

    AUTOTUNE_KEY = ["I", "M_BUCKET", "ACT", "HAS_UP", "HAS_LANG", "HAS_COUNTS", "HAS_SUMS",
                    "HAS_SUMSQ", "HAS_STEER", "HAS_GROUP", "HAS_HIST", "HAS_AMAX", "NE"]
    _act_stats_kernel_tuned = triton.autotune(
        configs=_GPU_CONFIGS, key=AUTOTUNE_KEY, prune_configs_by={"early_config_prune": _prune},
        restore_value=["counts_ptr", "sums_ptr", "sumsq_ptr", "hist_ptr", "amax_ptr"],
    )(_act_stats_kernel)


def _check_device(t: Tensor, what: str) -> None:
    if not device_supported(t.device.type):
        raise RuntimeError(f"the triton implementation runs on CUDA tensors (or on CPU tensors "
                           f"with TRITON_INTERPRET=1 set before triton is imported); {what} is "
                           f"on {t.device}. Use impl='cpu' or impl='torch' here.")


def row_programs(M: int, I: int, block_m: int, block_n: int, device: torch.device) -> int:
    """Programs along the rows: ~PROGRAMS_PER_SM per SM in all on a GPU (two row tiles each
    under the interpreter), at most one per row tile and at most 65,535."""
    row_tiles = -(-M // block_m)
    col_tiles = -(-I // block_n)
    if device.type == "cuda" and not INTERPRET:
        sms = torch.cuda.get_device_properties(device).multi_processor_count
        wanted = -(-PROGRAMS_PER_SM * sms // col_tiles)
    else:
        wanted = -(-row_tiles // INTERPRET_TILES_PER_PROGRAM)
    programs = max(1, min(row_tiles, wanted))
    per_program = -(-row_tiles // programs)
    per_program = max(per_program, -(-row_tiles // 65535))
    return -(-row_tiles // per_program)


def act_stats_triton(gate: Tensor, up: Optional[Tensor], act: str, row_lang: Optional[Tensor],
                     counts: Optional[Tensor], sums: Optional[Tensor], sumsq: Optional[Tensor],
                     row_group: Optional[Tensor], steer_mode: Optional[Tensor],
                     steer_value: Optional[Tensor], hist: Optional[Tensor] = None,
                     hist_edges: Optional[Tensor] = None, amax: Optional[Tensor] = None, *,
                     block_m: Optional[int] = None,
                     block_n: Optional[int] = None, programs: Optional[int] = None) -> Tensor:
    """The fused op with the Triton element-wise kernel; same contract as
    `reference.act_stats_torch` (2-D gate/up [M, I], any strides, inputs validated by
    `ops.args`). Returns a contiguous h [M, I] in gate's dtype; counts / sums / sumsq are
    updated in place. Out-of-range ids (unchecked callers) are ignored, never written.

    block_m / block_n force a tile shape (tests, benchmarks: no autotuning then); programs
    forces the number of row programs. By default the interpreter uses 32 x 64 and a GPU
    autotunes.
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
    K = next((b.shape[0] for b in (counts, sums, sumsq, hist, amax) if b is not None), 1)
    G = steer_mode.shape[0] if steer_mode is not None else 1
    if K * I >= 2 ** 31 or G * I >= 2 ** 31:
        raise ValueError(f"K * I = {K * I} or G * I = {G * I} is too large for the kernel's "
                         f"int32 offsets; split the languages over several calls")
    has_stats = any(b is not None for b in (counts, sums, sumsq, hist, amax))
    has_steer = steer_mode is not None
    up_strides = up.stride() if up is not None else (0, 0)
    args = (gate, dummy_if_none(up, gate), h, dummy_if_none(row_lang, gate),
            dummy_if_none(counts, gate, torch.int64), dummy_if_none(sums, gate, torch.float32),
            dummy_if_none(sumsq, gate, torch.float32), dummy_if_none(row_group, gate),
            dummy_if_none(steer_mode, gate), dummy_if_none(steer_value, gate),
            dummy_if_none(hist, gate, torch.int64), dummy_if_none(hist_edges, gate, torch.float32),
            dummy_if_none(amax, gate, torch.float32),
            M, I, K, G, hist_edges.numel() if hist_edges is not None else 0,
            triton.next_power_of_2(M), gate.stride(0), gate.stride(1),
            up_strides[0], up_strides[1])
    flags = dict(ACT=act_code(act), HAS_UP=up is not None,
                 HAS_LANG=row_lang is not None and has_stats,
                 HAS_COUNTS=counts is not None, HAS_SUMS=sums is not None,
                 HAS_SUMSQ=sumsq is not None, HAS_STEER=has_steer,
                 HAS_GROUP=row_group is not None and has_steer, HAS_HIST=hist is not None,
                 HAS_AMAX=amax is not None)
    forced = block_m is not None or block_n is not None
    with launch_guard(gate.device):
        if gate.is_cuda and not INTERPRET and not forced and not capturing():
            grid = lambda meta: (triton.cdiv(I, meta["BLOCK_N"]),    # noqa: E731
                                 programs or row_programs(M, I, meta["BLOCK_M"],
                                                          meta["BLOCK_N"], gate.device))
            _act_stats_kernel_tuned[grid](*args, **flags)
        else:
            num_warps = 4
            if gate.is_cuda and not INTERPRET and not forced:   # graph capture: never tune
                bm, bn, num_warps = CAPTURE_CONFIG
            else:
                bm = block_m or INTERPRET_BLOCK_M
                bn = block_n or INTERPRET_BLOCK_N
            grid = (triton.cdiv(I, bn), programs or row_programs(M, I, bm, bn, gate.device))
            _act_stats_kernel[grid](*args, **flags, BLOCK_M=bm, BLOCK_N=bn,
                                    num_warps=num_warps)
    return h


def _supports(device_type: str, dtype: torch.dtype) -> bool:
    return dtype in FLOAT_DTYPES and device_supported(device_type)


def _auto(device_type: str, dtype: torch.dtype) -> bool:
    # The interpreter is a correctness tool, far slower than the C++ kernel: never auto-pick it.
    return device_type == "cuda"


def _check_options(device: torch.device) -> dict:
    if device.type != "cuda":
        return {}
    return dict(block_m=CHECK_TILE[0], block_n=CHECK_TILE[1])


dispatch.register(dispatch.Implementation(
    "triton", 20, act_stats_triton, triton_available, _supports, auto=_auto,
    check_options=_check_options))
