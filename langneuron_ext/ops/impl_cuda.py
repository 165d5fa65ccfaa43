"""The `cuda` implementation: the CUDA kernel of csrc/cuda (langneuron_ext._C_cuda).

Registers itself with `ops.dispatch` at priority 30 for CUDA tensors: 16-byte vector loads, a
shared-memory reduction per (language, neuron) and one atomic per entry per block; see
csrc/cuda/act_stats_kernel.cu. Built only with nvcc (LANGNEURON_BUILD_CUDA=1, or automatically
when a GPU is visible at install time).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import dispatch, native

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def act_stats_cuda(gate: Tensor, up: Optional[Tensor], act: str, row_lang: Optional[Tensor],
                   counts: Optional[Tensor], sums: Optional[Tensor], sumsq: Optional[Tensor],
                   row_group: Optional[Tensor], steer_mode: Optional[Tensor],
                   steer_value: Optional[Tensor], hist: Optional[Tensor] = None,
                   hist_edges: Optional[Tensor] = None, amax: Optional[Tensor] = None) -> Tensor:
    """The fused op on 2-D CUDA tensors (same signature as `reference.act_stats_torch`)."""
    ok, reason = native.cuda_available()
    if not ok:
        raise RuntimeError(f"the cuda implementation is not available: {reason}")
    return native.native_op()(gate, up, act, row_lang, counts, sums, sumsq, row_group,
                              steer_mode, steer_value, hist, hist_edges, amax)


def _supports(device_type: str, dtype: torch.dtype) -> bool:
    return device_type == "cuda" and dtype in SUPPORTED_DTYPES


dispatch.register(dispatch.Implementation("cuda", 30, act_stats_cuda, native.cuda_available,
                                          _supports))
