"""`ln.patch(model)`: make every MLP of a Hugging Face model call the fused op.

Patching sets `forward` as an *instance* attribute on each MLP module (opt: on each decoder
layer's activation module; MoE: on each experts module and shared expert), so nothing about the
model's structure changes: module names, the state_dict and the projections stay;
`down_proj(...)` / `c_proj(...)` are still called, so forward hooks on them keep firing.
`unpatch` restores whatever the instance had before (normally nothing, so the class's forward is
used again). A module wrapped by accelerate (device_map="auto") keeps its device-alignment
wrapper: its `_old_forward` is replaced instead.

The returned `PatchHandle` holds everything the scan and steering need (`models/recording.py`):
which rows belong to which language (`set_rows`), per-layer statistic buffers
(`start_recording` / `collect`) and per-layer steering masks (`set_steering`). The patched
forwards are built by one class per layout kind (`models/layouts.py`).

Patching a model twice raises an error (use `get_handle(model)` to reach the existing handle,
or `patched(model)`, which reuses it): returning the existing handle from `patch` would let an
inner `with ln.patch(model):` unpatch the outer one.
"""
from __future__ import annotations

import contextlib
import json
from typing import Iterator, List, Optional

from torch import nn

from ..ops import dispatch
from .adapters import MLPSite, find_mlps
from .layouts import build_forward
from .recording import Part, PatchError, PatchState

_HANDLE_ATTR = "_langneuron_patch_handle"

__all__ = ["PatchHandle", "PatchError", "patch", "unpatch", "get_handle", "patched",
           "layer_sizes"]


def _parts(sites: List[MLPSite]) -> List[Part]:
    return [Part(s.layer, i, s.offset, s.experts, s.expert_size, counts_tokens=(i == 0))
            for i, s in enumerate(sites)]


def _layer_sizes(sites: List[MLPSite]) -> List[int]:
    sizes = [0] * (max(s.layer for s in sites) + 1)
    for s in sites:
        sizes[s.layer] = max(sizes[s.layer], s.offset + s.intermediate_size)
    return sizes


class PatchHandle(PatchState):
    """The state of one patched model (see the module docstring and `PatchState`).

    Attributes: model, model_type, act, num_layers, layer_sizes (neurons per layer),
    intermediate_size (the widest layer), impls (the implementation chosen for each site),
    sites (the MLPSite of each patched module: one per layer, two for a MoE layer with a
    shared expert).
    """

    def __init__(self, model: nn.Module, sites: List[MLPSite], impls: List[str]):
        super().__init__(_parts(sites), _layer_sizes(sites))
        self.model = model
        self.model_type: str = model.config.model_type
        self.sites = sites
        self.impls = impls
        self.act = sites[0].act
        self._originals: List[tuple] = []                # (module, attr, had, old)
        self._active = False

    # ---- what the neurons are -------------------------------------------------------------
    def neuron_layout(self) -> List[List[dict]]:
        """Per layer, its segments of neurons in order: {"kind": "dense" | "routed" |
        "shared", "offset", "experts", "expert_size"}; routed experts are expert-major
        (neuron e * expert_size + i is neuron i of expert e)."""
        out: List[List[dict]] = [[] for _ in range(self.num_layers)]
        for site in self.sites:
            kind = ("routed" if site.kind == "experts" else "shared" if site.offset
                    else "dense")
            out[site.layer].append(dict(kind=kind, offset=site.offset, experts=site.experts,
                                        expert_size=site.expert_size))
        return out

    def stats_metadata(self) -> dict:
        """String metadata for ActivationStats.extra: per-layer neuron counts and the expert
        layout, for models whose neurons are not one dense MLP of equal size per layer ({}
        otherwise, so dense stats files stay as they were)."""
        uniform = len(set(self.layer_sizes)) == 1 and all(s.kind != "experts"
                                                          for s in self.sites)
        if uniform:
            return {}
        return {"layer_sizes": json.dumps(self.layer_sizes),
                "expert_layout": json.dumps(self.neuron_layout())}

    # ---- lifecycle ------------------------------------------------------------------------
    def _install(self) -> None:
        for site, part, impl in zip(self.sites, self.parts, self.impls):
            module = site.module
            # accelerate's hooks wrap forward and call `_old_forward`: replace that one instead.
            attr = "_old_forward" if (hasattr(module, "_hf_hook")
                                      and "_old_forward" in module.__dict__) else "forward"
            had = attr in module.__dict__
            self._originals.append((module, attr, had, module.__dict__.get(attr)))
            setattr(module, attr, build_forward(self, site, part, impl))
            if site.router is not None:       # expert steering edits the router's logits
                self._install_router(site)
        setattr(self.model, _HANDLE_ATTR, self)
        self._active = True

    def _install_router(self, site: MLPSite) -> None:
        from .routing import router_forward
        router = site.router
        attr = "_old_forward" if (hasattr(router, "_hf_hook")
                                  and "_old_forward" in router.__dict__) else "forward"
        had = attr in router.__dict__
        self._originals.append((router, attr, had, router.__dict__.get(attr)))
        setattr(router, attr, router_forward(self, site.layer, getattr(router, attr)))

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
        sizes = (f"{self.intermediate_size}" if len(set(self.layer_sizes)) == 1
                 else f"{min(self.layer_sizes)}-{self.intermediate_size}")
        return (f"PatchHandle({self.model_type}, {self.num_layers} layers x {sizes} neurons, "
                f"act={self.act}, impls={sorted(set(self.impls))}, {state})")


# ---- public functions -----------------------------------------------------------------------
def get_handle(model: nn.Module) -> Optional[PatchHandle]:
    """The active PatchHandle of `model`, or None when it is not patched."""
    return model.__dict__.get(_HANDLE_ATTR)


def layer_sizes(model: nn.Module) -> List[int]:
    """Neurons of each decoder layer (patched or not): equal for dense models; a MoE layer has
    experts x expert_size plus its shared expert, a dense layer of a MoE model its own size."""
    handle = get_handle(model)
    return list(handle.layer_sizes) if handle is not None else _layer_sizes(find_mlps(model))


def patch(model: nn.Module, impl: Optional[str] = None) -> PatchHandle:
    """Make every MLP of `model` call the fused op; returns the PatchHandle.

    impl: "torch" | "cpu" | "triton" | "cuda" to force an implementation; None picks the best
    one for each layer's weight device and dtype (LANGNEURON_IMPL overrides), once, here.
    Raises UnsupportedModelError for an architecture outside the table and PatchError when the
    model is already patched (reach that handle with get_handle(model), use patched(model), or
    unpatch it first). Usable as a context manager: `with ln.patch(model) as handle: ...`
    unpatches on exit.
    """
    existing = get_handle(model)
    if existing is not None:
        raise PatchError(f"this {existing.model_type} model is already patched; use "
                         f"langneuron_ext.models.get_handle(model) to reach its handle, "
                         f"patched(model) to reuse it, or unpatch(model) before patching again")
    sites = find_mlps(model)
    impls = [dispatch.select_impl(s.in_weight.device, s.in_weight.dtype, impl) for s in sites]
    handle = PatchHandle(model, sites, impls)
    handle._install()
    return handle


def unpatch(model: nn.Module) -> None:
    """Restore the original MLP forwards of a patched model; nothing to do if it is not."""
    handle = get_handle(model)
    if handle is not None:
        handle.unpatch()


@contextlib.contextmanager
def patched(model: nn.Module, impl: Optional[str] = None) -> Iterator[PatchHandle]:
    """The model's patch handle for the block: the existing one if the model is patched (left
    patched on exit), else a new patch (impl as in `patch`) that is undone on exit, also on
    error.

        with ln.patched(model) as handle:
            handle.set_rows(row_lang); handle.start_recording(3); model(ids)
    """
    handle = get_handle(model)
    if handle is not None:
        yield handle
        return
    handle = patch(model, impl=impl)
    try:
        yield handle
    finally:
        handle.unpatch()
