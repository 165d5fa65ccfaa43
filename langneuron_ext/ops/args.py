"""One argument object per op, validated once, passed to every implementation.

`StatArgs` holds what both ops share: the per-row language ids and the statistic buffers, and
the per-row steering groups and masks. `ActArgs` (the element-wise op `act_stats`) and
`GatedArgs` (the gated MLP with statistics, `gated_mlp_stats`) add their inputs. The checks
live here and only here: the entry points (`ops/library.py`) build one of these and every
implementation receives what it holds. Every error is one line saying what to do, raised
before anything is computed or mutated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import Tensor

from .reference import ACTIVATIONS, STEER_SCALE

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
BUFFER_NAMES = ("counts", "sums", "sumsq", "hist", "amax")
# Optional parts of the op an implementation may not support yet (dispatch says so and falls
# back): histograms, running maxima, steering mode 3.
FEATURES = ("hist", "amax", "scale")


def check_act(act: str) -> str:
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}; expected one of {', '.join(ACTIVATIONS)}")
    return act


def _check_buffer(t: Optional[Tensor], name: str, I: int, dtypes, device) -> Optional[int]:
    if t is None:
        return None
    if t.dim() != 2 or t.shape[1] != I:
        raise ValueError(f"{name} must have shape [K, {I}] (languages x neurons), got "
                         f"{list(t.shape)}")
    if t.dtype not in dtypes:
        raise TypeError(f"{name} must have dtype {' or '.join(map(str, dtypes))}, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the inputs are on {device}; move it "
                         f"with .to()")
    if not t.is_contiguous():
        raise ValueError(f"{name} must be contiguous (it is updated in place)")
    return t.shape[0]


def _check_hist(hist: Optional[Tensor], edges: Optional[Tensor], I: int, device,
                check_values: bool) -> Optional[int]:
    """Shape / dtype / device of hist and hist_edges (and, with check_values, that the edges
    are finite and strictly increasing); returns hist's K."""
    if (hist is None) != (edges is None):
        raise ValueError("hist and hist_edges must be given together (edges: e.g. "
                         "langneuron_ext.ops.default_hist_edges())")
    if hist is None:
        return None
    if edges.dim() != 1 or edges.dtype != torch.float32 or edges.numel() < 1:
        raise ValueError(f"hist_edges must be a 1-D float32 tensor of at least one edge, got "
                         f"{edges.dtype} {list(edges.shape)}")
    if edges.device != device:
        raise ValueError(f"hist_edges is on {edges.device} but the inputs are on {device}; "
                         f"move it with .to()")
    if check_values:
        if not bool(torch.isfinite(edges).all()):
            raise ValueError("hist_edges must be finite (the first and last bins are already "
                             "open-ended): drop the inf / NaN edges")
        if edges.numel() > 1 and not bool((edges[1:] > edges[:-1]).all()):
            j = int((edges[1:] <= edges[:-1]).nonzero()[0])
            raise ValueError(f"hist_edges must be strictly increasing: edge {j + 1} "
                             f"({edges[j + 1].item()!r}) is not above edge {j} "
                             f"({edges[j].item()!r})")
    B = edges.numel() + 1
    if hist.dim() != 3 or hist.shape[1] != I or hist.shape[2] != B:
        raise ValueError(f"hist must have shape [K, {I}, {B}] (languages x neurons x bins, "
                         f"bins = len(hist_edges) + 1), got {list(hist.shape)}")
    if hist.dtype != torch.int64:
        raise TypeError(f"hist must have dtype torch.int64, got {hist.dtype}")
    if hist.device != device:
        raise ValueError(f"hist is on {hist.device} but the inputs are on {device}; move it "
                         f"with .to()")
    if not hist.is_contiguous():
        raise ValueError("hist must be contiguous (it is updated in place)")
    return hist.shape[0]


def _check_rows(t: Optional[Tensor], M: int, name: str, device) -> Optional[Tensor]:
    if t is None:
        return None
    t = t.reshape(-1)
    if t.numel() != M:
        raise ValueError(f"{name} has {t.numel()} entries but there are {M} rows")
    if t.dtype != torch.int32:
        raise TypeError(f"{name} must be int32, got {t.dtype}")
    if t.device != device:
        raise ValueError(f"{name} is on {t.device} but the inputs are on {device}")
    return t.contiguous()


@dataclass(frozen=True)
class StatArgs:
    """Statistics and steering arguments of one call, validated (see `validate`)."""
    M: int
    I: int
    K: Optional[int]                 # language slots of the buffers (None: no statistics)
    G: Optional[int]                 # steering groups (None: no steering)
    row_lang: Optional[Tensor] = None
    counts: Optional[Tensor] = None
    sums: Optional[Tensor] = None
    sumsq: Optional[Tensor] = None
    row_group: Optional[Tensor] = None
    steer_mode: Optional[Tensor] = None
    steer_value: Optional[Tensor] = None
    hist: Optional[Tensor] = None
    hist_edges: Optional[Tensor] = None
    amax: Optional[Tensor] = None

    @classmethod
    def validate(cls, M: int, I: int, device: torch.device, *,
                 row_lang: Optional[Tensor] = None, counts: Optional[Tensor] = None,
                 sums: Optional[Tensor] = None, sumsq: Optional[Tensor] = None,
                 row_group: Optional[Tensor] = None, steer_mode: Optional[Tensor] = None,
                 steer_value: Optional[Tensor] = None, hist: Optional[Tensor] = None,
                 hist_edges: Optional[Tensor] = None, amax: Optional[Tensor] = None,
                 check_ids: bool = True) -> "StatArgs":
        """Check everything once. check_ids range-checks row_lang / row_group against K / G
        and checks the values of hist_edges (finite, increasing), steer_mode (0-3) and
        steer_value (no NaN scale factor): a device sync on GPU, so callers that checked them
        already pass False, and the GPU kernels then ignore out-of-range ids instead of
        writing out of bounds. On CPU the value checks always run (they cost next to
        nothing)."""
        check_values = check_ids or device.type == "cpu"
        K = None
        k_hist = _check_hist(hist, hist_edges, I, device, check_values)
        for name, buf, dtypes in (("counts", counts, (torch.int64,)),
                                  ("sums", sums, (torch.float32, torch.float64)),
                                  ("sumsq", sumsq, (torch.float32, torch.float64)),
                                  ("amax", amax, (torch.float32,)),
                                  ("hist", hist, None)):
            k = k_hist if name == "hist" else _check_buffer(buf, name, I, dtypes, device)
            if k is not None:
                if K is not None and k != K:
                    raise ValueError(f"{name} has {k} language slots but another buffer has "
                                     f"{K}")
                K = k
        row_lang = _check_rows(row_lang, M, "row_lang", device)
        if check_ids and row_lang is not None and K is not None and M > 0 \
                and int(row_lang.max()) >= K:
            raise ValueError(f"row_lang holds language id {int(row_lang.max())} but the "
                             f"statistic buffers have only {K} slots")
        row_group = _check_rows(row_group, M, "row_group", device)
        if (steer_mode is None) != (steer_value is None):
            raise ValueError("steer_mode and steer_value must be given together")
        G = None
        if steer_mode is not None:
            if steer_mode.dtype != torch.int8 or steer_mode.dim() != 2 \
                    or steer_mode.shape[1] != I:
                raise ValueError(f"steer_mode must be int8 [G, {I}], got {steer_mode.dtype} "
                                 f"{list(steer_mode.shape)}")
            if steer_value.shape != steer_mode.shape or steer_value.dtype != torch.float32:
                raise ValueError("steer_value must be float32 with the shape of steer_mode")
            if steer_mode.device != device or steer_value.device != device:
                raise ValueError(f"steer_mode / steer_value must be on {device}")
            steer_mode, steer_value = steer_mode.contiguous(), steer_value.contiguous()
            G = steer_mode.shape[0]
            if check_values and steer_mode.numel():
                if int(steer_mode.min()) < 0 or int(steer_mode.max()) > STEER_SCALE:
                    raise ValueError(f"steer_mode holds {int(steer_mode.min())}..."
                                     f"{int(steer_mode.max())}; modes are 0 keep, 1 set, 2 add, "
                                     f"3 scale")
                if bool((steer_value.isnan() & (steer_mode == STEER_SCALE)).any()):
                    raise ValueError("steer_value holds a NaN scale factor (a neuron with "
                                     "steer_mode 3, scale): give a number, e.g. 0 to silence "
                                     "it or 2 to double it")
            if check_ids and row_group is not None and M > 0 and int(row_group.max()) >= G:
                raise ValueError(f"row_group holds group {int(row_group.max())} but steer_mode "
                                 f"has only {G} groups")
        elif row_group is not None:
            raise ValueError("row_group given without steer_mode / steer_value")
        B = hist.shape[2] if hist is not None else 1
        if (K or 1) * I * B >= 2 ** 31 or (G or 1) * I >= 2 ** 31:
            raise ValueError(f"K * I (* bins) or G * I reaches 2^31 (I = {I}): split the "
                             f"languages or "
                             f"groups over several calls")
        return cls(M, I, K, G, row_lang, counts, sums, sumsq, row_group, steer_mode,
                   steer_value, hist, hist_edges, amax)

    @property
    def has_stats(self) -> bool:
        return self.K is not None

    @property
    def has_steer(self) -> bool:
        return self.G is not None

    def op_args(self) -> Tuple[Optional[Tensor], ...]:
        """(row_lang, counts, sums, sumsq, row_group, steer_mode, steer_value, hist,
        hist_edges, amax), the order of `reference.act_stats_torch` after (gate, up, act)."""
        return (self.row_lang, self.counts, self.sums, self.sumsq, self.row_group,
                self.steer_mode, self.steer_value, self.hist, self.hist_edges, self.amax)

    def needs(self, feature: str) -> bool:
        """Whether this call uses an optional part of the op (one of FEATURES). "scale" looks
        at steer_mode's values (a device sync on GPU): ask only implementations that lack it."""
        if feature == "hist":
            return self.hist is not None
        if feature == "amax":
            return self.amax is not None
        if feature == "scale":
            return self.steer_mode is not None and bool((self.steer_mode == STEER_SCALE).any())
        raise ValueError(f"unknown feature {feature!r}; expected one of {', '.join(FEATURES)}")


def _rows(t: Tensor, I: int, name: str) -> Tensor:
    """View `t` [..., I] as [M, I] without copying when possible."""
    if t.shape[-1] != I:
        raise ValueError(f"{name} has last dimension {t.shape[-1]}, expected {I} (the number "
                         f"of neurons, taken from gate)")
    return t if t.dim() == 2 else t.reshape(-1, I)


@dataclass(frozen=True)
class ActArgs:
    """Arguments of `act_stats`: 2-D gate / up [M, I] (any strides) and the statistics."""
    gate: Tensor
    up: Optional[Tensor]
    act: str
    stats: StatArgs
    out_shape: torch.Size

    @classmethod
    def validate(cls, gate: Tensor, up: Optional[Tensor], act: str, *, check_ids: bool = True,
                 **stat_kwargs) -> "ActArgs":
        check_act(act)
        if gate.dtype not in FLOAT_DTYPES:
            raise TypeError(f"gate must be float32, float16 or bfloat16, got {gate.dtype}")
        if gate.dim() < 1:
            raise ValueError("gate must have at least one dimension (the neurons)")
        I = gate.shape[-1]
        gate2 = _rows(gate, I, "gate")
        up2 = None
        if up is not None:
            if up.shape != gate.shape:
                raise ValueError(f"up has shape {list(up.shape)} but gate has "
                                 f"{list(gate.shape)}")
            if up.dtype != gate.dtype or up.device != gate.device:
                raise TypeError("up must have the same dtype and device as gate")
            up2 = _rows(up, I, "up")
        stats = StatArgs.validate(gate2.shape[0], I, gate.device, check_ids=check_ids,
                                  **stat_kwargs)
        return cls(gate2, up2, act, stats, gate.shape)

    def op_args(self) -> tuple:
        """The positional arguments of every act_stats implementation's `fn`."""
        return (self.gate, self.up, self.act) + self.stats.op_args()


@dataclass(frozen=True)
class GatedArgs:
    """Arguments of `gated_mlp_stats`: x [..., H] (kept as given, `x2d` its [M, H] view),
    w_gate / w_up [I, H], and the statistics. `fused` is the one [2I, H] weight whose row halves
    w_gate and w_up are (Phi-3's gate_up_proj), else None."""
    x: Tensor
    x2d: Tensor
    w_gate: Tensor
    w_up: Tensor
    fused: Optional[Tensor]
    act: str
    stats: StatArgs

    @property
    def M(self) -> int:
        return self.x2d.shape[0]

    @property
    def H(self) -> int:
        return self.x2d.shape[1]

    @property
    def I(self) -> int:
        return self.w_gate.shape[0]

    @property
    def out_shape(self) -> Tuple[int, ...]:
        return tuple(self.x.shape[:-1]) + (self.I,)

    @classmethod
    def validate(cls, x: Tensor, w_gate: Tensor, w_up: Tensor, act: str, *,
                 check_ids: bool = True, **stat_kwargs) -> "GatedArgs":
        check_act(act)
        if x.dim() < 1 or w_gate.dim() != 2 or w_up.dim() != 2:
            raise ValueError(f"x must be [..., H] and both weights [I, H]; got x "
                             f"{list(x.shape)}, W_gate {list(w_gate.shape)}, W_up "
                             f"{list(w_up.shape)}")
        if w_gate.shape != w_up.shape or w_gate.shape[1] != x.shape[-1]:
            raise ValueError(f"shapes do not chain: x {list(x.shape)}, W_gate "
                             f"{list(w_gate.shape)}, W_up {list(w_up.shape)} (expected x "
                             f"[..., H], both weights [I, H])")
        if not (x.dtype == w_gate.dtype == w_up.dtype) or x.dtype not in FLOAT_DTYPES:
            raise TypeError(f"x and the weights must share one dtype among float32 / float16 / "
                            f"bfloat16, got {x.dtype}, {w_gate.dtype}, {w_up.dtype}")
        if not (x.device == w_gate.device == w_up.device):
            raise ValueError(f"x and the weights must be on one device, got {x.device}, "
                             f"{w_gate.device}, {w_up.device}")
        x2d = x.reshape(-1, x.shape[-1])
        stats = StatArgs.validate(x2d.shape[0], w_gate.shape[0], x.device, check_ids=check_ids,
                                  **stat_kwargs)
        return cls(x, x2d, w_gate, w_up, fused_weight(w_gate, w_up), act, stats)

    @classmethod
    def assemble(cls, x: Tensor, w_gate: Tensor, w_up: Tensor, act: str,
                 *stat_tensors: Optional[Tensor]) -> "GatedArgs":
        """Rebuild the object inside the registered op from arguments its entry point has
        validated (`stat_tensors` in the order of `StatArgs.op_args`): no checks repeated."""
        names = ("row_lang", "counts", "sums", "sumsq", "row_group", "steer_mode",
                 "steer_value", "hist", "hist_edges", "amax")
        kw = dict(zip(names, stat_tensors))
        x2d = x.reshape(-1, x.shape[-1])
        buffers = [kw[n] for n in BUFFER_NAMES if kw[n] is not None]
        stats = StatArgs(x2d.shape[0], w_gate.shape[0],
                         buffers[0].shape[0] if buffers else None,
                         kw["steer_mode"].shape[0] if kw["steer_mode"] is not None else None,
                         **kw)
        return cls(x, x2d, w_gate, w_up, fused_weight(w_gate, w_up), act, stats)


def fused_weight(w_gate: Tensor, w_up: Tensor) -> Optional[Tensor]:
    """The [2I, H] tensor whose rows [:I] are w_gate and [I:] are w_up, when the two are such
    row halves of one storage (`gate_up_proj.weight[:I]`, `[I:]`), else None. One F.linear with
    it equals `gate_up_proj(x)` bit for bit (the same call), where two would not be."""
    if w_gate.dim() != 2 or w_gate.shape != w_up.shape or w_gate.stride() != w_up.stride():
        return None
    if w_gate.untyped_storage().data_ptr() != w_up.untyped_storage().data_ptr():
        return None
    I = w_gate.shape[0]
    if w_up.storage_offset() != w_gate.storage_offset() + I * w_gate.stride(0):
        return None
    base = w_gate._base
    if base is not None and base.dim() == 2 and base.shape[0] == 2 * I \
            and base.stride() == w_gate.stride() \
            and base.storage_offset() == w_gate.storage_offset():
        return base                      # the Parameter itself: exactly gate_up_proj's call
    return w_gate.as_strided((2 * I, w_gate.shape[1]), w_gate.stride(),
                             w_gate.storage_offset())
