"""`ln.patch(model)`: make every MLP of a Hugging Face model call the fused op.

Patching sets `forward` as an *instance* attribute on each MLP module (opt: on each decoder
layer's activation module), so nothing about the model's structure changes: module names, the
state_dict and the projections stay; `down_proj(...)` / `c_proj(...)` are still called, so forward
hooks on them keep firing. `unpatch` restores whatever the instance had before (normally nothing,
so the class's forward is used again). A module wrapped by accelerate (device_map="auto") keeps its
device-alignment wrapper: its `_old_forward` is replaced instead.

The returned `PatchHandle` holds everything the scan and steering need: which rows belong to which
language (`set_rows`), per-layer statistic buffers (`start_recording` / `collect`) and per-layer
steering masks (`set_steering`). Every per-layer buffer is created on the device where that layer
actually runs, so models split across devices work.

Patching a model twice raises an error (use `get_handle(model)` to reach the existing handle):
returning the existing handle would let an inner `with ln.patch(model):` unpatch the outer one.
"""
from __future__ import annotations

import importlib
from typing import Callable, Dict, List, Optional

import torch
from torch import Tensor, nn

from ..ops import dispatch
from ..ops.api import act_stats
from .adapters import MLPSite, find_mlps

_HANDLE_ATTR = "_langneuron_patch_handle"
_TRITON = "triton"


class PatchError(RuntimeError):
    """Misuse of a patched model: patched twice, not patched, rows that do not match, ..."""


def _load_triton_gemm():
    """The GEMM-epilogue module, or None when it is absent or broken (the path is then unused)."""
    try:
        module = importlib.import_module("langneuron_ext.ops.triton_gemm")
    except Exception:
        return None
    if not (callable(getattr(module, "applies", None))
            and callable(getattr(module, "gemm_act_stats", None))):
        return None
    return module


def _is_plain_linear(module: nn.Module) -> bool:
    """A bias-free nn.Linear whose call we may skip: no hooks would miss the call."""
    return (type(module) is nn.Linear and module.bias is None and not module._forward_hooks
            and not module._forward_pre_hooks and not hasattr(module, "_hf_hook"))


def _no_global_hooks() -> bool:
    from torch.nn.modules import module as module_mod
    return not (module_mod._global_forward_hooks or module_mod._global_forward_pre_hooks)


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
    """Per-layer statistic buffers of one recording, created lazily on each layer's device.

    Counts go straight into int64 buffers. Sums and sums of squares are accumulated by the op in
    fp32 buffers for one forward call only (at most one batch of rows per slot), then added into
    fp64 accumulators and cleared: fp32 keeps the op's fast path, fp64 keeps tens of millions
    of tokens exact to far below the fp32 rounding of any single batch.
    """

    def __init__(self, num_languages: int, num_layers: int, intermediate_size: int,
                 track_sums: bool, track_sumsq: bool):
        self.K, self.L, self.I = num_languages, num_layers, intermediate_size
        self.track_sums, self.track_sumsq = track_sums, track_sumsq
        self.counts: List[Optional[Tensor]] = [None] * num_layers
        self.sums32: List[Optional[Tensor]] = [None] * num_layers
        self.sumsq32: List[Optional[Tensor]] = [None] * num_layers
        self.sums64: List[Optional[Tensor]] = [None] * num_layers
        self.sumsq64: List[Optional[Tensor]] = [None] * num_layers
        self.n_tokens: Optional[Tensor] = None

    def buffers(self, layer: int, device: torch.device):
        if self.counts[layer] is None or self.counts[layer].device != device:
            if self.counts[layer] is not None:
                raise PatchError(f"layer {layer} ran on {device} after {self.counts[layer].device}"
                                 f" during one recording; keep each layer on one device")
            shape = (self.K, self.I)
            self.counts[layer] = torch.zeros(shape, dtype=torch.int64, device=device)
            if self.track_sums:
                self.sums32[layer] = torch.zeros(shape, dtype=torch.float32, device=device)
                self.sums64[layer] = torch.zeros(shape, dtype=torch.float64, device=device)
            if self.track_sumsq:
                self.sumsq32[layer] = torch.zeros(shape, dtype=torch.float32, device=device)
                self.sumsq64[layer] = torch.zeros(shape, dtype=torch.float64, device=device)
        return self.counts[layer], self.sums32[layer], self.sumsq32[layer]

    def flush(self, layer: int) -> None:
        """Move this forward's fp32 partial sums into the fp64 accumulators."""
        for part, total in ((self.sums32[layer], self.sums64[layer]),
                            (self.sumsq32[layer], self.sumsq64[layer])):
            if part is not None:
                total.add_(part)
                part.zero_()

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

    def stacked(self, parts: List[Optional[Tensor]], dtype: torch.dtype) -> Tensor:
        out = torch.zeros((self.K, self.L, self.I), dtype=dtype)
        for layer, part in enumerate(parts):
            if part is not None:
                out[:, layer] = part.to("cpu", dtype)
        return out


class PatchHandle:
    """The state of one patched model (see the module docstring).

    Attributes: model, model_type, act, num_layers, intermediate_size, impls (the implementation
    chosen for each layer), sites (the MLPSite of each layer).
    """

    def __init__(self, model: nn.Module, sites: List[MLPSite], impls: List[str]):
        self.model = model
        self.model_type: str = model.config.model_type
        self.sites = sites
        self.impls = impls
        self.num_layers = len(sites)
        self.act = sites[0].act
        sizes = {s.intermediate_size for s in sites}
        if len(sizes) != 1:
            raise PatchError(f"the decoder layers have different intermediate sizes "
                             f"{sorted(sizes)}; per-layer sizes are not supported")
        self.intermediate_size = sizes.pop()
        self._gemm = _load_triton_gemm() if _TRITON in impls else None
        self._row_lang: Optional[Tensor] = None
        self._max_lang = self._max_group = -1      # largest ids given to set_rows
        self._row_group: Optional[Tensor] = None
        self._row_cache: Dict[tuple, Optional[Tensor]] = {}
        self._recording: Optional[_Recording] = None
        self._is_recording = False
        self._steering: Dict[int, tuple] = {}            # layer -> (mode, value) as given (cpu)
        self._steer_cache: Dict[tuple, tuple] = {}       # (layer, device) -> on that device
        self._originals: List[tuple] = []                # (module, attr, had, old)
        self._active = False

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
        self._recording = _Recording(num_languages, self.num_layers, self.intermediate_size,
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
            r = self._recording
            self._recording = _Recording(r.K, r.L, r.I, r.track_sums, r.track_sumsq)

    def collect(self) -> dict:
        """The statistics so far, on the CPU.

        Returns dict(counts=int64 [K, L, I], sums=float64 [K, L, I] or None, sumsq=... or None,
        n_tokens=int64 [K]: rows per language seen by the first layer).
        """
        r = self._recording
        if r is None:
            raise PatchError("nothing recorded: call start_recording(num_languages) first")
        n_tokens = (r.n_tokens.cpu() if r.n_tokens is not None
                    else torch.zeros(r.K, dtype=torch.int64))
        return dict(counts=r.stacked(r.counts, torch.int64),
                    sums=r.stacked(r.sums64, torch.float64) if r.track_sums else None,
                    sumsq=r.stacked(r.sumsq64, torch.float64) if r.track_sumsq else None,
                    n_tokens=n_tokens)

    # ---- steering -------------------------------------------------------------------------
    def set_steering(self, layer: int, steer_mode: Tensor, steer_value: Tensor) -> None:
        """Steer layer `layer`: steer_mode int8 [G, I] (0 keep, 1 set to value, 2 add value) and
        steer_value float32 [G, I], one row per steering group (see set_rows' row_group)."""
        if not 0 <= layer < self.num_layers:
            raise ValueError(f"layer {layer} is out of range: the model has {self.num_layers}")
        I = self.intermediate_size
        if steer_mode.dim() != 2 or steer_mode.shape[1] != I:
            raise ValueError(f"steer_mode must have shape [G, {I}], got {list(steer_mode.shape)}")
        if steer_value.shape != steer_mode.shape:
            raise ValueError(f"steer_value has shape {list(steer_value.shape)} but steer_mode "
                             f"has {list(steer_mode.shape)}")
        if steer_mode.is_floating_point() or not bool(((steer_mode >= 0) & (steer_mode <= 2)).all()):
            raise ValueError("steer_mode must hold integers 0 (keep), 1 (set) or 2 (add)")
        self._steering[layer] = (steer_mode.detach().to(torch.int8).contiguous(),
                                 steer_value.detach().to(torch.float32).contiguous())
        self._steer_cache = {k: v for k, v in self._steer_cache.items() if k[0] != layer}

    def get_steering(self, layer: int):
        """The (steer_mode, steer_value) installed on `layer`, or None when it is not steered."""
        return self._steering.get(layer)

    def clear_steering(self) -> None:
        """Remove all steering."""
        self._steering.clear()
        self._steer_cache.clear()

    def _steering_on(self, layer: int, device: torch.device):
        if layer not in self._steering:
            return None, None
        key = (layer, device)
        if key not in self._steer_cache:
            mode, value = self._steering[layer]
            self._steer_cache[key] = (mode.to(device), value.to(device))
        return self._steer_cache[key]

    # ---- the op's arguments for one layer and one forward call ----------------------------
    def _op_args(self, layer: int, rows: int, device: torch.device) -> dict:
        args = dict(row_lang=None, counts=None, sums=None, sumsq=None, row_group=None,
                    steer_mode=None, steer_value=None)
        if self._is_recording:
            row_lang = self._rows_on("lang", device)
            if row_lang is not None and row_lang.numel() != rows:
                raise PatchError(
                    f"layer {layer} got {rows} token rows but set_rows gave {row_lang.numel()} "
                    f"language ids; while recording every forward must match set_rows (a "
                    f"generate() with a KV cache does not: stop_recording() first)")
            if self._max_lang >= self._recording.K:
                raise PatchError(f"set_rows gave language id {self._max_lang} but the recording "
                                 f"has {self._recording.K} language slots")
            counts, sums, sumsq = self._recording.buffers(layer, device)
            if layer == 0:
                self._recording.add_tokens(row_lang, rows, device)
            args.update(row_lang=row_lang, counts=counts, sums=sums, sumsq=sumsq)
        mode, value = self._steering_on(layer, device)
        if mode is not None:
            row_group = self._rows_on("group", device)
            if row_group is not None and row_group.numel() != rows:
                raise PatchError(
                    f"layer {layer} got {rows} token rows but set_rows gave {row_group.numel()} "
                    f"steering groups; call set_rows with a row_group shaped like this input, "
                    f"or row_group=None to steer every row as group 0")
            if row_group is not None and self._max_group >= mode.shape[0]:
                raise PatchError(f"set_rows gave steering group {self._max_group} but layer "
                                 f"{layer} has {mode.shape[0]} steering groups")
            args.update(row_group=row_group, steer_mode=mode, steer_value=value)
        args["check_ids"] = False          # checked above, against set_rows' maxima
        return args

    def _done(self, layer: int) -> None:
        if self._is_recording:
            self._recording.flush(layer)

    # ---- lifecycle ------------------------------------------------------------------------
    def _install(self) -> None:
        builders = {"gated": _gated_forward, "fused_gated": _fused_gated_forward,
                    "plain": _plain_forward, "bloom": _bloom_forward, "inline": _inline_forward}
        for site, impl in zip(self.sites, self.impls):
            module = site.module
            # accelerate's hooks wrap forward and call `_old_forward`: replace that one instead.
            attr = "_old_forward" if (hasattr(module, "_hf_hook")
                                      and "_old_forward" in module.__dict__) else "forward"
            had = attr in module.__dict__
            self._originals.append((module, attr, had, module.__dict__.get(attr)))
            setattr(module, attr, builders[site.layout.kind](self, site, impl))
        setattr(self.model, _HANDLE_ATTR, self)
        self._active = True

    def unpatch(self) -> None:
        """Restore every patched forward exactly as it was; the handle becomes inactive."""
        if not self._active:
            return
        for module, attr, had, old in reversed(self._originals):
            if had:
                module.__dict__[attr] = old
            else:
                module.__dict__.pop(attr, None)
        self._originals.clear()
        if self.model.__dict__.get(_HANDLE_ATTR) is self:
            del self.model.__dict__[_HANDLE_ATTR]
        self._active = False

    @property
    def active(self) -> bool:
        return self._active

    def __enter__(self) -> "PatchHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.unpatch()

    def __repr__(self) -> str:
        state = "active" if self._active else "unpatched"
        return (f"PatchHandle({self.model_type}, {self.num_layers} layers x "
                f"{self.intermediate_size} neurons, act={self.act}, impls={sorted(set(self.impls))}"
                f", {state})")


# ---- patched forwards: one builder per layout -----------------------------------------------
# Each returns a closure that replaces the instance's forward. They recompute exactly what the
# original forward computes, with `act(gate) * up` (or `act(pre)`) replaced by the fused op.

def _rows_of(x: Tensor) -> int:
    return x.numel() // x.shape[-1] if x.shape[-1] else 0


def _gemm_weights(handle: PatchHandle, site: MLPSite, impl: str, x: Tensor):
    """(w_gate, w_up) when the Triton GEMM-epilogue kernel can replace the two projections and
    the op for this call, else None. Needs: the triton impl, bias-free nn.Linear projections
    without hooks (their outputs are never materialised, so a hook could not see them), and
    `triton_gemm.applies` for this input."""
    if handle._gemm is None or impl != _TRITON or not _no_global_hooks():
        return None
    layout = site.layout
    if layout.kind == "gated":
        g, u = site.child(layout.gate), site.child(layout.up)
        if not (_is_plain_linear(g) and _is_plain_linear(u)):
            return None
        w_gate, w_up = g.weight, u.weight
    else:  # fused gate_up: the two halves of one weight are row slices (views, no copies)
        gu = site.child(layout.gate)
        if not _is_plain_linear(gu):
            return None
        I = site.intermediate_size
        w_gate, w_up = gu.weight[:I], gu.weight[I:]
    x2d = x.reshape(-1, x.shape[-1])
    if not handle._gemm.applies(x2d, w_gate, w_up):
        return None
    return x2d, w_gate, w_up


def _try_gemm(handle: PatchHandle, site: MLPSite, impl: str, x: Tensor,
              args: dict) -> Optional[Tensor]:
    found = _gemm_weights(handle, site, impl, x)
    if found is None:
        return None
    x2d, w_gate, w_up = found
    h2d = handle._gemm.gemm_act_stats(x2d, w_gate, w_up, site.act, args["row_lang"],
                                      args["counts"], args["sums"], args["sumsq"],
                                      args["row_group"], args["steer_mode"], args["steer_value"])
    return h2d.reshape(*x.shape[:-1], site.intermediate_size)


def _gated_forward(handle: PatchHandle, site: MLPSite, impl: str) -> Callable:
    layer, lay, mlp = site.layer, site.layout, site.owner

    def forward(x: Tensor) -> Tensor:
        args = handle._op_args(layer, _rows_of(x), x.device)
        h = _try_gemm(handle, site, impl, x, args)
        if h is None:
            h = act_stats(getattr(mlp, lay.gate)(x), getattr(mlp, lay.up)(x), act=site.act,
                          impl=impl, **args)
        out = getattr(mlp, lay.down)(h)
        handle._done(layer)
        return out

    return forward


def _fused_gated_forward(handle: PatchHandle, site: MLPSite, impl: str) -> Callable:
    layer, lay, mlp, I = site.layer, site.layout, site.owner, site.intermediate_size

    def forward(hidden_states: Tensor) -> Tensor:
        args = handle._op_args(layer, _rows_of(hidden_states), hidden_states.device)
        h = _try_gemm(handle, site, impl, hidden_states, args)
        if h is None:
            gate_up = getattr(mlp, lay.gate)(hidden_states)
            # strided views of the fused output, passed as they are (no copies)
            h = act_stats(gate_up[..., :I], gate_up[..., I:], act=site.act, impl=impl, **args)
        out = getattr(mlp, lay.down)(h)
        handle._done(layer)
        return out

    return forward


def _plain_forward(handle: PatchHandle, site: MLPSite, impl: str) -> Callable:
    layer, lay, mlp = site.layer, site.layout, site.owner

    def forward(hidden_states: Tensor) -> Tensor:
        args = handle._op_args(layer, _rows_of(hidden_states), hidden_states.device)
        h = act_stats(getattr(mlp, lay.fc_in)(hidden_states), None, act=site.act, impl=impl,
                      **args)
        out = getattr(mlp, lay.fc_out)(h)
        if lay.dropout_attr:
            out = getattr(mlp, lay.dropout_attr)(out)
        handle._done(layer)
        return out

    return forward


def _bloom_forward(handle: PatchHandle, site: MLPSite, impl: str) -> Callable:
    """BloomMLP.forward(hidden_states, residual), including its tensor-parallel exact path."""
    layer, lay, mlp = site.layer, site.layout, site.owner

    def forward(hidden_states: Tensor, residual: Tensor) -> Tensor:
        args = handle._op_args(layer, _rows_of(hidden_states), hidden_states.device)
        h = act_stats(getattr(mlp, lay.fc_in)(hidden_states), None, act=site.act, impl=impl,
                      **args)
        down = getattr(mlp, lay.fc_out)
        if mlp.pretraining_tp > 1 and mlp.slow_but_exact:
            out = torch.zeros_like(residual)
            slices = down.weight.shape[-1] / mlp.pretraining_tp
            for i in range(mlp.pretraining_tp):
                lo, hi = int(i * slices), int((i + 1) * slices)
                out = out + nn.functional.linear(h[:, :, lo:hi], down.weight[:, lo:hi])
        else:
            out = down(h)
        out = nn.functional.dropout(out, p=mlp.hidden_dropout, training=mlp.training) + residual
        handle._done(layer)
        return out

    return forward


def _inline_forward(handle: PatchHandle, site: MLPSite, impl: str) -> Callable:
    """opt: the decoder layer calls fc1, activation_fn, fc2 itself; the patched activation
    module gets the pre-activation and returns the op's h."""
    layer = site.layer

    def forward(pre: Tensor) -> Tensor:
        args = handle._op_args(layer, _rows_of(pre), pre.device)
        h = act_stats(pre, None, act=site.act, impl=impl, **args)
        handle._done(layer)
        return h

    return forward


# ---- public functions -----------------------------------------------------------------------
def get_handle(model: nn.Module) -> Optional[PatchHandle]:
    """The active PatchHandle of `model`, or None when it is not patched."""
    return model.__dict__.get(_HANDLE_ATTR)


def patch(model: nn.Module, impl: Optional[str] = None) -> PatchHandle:
    """Make every MLP of `model` call the fused op; returns the PatchHandle.

    impl: "torch" | "cpu" | "triton" | "cuda" to force an implementation; None picks the best
    one for each layer's weight device and dtype (LANGNEURON_IMPL overrides), once, here.
    Raises UnsupportedModelError for an architecture outside the table and PatchError when the
    model is already patched (reach that handle with get_handle(model) or unpatch it first).
    Usable as a context manager: `with ln.patch(model) as handle: ...` unpatches on exit.
    """
    existing = get_handle(model)
    if existing is not None:
        raise PatchError(f"this {existing.model_type} model is already patched; use "
                         f"langneuron_ext.models.get_handle(model) to reach its handle, or "
                         f"unpatch(model) before patching again")
    sites = find_mlps(model)
    impls = [dispatch.select_impl(s.in_weight.device, s.in_weight.dtype, impl) for s in sites]
    handle = PatchHandle(model, sites, impls)
    handle._install()
    return handle


def unpatch(model: nn.Module) -> None:
    """Restore the original MLP forwards of a patched model (an error if it is not patched)."""
    handle = get_handle(model)
    if handle is None:
        raise PatchError("this model is not patched (no langneuron_ext patch handle found)")
    handle.unpatch()
