"""Expert steering: edit the router logits of a mixture-of-experts model for chosen experts.

    with ln.steer(model, experts=found, languages=["fr"]):              # block fr's experts
        model.generate(...)
    with ln.steer(model, experts={3: [5, 9]}, mode="bias", value=2.0):  # favour two experts

Modes (per steered expert, in the rows being steered): "block" sets its logit to -inf, so the
router's top-k never picks it (its softmax weight is 0; a sigmoid router scores it 0); "bias" adds
`value` to its logit; "force" sets its logit to the row's largest logit plus `value` (default 1),
so it ranks first (a model's own score correction, as in DeepSeek-V3, still applies after).
The edit runs inside the router's forward on the patched model (models/routing.py); on exit the
previous router steering is restored exactly, and a patch made here is undone.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .models.routing import ROUTE_BIAS, ROUTE_BLOCK, ROUTE_KEEP, ROUTE_MODES
from .steer import SteeringError, _as_languages, layer_mask

EXPERT_MODES = tuple(ROUTE_MODES)
RouterTable = Optional[Tuple[Tensor, Tensor]]      # (mode int8 [G, E], value float32 [G, E])


def _moe_layers(handle) -> Dict[int, int]:
    layers = dict(handle.router_steering.experts)
    if not layers:
        raise SteeringError(f"this {handle.model_type} model has no experts (a dense model); "
                            f"expert steering needs a mixture-of-experts model: steer neurons "
                            f"instead (ln.steer(model, neurons, languages))")
    return layers


def _top_k(handle, layer: int) -> int:
    for site in handle.sites:
        if site.layer == layer and site.router is not None:
            return int(getattr(site.router, "top_k", 1))
    return 1


def expert_mask(handle, experts, languages=None,
                layers: Optional[Iterable[int]] = None) -> Tensor:
    """Bool [L, E] of the experts to steer on the model of `handle`.

    experts: a LanguageExperts (with `languages`: whose experts), a {layer: [expert ids]} dict,
    or a bool tensor [L, E]. layers: restrict to these layers (None = all).
    """
    moe = _moe_layers(handle)
    L, E = handle.num_layers, max(moe.values())
    if hasattr(experts, "block_mask"):                  # LanguageExperts
        if languages is None:
            raise SteeringError("name the languages whose experts to steer: "
                                "languages=['fr'] (CLI: --languages fr)")
        try:
            mask = experts.block_mask(_as_languages(languages)).clone()
        except ValueError as exc:
            raise SteeringError(str(exc)) from None
        if tuple(mask.shape) != (L, E):
            raise SteeringError(f"the experts are for {list(mask.shape)} layers x experts but "
                                f"the model has [{L}, {E}]; use experts found on this model")
    elif isinstance(experts, dict):
        mask = torch.zeros(L, E, dtype=torch.bool)
        for layer, ids in experts.items():
            layer = int(layer)
            if layer not in moe:
                raise SteeringError(f"layer {layer} has no routed experts; MoE layers: "
                                    f"{sorted(moe)}")
            ids = [int(i) for i in ([ids] if isinstance(ids, int) else ids)]
            bad = [i for i in ids if not 0 <= i < moe[layer]]
            if bad:
                raise SteeringError(f"expert(s) {bad} of layer {layer} do not exist: it has "
                                    f"{moe[layer]} (0..{moe[layer] - 1})")
            mask[layer, ids] = True
    elif isinstance(experts, Tensor):
        if experts.dtype != torch.bool or tuple(experts.shape) != (L, E):
            raise SteeringError(f"an expert mask must be bool [{L}, {E}], got {experts.dtype} "
                                f"{list(experts.shape)}")
        mask = experts.clone()
    else:
        raise SteeringError(f"experts must be a LanguageExperts, a {{layer: [ids]}} dict or a "
                            f"bool [layers, experts] tensor, got {type(experts).__name__}")
    mask &= layer_mask(L, layers)[:, None]
    for layer in range(L):
        if layer not in moe and bool(mask[layer].any()):
            raise SteeringError(f"layer {layer} has no routed experts")
    return mask


def _check_blockable(handle, mask: Tensor) -> None:
    for layer in mask.any(dim=1).nonzero().flatten().tolist():
        n, E, k = int(mask[layer].sum()), handle.router_steering.experts[layer], \
            _top_k(handle, layer)
        if n > E - k:
            raise SteeringError(f"blocking {n} of layer {layer}'s {E} experts leaves fewer than "
                                f"the {k} its router picks per token; block at most {E - k}")


def _mode_and_value(mode: str, value) -> Tuple[int, float]:
    if mode == "deactivate":          # ln.steer's default mode: for experts, block them
        mode = "block"
    if mode not in ROUTE_MODES:
        raise SteeringError(f"unknown expert steering mode {mode!r}; use one of "
                            f"{', '.join(EXPERT_MODES)}")
    if value in (None, "mean"):       # ln.steer's default value
        if mode == "bias":
            raise SteeringError("mode 'bias' needs a number: value=2.0 adds 2 to the logits")
        value = 1.0 if mode == "force" else 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or value != value or abs(value) == float("inf"):
        raise SteeringError(f"value must be a finite number, got {value!r}")
    return ROUTE_MODES[mode], float(value)


def router_tables(handle, edits: Sequence[Sequence[Tuple[Tensor, int, float]]],
                  base: Optional[Sequence[RouterTable]] = None) -> List[RouterTable]:
    """Per-layer router tables with one group per entry of `edits` (each a list of (mask
    [L, E], mode, value) applied in order; later edits win, bias adds up). `base` (per-layer
    one-group tables already installed) is applied first in every group."""
    moe = _moe_layers(handle)
    G, L = len(edits), handle.num_layers
    tables: List[RouterTable] = []
    for layer in range(L):
        prior = base[layer] if base is not None else None
        touched = prior is not None or any(bool(m[layer].any()) for v in edits for m, _, _ in v)
        if not touched:
            tables.append(None)
            continue
        El = moe[layer]
        if prior is not None:
            mode, value = (t.expand(G, El).clone() if t.shape[0] == 1 else t.clone()
                           for t in prior)
        else:
            mode = torch.zeros(G, El, dtype=torch.int8)
            value = torch.zeros(G, El, dtype=torch.float32)
        for g, variant in enumerate(edits):
            for m, op, v in variant:
                idx = m[layer, :El].nonzero().flatten()
                if op == ROUTE_BIAS:      # on a bias or force: adds; on a block: stays
                    cur = mode[g, idx]
                    value[g, idx] = torch.where(cur == ROUTE_KEEP, torch.full_like(
                        value[g, idx], v), value[g, idx] + v)
                    mode[g, idx] = torch.where(cur == ROUTE_KEEP, torch.full_like(
                        cur, ROUTE_BIAS), cur)
                else:
                    mode[g, idx] = op
                    value[g, idx] = v
        tables.append((mode, value))
    return tables


def installed_router_tables(handle) -> List[RouterTable]:
    return [handle.router_steering.get(layer) for layer in range(handle.num_layers)]


def install_router_tables(handle, tables: Sequence[RouterTable]) -> None:
    """Replace all router steering on `handle` by `tables` (None = none on that layer)."""
    handle.router_steering.clear()
    for layer, table in enumerate(tables):
        if table is not None:
            handle.router_steering.set(layer, table[0], table[1])


def block_edits(handle, masks: Sequence[Optional[Tensor]]) -> List[RouterTable]:
    """Router tables with one group per mask: group g blocks masks[g]'s experts (None or an
    empty mask: group g is not steered). For batched evaluations (the NLL matrix)."""
    edits = [[] if m is None else [(m, ROUTE_BLOCK, 0.0)] for m in masks]
    for m in masks:
        if m is not None:
            _check_blockable(handle, m)
    return router_tables(handle, edits)


def random_experts_like(mask: Tensor, experts_per_layer: Dict[int, int],
                        generator: torch.Generator) -> Tensor:
    """Random bool [L, E] mask with as many experts per layer as `mask`, drawn uniformly among
    each layer's own experts (the control of a language's experts)."""
    out = torch.zeros_like(mask)
    for layer, n in enumerate(mask.sum(dim=1).tolist()):
        if n:
            out[layer, torch.randperm(experts_per_layer[layer], generator=generator)[:n]] = True
    return out


@contextlib.contextmanager
def steer_experts(model, experts, languages=None, *, mode: str = "block",
                  value: Union[str, float, None] = None, layers: Optional[Iterable[int]] = None,
                  impl: Optional[str] = None) -> Iterator[object]:
    """Steer the chosen experts' router logits inside the block (every row: it works inside
    `model.generate` with a KV cache); yields the patch handle. Nested blocks compose; each
    restores exactly what was installed before it. See the module docstring for the modes."""
    from .models.patch import get_handle, patch
    op, v = _mode_and_value(mode, value)
    handle = get_handle(model)
    owned = handle is None
    if owned:
        handle = patch(model, impl=impl)
    try:
        mask = expert_mask(handle, experts, languages, layers)
        if not bool(mask.any()):
            raise SteeringError("no experts to steer: the selection is empty (for a "
                                "LanguageExperts, those languages have no experts in these "
                                "layers)")
        if op == ROUTE_BLOCK:
            _check_blockable(handle, mask)
        previous = installed_router_tables(handle)
        install_router_tables(handle, router_tables(handle, [[(mask, op, v)]], base=previous))
        try:
            yield handle
        finally:
            install_router_tables(handle, previous)
    finally:
        if owned:
            handle.unpatch()


__all__ = ["EXPERT_MODES", "expert_mask", "router_tables", "install_router_tables",
           "installed_router_tables", "block_edits", "random_experts_like", "steer_experts"]
