"""The pure-PyTorch reference of the fused op: the oracle for every test and benchmark.

Semantics (docs/design.md, "The fused op"; restated in csrc/langneuron.h):

    a      = act(gate)                  computed in fp32
    for rows with row_lang[m] >= 0, k = row_lang[m]:
      counts[k, i] += a[m, i] > 0
      sums  [k, i] += a[m, i]                      (optional)
      sumsq [k, i] += a[m, i] ** 2                 (optional)
      hist  [k, i, bin(a[m, i])] += 1              (optional; NaN counts nowhere)
      amax  [k, i]  = max(amax[k, i], a[m, i])     (optional; NaN ignored)
    a'     = steer(a)  per row group: mode 0 keep, 1 set to value, 2 add value, 3 scale (a * value)
    h      = round(round(a') * up)  (gated)   or   round(a')  (plain), round() to gate.dtype
             (a' is rounded before the product, as the model's own act(gate) * up rounds
             act(gate); in fp32 both roundings are no-ops)

Statistics always use the *unsteered* activation. NaN never counts (NaN > 0 is False).

Binning, the one rule: with edges e[0] < e[1] < ... < e[B-2] (fp32, finite),
    bin(a) = the number of edges e with e <= a        (IEEE comparison: -0.0 == 0.0)
so bin b holds e[b-1] <= a < e[b]; bin 0 is (-inf, e[0]) and bin B-1 is [e[B-2], +inf]: -inf
lands in bin 0, +inf in bin B-1, and an activation equal to an edge goes to the bin above it.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

ACTIVATIONS = ("silu", "gelu", "gelu_tanh", "relu")

STEER_KEEP, STEER_SET, STEER_ADD, STEER_SCALE = 0, 1, 2, 3
STEER_MODES = (STEER_KEEP, STEER_SET, STEER_ADD, STEER_SCALE)

DEFAULT_HIST_BINS = 32
# The small negative range of SiLU / GELU (their minima are -0.278 and -0.170): a few bins there,
# then 0.0 exactly (so the mass at and above the 0 edge, less exact zeros, equals `counts`), then
# log-spaced positive edges from 1e-3 to 1e2 (real models' MLP activations rarely exceed ~100).
NEGATIVE_EDGES = (-0.2, -0.1, -0.05, -0.01)
POSITIVE_RANGE = (1e-3, 1e2)


def default_hist_edges(bins: int = DEFAULT_HIST_BINS) -> Tensor:
    """fp32 [bins - 1] bin edges for histograms of SiLU/GELU activations: the edges of
    `NEGATIVE_EDGES`, 0.0, then `bins - 6` edges log-spaced over `POSITIVE_RANGE`."""
    n_pos = bins - 1 - len(NEGATIVE_EDGES) - 1
    if not isinstance(bins, int) or n_pos < 2:
        raise ValueError(f"bins must be an integer >= {len(NEGATIVE_EDGES) + 4}, got {bins!r}")
    lo, hi = (math.log(v) for v in POSITIVE_RANGE)
    positive = [math.exp(lo + (hi - lo) * j / (n_pos - 1)) for j in range(n_pos)]
    return torch.tensor(list(NEGATIVE_EDGES) + [0.0] + positive, dtype=torch.float32)


# torch's CPU kernels compute all but the last (numel mod 2 x vector width) elements of a call
# with vectorised exp / erf / tanh and those last few with the scalar libm ones, which differ in
# the last bit: padding the flattened input to a multiple of this makes every element take the
# vectorised path, so an activation does not depend on the tensor's size or layout (and equals
# what a model's own call computes: its M x I is a multiple of 64 for every real MLP width).
VECTOR_PAD = 64


def activation_fp32(gate: Tensor, act: str) -> Tensor:
    """act(gate) in fp32: torch's own activation of gate.float() (on CPU, its vectorised path
    for every element, see VECTOR_PAD)."""
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {', '.join(ACTIVATIONS)}")
    x = gate.float()
    if x.device.type != "cpu" or x.numel() % VECTOR_PAD == 0:
        return _activation(x, act)
    flat = x.reshape(-1)
    padded = torch.nn.functional.pad(flat, (0, -flat.numel() % VECTOR_PAD))
    return _activation(padded, act)[:flat.numel()].reshape(x.shape)


def _activation(x: Tensor, act: str) -> Tensor:
    if act == "silu":
        return torch.nn.functional.silu(x)
    if act == "gelu":
        # torch's vectorised erf-GELU returns NaN for +inf (its scalar path returns +inf), so
        # the result would depend on memory layout; pin the mathematical limit gelu(+inf) = +inf.
        return torch.where(x == float("inf"), x, torch.nn.functional.gelu(x))
    if act == "gelu_tanh":
        return torch.nn.functional.gelu(x, approximate="tanh")
    return torch.relu(x)


def hist_bin(a: Tensor, edges: Tensor) -> Tensor:
    """bin(a) of the rule above, int64 with a's shape (NaN gets -1: counted nowhere)."""
    flat = a.reshape(-1).contiguous()
    b = torch.searchsorted(edges.to(flat.device).contiguous(), flat, right=True)
    return torch.where(flat.isnan(), torch.full_like(b, -1), b).reshape(a.shape)


def accumulate_stats(a: Tensor, row_lang: Optional[Tensor], counts: Optional[Tensor],
                     sums: Optional[Tensor], sumsq: Optional[Tensor],
                     hist: Optional[Tensor] = None, hist_edges: Optional[Tensor] = None,
                     amax: Optional[Tensor] = None) -> None:
    """Add the per-language statistics of fp32 activations `a` [M, I] into the buffers."""
    if counts is None and sums is None and sumsq is None and hist is None and amax is None:
        return
    M, I = a.shape
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
    if hist is not None:
        B = hist.shape[2]
        b = hist_bin(a, hist_edges)
        flat = (lang[:, None] * I + torch.arange(I, device=a.device)) * B + b
        flat = flat[b >= 0]
        hist.view(-1).index_add_(0, flat, torch.ones_like(flat))
    if amax is not None:
        no_nan = torch.where(a.isnan(), torch.full_like(a, -math.inf), a)
        amax.scatter_reduce_(0, lang[:, None].expand(-1, I), no_nan, "amax")


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
    out = torch.where(mode == STEER_SCALE, a * value, out)
    return out


def act_stats_torch(gate: Tensor, up: Optional[Tensor], act: str, row_lang: Optional[Tensor],
                    counts: Optional[Tensor], sums: Optional[Tensor], sumsq: Optional[Tensor],
                    row_group: Optional[Tensor], steer_mode: Optional[Tensor],
                    steer_value: Optional[Tensor], hist: Optional[Tensor] = None,
                    hist_edges: Optional[Tensor] = None,
                    amax: Optional[Tensor] = None) -> Tensor:
    """Reference implementation on 2-D inputs (validation happens in `ops.args`)."""
    a = activation_fp32(gate, act)
    accumulate_stats(a, row_lang, counts, sums, sumsq, hist, hist_edges, amax)
    a = apply_steering(a, row_group, steer_mode, steer_value)
    if up is None:
        return a.to(gate.dtype)
    # a' is rounded to the input dtype before the product, as the model's own act(gate) * up
    # rounds act(gate): a 16-bit patched model then computes the unpatched model's h bit for bit.
    return (a.to(gate.dtype).float() * up.float()).to(gate.dtype)


def plain_act_mul(gate: Tensor, up: Optional[Tensor], act: str) -> Tensor:
    """`act(gate) * up` in the input dtype with no statistics: the benchmark's floor."""
    fn = {
        "silu": torch.nn.functional.silu,
        "gelu": torch.nn.functional.gelu,
        "gelu_tanh": lambda x: torch.nn.functional.gelu(x, approximate="tanh"),
        "relu": torch.relu,
    }[act]
    return fn(gate) * up if up is not None else fn(gate)
