"""Shared pieces of the Triton kernels: activations, per-tile statistics, steering.

Both Triton kernels (`triton_elementwise`, the element-wise op over gate/up tiles, and
`triton_gemm`, the GEMM-epilogue op) end in the same epilogue on an fp32 tile of activations
`a` [BLOCK_M, BLOCK_N]:

1. `tile_statistics`: per (language, neuron) counts of `a > 0`, and optional sums / sums of
   squares, reduced over the tile's rows in registers (int32 / fp32 partials) and added to the
   global buffers with ONE atomic per (language, neuron, tile). Only the languages that occur
   in the tile are visited (the loop runs from the tile's smallest to its largest language id),
   so a tile of rows from one sequence costs one reduction, whatever K is.
2. `tile_steering`: keep / set / add per row group, applied after counting (counts always
   use the unsteered activation, as in `ops.reference`).

Interpreter rules (DESIGN.md): everything is upcast to fp32 right after `tl.load`, and no
libdevice function is used, so the same code runs under `TRITON_INTERPRET=1` on CPU tensors.
erf and tanh are therefore written with `tl.exp` (`_erf`, `_tanh`): within ~1e-7 absolute of a
correctly rounded erf / tanh. Where torch's own CPU kernels round `1 + erf` / `1 + tanh` to exactly
0 slightly earlier or later (gelu near x = -5.5, gelu_tanh is matched), a value here can be a tiny
nonzero where the reference has -0; that is within every tolerance, and only visible when it is
multiplied by an infinite `up` (NaN there versus +-inf here).
"""
from __future__ import annotations

import os

import torch

try:  # Triton is optional: the package must import without it.
    import triton
    import triton.language as tl

    TRITON_IMPORT_ERROR = ""
except Exception as exc:  # pragma: no cover - depends on the installation
    triton = None
    tl = None
    TRITON_IMPORT_ERROR = f"triton could not be imported ({exc})"

# Decided once, like triton itself does: `triton.jit` picks the interpreter at decoration time.
INTERPRET = os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "yes", "on")

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


def act_code(act: str) -> int:
    """The kernel's constexpr code for activation name `act`."""
    try:
        return ACT_CODES[act]
    except KeyError:
        raise ValueError(f"unknown activation {act!r}; expected one of "
                         f"{', '.join(ACT_CODES)}") from None


def dummy_if_none(t, like: torch.Tensor):
    """Kernels take a real pointer for optional buffers; the flag says whether it is used."""
    return t if t is not None else torch.empty(1, dtype=like.dtype, device=like.device)


if triton is not None:

    @triton.jit
    def _erfc_abs(az):
        """erfc(az) for az >= 0 in fp32, relative error < 1.2e-7 (Numerical Recipes `erfcc`,
        a Chebyshev fit). Unlike Abramowitz-Stegun 7.1.26 (absolute error 1.5e-7) it stays
        accurate in the tail."""
        t = 1.0 / (1.0 + 0.5 * az)
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
        t = 2.0 / (1.0 + tl.exp(-2.0 * y)) - 1.0
        return tl.where(tl.abs(y) > 8.664339742, tl.where(y < 0.0, -1.0, 1.0), t)

    @triton.jit
    def activation(x, ACT: tl.constexpr):
        """act(x) for an fp32 tile, in the same operation order as ATen so that the sign (and
        thus the count) agrees with the reference even for subnormal inputs, and exact zeros
        (which turn an infinite `up` into NaN) appear where ATen's do."""
        if ACT == 0:    # silu: x / (1 + exp(-x))
            a = x / (1.0 + tl.exp(-x))
        elif ACT == 1:  # gelu (erf): x * 0.5 * (1 + erf(x / sqrt 2))
            a = (x * 0.5) * (1.0 + _erf(x * 0.7071067811865476))
        elif ACT == 2:  # gelu_tanh: 0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 x^3)))
            inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
            a = (0.5 * x) * (1.0 + _tanh(inner))
        else:           # relu; NaN stays NaN like torch.relu
            a = tl.where(x < 0.0, 0.0, x)
        return a

    @triton.jit
    def tile_statistics(a, rm, rn, M, I, row_lang_ptr, counts_ptr, sums_ptr, sumsq_ptr,
                        HAS_LANG: tl.constexpr, HAS_COUNTS: tl.constexpr,
                        HAS_SUMS: tl.constexpr, HAS_SUMSQ: tl.constexpr):
        """Add this tile's per-language statistics of `a` [BM, BN] (fp32) to the buffers.

        rm [BM] / rn [BN]: the tile's row and neuron indices. Rows >= M and neurons >= I are
        outside the tensor; rows with a negative language are not counted. NaN > 0 is False,
        so NaN never counts.
        """
        row_in = rm < M
        if HAS_LANG:
            lang = tl.load(row_lang_ptr + rm, mask=row_in, other=-1)
        else:
            lang = tl.where(row_in, 0, -1)
        valid = row_in & (lang >= 0)
        lo = tl.min(tl.where(valid, lang, 2147483647), axis=0)
        hi = tl.max(tl.where(valid, lang, -1), axis=0)   # lo > hi: no counted row, no work
        col_in = rn < I
        rn64 = rn.to(tl.int64)
        positive = a > 0.0
        for k in range(lo, hi + 1):
            in_k = (lang == k)[:, None]
            offs = rn64 + k * I   # K * I < 2**31 (checked on the host)
            if HAS_COUNTS:
                part = tl.sum((in_k & positive).to(tl.int32), axis=0)   # exact int32 partial
                tl.atomic_add(counts_ptr + offs, part.to(tl.int64),
                              mask=col_in & (part != 0), sem="relaxed")
            # Sums are reduced in the buffer's dtype: a fp64 buffer gets a fp64 square, which
            # does not overflow where the fp32 square of a large activation would.
            if HAS_SUMS:
                a_s = a.to(sums_ptr.dtype.element_ty)
                s = tl.sum(tl.where(in_k, a_s, 0.0), axis=0)
                tl.atomic_add(sums_ptr + offs, s, mask=col_in, sem="relaxed")
            if HAS_SUMSQ:
                a_q = a.to(sumsq_ptr.dtype.element_ty)
                s2 = tl.sum(tl.where(in_k, a_q * a_q, 0.0), axis=0)
                tl.atomic_add(sumsq_ptr + offs, s2, mask=col_in, sem="relaxed")

    @triton.jit
    def tile_steering(a, rm, rn, M, I, row_group_ptr, mode_ptr, value_ptr,
                      HAS_GROUP: tl.constexpr):
        """Steer `a` [BM, BN]: per row group g and neuron i, mode 0 keeps, 1 sets to
        value[g, i], 2 adds value[g, i]. No row_group = group 0; negative group = not steered."""
        row_in = rm < M
        if HAS_GROUP:
            grp = tl.load(row_group_ptr + rm, mask=row_in, other=-1)
        else:
            grp = tl.where(row_in, 0, -1)
        m = (grp >= 0)[:, None] & (rn < I)[None, :]
        offs = grp.to(tl.int64)[:, None] * I + rn[None, :]
        mode = tl.load(mode_ptr + offs, mask=m, other=0).to(tl.int32)
        value = tl.load(value_ptr + offs, mask=m, other=0.0).to(tl.float32)
        a = tl.where(mode == 1, value, a)
        a = tl.where(mode == 2, a + value, a)
        return a
