"""Steering: change chosen neurons' activations inside the fused MLP op.

The patched op applies, per row group g and neuron i, `mode[g, i]` to act(gate) before the
multiply: 0 keep, 1 set to `value[g, i]`, 2 add `value[g, i]`, 3 scale by `value[g, i]`
(docs/design.md, "The fused op").
This module turns neuron sets into those per-layer [G, I] tables:

- `Intervention`: one edit (which neurons of which layers, set, add or scale, with what values).
- `interventions(...)`: the interventions for "deactivate / activate / add / scale these
  languages' neurons"; activation values are a number or a statistic of the language's own
  activations: "mean" (a scan with sums), "median" or "pQ" (the Q-th percentile, a scan with
  histograms).
- `steering_groups(variants, ...)`: per-layer tables for several variants at once, one group per
  variant (the batched evaluation replicates each batch once per group).
- `steer(...)`: a context manager that installs one variant on a (patched) model and restores
  whatever steering was there before on exit, so nesting and repetition never leak state.
- `random_mask_like(mask, generator)`: random neurons with the same per-layer counts (the control).
"""
from __future__ import annotations

import contextlib
import math
import re
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .ops.reference import STEER_ADD, STEER_KEEP, STEER_SCALE, STEER_SET

MODES = ("deactivate", "activate", "add", "scale")
# A statistic of the language's own activations: the mean, the median, the Q-th percentile.
VALUE_STATISTICS = ("mean", "median", "pQ")
_PERCENTILE = re.compile(r"p(\d+(?:\.\d+)?)")

# Per-layer steering table: (mode int8 [G, I], value float32 [G, I]), or None = no steering.
LayerTable = Optional[Tuple[Tensor, Tensor]]


class SteeringError(ValueError):
    """Steering asked for something that cannot be done; the message says what to change."""


@dataclass(frozen=True)
class Intervention:
    """Set (add to, scale) the activations of the neurons in `mask` [L, I] to (by) `value`."""
    mask: Tensor          # bool [L, I]
    op: int               # STEER_SET, STEER_ADD or STEER_SCALE
    value: Tensor         # float32 [L, I]; only the masked entries are used

    def __post_init__(self):
        if self.mask.dtype != torch.bool or self.mask.dim() != 2:
            raise SteeringError(f"an intervention mask must be bool [layers, neurons], got "
                                f"{self.mask.dtype} {list(self.mask.shape)}")
        if self.value.shape != self.mask.shape:
            raise SteeringError(f"intervention values {list(self.value.shape)} do not match "
                                f"the mask {list(self.mask.shape)}")
        if self.op not in (STEER_SET, STEER_ADD, STEER_SCALE):
            raise SteeringError(f"intervention op must be {STEER_SET} (set), {STEER_ADD} (add) "
                                f"or {STEER_SCALE} (scale)")

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


def parse_value(value: Union[str, float]) -> Union[str, float]:
    """'mean', 'median', 'pQ' (Q in [0, 100], e.g. 'p90') or a finite number; else an error."""
    if isinstance(value, str):
        text = value.strip().lower()
        match = _PERCENTILE.fullmatch(text)
        if text in ("mean", "median") or (match and float(match.group(1)) <= 100):
            return text
        try:
            value = float(text)
        except ValueError:
            raise SteeringError(f"value must be mean, median, pQ (a percentile, e.g. p90) or a "
                                f"number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value):
        raise SteeringError(f"value must be mean, median, pQ (e.g. p90) or a finite number, "
                            f"got {value!r}")
    return float(value)


def check_factor(factor) -> float:
    """A scale factor: a finite number (> 1 amplifies, < 1 damps, 0 deactivates)."""
    if isinstance(factor, bool) or not isinstance(factor, (int, float)) \
            or not math.isfinite(factor):
        raise SteeringError(f"factor must be a finite number (mode 'scale': 2 doubles the "
                            f"activations, 0 deactivates), got {factor!r}")
    return float(factor)


def language_statistic(stats, lang: str, statistic: str, shape) -> Tensor:
    """float32 [L, I]: the language's mean, median or pQ activation per neuron from `stats`."""
    if stats is None:
        raise SteeringError(f"value={statistic!r} is a statistic of the language's own "
                            f"activations and needs the scan statistics: pass stats="
                            f"ActivationStats.load(...) (CLI: --stats) from a scan with "
                            f"{'--sums' if statistic == 'mean' else '--hist'}, or give a number")
    if statistic == "mean" and getattr(stats, "sums", None) is None:
        raise SteeringError("these stats carry no activation sums, so value='mean' has nothing "
                            "to use; rescan with track_sums=True (`langneuron scan --sums`) or "
                            "give a float value")
    if statistic != "mean" and getattr(stats, "hist", None) is None:
        raise SteeringError(f"these stats carry no histograms, so value={statistic!r} has "
                            f"nothing to use; rescan with `langneuron scan --hist` "
                            f"(scan(..., hist_bins=32)) or give a number")
    if lang not in stats.languages:
        raise SteeringError(f"language {lang!r} is not in the stats "
                            f"({', '.join(stats.languages)}); scan it too or pick another target")
    k = stats.languages.index(lang)
    if statistic == "mean":
        table = stats.mean_activation()[k]
    elif statistic == "median":
        table = stats.median()[k]
    else:
        table = stats.percentile(float(statistic[1:]))[k]
    if tuple(table.shape) != tuple(shape):
        raise SteeringError(f"the stats are for {list(table.shape)} layers x neurons but the "
                            f"neurons are for {list(shape)}; use stats of the same model")
    return torch.nan_to_num(table.float(), nan=0.0)   # padding / unseen neurons: never steered


def interventions(neurons, languages: Union[str, Iterable[str]], mode: str = "deactivate",
                  value: Union[str, float] = "mean", stats=None,
                  layers: Optional[Iterable[int]] = None,
                  masks: Optional[Dict[str, Tensor]] = None,
                  factor: Optional[float] = None) -> List[Intervention]:
    """One intervention per language: its neurons (restricted to `layers`) deactivated,
    activated, shifted or scaled.

    mode "deactivate": set to 0 (`value` is ignored). "activate": set to `value`: a number, or
    a statistic of the language's own activations from `stats`: "mean" (a scan with sums),
    "median" or "pQ", the Q-th percentile, e.g. "p90" (a scan with histograms; within one bin
    of the exact value, see `ActivationStats.percentile`). "add": add `value` (a statistic
    adds it). "scale": multiply by `factor` (> 1 amplifies, < 1 damps, 0 equals deactivate;
    `value` is ignored). `masks` replaces a language's neurons by another bool [L, I] mask
    (random control sets), keeping that language's values.
    """
    if mode not in MODES:
        raise SteeringError(f"unknown steering mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "scale":
        if factor is None:
            raise SteeringError("mode 'scale' needs factor=α (2 doubles the activations, 0.5 "
                                "halves them)")
        factor = check_factor(factor)
    elif factor is not None:
        raise SteeringError(f"factor is for mode 'scale', not {mode!r}; drop it or use "
                            f"mode='scale'")
    if mode in ("activate", "add"):
        value = parse_value(value)
    shape = (neurons.num_layers, neurons.intermediate_size)
    allowed = layer_mask(neurons.num_layers, layers)[:, None]
    out = []
    for lang in _as_languages(languages):
        mask = masks[lang] if masks is not None and lang in masks else _language_mask(neurons, lang)
        mask = mask.to(torch.bool).cpu() & allowed
        if mode == "deactivate":
            values = torch.zeros(shape, dtype=torch.float32)
        elif mode == "scale":
            values = torch.full(shape, factor, dtype=torch.float32)
        elif isinstance(value, str):
            values = language_statistic(stats, lang, value, shape)
        else:
            values = torch.full(shape, float(value), dtype=torch.float32)
        op = {"add": STEER_ADD, "scale": STEER_SCALE}.get(mode, STEER_SET)
        out.append(Intervention(mask, op, values))
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
    """Apply one intervention to one group's row of a layer table (in place).

    Later edits compose with earlier ones on the same neuron where one mode expresses both:
    set then add/scale is a set; add then add is an add; scale then scale multiplies. Adding
    to a scaled neuron or scaling a shifted one is (a*s)+v or (a+v)*s, which no single mode
    holds: an error."""
    m = edit.mask[layer]
    if not bool(m.any()):
        return
    idx = m.nonzero().squeeze(1)
    if edit.op == STEER_SET:
        mode[idx] = STEER_SET
        value[idx] = edit.value[layer][idx]
        return
    before = mode[idx]
    clash = STEER_SCALE if edit.op == STEER_ADD else STEER_ADD
    if bool((before == clash).any()):
        raise SteeringError(f"layer {layer}: cannot {'add to' if edit.op == STEER_ADD else 'scale'}"
                            f" neurons already {'scaled' if edit.op == STEER_ADD else 'shifted'}"
                            f" (one steering table holds one of set / add / scale per neuron); "
                            f"steer those languages separately")
    if edit.op == STEER_SCALE:
        new = value[idx] * edit.value[layer][idx]
        value[idx] = torch.where(before == STEER_KEEP, edit.value[layer][idx], new)
        mode[idx] = torch.where(before == STEER_SET, before, torch.full_like(before, STEER_SCALE))
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
          impl: Optional[str] = None, factor: Optional[float] = None,
          experts=None) -> Iterator[object]:
    """Steer `languages`' neurons of `model` inside the block; yields the patch handle.

        with ln.steer(model, neurons, ["fr"]):                       # fr neurons set to 0
            model.generate(...)
        with ln.steer(model, neurons, ["de"], mode="activate", stats=stats):  # to de's mean
            ...
        with ln.steer(model, neurons, ["de"], mode="activate", value="median", stats=stats):
            ...                                                   # to de's median (--hist)
        with ln.steer(model, neurons, ["de"], mode="scale", factor=2.0):  # amplify de
            ...

    neurons: a NeuronSet of this model. layers: restrict to these layer indices (None = all).
    mode: "deactivate" (set to 0), "activate" (set to `value`: a number, or the language's
    "mean" (a scan with sums), "median" or "pQ" percentile (a scan with --hist) from `stats`),
    "add" (add `value`), "scale" (multiply by `factor`; 1 changes nothing, 0 deactivates).
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
    edits = interventions(neurons, languages, mode=mode, value=value, stats=stats, layers=layers,
                          factor=factor)
    with steering(model, edits, impl=impl) as handle:
        yield handle
