"""`ln.ops.act_stats`: the public entry point of the fused op.

Validates arguments once (clear messages, nothing mutated on error), flattens leading dimensions
to rows, chooses the implementation and calls the registered torch.library op.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import dispatch
from .library import act_stats_op
from .reference import ACTIVATIONS

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _rows(t: Tensor, I: int, name: str) -> Tensor:
    """View `t` [..., I] as [M, I] without copying when possible."""
    if t.shape[-1] != I:
        raise ValueError(f"{name} has last dimension {t.shape[-1]}, expected {I} (the number "
                         f"of neurons, taken from gate)")
    return t if t.dim() == 2 else t.reshape(-1, I)


def _check_buffer(t: Optional[Tensor], name: str, I: int, dtypes, device) -> Optional[int]:
    if t is None:
        return None
    if t.dim() != 2 or t.shape[1] != I:
        raise ValueError(f"{name} must have shape [K, {I}] (languages x neurons), got "
                         f"{list(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {' or '.join(map(str, dtypes))}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but gate is on {device}; move it with .to()")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (it is updated in place)")
    return t.shape[0]


def act_stats(gate: Tensor, up: Optional[Tensor] = None, *, act: str = "silu",
              row_lang: Optional[Tensor] = None, counts: Optional[Tensor] = None,
              sums: Optional[Tensor] = None, sumsq: Optional[Tensor] = None,
              row_group: Optional[Tensor] = None, steer_mode: Optional[Tensor] = None,
              steer_value: Optional[Tensor] = None, impl: Optional[str] = None,
              check_ids: bool = True) -> Tensor:
    """h = steer(act(gate)) * up, and per-language statistics of act(gate), in one pass.

    gate, up: [..., I] (up may be None for plain MLPs); strided views are fine.
    row_lang: int32 [M] language slot per row; negative = not counted; None = all slot 0.
    counts: int64 [K, I]; sums / sumsq: float32 or float64 [K, I]; updated in place.
    row_group: int32 [M] steering group per row (None = group 0; negative = not steered).
    steer_mode: int8 [G, I] (0 keep, 1 set to value, 2 add value); steer_value: float32 [G, I].
    impl: "torch" | "cpu" | "triton" | "cuda"; None picks the best for the device.
    check_ids: range-check row_lang / row_group against the buffers (a device sync on GPU);
    callers that checked them already (the patch, once per batch) pass False.
    Returns h with gate's shape and dtype.
    """
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {', '.join(ACTIVATIONS)}")
    if gate.dtype not in FLOAT_DTYPES:
        raise TypeError(f"gate must be float32, float16 or bfloat16, got {gate.dtype}")
    if gate.dim() < 1:
        raise ValueError("gate must have at least one dimension (the neurons)")
    out_shape = gate.shape
    I = gate.shape[-1]
    gate2 = _rows(gate, I, "gate")
    M = gate2.shape[0]
    up2 = None
    if up is not None:
        if up.shape != gate.shape:
            raise ValueError(f"up has shape {list(up.shape)} but gate has {list(gate.shape)}")
        if up.dtype != gate.dtype or up.device != gate.device:
            raise TypeError("up must have the same dtype and device as gate")
        up2 = _rows(up, I, "up")
    K = None
    for name, buf, dtypes in (("counts", counts, (torch.int64,)),
                              ("sums", sums, (torch.float32, torch.float64)),
                              ("sumsq", sumsq, (torch.float32, torch.float64))):
        k = _check_buffer(buf, name, I, dtypes, gate.device)
        if k is not None:
            if K is not None and k != K:
                raise ValueError(f"{name} has {k} language slots but another buffer has {K}")
            K = k
    row_lang = _check_rows(row_lang, M, "row_lang", gate.device)
    if check_ids and row_lang is not None and K is not None and M > 0 \
            and int(row_lang.max()) >= K:
        raise ValueError(f"row_lang holds language id {int(row_lang.max())} but the statistic "
                         f"buffers have only {K} slots")
    row_group = _check_rows(row_group, M, "row_group", gate.device)
    if (steer_mode is None) != (steer_value is None):
        raise ValueError("steer_mode and steer_value must be given together")
    if steer_mode is not None:
        if steer_mode.dtype != torch.int8 or steer_mode.dim() != 2 or steer_mode.shape[1] != I:
            raise ValueError(f"steer_mode must be int8 [G, {I}], got {steer_mode.dtype} "
                             f"{list(steer_mode.shape)}")
        if steer_value.shape != steer_mode.shape or steer_value.dtype != torch.float32:
            raise ValueError("steer_value must be float32 with the shape of steer_mode")
        steer_mode, steer_value = steer_mode.contiguous(), steer_value.contiguous()
        if check_ids and row_group is not None and M > 0 \
                and int(row_group.max()) >= steer_mode.shape[0]:
            raise ValueError(f"row_group holds group {int(row_group.max())} but steer_mode has "
                             f"only {steer_mode.shape[0]} groups")
    elif row_group is not None:
        raise ValueError("row_group given without steer_mode / steer_value")
    name = dispatch.select_impl(gate.device, gate.dtype, requested=impl)
    h = act_stats_op(gate2, up2, act, row_lang, counts, sums, sumsq, row_group, steer_mode,
                     steer_value, name)
    return h.reshape(out_shape)


def _check_rows(t: Optional[Tensor], M: int, name: str, device) -> Optional[Tensor]:
    if t is None:
        return None
    t = t.reshape(-1)
    if t.numel() != M:
        raise ValueError(f"{name} has {t.numel()} entries but there are {M} rows")
    if t.dtype != torch.int32:
        raise TypeError(f"{name} must be int32, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but gate is on {device}")
    return t.contiguous()
