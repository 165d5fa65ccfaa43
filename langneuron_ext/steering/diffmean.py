"""DiffMean: steer output language with a residual-stream difference-of-means vector.

The vector of layer l is the mean output hidden state of target-language tokens minus that of
source-language tokens (`ActivationStats.residual_means()`, from `langneuron scan
--residual-means`); steering adds `alpha * vector` to that layer's output at every position.
This is the baseline the field compares neuron steering with, so it is done plainly with
forward hooks on the decoder layers rather than inside the fused MLP op.

- `ResidualRecorder`: forward hooks that sum each decoder layer's output per language (the scan
  sets `.rows`, the language slot of every token, before each forward).
- `diffmean_vectors(stats, source, target, layers)`: {layer: float32 [H]}.
- `diffmean_steering(model, vectors)`: a context manager adding per-row vectors: `vectors[l]` is
  [H] (every row) or [B, H] (row b gets its own vector, zeros for rows left alone), so rows of
  one batch can carry different vectors and strengths.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterable, Iterator, List, Optional

import torch
from torch import Tensor, nn


class DiffMeanError(ValueError):
    """DiffMean asked for something that cannot be done; the message says what to change."""


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder layers of a supported model (the same layers the patch finds MLPs in)."""
    from ..models.adapters import _decoder_layers, layout_for
    return _decoder_layers(model, layout_for(model.config.model_type))[1]


def _hidden(output):
    return output[0] if isinstance(output, (tuple, list)) else output


class ResidualRecorder:
    """Sum of each decoder layer's output hidden state per language, float64 [K, L, H].

    Per forward and language k the fp32 (or bf16) outputs of the tokens with `rows == k` are
    converted to fp64 and summed over tokens, then added to the accumulator: the same operations
    in the same order as a plain hook-based sum, so the two agree bit for bit.
    """

    def __init__(self, model: nn.Module, num_languages: int):
        self.layers = decoder_layers(model)
        self.K = int(num_languages)
        self.sums: Optional[Tensor] = None
        self.rows: Optional[Tensor] = None      # int [B, T]: language slot per token, -1 = skip
        self._hooks: List = []

    def _hook(self, layer: int):
        def hook(module, inputs, output):
            if self.rows is None:
                return
            h = _hidden(output)
            flat = h.detach().reshape(-1, h.shape[-1])
            rows = self.rows.reshape(-1).to(flat.device)
            if rows.numel() != flat.shape[0]:
                raise DiffMeanError(f"layer {layer} got {flat.shape[0]} token rows but the "
                                    f"scan gave {rows.numel()} language ids")
            if self.sums is None:
                self.sums = torch.zeros(self.K, len(self.layers), flat.shape[1],
                                        dtype=torch.float64)
            for k in range(self.K):
                pick = rows == k
                if bool(pick.any()):
                    self.sums[k, layer] += flat[pick].double().sum(0).cpu()
        return hook

    def __enter__(self) -> "ResidualRecorder":
        self._hooks = [layer.register_forward_hook(self._hook(i))
                       for i, layer in enumerate(self.layers)]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks = []

    def collect(self, hidden_size: int) -> Tensor:
        """The sums so far (zeros when no token was counted)."""
        if self.sums is None:
            return torch.zeros(self.K, len(self.layers), hidden_size, dtype=torch.float64)
        return self.sums.clone()


def diffmean_vectors(stats, source: str, target: str,
                     layers: Iterable[int]) -> Dict[int, Tensor]:
    """{layer: mean(target) - mean(source)} of the layers' output hidden states, float32 [H]."""
    if stats.residual_sums is None:
        raise DiffMeanError("the stats carry no residual-stream sums, which DiffMean needs; "
                            "rescan with `langneuron scan --residual-means`")
    for lang in (source, target):
        if lang not in stats.languages:
            raise DiffMeanError(f"language {lang!r} is not in the stats "
                                f"({', '.join(stats.languages)}); scan it too")
        if int(stats.n_tokens[stats.languages.index(lang)]) <= 0:
            raise DiffMeanError(f"language {lang!r} has no counted tokens in the stats")
    means = stats.residual_means()
    L = means.shape[1]
    out = {}
    for layer in layers:
        layer = int(layer)
        if not -L <= layer < L:
            raise DiffMeanError(f"layer {layer} is out of range: the model has {L} layers "
                                f"(0..{L - 1})")
        layer %= L
        diff = means[stats.languages.index(target), layer] - means[stats.languages.index(source),
                                                                   layer]
        out[layer] = diff.float()
    return out


@contextlib.contextmanager
def diffmean_steering(model: nn.Module, vectors: Dict[int, Tensor],
                      alpha: float = 1.0) -> Iterator[None]:
    """Add `alpha * vectors[l]` to the output of decoder layer l inside the block.

    vectors[l]: [H] for every row, or [B, H] with one vector per batch row (the batch of every
    forward inside the block must then have B rows, as in one `generate` call). The hooks are
    removed on exit, also on error; alpha = 0 leaves the outputs untouched (no addition runs).
    """
    layers = decoder_layers(model)
    hooks = []

    def hook_for(vec: Tensor):
        def hook(module, inputs, output):
            h = _hidden(output)
            v = vec.to(h.device, h.dtype)
            if v.dim() == 2:
                if v.shape[0] != h.shape[0]:
                    raise DiffMeanError(f"per-row DiffMean vectors for {v.shape[0]} rows but "
                                        f"the batch has {h.shape[0]}")
                v = v[:, None, :]
            h = h + v
            if isinstance(output, tuple):
                return (h,) + tuple(output[1:])
            if isinstance(output, list):
                return [h] + list(output[1:])
            return h
        return hook

    try:
        if alpha != 0:
            for layer, vec in vectors.items():
                if not 0 <= int(layer) < len(layers):
                    raise DiffMeanError(f"layer {layer} is out of range: the model has "
                                        f"{len(layers)} layers")
                hooks.append(layers[int(layer)].register_forward_hook(
                    hook_for(vec.float() * float(alpha))))
        yield
    finally:
        for h in hooks:
            h.remove()
