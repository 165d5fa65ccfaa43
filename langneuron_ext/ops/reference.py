"""The pure-PyTorch reference of the fused op: the oracle for every test and benchmark.

Semantics (docs/design.md, "The fused op"):

    a      = act(gate)                  computed in fp32
    counts[row_lang[m], i] += a[m, i] > 0      for rows with row_lang[m] >= 0
    sums  [row_lang[m], i] += a[m, i]           (optional)
    sumsq [row_lang[m], i] += a[m, i] ** 2      (optional)
    a'     = steer(a)  per row group: mode 0 keep, 1 set to value, 2 add value
    h      = a' * up   (gated)   or   a'   (plain), cast back to gate.dtype

Counting always uses the *unsteered* activation. NaN never counts (NaN > 0 is False).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")

STEER_KEEP, STEER_SET, STEER_ADD = 0, 1, 2


def activation_fp32(gate: Tensor, act: str) -> Tensor:
    """act(gate) in fp32."""
    x = gate.float()
    if act == "silu":
        return torch.nn.functional.silu(x)
    if act == "gelu":
        # torch's vectorised erf-GELU returns NaN for +inf (its scalar path returns +inf), so
        # the result would depend on memory layout; pin the mathematical limit gelu(+inf) = +inf.
        return torch.where(x == float("inf"), x, torch.nn.functional.gelu(x))
    if act == "gelu_tanh":
        return torch.nn.functional.gelu(x, approximate="tanh")
    if act == "relu":
        return torch.relu(x)
    raise ValueError(f"unknown activation {act!r}; expected one of {', '.join(ACTIVATIONS)}")


def accumulate_stats(a: Tensor, row_lang: Optional[Tensor], counts: Optional[Tensor],
                     sums: Optional[Tensor], sumsq: Optional[Tensor]) -> None:
    """Add the per-language statistics of fp32 activations `a` [M, I] into the buffers."""
    if counts is None and sums is None and sumsq is None:
        return
    M = a.shape[0]
    if row_lang is None:
        row_lang = torch.zeros(M, dtype=torch.int32, device=a.device)
    keep = row_lang >= 0
    lang = row_lang[keep].long()
    a = a[keep]
    if counts is not None:
        counts.index_add_(0, lang, (a > 0).to(counts.dtype))
    if sums is not None:
        sums.index_add_(0, lang, a.to(sums.dtype))
    if sumsq is not None:
        sumsq.index_add_(0, lang, a.to(sumsq.dtype).square())


def apply_steering(a: Tensor, row_group: Optional[Tensor], steer_mode: Optional[Tensor],
                   steer_value: Optional[Tensor]) -> Tensor:
    """Return `a` with each row's group steering applied (rows with a negative group: none)."""
    if steer_mode is None:
        return a
    M = a.shape[0]
    if row_group is None:
        row_group = torch.zeros(M, dtype=torch.int32, device=a.device)
    steered = row_group >= 0
    g = row_group.clamp(min=0).long()
    mode = steer_mode.long()[g]                      # [M, I]
    value = steer_value.float()[g]                   # [M, I]
    mode = torch.where(steered[:, None], mode, torch.zeros_like(mode))
    out = torch.where(mode == STEER_SET, value, a)
    out = torch.where(mode == STEER_ADD, a + value, out)
    return out


def act_stats_torch(gate: Tensor, up: Optional[Tensor], act: str, row_lang: Optional[Tensor],
                    counts: Optional[Tensor], sums: Optional[Tensor], sumsq: Optional[Tensor],
                    row_group: Optional[Tensor], steer_mode: Optional[Tensor],
                    steer_value: Optional[Tensor]) -> Tensor:
    """Reference implementation on 2-D inputs (validation happens in `ops.api`)."""
    a = activation_fp32(gate, act)
    accumulate_stats(a, row_lang, counts, sums, sumsq)
    a = apply_steering(a, row_group, steer_mode, steer_value)
    h = a * up.float() if up is not None else a
    return h.to(gate.dtype)


def plain_act_mul(gate: Tensor, up: Optional[Tensor], act: str) -> Tensor:
    """`act(gate) * up` in the input dtype with no statistics: the benchmark's floor."""
    fn = {
        "silu": torch.nn.functional.silu,
        "gelu": torch.nn.functional.gelu,
        "gelu_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
        "relu": torch.relu,
    }[act]
    return fn(gate) * up if up is not None else fn(gate)

