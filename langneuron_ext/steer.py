"""Steering: change chosen neurons' activations inside the fused MLP op.

The patched op applies, per row group g and neuron i, `mode[g, i]` to act(gate) before the
multiply: 0 keep, 1 set to `value[g, i]`, 2 add `value[g, i]` (docs/design.md, "The fused op").
This module turns neuron sets into those per-layer [G, I] tables:

- `Intervention`: one edit (which neurons of which layers, set or add, with what values).
- `interventions(...)`: the interventions for "deactivate / activate / add these languages'
  neurons".
- `steering_groups(variants, ...)`: per-layer tables for several variants at once, one group per
  variant (the batched evaluation replicates each batch once per group).
- `steer(...)`: a context manager that installs one variant on a (patched) model and restores
  whatever steering was there before on exit, so nesting and repetition never leak state.
- `random_mask_like(mask, generator)`: random neurons with the same per-layer counts (the control).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .ops.reference import STEER_ADD, STEER_KEEP, STEER_SET

MODES = ("deactivate", "activate", "add")

# Per-layer steering table: (mode int8 [G, I], value float32 [G, I]), or None = no steering.
LayerTable = Optional[Tuple[Tensor, Tensor]]


class SteeringError(ValueError):
    """Steering asked for something that cannot be done; the message says what to change."""


@dataclass(frozen=True)
class Intervention:
    """Set (or add to) the activations of the neurons in `mask` [L, I] to `value` [L, I]."""
    mask: Tensor          # bool [L, I]
    op: int               # STEER_SET or STEER_ADD
    value: Tensor         # float32 [L, I]; only the masked entries are used

    def __post_init__(self):
        if self.mask.dtype != torch.bool or self.mask.dim() != 2:
            raise SteeringError(f"an intervention mask must be bool [layers, neurons], got "
                                f"{self.mask.dtype} {list(self.mask.shape)}")
        if self.value.shape != self.mask.shape:
            raise SteeringError(f"intervention values {list(self.value.shape)} do not match "
                                f"the mask {list(self.mask.shape)}")
        if self.op not in (STEER_SET, STEER_ADD):
            raise SteeringError(f"intervention op must be {STEER_SET} (set) or {STEER_ADD} (add)")

    @property
    def size(self) -> int:
        return int(self.mask.sum())


# A variant is the list of interventions applied together (later ones win where they overlap);
# the empty list is the unsteered baseline.
Variant = Sequence[Intervention]


# ---------------------------------------------------------------------------------------------
# building interventions from neuron sets
# ---------------------------------------------------------------------------------------------
def _as_languages(languages: Union[str, Iterable[str]]) -> List[str]:
    if isinstance(languages, str):
        languages = [l for l in languages.split(",") if l]
    languages = list(languages)
    if not languages:
        raise SteeringError("no languages given to steer; name at least one, e.g. ['fr']")
    return languages


def layer_mask(num_layers: int, layers: Optional[Iterable[int]]) -> Tensor:
    """Bool [L]: which layers may be steered (None = all); negative indices count from the end."""
    if layers is None:
        return torch.ones(num_layers, dtype=torch.bool)
    keep = torch.zeros(num_layers, dtype=torch.bool)
    for layer in layers:
        layer = int(layer)
        if not -num_layers <= layer < num_layers:
            raise SteeringError(f"layer {layer} is out of range: the model has {num_layers} "
                                f"layers (0..{num_layers - 1})")
        keep[layer] = True
    return keep


def _language_mask(neurons, lang: str) -> Tensor:
    if lang not in neurons.languages:
        raise SteeringError(f"language {lang!r} is not in the neuron set (it has "
                            f"{', '.join(neurons.languages)})")
    return neurons.mask(lang).to(torch.bool).cpu()


def _mean_activation(stats, lang: str, shape) -> Tensor:
    if stats is None:
        raise SteeringError("mode 'activate' with value='mean' needs the scan statistics with "
                            "activation sums: pass stats=ActivationStats.load(...) from a scan "
                            "run with track_sums=True (CLI: --stats), or give a float value")
    if getattr(stats, "sums", None) is None:
        raise SteeringError("these stats carry no activation sums, so value='mean' has nothing "
                            "to use; rescan with track_sums=True (`langneuron scan --sums`) or "
                            "give a float value")
    if lang not in stats.languages:
        raise SteeringError(f"language {lang!r} is not in the stats "
                            f"({', '.join(stats.languages)}); scan it too or pick another target")
    mean = stats.mean_activation()[stats.languages.index(lang)]
    if tuple(mean.shape) != tuple(shape):
        raise SteeringError(f"the stats are for {list(mean.shape)} layers x neurons but the "
                            f"neurons are for {list(shape)}; use stats of the same model")
    return mean.float()


def interventions(neurons, languages: Union[str, Iterable[str]], mode: str = "deactivate",
                  value: Union[str, float] = "mean", stats=None,
                  layers: Optional[Iterable[int]] = None,
                  masks: Optional[Dict[str, Tensor]] = None) -> List[Intervention]:
    """One intervention per language: its neurons (restricted to `layers`) deactivated, activated
    or shifted.

    mode "deactivate": set to 0 (`value` is ignored). "activate": set to `value`, where "mean" is
    the language's own mean activation from `stats.mean_activation()`. "add": add `value`
    ("mean" adds the mean activation). `masks` replaces a language's neurons by another bool
    [L, I] mask (random control sets), keeping that language's mean values.
    """
    if mode not in MODES:
        raise SteeringError(f"unknown steering mode {mode!r}; use one of {', '.join(MODES)}")
    if mode != "deactivate" and not (value == "mean" or isinstance(value, (int, float))):
        raise SteeringError(f"value must be 'mean' or a number, got {value!r}")
    shape = (neurons.num_layers, neurons.intermediate_size)
    allowed = layer_mask(neurons.num_layers, layers)[:, None]
    out = []
    for lang in _as_languages(languages):
        mask = masks[lang] if masks is not None and lang in masks else _language_mask(neurons, lang)
        mask = mask.to(torch.bool).cpu() & allowed
        if mode == "deactivate":
            values = torch.zeros(shape, dtype=torch.float32)
        elif value == "mean":
            values = _mean_activation(stats, lang, shape)
        else:
            values = torch.full(shape, float(value), dtype=torch.float32)
        out.append(Intervention(mask, STEER_ADD if mode == "add" else STEER_SET, values))
    return out


def random_mask_like(mask: Tensor, generator: torch.Generator,
                     layer_sizes: Optional[Sequence[int]] = None) -> Tensor:
    """Random bool [L, I] mask with as many neurons per layer as `mask` (drawn uniformly from
    the layer's `layer_sizes[l]` neurons: MoE models pad narrower layers to I)."""
    L, I = mask.shape
    out = torch.zeros(L, I, dtype=torch.bool)
    for layer, n in enumerate(mask.sum(dim=1).tolist()):
        if n:
            size = I if layer_sizes is None else int(layer_sizes[layer])
            out[layer, torch.randperm(size, generator=generator)[:n]] = True
    return out


# ---------------------------------------------------------------------------------------------
# tables
# ---------------------------------------------------------------------------------------------
def _apply(mode: Tensor, value: Tensor, edit: Intervention, layer: int) -> None:
    """Apply one intervention to one group's row of a layer table (in place)."""
    m = edit.mask[layer]
    if not bool(m.any()):
        return
    idx = m.nonzero().squeeze(1)
    if edit.op == STEER_SET:
        mode[idx] = STEER_SET
        value[idx] = edit.value[layer][idx]
    else:  # add: on top of an earlier set or add of the same neuron
        new = value[idx] + edit.value[layer][idx]
        value[idx] = torch.where(mode[idx] == STEER_KEEP, edit.value[layer][idx], new)
        mode[idx] = torch.where(mode[idx] == STEER_SET, mode[idx],
                                torch.full_like(mode[idx], STEER_ADD))


def steering_groups(variants: Sequence[Variant], num_layers: int, intermediate_size: int,
                    base: Optional[Sequence[LayerTable]] = None) -> List[LayerTable]:
    """Per-layer steering tables with one group per variant.

    Returns a list of length `num_layers`; entry l is (mode int8 [G, I], value float32 [G, I])
    with G = len(variants), or None where no variant touches layer l (and `base` has nothing).
    `base` (per-layer single-group tables, e.g. steering already installed) is applied first in
    every group, so new interventions compose on top of it.
    """
    G, L, I = len(variants), num_layers, intermediate_size
    if G == 0:
        raise SteeringError("steering_groups needs at least one variant")
    for variant in variants:
        for edit in variant:
            if tuple(edit.mask.shape) != (L, I):
                raise SteeringError(f"an intervention is for {list(edit.mask.shape)} layers x "
                                    f"neurons but the model has [{L}, {I}]; use neurons "
                                    f"identified on this model")
    tables: List[LayerTable] = []
    for layer in range(L):
        prior = base[layer] if base is not None else None
        touched = prior is not None or any(bool(e.mask[layer].any()) for v in variants for e in v)
        if not touched:
            tables.append(None)
            continue
        if prior is not None:
            p_mode, p_value = prior
            mode = p_mode.to("cpu", torch.int8).expand(G, I).clone() if p_mode.shape[0] == 1 \
                else p_mode.to("cpu", torch.int8).clone()
            value = p_value.to("cpu", torch.float32).expand(G, I).clone() \
                if p_value.shape[0] == 1 else p_value.to("cpu", torch.float32).clone()
            if mode.shape[0] != G:
                raise SteeringError(f"the installed steering has {mode.shape[0]} groups; cannot "
                                    f"compose {G} variants on top of it")
        else:
            mode = torch.zeros(G, I, dtype=torch.int8)
            value = torch.zeros(G, I, dtype=torch.float32)
        for g, variant in enumerate(variants):
            for edit in variant:
                _apply(mode[g], value[g], edit, layer)
        tables.append((mode, value))
    return tables


# ---------------------------------------------------------------------------------------------
# installing tables on a patched model
# ---------------------------------------------------------------------------------------------
def installed_tables(handle) -> List[LayerTable]:
    """The per-layer steering tables currently installed on `handle` (None = none), including
    steering set by hand with `handle.set_steering`."""
    return [handle.get_steering(layer) for layer in range(handle.num_layers)]


def install_tables(handle, tables: Sequence[LayerTable]) -> None:
    """Replace all steering on `handle` by `tables` (per layer; None = no steering there)."""
    if len(tables) != handle.num_layers:
        raise SteeringError(f"{len(tables)} layer tables for a model with {handle.num_layers} "
                            f"layers")
    handle.clear_steering()
    for layer, table in enumerate(tables):
        if table is not None:
            handle.set_steering(layer, table[0], table[1])


@contextlib.contextmanager
def steering(model, variant: Variant, impl: Optional[str] = None) -> Iterator[object]:
    """Install one variant (a list of interventions) on `model` for the duration of the block.

    The interventions compose on top of steering already installed (nesting); on exit the
    previous steering is restored exactly, and a patch made here is undone.
    """
    from .models.patch import patched
    with patched(model, impl) as handle:
        previous = installed_tables(handle)
        tables = steering_groups([list(variant)], handle.num_layers, handle.intermediate_size,
                                 base=previous)
        install_tables(handle, tables)
        try:
            yield handle
        finally:
            install_tables(handle, previous)


@contextlib.contextmanager
def steer(model, neurons=None, languages: Union[str, Iterable[str], None] = None,
          layers: Optional[Iterable[int]] = None, mode: str = "deactivate",
          value: Union[str, float] = "mean", stats=None,
          impl: Optional[str] = None, experts=None) -> Iterator[object]:
    """Steer `languages`' neurons of `model` inside the block; yields the patch handle.

        with ln.steer(model, neurons, ["fr"]):                       # fr neurons set to 0
            model.generate(...)
        with ln.steer(model, neurons, ["de"], mode="activate", stats=stats):  # to de's mean
            ...

    neurons: a NeuronSet of this model. layers: restrict to these layer indices (None = all).
    mode: "deactivate" (set to 0), "activate" (set to `value`; "mean" = the language's mean
    activation from `stats`, a scan with sums), "add" (add `value`).
    The model is patched if it is not (and unpatched on exit); steering applies to every row
    (group 0), so it works inside `model.generate` with a KV cache. Nested blocks compose, and
    each restores exactly what was installed before it.

    Mixture-of-experts models: `experts=` (a LanguageExperts from `ln.identify.experts`, with
    `languages`; or {layer: [expert ids]}) steers the router instead of neurons, with mode
    "block" (the default here), "bias" or "force" (steer_experts.py):
        with ln.steer(model, experts=found, languages=["fr"]): ...     # fr's experts blocked
    """
    # ---- expert steering (mixture-of-experts routers) ----
    if experts is not None:
        if neurons is not None:
            raise SteeringError("give neurons or experts=, not both (nest two ln.steer blocks "
                                "to steer both)")
        from .steer_experts import steer_experts
        with steer_experts(model, experts, languages, mode=mode, value=value, layers=layers,
                           impl=impl) as handle:
            yield handle
        return
    if neurons is None or languages is None:
        raise SteeringError("ln.steer needs a NeuronSet and languages (ln.steer(model, neurons, "
                            "['fr'])), or experts= for a mixture-of-experts model")
    edits = interventions(neurons, languages, mode=mode, value=value, stats=stats, layers=layers)
    with steering(model, edits, impl=impl) as handle:
        yield handle
