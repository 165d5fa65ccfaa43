"""The implementations written in plain PyTorch, present everywhere.

- "torch" (act_stats, priority 0): `reference.act_stats_torch`, the oracle itself. Dispatch
  falls back to it when nothing faster can run, and it is never self-checked.
- "vendor" (gated_mlp_stats, priority 0): torch's GEMM (cuBLAS / MKL) for the projections,
  exactly as the unpatched module computes them, then the best act_stats implementation.
"""
from __future__ import annotations

from typing import Optional

import torch.nn.functional as F
from torch import Tensor

from . import dispatch
from .args import GatedArgs
from .reference import act_stats_torch


def vendor_projections(args: GatedArgs):
    """(gate, up) as [..., I] exactly as the unpatched module computes them: ONE F.linear with
    a fused gate_up weight (then sliced), else one per weight."""
    if args.fused is not None:
        gate_up = F.linear(args.x, args.fused)
        return gate_up[..., :args.I], gate_up[..., args.I:]
    return F.linear(args.x, args.w_gate), F.linear(args.x, args.w_up)


def vendor_gated(args: GatedArgs, act_impl: Optional[str] = None) -> Tensor:
    """torch's GEMM, then the act_stats implementation `act_impl` (None: dispatch's choice for
    these arguments). Returns h [M, I]."""
    gate, up = vendor_projections(args)
    gate2, up2 = gate.reshape(-1, args.I), up.reshape(-1, args.I)
    name = act_impl if act_impl is not None else dispatch.choose_act(args)
    return dispatch.get(name).fn(gate2, up2, args.act, *args.stats.op_args())


def _everywhere(device_type, dtype) -> bool:
    return True


def _ok():
    return True, ""


dispatch.register(dispatch.Implementation(dispatch.REFERENCE, 0, act_stats_torch, _ok,
                                          _everywhere))
# Its self-check checks the glue (projections, fused weights): with the reference as the
# element-wise step, which every other act_stats implementation is checked against on its own.
dispatch.register(dispatch.Implementation(
    dispatch.VENDOR, 0, vendor_gated, _ok, _everywhere, op=dispatch.GATED_MLP,
    check_options=lambda device: {"act_impl": dispatch.REFERENCE}))
