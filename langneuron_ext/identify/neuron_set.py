"""`NeuronSet`: the neurons found for each language, and its JSON file.

File format (docs/design.md, "Neuron sets"): a JSON object with keys `method`, `params`,
`languages`, `num_layers`, `intermediate_size`, `neurons` (`{lang: {layer: [ids]}}`, layer keys
as strings, ids sorted), optional `types` (`{"specific"|"related"|"general": {lang: {layer:
[ids]}}}`, general neurons listed under every language) and optional `phases` (a list of
`{"name", "start", "stop"}`, `stop` exclusive).

In memory every language and every layer has an entry (empty lists included), layer keys are
ints and id lists are sorted and unique, so two sets compare equal exactly when they select the
same neurons with the same metadata.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import torch
from torch import Tensor

TYPE_NAMES = ("specific", "related", "general")

# {lang: {layer: sorted ids}}
LayerIds = Dict[int, List[int]]
NeuronMap = Dict[str, LayerIds]


class IdentifyError(ValueError):
    """Input that identification cannot use; the message says what is wrong and what to do."""


def _normalise_map(raw: Mapping, languages: Sequence[str], num_layers: int,
                   intermediate_size: int, what: str) -> NeuronMap:
    """Validate `{lang: {layer: ids}}` and return it with every language and layer present."""
    if not isinstance(raw, Mapping):
        raise IdentifyError(f"{what} must be a mapping {{language: {{layer: [ids]}}}}, "
                            f"got {type(raw).__name__}")
    unknown = [lang for lang in raw if lang not in languages]
    if unknown:
        raise IdentifyError(f"{what} names language(s) {unknown} that are not in the "
                            f"set's languages {list(languages)}")
    out: NeuronMap = {}
    for lang in languages:
        layers = raw.get(lang, {}) or {}
        if not isinstance(layers, Mapping):
            raise IdentifyError(f"{what}[{lang!r}] must map layer -> [ids], "
                                f"got {type(layers).__name__}")
        per_layer: LayerIds = {layer: [] for layer in range(num_layers)}
        for key, ids in layers.items():
            try:
                layer = int(key)
            except (TypeError, ValueError):
                raise IdentifyError(f"{what}[{lang!r}] has layer key {key!r}, "
                                    f"which is not an integer") from None
            if not 0 <= layer < num_layers:
                raise IdentifyError(f"{what}[{lang!r}] has layer {layer}, outside "
                                    f"0..{num_layers - 1}")
            if isinstance(ids, Tensor):
                ids = ids.tolist()
            ids = sorted({int(i) for i in ids})
            if ids and not (0 <= ids[0] and ids[-1] < intermediate_size):
                raise IdentifyError(f"{what}[{lang!r}][{layer}] has neuron ids outside "
                                    f"0..{intermediate_size - 1} (got {ids[0]}..{ids[-1]})")
            per_layer[layer] = ids
        out[lang] = per_layer
    return out


def map_from_mask(mask: Tensor, languages: Sequence[str]) -> NeuronMap:
    """Convert a boolean mask [K, L, I] to `{lang: {layer: sorted ids}}`."""
    K, L, _ = mask.shape
    k, layer, ids = mask.nonzero(as_tuple=True)  # row-major: sorted by (k, layer, id)
    per_cell = torch.bincount(k * L + layer, minlength=K * L).tolist()
    chunks = ids.split(per_cell) if ids.numel() else [ids.new_empty(0)] * (K * L)
    return {lang: {l: chunks[kk * L + l].tolist() for l in range(L)}
            for kk, lang in enumerate(languages)}


@dataclass
class NeuronSet:
    """Neurons per language (and optionally per type), with the method that found them.

    `neurons[lang][layer]` is the sorted list of neuron ids of `lang` in `layer`. `types`, for
    the specific / related / general method, splits them by type (general neurons are listed
    under every language). `phases` holds the four phases once `identify.phases` ran.
    """
    method: str
    params: dict
    languages: List[str]
    num_layers: int
    intermediate_size: int
    neurons: NeuronMap
    types: Optional[Dict[str, NeuronMap]] = None
    phases: Optional[List[dict]] = field(default=None)

    def __post_init__(self):
        self.languages = [str(lang) for lang in self.languages]
        if len(set(self.languages)) != len(self.languages):
            raise IdentifyError(f"language names repeat: {self.languages}")
        if not self.languages:
            raise IdentifyError("a NeuronSet needs at least one language")
        self.num_layers, self.intermediate_size = int(self.num_layers), int(self.intermediate_size)
        if self.num_layers < 1 or self.intermediate_size < 1:
            raise IdentifyError(f"num_layers ({self.num_layers}) and intermediate_size "
                                f"({self.intermediate_size}) must be positive")
        self.params = dict(self.params or {})
        shape = (self.languages, self.num_layers, self.intermediate_size)
        self.neurons = _normalise_map(self.neurons, *shape, what="neurons")
        if self.types is not None:
            unknown = [t for t in self.types if t not in TYPE_NAMES]
            if unknown:
                raise IdentifyError(f"unknown neuron type(s) {unknown}; expected "
                                    f"{list(TYPE_NAMES)}")
            self.types = {t: _normalise_map(self.types.get(t, {}), *shape, what=f"types[{t!r}]")
                          for t in TYPE_NAMES}
        if self.phases is not None:
            self.phases = [dict(p) for p in self.phases]

    # ---- construction ----
    @classmethod
    def from_masks(cls, method: str, params: dict, languages: Sequence[str], mask: Tensor,
                   types: Optional[Mapping[str, Tensor]] = None) -> "NeuronSet":
        """Build from a boolean mask [K, L, I] (and optional per-type masks of that shape)."""
        K, L, I = mask.shape
        return cls(method, params, list(languages), L, I, map_from_mask(mask, languages),
                   None if types is None else
                   {t: map_from_mask(m, languages) for t, m in types.items()})

    # ---- queries ----
    def _check_language(self, lang: str) -> None:
        if lang not in self.neurons:
            raise IdentifyError(f"language {lang!r} is not in this neuron set "
                                f"(it has {self.languages})")

    def mask(self, lang: str, layers: Optional[Iterable[int]] = None) -> Tensor:
        """Boolean mask [L, I] of `lang`'s neurons; `layers` keeps only those layers."""
        self._check_language(lang)
        keep = None if layers is None else {int(l) for l in layers}
        out = torch.zeros(self.num_layers, self.intermediate_size, dtype=torch.bool)
        for layer, ids in self.neurons[lang].items():
            if ids and (keep is None or layer in keep):
                out[layer, ids] = True
        return out

    def masks(self) -> Tensor:
        """Boolean masks of all languages, [K, L, I] in the order of `languages`."""
        return torch.stack([self.mask(lang) for lang in self.languages])

    def count(self, lang: str) -> int:
        """Number of (layer, neuron) pairs selected for `lang`."""
        self._check_language(lang)
        return sum(len(ids) for ids in self.neurons[lang].values())

    def per_layer_counts(self) -> Tensor:
        """LongTensor [K, L]: neurons per language and layer."""
        return torch.tensor([[len(self.neurons[lang][l]) for l in range(self.num_layers)]
                             for lang in self.languages], dtype=torch.int64)

    def type_counts(self) -> Optional[Dict[str, Dict[str, int]]]:
        """`{type: {lang: count}}`, or None for a set without types."""
        if self.types is None:
            return None
        return {t: {lang: sum(len(ids) for ids in self.types[t][lang].values())
                    for lang in self.languages} for t in TYPE_NAMES}

    def num_unique(self) -> int:
        """Distinct (layer, neuron) pairs selected for at least one language."""
        return int(self.masks().any(dim=0).sum())

    def summary(self) -> str:
        """A text table: neurons per language (and per type), and the totals."""
        K, L = len(self.languages), self.num_layers
        lines = [f"NeuronSet ({self.method}): {K} language{'s' * (K != 1)}, "
                 f"{L} layer{'s' * (L != 1)} x {self.intermediate_size} neurons"]
        params = ", ".join(f"{k}={v}" for k, v in self.params.items())
        if params:
            lines.append(f"  params: {params}")
        tc = self.type_counts()
        header = f"{'language':<10} {'neurons':>8}"
        if tc:
            header += f" {'specific':>9} {'related':>8} {'general':>8}"
        lines.append(header)
        for lang in self.languages:
            row = f"{lang:<10} {self.count(lang):>8}"
            if tc:
                row += (f" {tc['specific'][lang]:>9} {tc['related'][lang]:>8}"
                        f" {tc['general'][lang]:>8}")
            lines.append(row)
        total = sum(self.count(lang) for lang in self.languages)
        lines.append(f"{'all':<10} {total:>8}  ({self.num_unique()} distinct neurons)")
        if self.phases:
            lines.append("phases: " + "; ".join(
                f"{p['name']} {p['start']}-{p['stop'] - 1}" for p in self.phases))
        return "\n".join(lines)

    def __repr__(self) -> str:
        counts = ", ".join(f"{lang}={self.count(lang)}" for lang in self.languages)
        return (f"NeuronSet(method={self.method!r}, layers={self.num_layers}, "
                f"neurons={self.intermediate_size}, {counts})")

    # ---- files ----
    def to_dict(self) -> dict:
        """The JSON object of the file format (layer keys as strings)."""
        as_json = lambda m: {lang: {str(l): ids for l, ids in layers.items()}  # noqa: E731
                             for lang, layers in m.items()}
        out = {"method": self.method, "params": self.params, "languages": self.languages,
               "num_layers": self.num_layers, "intermediate_size": self.intermediate_size,
               "neurons": as_json(self.neurons)}
        if self.types is not None:
            out["types"] = {t: as_json(m) for t, m in self.types.items()}
        if self.phases is not None:
            out["phases"] = self.phases
        return out

    @classmethod
    def from_dict(cls, data: Mapping) -> "NeuronSet":
        required = ("method", "languages", "num_layers", "intermediate_size", "neurons")
        missing = [k for k in required if k not in data]
        if missing:
            raise IdentifyError(f"neuron set lacks key(s) {missing}; write it with "
                                f"NeuronSet.save or `langneuron identify`")
        return cls(data["method"], data.get("params", {}), list(data["languages"]),
                   data["num_layers"], data["intermediate_size"], data["neurons"],
                   data.get("types"), data.get("phases"))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the JSON file atomically (a temporary file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        from ..stats import write_atomic
        write_atomic(path, (json.dumps(self.to_dict(), separators=(",", ":")) + "\n").encode())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "NeuronSet":
        """Read a file written by `save` (or by `langneuron identify`)."""
        path = Path(path)
        if not path.exists():
            raise IdentifyError(f"neuron set file {path} does not exist; create it with "
                                f"`langneuron identify STATS --out {path}`")
        from ..filekinds import JSON, wrong_kind
        reason = wrong_kind(path, JSON, "`langneuron identify --out`")
        if reason:
            raise IdentifyError(reason)
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise IdentifyError(f"{path} is not a JSON neuron set: {exc}") from None
        if not isinstance(data, dict):
            raise IdentifyError(f"{path} holds a JSON {type(data).__name__}, not a neuron set "
                                f"object (a released mask? `langneuron compare` reads LAPE and "
                                f"NJUNLP masks)")
        return cls.from_dict(data)
