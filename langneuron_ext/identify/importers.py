"""Read and write the published artifacts of the two reference codes.

- LAPE (RUCAIBox/Language-Specific-Neurons) `*.neuron.pth` masks and NJUNLP
  (Language-Neurons-Alignment) `mask.*` files share one torch format: `list[lang][layer]` ->
  LongTensor of neuron ids. The files carry no language names; the caller gives them, and their
  number must match the file.
- NJUNLP activation files `activation.<lang>.<model>.pt` and `prefix.activation.<lang>....pt`:
  `{"total_tokens": int, "over_zero": LongTensor [L, I]}` per language.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping, Optional, Sequence

import torch

from ..stats import ActivationStats
from .neuron_set import IdentifyError, NeuronSet


def _torch_load(path: str | os.PathLike, what: str):
    path = Path(path)
    if not path.exists():
        raise IdentifyError(f"{what} file {path} does not exist")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle / zip errors come in many types
        raise IdentifyError(f"{path} is not a torch {what} file: {exc}") from None


def _load_layer_lists(path: str | os.PathLike, languages: Sequence[str], method: str,
                      what: str, intermediate_size: Optional[int]) -> NeuronSet:
    data = _torch_load(path, what)
    languages = list(languages)
    if not isinstance(data, (list, tuple)) or not all(isinstance(x, (list, tuple)) for x in data):
        raise IdentifyError(f"{path} is not a {what} (expected list[language][layer] of "
                            f"LongTensors, got {type(data).__name__})")
    if len(data) != len(languages):
        raise IdentifyError(f"{path} holds {len(data)} language entries but {len(languages)} "
                            f"language names were given ({languages}); give one name per "
                            f"entry, in the file's order")
    num_layers = {len(per_layer) for per_layer in data}
    if len(num_layers) != 1:
        raise IdentifyError(f"{path}: language entries have different layer counts "
                            f"{sorted(num_layers)}")
    L = num_layers.pop()
    if L < 1:
        raise IdentifyError(f"{path} has no layers")
    neurons = {}
    largest = -1
    for lang, per_layer in zip(languages, data):
        neurons[lang] = {}
        for layer, ids in enumerate(per_layer):
            ids = torch.as_tensor(ids).flatten().long().tolist()
            neurons[lang][layer] = ids
            largest = max(largest, max(ids, default=-1))
    params = {"source": str(path)}
    if intermediate_size is None:
        # the file does not record it: the smallest size that holds every id
        intermediate_size = largest + 1 if largest >= 0 else 1
        params["intermediate_size_inferred"] = True
    elif largest >= intermediate_size:
        raise IdentifyError(f"{path} has neuron id {largest}, too large for "
                            f"intermediate_size={intermediate_size}")
    return NeuronSet(method, params, languages, L, intermediate_size, neurons)


def _save_layer_lists(neuron_set: NeuronSet, path: str | os.PathLike) -> Path:
    if not isinstance(neuron_set, NeuronSet):
        raise IdentifyError(f"expected a NeuronSet, got {type(neuron_set).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = [[torch.tensor(neuron_set.neurons[lang][layer], dtype=torch.long)
             for layer in range(neuron_set.num_layers)] for lang in neuron_set.languages]
    torch.save(data, str(path))
    return path


def load_lape_masks(path: str | os.PathLike, languages: Sequence[str],
                    intermediate_size: Optional[int] = None) -> NeuronSet:
    """Import a LAPE `*.neuron.pth` mask (list[lang][layer] -> LongTensor).

    `languages` names the file's entries in order (the official LLaMA-2 files: en zh fr es vi id
    ja). The file does not record the MLP width: pass `intermediate_size` (11008 for LLaMA-2-7B),
    or it is taken as the largest id + 1 and `params["intermediate_size_inferred"]` is set.
    """
    return _load_layer_lists(path, languages, "lape", "LAPE mask", intermediate_size)


def load_njunlp_mask(path: str | os.PathLike, languages: Sequence[str],
                     intermediate_size: Optional[int] = None) -> NeuronSet:
    """Import an NJUNLP `mask.<model>` file (list[lang][layer] -> LongTensor); the result has
    method "ternary" and no types (the file does not record them)."""
    return _load_layer_lists(path, languages, "ternary", "NJUNLP mask", intermediate_size)


def save_lape_masks(neuron_set: NeuronSet, path: str | os.PathLike) -> Path:
    """Export `neuron_set.neurons` as a LAPE `*.neuron.pth` (list[lang][layer] -> LongTensor,
    every language and layer present)."""
    return _save_layer_lists(neuron_set, path)


def save_njunlp_mask(neuron_set: NeuronSet, path: str | os.PathLike) -> Path:
    """Export `neuron_set.neurons` in the NJUNLP mask format (the same torch layout as LAPE)."""
    return _save_layer_lists(neuron_set, path)


def _over_zero(data: Mapping, path) -> torch.Tensor:
    """The [layers, neurons] firing counts both projects' activation files hold."""
    over_zero = torch.as_tensor(data["over_zero"])
    if over_zero.dim() != 2:
        raise IdentifyError(f"{path}: over_zero must be [layers, neurons], got shape "
                            f"{list(over_zero.shape)}")
    return over_zero.long()


def _load_activation(path: str | os.PathLike):
    data = _torch_load(path, "NJUNLP activation")
    if not isinstance(data, Mapping) or not {"total_tokens", "over_zero"} <= set(data):
        raise IdentifyError(f"{path} is not an NJUNLP activation file (expected a dict with "
                            f"'total_tokens' and 'over_zero')")
    return int(data["total_tokens"]), _over_zero(data, path)


def _stack_activations(paths_by_lang: Mapping[str, str | os.PathLike], what: str
                       ) -> ActivationStats:
    if not paths_by_lang:
        raise IdentifyError(f"no {what} activation files given")
    languages = list(paths_by_lang)
    loaded = [_load_activation(paths_by_lang[lang]) for lang in languages]
    shapes = {tuple(oz.shape) for _, oz in loaded}
    if len(shapes) != 1:
        raise IdentifyError(f"{what} activation files disagree on [layers, neurons]: "
                            f"{sorted(shapes)}")
    counts = torch.stack([oz for _, oz in loaded])
    n_tokens = torch.tensor([n for n, _ in loaded], dtype=torch.int64)
    return ActivationStats(counts, n_tokens, languages,
                           corpus=f"NJUNLP activation files ({what})")


def load_njunlp_activations(full_paths_by_lang: Mapping[str, str | os.PathLike],
                            prefix_paths_by_lang: Optional[Mapping[str, str | os.PathLike]]
                            = None) -> ActivationStats:
    """Import NJUNLP activation files, `{lang: path}` in the languages' order.

    Without prefix files this returns the full (instruction + response) statistics; with them,
    the response statistics full - prefix (counts and tokens clamped at 0), which is what the
    NJUNLP identification uses.
    """
    full = _stack_activations(full_paths_by_lang, "full")
    if prefix_paths_by_lang is None:
        return full
    if list(prefix_paths_by_lang) != list(full_paths_by_lang):
        raise IdentifyError(f"prefix files are for languages {list(prefix_paths_by_lang)} but "
                            f"full files for {list(full_paths_by_lang)}; give the same "
                            f"languages in the same order")
    prefix = _stack_activations(prefix_paths_by_lang, "prefix")
    response = full.minus(prefix)
    response.corpus = "NJUNLP activation files (full - prefix: response tokens)"
    return response


# ---- LAPE activation files, and exporting ours to both activation formats ----------------------
# LAPE's activation.py saves, per language, `data/activation.<lang>.train.<model>`:
# {"n": tokens, "over_zero": int32 [L, I], "sum1".."sum4": float32 [L, I]} (sums of act^1..4;
# its identify.py reads n and over_zero only).
LAPE_ACTIVATION_NAME = "activation.{lang}.train.{model}"
NJUNLP_ACTIVATION_NAME = "activation.{lang}.{model}.pt"


def _load_lape_activation(path):
    data = _torch_load(path, "LAPE activation")
    if not isinstance(data, Mapping) or not {"n", "over_zero"} <= set(data):
        raise IdentifyError(f"{path} is not a LAPE activation file (expected a dict with 'n' "
                            f"and 'over_zero', as activation.py saves)")
    sums = {k: torch.as_tensor(data[k]).double() for k in ("sum1", "sum2") if k in data}
    return int(data["n"]), _over_zero(data, path), sums


def load_lape_activations(paths_by_lang: Mapping[str, str | os.PathLike]) -> ActivationStats:
    """Import LAPE activation files, `{lang: path}` in the languages' order, as
    ActivationStats (counts = over_zero, n_tokens = n; `sum1` / `sum2` become sums / sumsq
    when every file has them)."""
    if not paths_by_lang:
        raise IdentifyError("no LAPE activation files given")
    languages = list(paths_by_lang)
    loaded = [_load_lape_activation(paths_by_lang[lang]) for lang in languages]
    shapes = {tuple(oz.shape) for _, oz, _ in loaded}
    if len(shapes) != 1:
        raise IdentifyError(f"LAPE activation files disagree on [layers, neurons]: "
                            f"{sorted(shapes)}")
    pick = lambda key: (torch.stack([s[key] for _, _, s in loaded])  # noqa: E731
                        if all(key in s for _, _, s in loaded) else None)
    return ActivationStats(torch.stack([oz for _, oz, _ in loaded]),
                           torch.tensor([n for n, _, _ in loaded], dtype=torch.int64),
                           languages, pick("sum1"), pick("sum2"),
                           corpus="LAPE activation files")


def _export_paths(stats: ActivationStats, out_dir, pattern: str, model: str):
    if not isinstance(stats, ActivationStats):
        raise IdentifyError(f"expected ActivationStats, got {type(stats).__name__}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise IdentifyError(f"{out} is a file; give a folder for the activation files")
    out.mkdir(parents=True, exist_ok=True)
    bad = [lang for lang in stats.languages if "/" in lang or not lang]
    if bad:
        raise IdentifyError(f"language names {bad} cannot be file names")
    return {lang: out / pattern.format(lang=lang, model=model) for lang in stats.languages}


def save_lape_activations(stats: ActivationStats, out_dir: str | os.PathLike,
                          model: str = "model") -> dict:
    """Export as LAPE activation files `activation.<lang>.train.<model>` in `out_dir`
    ({"n", "over_zero" int32, and "sum1" / "sum2" float32 when the stats carry sums});
    returns {lang: path}. Counts above 2**31 - 1 do not fit LAPE's int32 and are an error."""
    paths = _export_paths(stats, out_dir, LAPE_ACTIVATION_NAME, model)
    if int(stats.counts.max()) > torch.iinfo(torch.int32).max:
        raise IdentifyError("a count exceeds LAPE's int32 over_zero; export fewer tokens or "
                            "use save_njunlp_activations (int64)")
    for k, lang in enumerate(stats.languages):
        data = {"n": int(stats.n_tokens[k]), "over_zero": stats.counts[k].to(torch.int32)}
        if stats.sums is not None:
            data["sum1"] = stats.sums[k].float()
        if stats.sumsq is not None:
            data["sum2"] = stats.sumsq[k].float()
        torch.save(data, str(paths[lang]))
    return paths


def save_njunlp_activations(stats: ActivationStats, out_dir: str | os.PathLike,
                            model: str = "model", prefix: Optional[ActivationStats] = None
                            ) -> dict:
    """Export as NJUNLP activation files `activation.<lang>.<model>.pt` ({"total_tokens",
    "over_zero" int64}) in `out_dir`, and with `prefix` stats also
    `prefix.activation.<lang>.<model>.pt`; returns {lang: path} of the full files."""
    paths = _export_paths(stats, out_dir, NJUNLP_ACTIVATION_NAME, model)
    if prefix is not None:
        stats.check_compatible(prefix)
        if prefix.languages != stats.languages:
            raise IdentifyError(f"prefix stats languages {prefix.languages} differ from "
                                f"{stats.languages}")
    for k, lang in enumerate(stats.languages):
        torch.save({"total_tokens": int(stats.n_tokens[k]), "over_zero": stats.counts[k].long()},
                   str(paths[lang]))
        if prefix is not None:
            torch.save({"total_tokens": int(prefix.n_tokens[k]),
                        "over_zero": prefix.counts[k].long()},
                       str(paths[lang].with_name("prefix." + paths[lang].name)))
    return paths
