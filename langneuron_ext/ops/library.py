"""Registration of the fused op with torch.library, so torch.compile and opcheck see one op.

`langneuron::act_stats` takes 2-D inputs that `ops.api.act_stats` has already validated, mutates
the statistic buffers in place and returns a fresh `h`. The `impl` string picks the backend.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import dispatch


@torch.library.custom_op("langneuron::act_stats",
                         mutates_args=("counts", "sums", "sumsq", "hist", "amax"))
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
