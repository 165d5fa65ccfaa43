"""`ln.ops.act_stats`: the public entry point of the fused op.

Validates arguments once (`args.ActArgs`: clear messages, nothing mutated on error), flattens
leading dimensions to rows, resolves the implementation (a dict lookup after the first call for
a named one) and calls the registered torch.library op.
"""
from __future__ import annotations

from typing import Optional

from torch import Tensor

from . import dispatch
from .args import FLOAT_DTYPES, ActArgs
from .library import act_stats_op

__all__ = ["act_stats", "FLOAT_DTYPES"]


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
    impl: "torch" | "cpu" | "triton" | "cuda"; None picks the best for the device. A named
    implementation costs one dict lookup per call after its first (checked, self-checked) use.
    check_ids: range-check row_lang / row_group against the buffers (a device sync on GPU);
    callers that checked them already (the patch, once per batch) pass False: the kernels then
    ignore out-of-range ids (never write out of bounds).
    Returns h with gate's shape and dtype.
    """
    args = ActArgs.validate(gate, up, act, row_lang=row_lang, counts=counts, sums=sums,
                            sumsq=sumsq, row_group=row_group, steer_mode=steer_mode,
                            steer_value=steer_value, hist=hist, hist_edges=hist_edges,
                            amax=amax, check_ids=check_ids)
    if impl is None:
        impl = dispatch.select_impl(gate.device, gate.dtype)
    else:
        dispatch.resolve(impl, gate.device, gate.dtype)
    impl = dispatch.for_arguments(impl, args)
    h = act_stats_op(*args.op_args(), impl)
    return h.reshape(args.out_shape)
