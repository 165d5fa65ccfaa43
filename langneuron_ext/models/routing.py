"""What the router of a mixture-of-experts layer decides: recorded per language, and edited.

Recording (`RoutingBuffers`): the patched experts module receives the router's choice for every
token, `top_k_index` [T, k] and `top_k_weights` [T, k]. Per language k, layer l and routed expert
e the scan adds the number of tokens sent to e (`routed` int64 [K, L, E], exact) and the sum of
the weights they got there (`route_weight` float64 [K, L, E]: the weights the experts module
multiplies by, after the model's own normalisation and scaling). A shared expert sees every token
and has no column: its denominator is the language's token count.

Editing (`router_forward`): every router of the six supported families computes its logits with
one `F.linear(hidden, weight)` and derives scores, top-k choice and weights from them. While
expert steering is installed on a layer, the router's own forward runs under a `TorchFunctionMode`
that edits the output of that first `F.linear` for the steered rows: "block" sets an expert's
logit to -inf, "bias" adds a value, "force" sets it to the row's largest logit plus a value. The
router's code (softmax or sigmoid, group limits, normalisation) then runs unchanged, so the
edited routing is what the model itself would compute from those logits. Layers without expert
steering call the router's forward directly.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from .recording import Part, PatchError

ROUTE_KEEP, ROUTE_BLOCK, ROUTE_BIAS, ROUTE_FORCE = 0, 1, 2, 3
ROUTE_MODES = {"block": ROUTE_BLOCK, "bias": ROUTE_BIAS, "force": ROUTE_FORCE}


# ---- recording --------------------------------------------------------------------------------
class RoutingBuffers:
    """routed int64 [K, E] and route_weight float64 [K, E] per MoE part, on the part's device."""

    def __init__(self, num_languages: int, parts: Sequence[Part], num_layers: int):
        self.K, self.L = num_languages, num_layers
        self.parts = [p for p in parts if p.experts > 1]
        self.E = max((p.experts for p in self.parts), default=0)
        self.routed: Dict[int, Tensor] = {}
        self.weight: Dict[int, Tensor] = {}

    def add(self, part: Part, top_k_index: Tensor, top_k_weights: Tensor,
            row_lang: Optional[Tensor]) -> None:
        """Count one forward's routing: token t (language row_lang[t]; all language 0 when
        None; negative = not counted) went to the experts top_k_index[t] with top_k_weights[t]."""
        device = top_k_index.device
        routed = self.routed.get(part.index)
        if routed is None or routed.device != device:
            if routed is not None:
                raise PatchError(f"layer {part.layer} ran on {device} after {routed.device} "
                                 f"during one recording; keep each layer on one device")
            routed = torch.zeros(self.K * part.experts, dtype=torch.int64, device=device)
            self.routed[part.index] = routed
            self.weight[part.index] = torch.zeros(self.K * part.experts, dtype=torch.float64,
                                                  device=device)
        E, k = part.experts, top_k_index.shape[-1]
        index = top_k_index.reshape(-1, k).long()
        weights = top_k_weights.reshape(-1, k).to(torch.float64)
        if row_lang is None:
            lang = torch.zeros(index.shape[0], dtype=torch.long, device=device)
        else:
            lang = row_lang.to(device).long()
        # a sentinel index E (expert-parallel "not here") or an uncounted language adds nothing
        keep = ((index >= 0) & (index < E) & (lang[:, None] >= 0)).reshape(-1)
        slot = (lang.clamp(min=0)[:, None] * E + index.clamp(0, E - 1)).reshape(-1)
        routed.index_add_(0, slot, keep.long())
        self.weight[part.index].index_add_(0, slot, torch.where(keep, weights.reshape(-1), 0.0))

    def collect(self) -> dict:
        """{"routed": int64 [K, L, E], "route_weight": float64 [K, L, E]} on the CPU (zeros for
        layers without routed experts), or {} for a model without experts."""
        if not self.parts:
            return {}
        routed = torch.zeros(self.K, self.L, self.E, dtype=torch.int64)
        weight = torch.zeros(self.K, self.L, self.E, dtype=torch.float64)
        for part in self.parts:
            if part.index in self.routed:
                E = part.experts
                routed[:, part.layer, :E] = self.routed[part.index].cpu().view(self.K, E)
                weight[:, part.layer, :E] = self.weight[part.index].cpu().view(self.K, E)
        return {"routed": routed, "route_weight": weight}


# ---- editing router logits --------------------------------------------------------------------
def edit_logits(logits: Tensor, mode: Tensor, value: Tensor,
                row_group: Optional[Tensor]) -> Tensor:
    """Router logits [T, E] with steering group g's edits (mode int8 [G, E], value [G, E])
    applied to the rows of group g (row_group [T]; None = every row is group 0; negative = not
    steered). Rows without edits keep their logits bit for bit."""
    if row_group is None:
        m, v = mode[:1].expand(logits.shape[0], -1), value[:1].expand(logits.shape[0], -1)
    else:
        g = row_group.long()
        m = torch.where(g[:, None] >= 0, mode[g.clamp(min=0)], ROUTE_KEEP)
        v = value[g.clamp(min=0)]
    v = v.to(logits.dtype)
    out = logits
    if bool((m == ROUTE_FORCE).any()):
        top = logits.max(dim=-1, keepdim=True).values
        out = torch.where(m == ROUTE_FORCE, top + v, out)
    out = torch.where(m == ROUTE_BIAS, out + v, out)
    return out.masked_fill(m == ROUTE_BLOCK, float("-inf"))


class _FirstLinear(TorchFunctionMode):
    """Replace the output of the first F.linear called inside the block (the router logits)."""

    def __init__(self, edit: Callable[[Tensor], Tensor]):
        super().__init__()
        self.edit, self.done = edit, False

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if not self.done and func is F.linear:
            self.done = True
            out = self.edit(out)
        return out


class RouterSteering:
    """Per-layer router edit tables: mode int8 [G, E] (0 keep, 1 block, 2 bias, 3 force) and
    value float32 [G, E], one row per steering group (the patch's row_group)."""

    def __init__(self, num_layers: int, experts: Dict[int, int]):
        self.num_layers = num_layers
        self.experts = dict(experts)            # layer -> routed experts (MoE layers only)
        self.tables: Dict[int, Tuple[Tensor, Tensor]] = {}
        self._on: Dict[tuple, Tuple[Tensor, Tensor]] = {}

    def set(self, layer: int, mode: Tensor, value: Tensor) -> None:
        if layer not in self.experts:
            raise ValueError(f"layer {layer} has no routed experts (MoE layers: "
                             f"{sorted(self.experts) or 'none'}); steer experts there only")
        E = self.experts[layer]
        if mode.dim() != 2 or mode.shape[1] != E or value.shape != mode.shape:
            raise ValueError(f"router tables of layer {layer} must be [G, {E}], got mode "
                             f"{list(mode.shape)} and value {list(value.shape)}")
        if mode.is_floating_point() or not bool(((mode >= 0) & (mode <= 3)).all()):
            raise ValueError("router mode must hold 0 (keep), 1 (block), 2 (bias) or 3 (force)")
        self.tables[layer] = (mode.detach().to("cpu", torch.int8).contiguous(),
                              value.detach().to("cpu", torch.float32).contiguous())
        self._on = {k: v for k, v in self._on.items() if k[0] != layer}

    def get(self, layer: int) -> Optional[Tuple[Tensor, Tensor]]:
        return self.tables.get(layer)

    def clear(self) -> None:
        self.tables.clear()
        self._on.clear()

    def on(self, layer: int, device: torch.device) -> Optional[Tuple[Tensor, Tensor]]:
        if layer not in self.tables:
            return None
        key = (layer, device)
        if key not in self._on:
            self._on[key] = tuple(t.to(device) for t in self.tables[layer])
        return self._on[key]


def router_forward(state, layer: int, original: Callable) -> Callable:
    """The router's forward: `original` itself, or under the logit edit while `state` (a
    PatchState) has expert steering on `layer`."""
    steering: RouterSteering = state.router_steering

    def forward(hidden_states: Tensor, *args, **kwargs):
        table = steering.on(layer, hidden_states.device) if steering.tables else None
        if table is None:
            return original(hidden_states, *args, **kwargs)
        mode, value = table
        rows = hidden_states.numel() // hidden_states.shape[-1]
        row_group = state._rows_on("group", hidden_states.device)
        if row_group is not None and row_group.numel() != rows:
            raise PatchError(f"layer {layer}'s router got {rows} token rows but set_rows gave "
                             f"{row_group.numel()} steering groups; call set_rows with a "
                             f"row_group shaped like this input, or row_group=None to steer "
                             f"every row as group 0")
        if row_group is not None and state._max_group >= mode.shape[0]:
            raise PatchError(f"set_rows gave steering group {state._max_group} but the router "
                             f"of layer {layer} has {mode.shape[0]} steering groups")
        edit = _FirstLinear(lambda logits: edit_logits(logits, mode, value, row_group))
        with edit:
            out = original(hidden_states, *args, **kwargs)
        if not edit.done:
            raise PatchError(f"the router of layer {layer} computed no F.linear; expert "
                             f"steering supports routers that compute logits with F.linear")
        return out

    return forward


def expert_counts(parts: Sequence[Part]) -> Dict[int, int]:
    """layer -> routed experts, for the MoE layers among `parts`."""
    return {p.layer: p.experts for p in parts if p.experts > 1}


__all__: List[str] = ["RoutingBuffers", "RouterSteering", "router_forward", "edit_logits",
                      "expert_counts", "ROUTE_MODES", "ROUTE_KEEP", "ROUTE_BLOCK", "ROUTE_BIAS",
                      "ROUTE_FORCE"]
