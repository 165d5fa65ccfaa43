"""`ActivationStats`: per-language, per-layer, per-neuron activation statistics and their file.

File format (safetensors, docs/design.md "Files"): tensors `counts` int64 [K, L, I], `n_tokens`
int64 [K], optional `sums` / `sumsq` float64 [K, L, I]; mixture-of-experts scans add `routed`
int64 [K, L, E] and `route_weight` float64 [K, L, E] (tokens sent to each routed expert and the
sum of their router weights; files without them still load); string metadata with `languages` (JSON
list, the order of K), `format_version`, `model_name`, `model_type`, `activation_site`,
`num_layers`, `intermediate_size`, `corpus` and `package_version`.
Statistics are additive: merging, all-reducing and resuming are sums.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional

import torch
from torch import Tensor

FORMAT_VERSION = "1"


class StatsError(ValueError):
    """A stats file or object that cannot be used as asked; the message says what to do."""


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _sorted_header(data: bytes) -> bytes:
    """The same safetensors file with its JSON header's keys sorted: safetensors writes the
    metadata in hash-map order, which differs between processes, and equal statistics should
    give equal files (a torchrun scan is checked byte for byte against one process)."""
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":"))
    raw = header.encode("utf-8")
    raw += b" " * (-len(raw) % 8)          # safetensors pads the header to 8 bytes
    return len(raw).to_bytes(8, "little") + raw + data[8 + n:]


def write_atomic(path: Path, data: bytes) -> None:
    """Replace `path` by `data` atomically and durably (see `ActivationStats.save`)."""
    # A fixed name: a temporary file left by a killed writer is overwritten by the next save.
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)   # the umask applies
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)          # make the rename itself survive a power cut
    finally:
        os.close(folder)


@dataclass
class ActivationStats:
    counts: Tensor                      # int64 [K, L, I]: tokens with act > 0
    n_tokens: Tensor                    # int64 [K]: counted tokens per language
    languages: List[str]
    sums: Optional[Tensor] = None       # float64 [K, L, I]: sum of act
    sumsq: Optional[Tensor] = None      # float64 [K, L, I]: sum of act^2
    model_name: str = ""
    model_type: str = ""
    activation_site: str = "act(gate)"
    corpus: str = ""
    extra: Dict[str, str] = field(default_factory=dict)
    routed: Optional[Tensor] = None         # int64 [K, L, E]: tokens routed to each expert
    route_weight: Optional[Tensor] = None   # float64 [K, L, E]: sum of their router weights

    def __post_init__(self):
        if self.counts.dim() != 3:
            raise StatsError(f"counts must be [K, L, I], got shape {list(self.counts.shape)}")
        K = self.counts.shape[0]
        if len(self.languages) != K or self.n_tokens.shape != (K,):
            raise StatsError(f"{len(self.languages)} language names and n_tokens of shape "
                             f"{list(self.n_tokens.shape)} do not match counts with K={K}")
        if len(set(self.languages)) != K:
            raise StatsError(f"language names repeat: {self.languages}")
        for name in ("sums", "sumsq"):
            t = getattr(self, name)
            if t is not None and t.shape != self.counts.shape:
                raise StatsError(f"{name} has shape {list(t.shape)}, counts "
                                 f"{list(self.counts.shape)}")
        # routing (MoE): both or neither, [K, L, E]
        if (self.routed is None) != (self.route_weight is None):
            raise StatsError("routed and route_weight come together; give both or neither")
        if self.routed is not None and (
                self.routed.dim() != 3 or self.routed.shape[:2] != self.counts.shape[:2]
                or self.route_weight.shape != self.routed.shape):
            raise StatsError(f"routed {list(self.routed.shape)} and route_weight "
                             f"{list(self.route_weight.shape)} must be [K, L, E] with K, L of "
                             f"counts {list(self.counts.shape)}")

    # ---- shape ----
    @property
    def num_languages(self) -> int:
        return self.counts.shape[0]

    @property
    def num_layers(self) -> int:
        return self.counts.shape[1]

    @property
    def intermediate_size(self) -> int:
        return self.counts.shape[2]

    # ---- mixture-of-experts / unequal layers (metadata written by the scan) ----
    def layer_sizes(self) -> List[int]:
        """Neurons of each layer (metadata `layer_sizes`; every layer N when absent)."""
        raw = self.extra.get("layer_sizes")
        if not raw:
            return [self.intermediate_size] * self.num_layers
        sizes = [int(v) for v in json.loads(raw)]
        if len(sizes) != self.num_layers or not all(0 < v <= self.intermediate_size
                                                    for v in sizes):
            raise StatsError(f"metadata layer_sizes {sizes} does not fit counts of "
                             f"{self.num_layers} layers x {self.intermediate_size}; the stats "
                             f"file is corrupt")
        return sizes

    def neuron_mask(self) -> Optional[Tensor]:
        """Bool [L, N]: which columns are neurons; a layer narrower than N (dense layers of
        a MoE model) is padded, and padding is never counted or selected. None when every
        column is a neuron."""
        sizes = self.layer_sizes()
        if min(sizes) == self.intermediate_size:
            return None
        return torch.arange(self.intermediate_size)[None, :] < torch.tensor(sizes)[:, None]

    def expert_layout(self) -> Optional[List[List[dict]]]:
        """Per layer, its neuron segments ({"kind": "dense" | "routed" | "shared", "offset",
        "experts", "expert_size"}; routed neurons expert-major), or None for dense models."""
        raw = self.extra.get("expert_layout")
        return json.loads(raw) if raw else None

    @classmethod
    def empty(cls, languages: List[str], num_layers: int, intermediate_size: int,
              track_sums: bool = False, track_sumsq: bool = False, **meta) -> "ActivationStats":
        K, L, I = len(languages), num_layers, intermediate_size
        z = lambda: torch.zeros(K, L, I, dtype=torch.float64)  # noqa: E731
        return cls(torch.zeros(K, L, I, dtype=torch.int64), torch.zeros(K, dtype=torch.int64),
                   list(languages), z() if track_sums else None,
                   z() if track_sumsq else None, **meta)

    # ---- derived quantities ----
    def probabilities(self) -> Tensor:
        """P(act > 0) per language, float64 [K, L, I]; errors on a language with no tokens."""
        empty = [l for l, n in zip(self.languages, self.n_tokens.tolist()) if n <= 0]
        if empty:
            raise StatsError(f"language(s) {', '.join(empty)} have no counted tokens; scan more "
                             f"text for them or drop them with .select(...)")
        return self.counts.double() / self.n_tokens.double()[:, None, None]

    def activation_probability(self, given: str = "token") -> Tensor:
        """P(act > 0) per language, float64 [K, L, I].

        given="token": count / the language's tokens (as `probabilities()`): how often the
        neuron fires per token of the language, routing included. given="routed": for a routed
        expert's neuron, count / the tokens of that language the router sent to its expert
        (0 where it sent none): how often it fires once there; dense layers and shared experts
        see every token, so theirs equals given="token". Needs a mixture-of-experts scan.
        """
        if given == "token":
            return self.probabilities()
        if given != "routed":
            raise StatsError(f"given must be 'token' or 'routed', got {given!r}")
        from .routing_stats import routed_denominators
        self.probabilities()                       # the same check for empty languages
        return self.counts.double() / routed_denominators(self).clamp(min=1)

    def mean_activation(self) -> Tensor:
        """Mean act(gate) per language, float64 [K, L, I] (needs a scan with sums)."""
        if self.sums is None:
            raise StatsError("these stats carry no activation sums; rescan with --sums "
                             "(scan(..., track_sums=True)) to use mean activations")
        return self.sums / self.n_tokens.double().clamp(min=1)[:, None, None]

    def select(self, languages: Iterable[str]) -> "ActivationStats":
        """A copy restricted to `languages`, in that order."""
        languages = list(languages)
        missing = [l for l in languages if l not in self.languages]
        if missing:
            raise StatsError(f"language(s) {missing} are not in these stats ({self.languages})")
        idx = torch.tensor([self.languages.index(l) for l in languages])
        pick = lambda t: None if t is None else t[idx].clone()  # noqa: E731
        return ActivationStats(pick(self.counts), pick(self.n_tokens), languages,
                               pick(self.sums), pick(self.sumsq), **self._meta(),
                               routed=pick(self.routed), route_weight=pick(self.route_weight))

    # ---- additivity ----
    def _meta(self) -> dict:
        return dict(model_name=self.model_name, model_type=self.model_type,
                    activation_site=self.activation_site, corpus=self.corpus,
                    extra=dict(self.extra))

    def check_compatible(self, other: "ActivationStats") -> None:
        problems = []
        if self.model_name and other.model_name and self.model_name != other.model_name:
            problems.append(f"model {self.model_name!r} vs {other.model_name!r}")
        if self.counts.shape[1:] != other.counts.shape[1:]:
            problems.append(f"layers x neurons {list(self.counts.shape[1:])} vs "
                            f"{list(other.counts.shape[1:])}")
        if self.activation_site != other.activation_site:
            problems.append(f"activation site {self.activation_site!r} vs "
                            f"{other.activation_site!r}")
        if problems:
            raise StatsError("cannot merge statistics of different models: "
                             + "; ".join(problems) + ". Merge only scans of the same model.")

    def merge(self, other: "ActivationStats") -> "ActivationStats":
        """Sum of two scans of the same model; languages are united (order: self, then new)."""
        self.check_compatible(other)
        languages = list(self.languages) + [l for l in other.languages if l not in self.languages]
        L, I = self.num_layers, self.intermediate_size
        keep_sums = self.sums is not None and other.sums is not None
        keep_sumsq = self.sumsq is not None and other.sumsq is not None
        out = ActivationStats.empty(languages, L, I, keep_sums, keep_sumsq, **self._meta())
        for src in (self, other):
            idx = torch.tensor([languages.index(l) for l in src.languages])
            out.counts.index_add_(0, idx, src.counts)
            out.n_tokens.index_add_(0, idx, src.n_tokens)
            if keep_sums:
                out.sums.index_add_(0, idx, src.sums.double())
            if keep_sumsq:
                out.sumsq.index_add_(0, idx, src.sumsq.double())
        if self.routed is not None and other.routed is not None:     # routing adds up too
            shape = (len(languages),) + tuple(self.routed.shape[1:])
            if other.routed.shape[1:] != self.routed.shape[1:]:
                raise StatsError(f"routed experts {list(self.routed.shape[1:])} vs "
                                 f"{list(other.routed.shape[1:])}: merge scans of one model")
            out.routed = torch.zeros(shape, dtype=torch.int64)
            out.route_weight = torch.zeros(shape, dtype=torch.float64)
            for src in (self, other):
                idx = torch.tensor([languages.index(l) for l in src.languages])
                out.routed.index_add_(0, idx, src.routed)
                out.route_weight.index_add_(0, idx, src.route_weight.double())
        if self.corpus != other.corpus and other.corpus:
            out.corpus = f"{self.corpus} + {other.corpus}" if self.corpus else other.corpus
        return out

    __add__ = merge

    def minus(self, prefix: "ActivationStats") -> "ActivationStats":
        """Full minus prefix statistics (response-only), counts clamped at 0 (NJUNLP style)."""
        self.check_compatible(prefix)
        if prefix.languages != self.languages:
            raise StatsError(f"prefix stats languages {prefix.languages} differ from "
                             f"{self.languages}")
        sub = lambda a, b: None if a is None or b is None else a - b  # noqa: E731
        return ActivationStats((self.counts - prefix.counts).clamp(min=0),
                               (self.n_tokens - prefix.n_tokens).clamp(min=0),
                               list(self.languages), sub(self.sums, prefix.sums),
                               sub(self.sumsq, prefix.sumsq), **self._meta(),
                               routed=None if self.routed is None or prefix.routed is None
                               else (self.routed - prefix.routed).clamp(min=0),
                               route_weight=sub(self.route_weight, prefix.route_weight)
                               if self.routed is not None and prefix.routed is not None
                               else None)

    # ---- files ----
    def save(self, path: str | os.PathLike) -> Path:
        """Write a safetensors file atomically and durably: the bytes go to a temporary file
        beside `path`, which is fsynced, renamed over `path`, and the folder fsynced. A crash,
        a full disk or SIGKILL at any point leaves either the old file or the new one, never a
        mix. The file gets mode 0666 minus the umask (0644 usually), like any other output."""
        from safetensors.torch import save as serialize

        from . import __version__
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tensors = {"counts": self.counts.contiguous(), "n_tokens": self.n_tokens.contiguous()}
        if self.sums is not None:
            tensors["sums"] = self.sums.double().contiguous()
        if self.sumsq is not None:
            tensors["sumsq"] = self.sumsq.double().contiguous()
        if self.routed is not None:
            tensors["routed"] = self.routed.long().contiguous()
            tensors["route_weight"] = self.route_weight.double().contiguous()
        meta = {**self.extra, "languages": json.dumps(self.languages),
                "format_version": FORMAT_VERSION, "model_name": self.model_name,
                "model_type": self.model_type, "activation_site": self.activation_site,
                "num_layers": str(self.num_layers),
                "intermediate_size": str(self.intermediate_size), "corpus": self.corpus,
                "package_version": __version__}
        write_atomic(path, _sorted_header(serialize(tensors, metadata=meta)))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ActivationStats":
        from safetensors import safe_open

        path = Path(path)
        if not path.exists():
            raise StatsError(f"stats file {path} does not exist; create it with "
                             f"`langneuron scan ... --out {path}`")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise StatsError(f"{path} is not a langneuron stats file (safetensors): {exc}")
        if "counts" not in tensors or "n_tokens" not in tensors or "languages" not in meta:
            raise StatsError(f"{path} lacks `counts`, `n_tokens` or the `languages` metadata; "
                             f"it was not written by ActivationStats.save")
        known = {"languages", "format_version", "model_name", "model_type", "activation_site",
                 "num_layers", "intermediate_size", "corpus", "package_version"}
        return cls(tensors["counts"].long(), tensors["n_tokens"].long(),
                   json.loads(meta["languages"]), tensors.get("sums"), tensors.get("sumsq"),
                   model_name=meta.get("model_name", ""), model_type=meta.get("model_type", ""),
                   activation_site=meta.get("activation_site", "act(gate)"),
                   corpus=meta.get("corpus", ""),
                   extra={k: v for k, v in meta.items() if k not in known},
                   routed=tensors["routed"].long() if "routed" in tensors else None,
                   route_weight=tensors.get("route_weight"))

    # ---- display ----
    def summary(self) -> str:
        lines = [f"ActivationStats: model {self.model_name or '?'} ({self.model_type or '?'}), "
                 f"{self.num_layers} layers x {self.intermediate_size} neurons, "
                 f"{self.num_languages} language{'s' if self.num_languages != 1 else ''}"
                 + (", with sums" if self.sums is not None else ""),
                 f"{'language':<10} {'tokens':>12} {'mean P(act>0)':>14}"]
        for k, lang in enumerate(self.languages):
            n = int(self.n_tokens[k])
            p = float(self.counts[k].double().mean() / n) if n else float("nan")
            lines.append(f"{lang:<10} {n:>12,} {p:>14.4f}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"ActivationStats(languages={self.languages}, layers={self.num_layers}, "
                f"neurons={self.intermediate_size}, tokens={self.n_tokens.tolist()})")
