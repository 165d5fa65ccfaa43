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

    Histograms (`hist_edges` given) go straight into int64 [E * K, W, B] buffers, the running
    maximum (`track_amax`) into fp32 [E * K, W] buffers starting at -inf.
    """

    def __init__(self, num_languages: int, parts: Sequence[Part], layer_sizes: Sequence[int],
                 track_sums: bool, track_sumsq: bool, hist_edges: Optional[Tensor] = None,
                 track_amax: bool = False):
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
        self.hist_edges, self.track_amax = hist_edges, track_amax
        self.hist: List[Optional[Tensor]] = [None] * n
        self.amax: List[Optional[Tensor]] = [None] * n
        self._edges_on: Dict[torch.device, Tensor] = {}

    def fresh(self) -> "_Recording":
        return _Recording(self.K, self.parts, self.layer_sizes, self.track_sums,
                          self.track_sumsq, self.hist_edges, self.track_amax)

    def distribution_args(self, part: Part, device: torch.device) -> dict:
        """hist / hist_edges / amax for the op (only the tracked ones: an untracked one is not
        passed at all). Call after `buffers`, which creates them."""
        out = {}
        i = part.index
        if self.hist_edges is not None:
            if device not in self._edges_on:
                self._edges_on[device] = self.hist_edges.to(device)
            out.update(hist=self.hist[i], hist_edges=self._edges_on[device])
        if self.track_amax:
            out["amax"] = self.amax[i]
        return out

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
            if self.hist_edges is not None:
                bins = self.hist_edges.numel() + 1
                self.hist[i] = torch.zeros((*shape, bins), dtype=torch.int64, device=device)
            if self.track_amax:
                self.amax[i] = torch.full(shape, -torch.inf, dtype=torch.float32, device=device)
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

    def stacked(self, bufs: List[Optional[Tensor]], dtype: torch.dtype, fill: float = 0,
                tail: tuple = ()) -> Tensor:
        """[K, L, N, *tail]: each part's [E * K, W, *tail] buffer as [K, E * W, *tail] at its
        offset; padding (and parts that never ran) `fill`."""
        out = torch.full((self.K, self.L, self.N, *tail), fill, dtype=dtype)
        for part, buf in zip(self.parts, bufs):
            if buf is not None:
                block = buf.to("cpu", dtype).view(part.experts, self.K, part.width, *tail)
                out[:, part.layer, part.offset:part.offset + part.size] = \
                    block.transpose(0, 1).reshape(self.K, part.size, *tail)
        return out


def tap_activation(gate: Tensor, act: str) -> Tensor:
    """act(gate) as the tap records it: computed in fp64, rounded to fp32. torch's fp32
    activations round differently in their vectorised and scalar paths, so their last bit
    depends on where a value sits in memory; through fp64 a value is the same whichever
    columns are gathered with it."""
    x = gate.double()
    if act == "silu":
        a = torch.nn.functional.silu(x)
    elif act == "gelu":
        a = torch.where(x == float("inf"), x, torch.nn.functional.gelu(x))
    elif act == "gelu_tanh":
        a = torch.nn.functional.gelu(x, approximate="tanh")
    elif act == "relu":
        a = torch.relu(x)
    else:
        raise ValueError(f"unknown activation {act!r}")
    return a.float()


class _Tap:
    """The selected columns of each part and the activations tapped from them."""

    def __init__(self, parts: Sequence[Part], layer_sizes: Sequence[int],
                 columns: Dict[int, Sequence[int]]):
        self.width: Dict[int, int] = {}
        self.where: Dict[int, tuple] = {}     # part index -> (local columns, slots in layer)
        for layer, ids in columns.items():
            ids = torch.as_tensor(list(ids), dtype=torch.long)
            if not 0 <= int(layer) < len(layer_sizes) or (ids.numel() and not (
                    int(ids.min()) >= 0 and int(ids.max()) < layer_sizes[int(layer)])):
                raise PatchError(f"tap columns of layer {layer} are outside the model's "
                                 f"{len(layer_sizes)} layers x {list(layer_sizes)} neurons")
            self.width[int(layer)] = ids.numel()
            for part in parts:
                if part.layer != int(layer):
                    continue
                inside = (ids >= part.offset) & (ids < part.offset + part.size)
                if bool(inside.any()):
                    self.where[part.index] = (ids[inside] - part.offset,
                                              inside.nonzero().reshape(-1))
        self.out: Dict[int, Tensor] = {}
        self._moved: Dict[tuple, tuple] = {}

    def _on(self, index: int, device: torch.device) -> tuple:
        key = (index, device)
        if key not in self._moved:
            self._moved[key] = tuple(t.to(device) for t in self.where[index])
        return self._moved[key]

    def record(self, part: Part, gate: Tensor, act: str, token: Optional[Tensor],
               expert: Optional[Tensor], rows: int) -> None:
        if part.index not in self.where:
            return
        local, slots = self._on(part.index, gate.device)
        gate = gate.reshape(-1, gate.shape[-1])
        n = gate.shape[0] if token is None else rows
        out = self.out.get(part.layer)
        if out is None or out.shape[0] != n:
            out = torch.full((n, self.width[part.layer]), float("nan"), device=gate.device)
            self.out[part.layer] = out
        if token is None:
            out[:, slots] = tap_activation(gate[:, local], act)
            return
        # routed rows: row r holds token[r] through expert[r]; neuron c is (c // W, c % W)
        hit = expert.reshape(-1, 1) == (local // part.width).reshape(1, -1)
        r, j = hit.nonzero(as_tuple=True)
        out[token[r], slots[j]] = tap_activation(gate[r, local[j] % part.width], act)


# The op's arguments when neither recording nor steering (read-only: callers spread it).
_PLAIN_ARGS = dict(row_lang=None, counts=None, sums=None, sumsq=None, row_group=None,
                   steer_mode=None, steer_value=None, check_ids=False)


def _checked_edges(edges) -> Tensor:
    """Histogram edges as a CPU fp32 [B-1] tensor; not strictly increasing is an error."""
    if not isinstance(edges, Tensor) or edges.dim() != 1 or edges.numel() < 1:
        raise ValueError("hist_edges must be a 1-D tensor of bin edges, e.g. "
                         "langneuron_ext.ops.default_hist_edges(32)")
    edges = edges.detach().to("cpu", torch.float32).contiguous()
    if not bool(torch.isfinite(edges).all()) or not bool((edges[1:] > edges[:-1]).all()):
        raise ValueError("hist_edges must be finite and strictly increasing")
    return edges


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
        self._tap: Optional[_Tap] = None                 # selected columns (examples pass)

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
                        track_sumsq: bool = False, hist_edges: Optional[Tensor] = None,
                        track_amax: bool = False) -> None:
        """Start a fresh recording with `num_languages` language slots (previous buffers are
        dropped). From now on every forward adds counts (and optionally sums) per layer;
        with `hist_edges` (fp32 [B-1], strictly increasing: `ops.default_hist_edges(B)`) also
        a histogram of each neuron's activation per language, with `track_amax` its maximum."""
        if not isinstance(num_languages, int) or num_languages < 1:
            raise ValueError(f"num_languages must be a positive int, got {num_languages!r}")
        if hist_edges is not None:
            hist_edges = _checked_edges(hist_edges)
        self._recording = _Recording(num_languages, self.parts, self.layer_sizes,
                                     bool(track_sums), bool(track_sumsq), hist_edges,
                                     bool(track_amax))
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
        n_tokens=int64 [K]: rows per language seen by the first layer, hist=int64 [K, L, N, B]
        or None, hist_edges=float32 [B-1] or None, amax=float32 [K, L, N] or None; for MoE
        models also routed=int64 [K, L, E] and route_weight=float64 [K, L, E], see
        models/routing.py). N is the widest layer; a narrower layer's columns past its own size
        stay 0 (amax: -inf).
        """
        r = self._recording
        if r is None:
            raise PatchError("nothing recorded: call start_recording(num_languages) first")
        n_tokens = (r.n_tokens.cpu() if r.n_tokens is not None
                    else torch.zeros(r.K, dtype=torch.int64))
        return dict(counts=r.stacked(r.counts, torch.int64),
                    sums=r.stacked(r.sums64, torch.float64) if r.track_sums else None,
                    sumsq=r.stacked(r.sumsq64, torch.float64) if r.track_sumsq else None,
                    n_tokens=n_tokens, **self._collect_distributions(r), **r.routing.collect())

    @staticmethod
    def _collect_distributions(r: _Recording) -> dict:
        edges = r.hist_edges
        return dict(
            hist=None if edges is None else r.stacked(r.hist, torch.int64,
                                                      tail=(edges.numel() + 1,)),
            hist_edges=None if edges is None else edges.clone(),
            amax=r.stacked(r.amax, torch.float32, fill=-torch.inf) if r.track_amax else None)

    def record_routing(self, part: Part, top_k_index: Tensor, top_k_weights: Tensor,
                       row_lang: Optional[Tensor]) -> None:
        """Add one forward's routing of a MoE part (called by its patched experts module)."""
        if self._is_recording:
            self._recording.routing.add(part, top_k_index, top_k_weights, row_lang)

    # ---- steering -------------------------------------------------------------------------
    def set_steering(self, layer: int, steer_mode: Tensor, steer_value: Tensor) -> None:
        """Steer layer `layer`: steer_mode int8 [G, N] (0 keep, 1 set to value, 2 add value,
        3 scale by value) and
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
                or not bool(((steer_mode >= 0) & (steer_mode <= 3)).all()):
            raise ValueError("steer_mode must hold integers 0 (keep), 1 (set), 2 (add) or "
                             "3 (scale)")
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
            args.update(row_lang=row_lang, counts=counts, sums=sums, sumsq=sumsq,
                        **self._recording.distribution_args(part, device))
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

    # ---- tap: the activations of a few selected columns ------------------------------------
    def set_tap(self, columns: Optional[Dict[int, Sequence[int]]]) -> None:
        """Keep act(gate) of the columns `{layer: [neuron ids]}` of every following forward
        (read them with `take_tapped`); None removes the tap. Only these columns are gathered:
        the patched forward computes the gate pre-activation as usual and the tap reads
        `act(gate[..., ids])` in fp32, unsteered."""
        self._tap = None if columns is None else _Tap(self.parts, self.layer_sizes, columns)

    def take_tapped(self) -> Dict[int, Tensor]:
        """{layer: fp32 [rows, len(ids)]} of the forward(s) since the last call (NaN where a
        routed expert neuron did not see the token), and clear them."""
        if self._tap is None:
            raise PatchError("nothing tapped: call set_tap({layer: [ids]}) first")
        out, self._tap.out = self._tap.out, {}
        return out

    def tap(self, part: Part, gate: Tensor, act: str, token: Optional[Tensor] = None,
            expert: Optional[Tensor] = None, rows: int = 0) -> None:
        """Record the tapped columns of `part` from its pre-activation `gate` [R, W or E*W...]:
        dense parts pass gate of every row; routed experts pass the routed rows' gate [R, W]
        with each row's token and expert (and the forward's token count `rows`)."""
        self._tap.record(part, gate, act, token, expert, rows)

    def done(self, part: Part) -> None:
        if self._is_recording and self._recording.track_any:
            self._recording.flush(part)
