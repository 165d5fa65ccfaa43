"""Rows of the NLL matrix for mixture-of-experts models: block a language's experts.

For each language L of a `LanguageExperts` (identify/experts.py): the variant "-L experts" blocks
L's experts in every layer (router logit -inf, steer_experts.py), and `random_sets` controls
"random-experts(L)#r" block as many experts per layer, drawn uniformly among each layer's
experts. The batched NLL matrix runs them as steering groups of the routers, like neuron
variants are steering groups of the MLPs.
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import torch

from ..models import find_mlps
from ..steer import SteeringError
from ..steer_experts import block_edits, install_router_tables, random_experts_like


def experts_per_layer(model) -> dict:
    """layer -> routed experts, for the model's MoE layers."""
    layers = {s.layer: s.experts for s in find_mlps(model) if s.kind == "experts"}
    if not layers:
        raise SteeringError("expert variants need a mixture-of-experts model; this one has no "
                            "experts (a dense model): drop experts=")
    return layers


def expert_variants(model, language_experts, languages: Optional[Sequence[str]] = None,
                    random_sets: int = 1, seed: int = 0) -> list:
    """VariantRows "-L experts" and "random-experts(L)#r" for each of `languages` (default every
    language of `language_experts`); a language without experts gets no row."""
    from .nll import VariantRow
    per_layer = experts_per_layer(model)
    L = max(per_layer) + 1
    languages = list(languages if languages is not None else language_experts.languages)
    rows: List[VariantRow] = []
    own = {}
    for lang in languages:
        mask = language_experts.block_mask([lang])
        if mask.shape[0] != L or mask.shape[1] < max(per_layer.values()):
            raise SteeringError(f"the experts are for {list(mask.shape)} layers x experts; use "
                                f"experts found on this model")
        if not bool(mask.any()):
            continue
        own[lang] = mask
        rows.append(VariantRow(f"-{lang} experts", "experts", lang, int(mask.sum()),
                               experts=mask))
    gen = torch.Generator().manual_seed(seed)
    for r in range(random_sets):
        for lang, mask in own.items():
            rand = random_experts_like(mask, per_layer, gen)
            rows.append(VariantRow(f"random-experts({lang})#{r}", "random_experts", lang,
                                   int(rand.sum()), experts=rand))
    return rows


def install_expert_groups(handle, chunk) -> None:
    """Router tables for one pass: group g blocks chunk[g]'s experts (none for other rows)."""
    masks = [getattr(v, "experts", None) for v in chunk]
    if all(m is None for m in masks):
        install_router_tables(handle, [None] * handle.num_layers)
    else:
        install_router_tables(handle, block_edits(handle, masks))


__all__ = ["expert_variants", "install_expert_groups", "experts_per_layer"]
