"""The state a patched model carries between forward calls: rows, recording, steering.

`PatchState` is the part of `PatchHandle` that the patched forwards read: which token rows belong
to which language and steering group (`set_rows`), per-layer statistic buffers
(`start_recording` / `collect`) and per-layer steering tables (`set_steering`). It knows the
model only through its `Part`s: one per patched module, each a contiguous range of its layer's
neurons (a dense MLP; the routed experts of a MoE block, E experts x W neurons, expert-major; a
shared expert after them). Layers may have different neuron counts; the collected tensors are
padded to the widest layer and the padding is never counted.

Buffers are created on the device where each part runs, so models split across devices work.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import Tensor


class PatchError(RuntimeError):
    """Misuse of a patched model: patched twice, not patched, rows that do not match, ..."""


@dataclass(frozen=True)
class Part:
    """One patched module's neurons inside its layer.

    layer: decoder layer. index: position in the handle's list of parts. offset: first neuron in
    the layer's neuron space. experts: E (1 for a dense MLP). width: neurons per expert.
    counts_tokens: this part adds each forward's rows to n_tokens (one part of layer 0).
    """
    layer: int
    index: int
    offset: int
    experts: int
    width: int
    counts_tokens: bool = False

    @property
    def size(self) -> int:
        return self.experts * self.width


def _as_rows(t: Optional[Tensor], name: str) -> Optional[Tensor]:
    if t is None:
        return None
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a tensor shaped like input_ids, got {type(t).__name__}")
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer ids (int32), got {t.dtype}")
    # a private copy: the caller may refill its tensor for the next batch
    return t.detach().reshape(-1).to(torch.int32, copy=True)


def _max_id(t: Optional[Tensor]) -> int:
    return int(t.max()) if t is not None and t.numel() else -1


class _Recording:
    """Statistic buffers of one recording, created lazily per part on the part's device.

    A part's buffers are [E * K, W] (expert-major slots e * K + k), so one op call over all
    routed (token, expert) rows counts each row into its expert's slot, and the eager per-expert
    loop passes the contiguous block [K, W] of one expert. `collect` reorders to [K, E * W].

    Counts go straight into int64 buffers. Sums and sums of squares are accumulated by the op in
    fp32 buffers for one forward call only (at most one batch of rows per slot), then added into
    fp64 accumulators and cleared: fp32 keeps the op's fast path, fp64 keeps tens of millions
    of tokens exact to far below the fp32 rounding of any single batch.
    """

    def __init__(self, num_languages: int, parts: Sequence[Part], layer_sizes: Sequence[int],
                 track_sums: bool, track_sumsq: bool):
        self.K = num_languages
        self.parts, self.layer_sizes = list(parts), list(layer_sizes)
        self.L, self.N = len(layer_sizes), max(layer_sizes)
        self.track_sums, self.track_sumsq = track_sums, track_sumsq
        self.track_any = track_sums or track_sumsq       # else nothing to flush per call
        n = len(self.parts)
        self.counts: List[Optional[Tensor]] = [None] * n
        self.sums32: List[Optional[Tensor]] = [None] * n
        self.sumsq32: List[Optional[Tensor]] = [None] * n
        self.sums64: List[Optional[Tensor]] = [None] * n
        self.sumsq64: List[Optional[Tensor]] = [None] * n
        self.n_tokens: Optional[Tensor] = None
        from .routing import RoutingBuffers  # routed experts per language (MoE models)
        self.routing = RoutingBuffers(num_languages, self.parts, self.L)

    def fresh(self) -> "_Recording":
        return _Recording(self.K, self.parts, self.layer_sizes, self.track_sums,
                          self.track_sumsq)

    def buffers(self, part: Part, device: torch.device):
        i = part.index
        if self.counts[i] is None or self.counts[i].device != device:
            if self.counts[i] is not None:
                raise PatchError(f"layer {part.layer} ran on {device} after "
                                 f"{self.counts[i].device} during one recording; keep each "
                                 f"layer on one device")
            shape = (part.experts * self.K, part.width)
            self.counts[i] = torch.zeros(shape, dtype=torch.int64, device=device)
            if self.track_sums:
                self.sums32[i] = torch.zeros(shape, dtype=torch.float32, device=device)
                self.sums64[i] = torch.zeros(shape, dtype=torch.float64, device=device)
            if self.track_sumsq:
                self.sumsq32[i] = torch.zeros(shape, dtype=torch.float32, device=device)
                self.sumsq64[i] = torch.zeros(shape, dtype=torch.float64, device=device)
        return self.counts[i], self.sums32[i], self.sumsq32[i]

    def flush(self, part: Part) -> None:
        """Move this forward's fp32 partial sums into the fp64 accumulators."""
        i = part.index
        for p, total in ((self.sums32[i], self.sums64[i]), (self.sumsq32[i], self.sumsq64[i])):
            if p is not None:
                total.add_(p)
                p.zero_()

    def add_tokens(self, row_lang: Optional[Tensor], rows: int, device: torch.device) -> None:
        """Count the rows per language once per forward (at the first layer)."""
        if self.n_tokens is None:
            self.n_tokens = torch.zeros(self.K, dtype=torch.int64, device=device)
        n = self.n_tokens
        if row_lang is None:
            n[0] += rows
            return
        row_lang = row_lang.to(n.device)
        # index_add_ instead of bincount: no host sync on GPUs.
        n.index_add_(0, row_lang.clamp(min=0).long(), (row_lang >= 0).long())

    def stacked(self, bufs: List[Optional[Tensor]], dtype: torch.dtype) -> Tensor:
        """[K, L, N]: each part's [E * K, W] buffer as [K, E * W] at its offset; padding 0."""
        out = torch.zeros((self.K, self.L, self.N), dtype=dtype)
        for part, buf in zip(self.parts, bufs):
            if buf is not None:
                block = buf.to("cpu", dtype).view(part.experts, self.K, part.width)
                out[:, part.layer, part.offset:part.offset + part.size] = \
                    block.permute(1, 0, 2).reshape(self.K, part.size)
        return out


# The op's arguments when neither recording nor steering (read-only: callers spread it).
_PLAIN_ARGS = dict(row_lang=None, counts=None, sums=None, sumsq=None, row_group=None,
                   steer_mode=None, steer_value=None, check_ids=False)


class PatchState:
    """Rows, recording and steering of a patched model (the base of `PatchHandle`).

    Attributes: num_layers, layer_sizes (neurons of each layer), intermediate_size (the widest
    layer: the N of [K, L, N] statistics and of [G, N] steering tables), parts.
    """

    def __init__(self, parts: Sequence[Part], layer_sizes: Sequence[int]):
        self.parts = list(parts)
        self.layer_sizes = list(layer_sizes)
        self.num_layers = len(self.layer_sizes)
        self.intermediate_size = max(self.layer_sizes)
        self._row_lang: Optional[Tensor] = None
        self._max_lang = self._max_group = -1      # largest ids given to set_rows
        self._row_group: Optional[Tensor] = None
        self._row_cache: Dict[tuple, Optional[Tensor]] = {}
        self._recording: Optional[_Recording] = None
        self._is_recording = False
        self._steering: Dict[int, tuple] = {}            # layer -> (mode, value) as given (cpu)
        self._steer_cache: Dict[tuple, tuple] = {}       # (part, device) -> part's table there
        from .routing import RouterSteering, expert_counts
        self.router_steering = RouterSteering(self.num_layers, expert_counts(self.parts))

    # ---- rows -----------------------------------------------------------------------------
    def set_rows(self, row_lang: Optional[Tensor], row_group: Optional[Tensor] = None) -> None:
        """Language slot (and steering group) of every token for the following forward calls.

        Both are integer tensors shaped like input_ids [B, T] (any shape with one entry per
        token); negative language ids are not counted, negative groups are not steered. None
        clears them: all rows count for language 0, and steering applies to every row.
        """
        row_lang = _as_rows(row_lang, "row_lang")
        row_group = _as_rows(row_group, "row_group")
        if row_lang is not None and row_group is not None and row_lang.numel() != row_group.numel():
            raise ValueError(f"row_lang has {row_lang.numel()} entries but row_group has "
                             f"{row_group.numel()}; give both one entry per token")
        self._row_lang, self._row_group = row_lang, row_group
        # Largest ids, taken once here on the caller's (usually CPU) tensors, so the op need not
        # range-check them per layer: on a GPU that check is a device sync per MLP call.
        self._max_lang = _max_id(row_lang)
        self._max_group = _max_id(row_group)
        self._row_cache.clear()

    def _rows_on(self, which: str, device: torch.device) -> Optional[Tensor]:
        """row_lang / row_group moved to `device` once per set_rows call."""
        key = (which, device)
        if key not in self._row_cache:
            t = self._row_lang if which == "lang" else self._row_group
            self._row_cache[key] = None if t is None else t.to(device, non_blocking=True)
        return self._row_cache[key]

    # ---- recording ------------------------------------------------------------------------
    def start_recording(self, num_languages: int, track_sums: bool = False,
                        track_sumsq: bool = False) -> None:
        """Start a fresh recording with `num_languages` language slots (previous buffers are
        dropped). From now on every forward adds counts (and optionally sums) per layer."""
        if not isinstance(num_languages, int) or num_languages < 1:
            raise ValueError(f"num_languages must be a positive int, got {num_languages!r}")
        self._recording = _Recording(num_languages, self.parts, self.layer_sizes,
                                     bool(track_sums), bool(track_sumsq))
        self._is_recording = True

    def stop_recording(self) -> None:
        """Stop taking statistics; the buffers are kept for `collect`."""
        self._is_recording = False

    def resume_recording(self) -> None:
        """Continue the current recording after `stop_recording`."""
        if self._recording is None:
            raise PatchError("nothing to resume: call start_recording(num_languages) first")
        self._is_recording = True

    @property
    def recording(self) -> bool:
        return self._is_recording

    def reset(self) -> None:
        """Zero the current recording's statistics (same languages and tracking)."""
        if self._recording is not None:
            self._recording = self._recording.fresh()

    def collect(self) -> dict:
        """The statistics so far, on the CPU.

        Returns dict(counts=int64 [K, L, N], sums=float64 [K, L, N] or None, sumsq=... or None,
        n_tokens=int64 [K]: rows per language seen by the first layer; for MoE models also
        routed=int64 [K, L, E] and route_weight=float64 [K, L, E], see models/routing.py). N is
        the widest layer; a narrower layer's columns past its own size stay 0.
        """
        r = self._recording
        if r is None:
            raise PatchError("nothing recorded: call start_recording(num_languages) first")
        n_tokens = (r.n_tokens.cpu() if r.n_tokens is not None
                    else torch.zeros(r.K, dtype=torch.int64))
        return dict(counts=r.stacked(r.counts, torch.int64),
                    sums=r.stacked(r.sums64, torch.float64) if r.track_sums else None,
                    sumsq=r.stacked(r.sumsq64, torch.float64) if r.track_sumsq else None,
                    n_tokens=n_tokens, **r.routing.collect())

    def record_routing(self, part: Part, top_k_index: Tensor, top_k_weights: Tensor,
                       row_lang: Optional[Tensor]) -> None:
        """Add one forward's routing of a MoE part (called by its patched experts module)."""
        if self._is_recording:
            self._recording.routing.add(part, top_k_index, top_k_weights, row_lang)

    # ---- steering -------------------------------------------------------------------------
    def set_steering(self, layer: int, steer_mode: Tensor, steer_value: Tensor) -> None:
        """Steer layer `layer`: steer_mode int8 [G, N] (0 keep, 1 set to value, 2 add value) and
        steer_value float32 [G, N], one row per steering group (see set_rows' row_group).

        N is this layer's neuron count or the widest layer's (`intermediate_size`); in the
        latter case the columns past this layer's neurons must be 0 (keep)."""
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} is out of range: the model has {self.num_layers}")
        n_layer, n_max = self.layer_sizes[layer], self.intermediate_size
        if steer_mode.dim() != 2 or steer_mode.shape[1] not in (n_layer, n_max):
            want = f"[G, {n_max}]" if n_layer == n_max else f"[G, {n_layer}] or [G, {n_max}]"
            raise ValueError(f"steer_mode must have shape {want}, got {list(steer_mode.shape)}")
        if steer_value.shape != steer_mode.shape:
            raise ValueError(f"steer_value has shape {list(steer_value.shape)} but steer_mode "
                             f"has {list(steer_mode.shape)}")
        if steer_mode.is_floating_point() \
                or not bool(((steer_mode >= 0) & (steer_mode <= 2)).all()):
            raise ValueError("steer_mode must hold integers 0 (keep), 1 (set) or 2 (add)")
        if steer_mode.shape[1] > n_layer:
            if bool(steer_mode[:, n_layer:].any()):
                raise ValueError(f"layer {layer} has {n_layer} neurons; steer_mode steers "
                                 f"padding columns {n_layer}..{n_max - 1}, which are no neurons")
            steer_mode, steer_value = steer_mode[:, :n_layer], steer_value[:, :n_layer]
        self._steering[layer] = (steer_mode.detach().to(torch.int8).contiguous(),
                                 steer_value.detach().to(torch.float32).contiguous())
        self._steer_cache = {k: v for k, v in self._steer_cache.items()
                             if self.parts[k[0]].layer != layer}

    def get_steering(self, layer: int):
        """The (steer_mode, steer_value) installed on `layer` ([G, that layer's N]), or None."""
        return self._steering.get(layer)

    def clear_steering(self) -> None:
        """Remove all steering."""
        self._steering.clear()
        self._steer_cache.clear()

    def _steering_on(self, part: Part, device: torch.device):
        """The part's (mode, value) on `device`: [E * G, W], expert-major like the buffers."""
        if part.layer not in self._steering:
            return None, None
        key = (part.index, device)
        if key not in self._steer_cache:
            mode, value = self._steering[part.layer]
            G, E, W = mode.shape[0], part.experts, part.width
            cols = slice(part.offset, part.offset + part.size)
            table = [t[:, cols].reshape(G, E, W).transpose(0, 1).reshape(E * G, W)
                     .contiguous().to(device) for t in (mode, value)]
            self._steer_cache[key] = tuple(table)
        return self._steer_cache[key]

    # ---- the op's arguments for one part and one forward call -----------------------------
    def op_args(self, part: Part, rows: int, device: torch.device) -> dict:
        """row_lang, counts, sums, sumsq, row_group, steer_mode, steer_value for the op (slots
        and groups of a part with E experts are expert-major: see _Recording)."""
        if not (self._is_recording or self._steering):
            return _PLAIN_ARGS                 # the common generate() case: nothing to build
        args = dict(_PLAIN_ARGS)
        if self._is_recording:
            row_lang = self._rows_on("lang", device)
            if row_lang is not None and row_lang.numel() != rows:
                raise PatchError(
                    f"layer {part.layer} got {rows} token rows but set_rows gave "
                    f"{row_lang.numel()} language ids; while recording every forward must match "
                    f"set_rows (a generate() with a KV cache does not: stop_recording() first)")
            if self._max_lang >= self._recording.K:
                raise PatchError(f"set_rows gave language id {self._max_lang} but the recording "
                                 f"has {self._recording.K} language slots")
            counts, sums, sumsq = self._recording.buffers(part, device)
            if part.counts_tokens:
                self._recording.add_tokens(row_lang, rows, device)
            args.update(row_lang=row_lang, counts=counts, sums=sums, sumsq=sumsq)
        if self._steering:
            mode, value = self._steering_on(part, device)
            if mode is not None:
                groups = mode.shape[0] // part.experts
                row_group = self._rows_on("group", device)
                if row_group is not None and row_group.numel() != rows:
                    raise PatchError(
                        f"layer {part.layer} got {rows} token rows but set_rows gave "
                        f"{row_group.numel()} steering groups; call set_rows with a row_group "
                        f"shaped like this input, or row_group=None to steer every row as "
                        f"group 0")
                if row_group is not None and self._max_group >= groups:
                    raise PatchError(f"set_rows gave steering group {self._max_group} but layer "
                                     f"{part.layer} has {groups} steering groups")
                args.update(row_group=row_group, steer_mode=mode, steer_value=value)
        return args

    def done(self, part: Part) -> None:
        if self._is_recording and self._recording.track_any:
            self._recording.flush(part)
