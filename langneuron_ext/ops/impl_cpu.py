"""The `cpu` implementation: the C++ kernel of csrc/cpu (langneuron_ext._C).

Registers itself with `ops.dispatch` at priority 10 for CPU tensors. It is vectorised (AVX-512 /
AVX2 / baseline chosen at load time) and parallel over neuron blocks with at::parallel_for;
see csrc/cpu/act_stats_kernel.cpp. gate/up may have any row stride (views of a fused gate_up
are read in place); a non-unit column stride is copied to contiguous first.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import dispatch, native

SUPPORTED_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def act_stats_cpu(gate: Tensor, up: Optional[Tensor], act: str, row_lang: Optional[Tensor],
                  counts: Optional[Tensor], sums: Optional[Tensor], sumsq: Optional[Tensor],
                  row_group: Optional[Tensor], steer_mode: Optional[Tensor],
                  steer_value: Optional[Tensor], hist: Optional[Tensor] = None,
                  hist_edges: Optional[Tensor] = None, amax: Optional[Tensor] = None) -> Tensor:
    """The fused op on 2-D CPU tensors (same signature as `reference.act_stats_torch`)."""
    ok, reason = native.cpu_available()
    if not ok:
        raise RuntimeError(f"the cpu implementation is not available: {reason}")
    return native.native_op()(gate, up, act, row_lang, counts, sums, sumsq, row_group,
                              steer_mode, steer_value, hist, hist_edges, amax)


def _supports(device_type: str, dtype: torch.dtype) -> bool:
    return device_type == "cpu" and dtype in SUPPORTED_DTYPES


dispatch.register(dispatch.Implementation("cpu", 10, act_stats_cpu, native.cpu_available,
                                          _supports))
