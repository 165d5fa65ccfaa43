"""Shared pieces of the Triton kernels: activations, per-tile statistics, steering.

Both Triton kernels (`impl_triton`, the element-wise op over gate/up tiles, and
`impl_triton_gemm`, the GEMM-epilogue op) end in the same epilogue on an fp32 tile of activations
`a` [BLOCK_M, BLOCK_N]:

1. `tile_statistics`: per (language, neuron) counts of `a > 0`, and optional sums / sums of
   squares, reduced over the tile's rows in registers (int32 / fp32 or fp64 partials) and added
   to the global buffers with ONE atomic per (language present, neuron, tile); languages absent
   from the tile are skipped, ids < 0 or >= K are not counted (so a caller that skipped the
   range check can never make an atomic land outside the buffers). The element-wise kernel
   carries the partials of a one-language tile over the following tiles of the same language
   (`language_partials`, `flush_partials`).
2. `tile_steering`: keep / set / add per row group, applied after counting (counts always
   use the unsteered activation, as in `ops.reference`).

Interpreter rules (docs/design.md): everything is upcast to fp32 right after `tl.load`, and no
libdevice function is used, so the same code runs under `TRITON_INTERPRET=1` on CPU tensors.
erf and tanh are therefore written with `tl.exp` (`_erf`, `_tanh`): within ~1e-7 absolute of a
correctly rounded erf / tanh. Where torch's own CPU kernels round `1 + erf` / `1 + tanh` to exactly
0 slightly earlier or later (gelu near x = -5.5, gelu_tanh is matched), a value here can be a tiny
nonzero where the reference has -0; that is within every tolerance, and only visible when it is
multiplied by an infinite `up` (NaN there versus +-inf here).
"""
from __future__ import annotations

import contextlib

import torch

from . import settings

try:  # Triton is optional: the package must import without it.
    import triton
    import triton.language as tl

    TRITON_IMPORT_ERROR = ""
except Exception as exc:  # pragma: no cover - depends on the installation
    triton = None
    tl = None
    TRITON_IMPORT_ERROR = f"triton could not be imported ({exc})"

# Read once, in ops/settings.py (like triton: `triton.jit` picks the interpreter at decoration).
INTERPRET = settings.TRITON_INTERPRET

# Activation codes passed to the kernels as a constexpr.
ACT_CODES = {"silu": 0, "gelu": 1, "gelu_tanh": 2, "relu": 3}

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def triton_available() -> tuple[bool, str]:
    """(True, "") when Triton can run kernels in this process, else (False, reason)."""
    if triton is None:
        return False, TRITON_IMPORT_ERROR
    return True, ""


def device_supported(device_type: str) -> bool:
    """CUDA always; CPU tensors only under the Triton interpreter (TRITON_INTERPRET=1)."""
    return device_type == "cuda" or (device_type == "cpu" and INTERPRET)


def launch_guard(device: torch.device):
    """Context for a kernel launch on `device`: Triton launches on torch's *current* CUDA
    device and stream, not the tensors', so a layer on cuda:1 would run on cuda:0's stream (an
    error, or a race with peer access). Every launch runs under this guard."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def fp32_matmul_uses_tf32() -> bool:
    """Whether torch lets fp32 matmuls use TF32 on CUDA, read through the torch >= 2.9 API
    (`torch.backends.cuda.matmul.fp32_precision`; "none" defers to the global
    `torch.backends.fp32_precision`). The legacy `allow_tf32` flag raises once both APIs have
    been used in one process."""
    precision = torch.backends.cuda.matmul.fp32_precision
    if precision == "none":
        precision = torch.backends.fp32_precision
    return precision == "tf32"


def capturing() -> bool:
    """True while a CUDA graph is being captured on the current stream (no autotuning then:
    its trial runs and restores would be recorded into the graph)."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def act_code(act: str) -> int:
    """The kernel's constexpr code for activation name `act`."""
    try:
        return ACT_CODES[act]
    except KeyError:
        raise ValueError(f"unknown activation {act!r}; expected one of "
                         f"{', '.join(ACT_CODES)}") from None


def dummy_if_none(t, like: torch.Tensor, dtype: torch.dtype | None = None):
    """Kernels take a real pointer for optional buffers; the flag says whether it is used.
    `dtype` types the dummy (statistic partials take their dtype from the buffer pointer)."""
    if t is not None:
        return t
    return torch.empty(1, dtype=dtype or like.dtype, device=like.device)


if triton is not None:

    @triton.jit
    def _erfc_abs(az):
        """erfc(az) for az >= 0 in fp32, relative error < 1.2e-7 (Numerical Recipes `erfcc`,
        a Chebyshev fit). Unlike Abramowitz-Stegun 7.1.26 (absolute error 1.5e-7) it stays
        accurate in the tail."""
        t = tl.math.div_rn(1.0, 1.0 + 0.5 * az)
        p = 0.17087277
        p = -0.82215223 + t * p
        p = 1.48851587 + t * p
        p = -1.13520398 + t * p
        p = 0.27886807 + t * p
        p = -0.18628806 + t * p
        p = 0.09678418 + t * p
        p = 0.37409196 + t * p
        p = 1.00002368 + t * p
        p = -1.26551223 + t * p
        return t * tl.exp(-az * az + p)

    @triton.jit
    def _erf(z):
        """erf(z) rounded to fp32 from the accurate erfc: like any correctly rounded erf it
        reaches -1 (so 1 + erf = 0, gelu(x) = -0) for x < ~-5.5 in gelu."""
        r = _erfc_abs(tl.abs(z))
        return tl.where(z < 0.0, r - 1.0, 1.0 - r)

    @triton.jit
    def _tanh(y):
        """tanh(y) = 2 / (1 + exp(-2y)) - 1 (absolute error ~1e-7), saturated to +-1 beyond
        |y| > 8.664339742 like SLEEF's tanhf, which ATen's vectorised CPU tanh uses: again so
        that 1 + tanh is exactly 0 at the same inputs as the reference."""
        t = tl.math.div_rn(2.0, 1.0 + tl.exp(-2.0 * y)) - 1.0
        return tl.where(tl.abs(y) > 8.664339742, tl.where(y < 0.0, -1.0, 1.0), t)

    @triton.jit
    def activation(x, ACT: tl.constexpr):
        """act(x) for an fp32 tile, in the same operation order as ATen so that the sign (and
        thus the count) agrees with the reference even for subnormal inputs, and exact zeros
        (which turn an infinite `up` into NaN) appear where ATen's do."""
        if ACT == 0:    # silu: x / (1 + exp(-x)), the division correctly rounded (div_rn):
            # on a GPU `/` is div.full (2 ulp, flushes subnormal quotients), which could turn
            # a tiny positive x into 0 and lose its count.
            a = tl.math.div_rn(x, 1.0 + tl.exp(-x))
        elif ACT == 1:  # gelu (erf): x * 0.5 * (1 + erf(x / sqrt 2))
            a = (x * 0.5) * (1.0 + _erf(x * 0.7071067811865476))
        elif ACT == 2:  # gelu_tanh: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
            inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
            a = (0.5 * x) * (1.0 + _tanh(inner))
        else:           # relu; NaN stays NaN like torch.relu
            a = tl.where(x < 0.0, 0.0, x)
        return a

    @triton.jit
    def tile_languages(rm, M, K, row_lang_ptr, HAS_LANG: tl.constexpr):
        """Language slot of each row of the tile, -1 for rows not counted: rows >= M, negative
        ids, and ids >= K (possible when the caller skipped the range check: ignoring them is
        what keeps the atomics inside the buffers)."""
        row_in = rm < M
        if HAS_LANG:
            lang = tl.load(row_lang_ptr + rm, mask=row_in, other=-1)
        else:
            lang = tl.where(row_in, 0, -1)
        return tl.where(row_in & (lang >= 0) & (lang < K), lang, -1)

    @triton.jit
    def tile_statistics(a, rm, rn, M, I, K, row_lang_ptr, counts_ptr, sums_ptr, sumsq_ptr,
                        HAS_LANG: tl.constexpr, HAS_COUNTS: tl.constexpr,
                        HAS_SUMS: tl.constexpr, HAS_SUMSQ: tl.constexpr):
        """Add this tile's per-language statistics of `a` [BM, BN] (fp32) to the buffers.

        rm [BM] / rn [BN]: the tile's row and neuron indices. Rows >= M and neurons >= I are
        outside the tensor; rows with a negative language or one >= K are not counted. NaN > 0
        is False, so NaN never counts. Languages absent from the tile cost one reduction of the
        language ids, no statistics and no atomics.
        """
        lang = tile_languages(rm, M, K, row_lang_ptr, HAS_LANG)
        lo = tl.min(tl.where(lang >= 0, lang, 2147483647), axis=0)
        hi = tl.max(lang, axis=0)   # lo > hi: no counted row, no work
        for k in range(lo, hi + 1):
            present = tl.sum((lang == k).to(tl.int32), axis=0)
            if present > 0:
                tc, ts, tq = language_partials(a, lang, k, sums_ptr, sumsq_ptr)
                flush_partials(k, tc, ts, tq, rn, I, counts_ptr, sums_ptr, sumsq_ptr,
                               HAS_COUNTS, HAS_SUMS, HAS_SUMSQ)

    @triton.jit
    def language_partials(a, lang, k, sums_ptr, sumsq_ptr):
        """Column partials of the rows of language k: (count of a > 0 as int32, sum of a and
        sum of a^2 in the sums / sumsq buffers' dtypes). A fp64 buffer gets a fp64 square,
        which does not overflow where the fp32 square of a large activation would."""
        in_k = (lang == k)[:, None]
        tc = tl.sum((in_k & (a > 0.0)).to(tl.int32), axis=0)    # exact int32 partial
        a_s = a.to(sums_ptr.dtype.element_ty)
        ts = tl.sum(tl.where(in_k, a_s, 0.0), axis=0)
        a_q = a.to(sumsq_ptr.dtype.element_ty)
        tq = tl.sum(tl.where(in_k, a_q * a_q, 0.0), axis=0)
        return tc, ts, tq

    @triton.jit
    def flush_partials(k, tc, ts, tq, rn, I, counts_ptr, sums_ptr, sumsq_ptr,
                       HAS_COUNTS: tl.constexpr, HAS_SUMS: tl.constexpr,
                       HAS_SUMSQ: tl.constexpr):
        """ONE atomic per (language k, neuron) for the partials of a tile or a run of tiles.
        k < K was checked by the caller, so k * I + rn < K * I < 2**31 (checked on the host)."""
        col_in = rn < I
        offs = rn.to(tl.int64) + k * I
        if HAS_COUNTS:
            tl.atomic_add(counts_ptr + offs, tc.to(tl.int64), mask=col_in & (tc != 0),
                          sem="relaxed")
        if HAS_SUMS:
            tl.atomic_add(sums_ptr + offs, ts, mask=col_in, sem="relaxed")
        if HAS_SUMSQ:
            tl.atomic_add(sumsq_ptr + offs, tq, mask=col_in, sem="relaxed")

    @triton.jit
    def tile_steering(a, rm, rn, M, I, G, row_group_ptr, mode_ptr, value_ptr,
                      HAS_GROUP: tl.constexpr):
        """Steer `a` [BM, BN]: per row group g and neuron i, mode 0 keeps, 1 sets to
        value[g, i], 2 adds value[g, i], 3 scales by value[g, i]. No row_group = group 0; a
        negative group or one >= G (unchecked ids) = not steered."""
        row_in = rm < M
        if HAS_GROUP:
            grp = tl.load(row_group_ptr + rm, mask=row_in, other=-1)
        else:
            grp = tl.where(row_in, 0, -1)
        m = ((grp >= 0) & (grp < G))[:, None] & (rn < I)[None, :]
        offs = grp.to(tl.int64)[:, None] * I + rn[None, :]
        mode = tl.load(mode_ptr + offs, mask=m, other=0).to(tl.int32)
        value = tl.load(value_ptr + offs, mask=m, other=0.0).to(tl.float32)
        a = tl.where(mode == 1, value, a)
        a = tl.where(mode == 2, a + value, a)
        a = tl.where(mode == 3, a * value, a)
        return a

    @triton.jit
    def tile_hist_amax(a, rm, rn, M, I, K, row_lang_ptr, hist_ptr, edges_ptr, amax_ptr, NE,
                       HAS_LANG: tl.constexpr, HAS_HIST: tl.constexpr,
                       HAS_AMAX: tl.constexpr):
        """Add this tile's histogram counts and maxima of `a` [BM, BN] (fp32, unsteered).

        bin(a) = the number of edges <= a (ops/reference.py), counted over the NE edges; NaN
        counts in no bin and never wins a maximum. Per language present in the tile: one
        atomic per (neuron, bin in use) and one atomic max per neuron.
        """
        lang = tile_languages(rm, M, K, row_lang_ptr, HAS_LANG)
        col_in = rn < I
        lo = tl.min(tl.where(lang >= 0, lang, 2147483647), axis=0)
        hi = tl.max(lang, axis=0)
        valid = a == a
        if HAS_HIST:
            bins = tl.zeros(a.shape, dtype=tl.int32)
            for e in range(0, NE):
                bins += (a >= tl.load(edges_ptr + e)).to(tl.int32)
        for k in range(lo, hi + 1):
            in_k = (lang == k)[:, None] & valid
            offs = rn.to(tl.int64) + k * I
            if HAS_AMAX:
                top = tl.max(tl.where(in_k, a, float("-inf")), axis=0)
                tl.atomic_max(amax_ptr + offs, top, mask=col_in & (top > float("-inf")),
                              sem="relaxed")
            if HAS_HIST:
                for b in range(0, NE + 1):
                    c = tl.sum((in_k & (bins == b)).to(tl.int32), axis=0)
                    tl.atomic_add(hist_ptr + offs * (NE + 1) + b, c.to(tl.int64),
                                  mask=col_in & (c != 0), sem="relaxed")
