"""Random neuron sets for controls: plain, or matched on activation frequency.

A random set has as many neurons per layer as the set it controls for (`steer.random_mask_like`).
Single neurons have heavy-tailed effects, so a handful of random sets is a weak control; these
helpers make many sets cheap to describe and let them match the own set on P(act > 0) layer by
layer: each own neuron is replaced by a random neuron of the same layer from the same frequency
bin (quantile bins of the pooled P(act > 0) over all languages), drawn without replacement and
never from the own set.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from ..steer import SteeringError, random_mask_like

MATCHES = ("none", "frequency")
FREQUENCY_BINS = 10


def pooled_frequency(stats) -> Tensor:
    """P(act > 0) pooled over all languages' tokens, float64 [L, I]."""
    n = stats.n_tokens.double().sum()
    if n <= 0:
        raise SteeringError("the stats have no counted tokens; frequency matching needs a scan")
    return stats.counts.double().sum(0) / n


def frequency_matched_mask(mask: Tensor, frequency: Tensor, generator: torch.Generator,
                           bins: int = FREQUENCY_BINS,
                           layer_sizes: Optional[Sequence[int]] = None) -> Tensor:
    """Random bool [L, I] mask with, in every layer and frequency bin, as many neurons as `mask`
    has there (outside `mask`; a bin that runs short borrows from the layer's nearest bins)."""
    if frequency.shape != mask.shape:
        raise SteeringError(f"frequencies {list(frequency.shape)} do not match the neurons "
                            f"{list(mask.shape)}; use stats of the same model")
    L, I = mask.shape
    out = torch.zeros(L, I, dtype=torch.bool)
    for layer in range(L):
        own = mask[layer].nonzero().squeeze(1)
        if own.numel() == 0:
            continue
        size = I if layer_sizes is None else int(layer_sizes[layer])
        freq = frequency[layer, :size]
        edges = torch.quantile(freq, torch.linspace(0, 1, bins + 1, dtype=torch.float64)[1:-1])
        which = torch.bucketize(freq, edges)                # bin of every neuron of the layer
        free = ~mask[layer, :size]
        need = torch.bincount(which[own], minlength=bins)
        for b in range(bins):
            for _ in range(int(need[b])):
                pick = None
                for dist in range(bins):        # this bin first, then the nearest ones
                    for cand in (b - dist, b + dist):
                        if 0 <= cand < bins:
                            pool = (free & (which == cand)).nonzero().squeeze(1)
                            if pool.numel():
                                pick = pool[torch.randint(pool.numel(), (1,),
                                                          generator=generator)]
                                break
                    if pick is not None:
                        break
                if pick is None:
                    raise SteeringError(f"layer {layer} has too few neurons outside the set "
                                        f"to draw a matched random set")
                out[layer, pick] = True
                free[pick] = False
    return out


def random_control_mask(mask: Tensor, generator: torch.Generator, match: str = "none",
                        frequency: Optional[Tensor] = None,
                        layer_sizes: Optional[Sequence[int]] = None) -> Tensor:
    """One random control set for `mask`: plain (`match="none"`) or frequency-matched."""
    if match == "none":
        return random_mask_like(mask, generator, layer_sizes)
    if match == "frequency":
        if frequency is None:
            raise SteeringError("frequency-matched random sets need the scan statistics "
                                "(P(act > 0) per neuron)")
        return frequency_matched_mask(mask, frequency, generator, layer_sizes=layer_sizes)
    raise SteeringError(f"unknown random-set matching {match!r}; use one of "
                        f"{', '.join(MATCHES)}")


def single_neuron_effects(model, tokenizer, mask: Tensor, texts, lang: str,
                          max_tokens: int = 256, max_length: int = 128, groups_per_pass: int = 8,
                          impl: Optional[str] = None) -> list:
    """The NLL rise on `lang`'s texts when each neuron of `mask` [L, I] alone is deactivated,
    largest first: [{"layer", "neuron", "rise"}]. Run on the random sets with the largest
    effects, it shows whether one heavy-tailed neuron carries a random set's rise (ablate the
    top contributors one by one). All neurons share the forward passes through steering
    groups (`groups_per_pass` neurons per pass, plus the unsteered baseline rows)."""
    from ..models.patch import patched
    from ..ops.reference import STEER_SET
    from ..steer import Intervention, install_tables, installed_tables, steering_groups
    from .nll import _pad, row_token_nll
    from .texts import iter_texts, token_windows

    cells = mask.nonzero().tolist()
    if not cells:
        return []
    windows = token_windows(tokenizer, iter_texts(texts, lang), max_tokens, max_length, lang)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids, att = _pad(windows, pad_id)
    B = ids.shape[0]
    L, I = mask.shape
    totals = torch.zeros(len(cells) + 1, dtype=torch.float64)   # row 0: the baseline
    with patched(model, impl) as handle:
        previous = installed_tables(handle)
        try:
            with torch.inference_mode():
                for start in range(0, len(cells), groups_per_pass):
                    chunk = cells[start:start + groups_per_pass]
                    variants = []
                    for layer, neuron in chunk:
                        one = torch.zeros(L, I, dtype=torch.bool)
                        one[layer, neuron] = True
                        variants.append([Intervention(one, STEER_SET, torch.zeros(L, I))])
                    install_tables(handle, steering_groups(variants, handle.num_layers,
                                                           handle.intermediate_size))
                    first = start == 0            # the baseline rows ride along once
                    groups = ([-1] if first else []) + list(range(len(chunk)))
                    row_group = torch.tensor(groups, dtype=torch.int32).repeat_interleave(B)
                    handle.set_rows(None, row_group[:, None].expand(-1, ids.shape[1])
                                    .contiguous())
                    nll = row_token_nll(model, ids.repeat(len(groups), 1),
                                        att.repeat(len(groups), 1)).view(len(groups), B, -1)
                    sums = nll.double().sum(dim=(1, 2))
                    if first:
                        totals[0] = sums[0]
                        sums = sums[1:]
                    totals[1 + start:1 + start + len(chunk)] = sums
        finally:
            handle.set_rows(None, None)
            install_tables(handle, previous)
    n = int(att[:, 1:].sum())
    rises = (totals[1:] - totals[0]) / n
    order = torch.argsort(rises, descending=True).tolist()
    return [{"layer": cells[i][0], "neuron": cells[i][1], "rise": float(rises[i])}
            for i in order]
