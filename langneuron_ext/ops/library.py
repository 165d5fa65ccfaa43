"""The two ops: their torch.library registration (so torch.compile and opcheck see them) and
their Python entry points.

- `act_stats(gate, up, ...)` -> `langneuron::act_stats`: h = steer(act(gate)) * up with
  per-language statistics.
- `gated_mlp_stats(x, w_gate, w_up, ...)` -> `langneuron::gated_mlp_stats`: the same with the
  gated MLP's two projections (contract below).

An entry point validates its arguments once (`ops/args.py`), asks `ops/dispatch.py` which
implementation runs them (by name: the one place names are checked) and calls the registered op
with that name. The ops take 2-D, validated inputs, mutate the statistic buffers in place and
return a fresh `h`; their fake kernels give torch.compile the output's shape.

`gated_mlp_stats` contract (what `models/layouts.py` relies on)
---------------------------------------------------------------
- x [..., H]; w_gate, w_up [I, H] (nn.Linear weights, no bias). They may be the two row
  halves of one fused [2I, H] weight (`gate_up_proj.weight[:I]`, `[I:]`): the vendor path then
  makes ONE F.linear call with the whole fused weight and slices it, so gate / up equal
  `gate_up_proj(x)[..., :I]` / `[..., I:]` bit for bit; with two weights it calls
  F.linear(x, w_gate) and F.linear(x, w_up), exactly what `gate_proj(x)` / `up_proj(x)` do.
- Returns h [..., I] in x's dtype and adds the statistics of act(gate) to the buffers in place:
  exactly `act_stats` applied to the two projections (same arguments, semantics and errors).
- `impl` names the element-wise implementation the vendor path uses (as for `act_stats`).
  `gated_impl` (or LANGNEURON_GATED_IMPL) forces the gated implementation: "vendor" (torch's
  GEMM, then act_stats) or "triton_gemm" (the GEMM-epilogue kernel: gate and up never reach
  memory). Otherwise the choice per (device, dtype, H, I, M bucket) comes from a one-time
  measurement cached on disk (`dispatch.choice_cache_path()`, printed by `langneuron info`)
  where another implementation may be picked automatically (CUDA); else "vendor".
- Only call it for bias-free projections whose forward may be skipped (no hooks): the
  projections' outputs are not materialised on the triton_gemm path.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import dispatch
from .args import ActArgs, GatedArgs

__all__ = ["act_stats", "gated_mlp_stats", "act_stats_op", "gated_mlp_stats_op"]

MUTATED = ("counts", "sums", "sumsq", "hist", "amax")


@torch.library.custom_op("langneuron::act_stats", mutates_args=MUTATED)
def act_stats_op(gate: Tensor, up: Optional[Tensor], act: str, row_lang: Optional[Tensor],
                 counts: Optional[Tensor], sums: Optional[Tensor], sumsq: Optional[Tensor],
                 row_group: Optional[Tensor], steer_mode: Optional[Tensor],
                 steer_value: Optional[Tensor], hist: Optional[Tensor],
                 hist_edges: Optional[Tensor], amax: Optional[Tensor], impl: str) -> Tensor:
    return dispatch.get(impl).fn(gate, up, act, row_lang, counts, sums, sumsq, row_group,
                                 steer_mode, steer_value, hist, hist_edges, amax)


@act_stats_op.register_fake
def _act_stats_fake(gate, up, act, row_lang, counts, sums, sumsq, row_group, steer_mode,
                    steer_value, hist, hist_edges, amax, impl):
    return gate.new_empty(gate.shape)


@torch.library.custom_op("langneuron::gated_mlp_stats", mutates_args=MUTATED)
def gated_mlp_stats_op(x: Tensor, w_gate: Tensor, w_up: Tensor, act: str,
                       row_lang: Optional[Tensor], counts: Optional[Tensor],
                       sums: Optional[Tensor], sumsq: Optional[Tensor],
                       row_group: Optional[Tensor], steer_mode: Optional[Tensor],
                       steer_value: Optional[Tensor], hist: Optional[Tensor],
                       hist_edges: Optional[Tensor], amax: Optional[Tensor], impl: str,
                       act_impl: Optional[str]) -> Tensor:
    args = GatedArgs.assemble(x, w_gate, w_up, act, row_lang, counts, sums, sumsq, row_group,
                              steer_mode, steer_value, hist, hist_edges, amax)
    h = dispatch.get(impl, dispatch.GATED_MLP).fn(args, act_impl)
    return h.reshape(args.out_shape)


@gated_mlp_stats_op.register_fake
def _gated_mlp_stats_fake(x, w_gate, w_up, act, row_lang, counts, sums, sumsq, row_group,
                          steer_mode, steer_value, hist, hist_edges, amax, impl, act_impl):
    return x.new_empty(tuple(x.shape[:-1]) + (w_gate.shape[0],))


def act_stats(gate: Tensor, up: Optional[Tensor] = None, *, act: str = "silu",
              row_lang: Optional[Tensor] = None, counts: Optional[Tensor] = None,
              sums: Optional[Tensor] = None, sumsq: Optional[Tensor] = None,
              row_group: Optional[Tensor] = None, steer_mode: Optional[Tensor] = None,
              steer_value: Optional[Tensor] = None, hist: Optional[Tensor] = None,
              hist_edges: Optional[Tensor] = None, amax: Optional[Tensor] = None,
              impl: Optional[str] = None, check_ids: bool = True) -> Tensor:
    """h = steer(act(gate)) * up, and per-language statistics of act(gate), in one pass.

    gate, up: [..., I] (up may be None for plain MLPs); strided views are fine.
    row_lang: int32 [M] language slot per row; negative = not counted; None = all slot 0.
    counts: int64 [K, I]; sums / sumsq: float32 or float64 [K, I]; updated in place.
    row_group: int32 [M] steering group per row (None = group 0; negative = not steered).
    steer_mode: int8 [G, I] (0 keep, 1 set to value, 2 add value, 3 scale: a * value);
    steer_value: float32 [G, I] (a NaN scale factor is refused).
    hist: int64 [K, I, B], += 1 per counted row in the bin of its unsteered activation, for
    hist_edges fp32 [B - 1] (finite, strictly increasing; bin = number of edges <= a, NaN
    nowhere; `ops.default_hist_edges()`). amax: fp32 [K, I], the running maximum of counted
    activations (initialise it to -inf; NaN ignored).
    impl: "torch" | "cpu" | "triton" | "cuda"; None picks the best for the device (or
    LANGNEURON_IMPL). A named implementation costs one dict lookup per call after its first
    (checked, self-checked) use.
    check_ids: range-check row_lang / row_group against the buffers (a device sync on GPU);
    callers that checked them already (the patch, once per batch) pass False: the kernels then
    ignore out-of-range ids (never write out of bounds).
    Returns h with gate's shape and dtype.
    """
    args = ActArgs.validate(gate, up, act, row_lang=row_lang, counts=counts, sums=sums,
                            sumsq=sumsq, row_group=row_group, steer_mode=steer_mode,
                            steer_value=steer_value, hist=hist, hist_edges=hist_edges,
                            amax=amax, check_ids=check_ids)
    h = act_stats_op(*args.op_args(), dispatch.choose_act(args, impl))
    return h.reshape(args.out_shape)


def gated_mlp_stats(x: Tensor, w_gate: Tensor, w_up: Tensor, *, act: str = "silu",
                    impl: Optional[str] = None, gated_impl: Optional[str] = None,
                    row_lang: Optional[Tensor] = None, counts: Optional[Tensor] = None,
                    sums: Optional[Tensor] = None, sumsq: Optional[Tensor] = None,
                    row_group: Optional[Tensor] = None, steer_mode: Optional[Tensor] = None,
                    steer_value: Optional[Tensor] = None, hist: Optional[Tensor] = None,
                    hist_edges: Optional[Tensor] = None, amax: Optional[Tensor] = None,
                    check_ids: bool = True) -> Tensor:
    """h = steer(act(x @ w_gate^T)) * (x @ w_up^T) with per-language statistics; see the
    module docstring for the full contract."""
    args = GatedArgs.validate(x, w_gate, w_up, act, row_lang=row_lang, counts=counts,
                              sums=sums, sumsq=sumsq, row_group=row_group,
                              steer_mode=steer_mode, steer_value=steer_value, hist=hist,
                              hist_edges=hist_edges, amax=amax, check_ids=check_ids)
    name = dispatch.select_gated(args, gated_impl)
    act_impl = dispatch.choose_act(args, impl) if name == dispatch.VENDOR else impl
    return gated_mlp_stats_op(x, w_gate, w_up, act, *args.stats.op_args(), name, act_impl)
