"""`ActivationStats`: per-language, per-layer, per-neuron activation statistics and their file.

File format (safetensors, docs/design.md "Files"): tensors `counts` int64 [K, L, I], `n_tokens`
int64 [K], optional `sums` / `sumsq` float64 [K, L, I], optional `hist` int64 [K, L, I, B] with
its `hist_edges` float32 [B-1] and `amax` float32 [K, L, I], optional `residual_sums` float64
[K, L, H] (each decoder layer's output hidden state summed per language); mixture-of-experts
scans add `routed` int64 [K, L, E] and `route_weight` float64 [K, L, E] (tokens sent to each
routed expert and the sum of their router weights); string metadata with `languages` (JSON
list, the order of K), `format_version`, `model_name`, `model_type`, `activation_site`,
`num_layers`, `intermediate_size`, `corpus` and `package_version`.
Statistics are additive: merging, all-reducing and resuming are sums (the running maximum
`amax` merges by max). Files without the optional tensors (older scans) load with them None.
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
_DISTRIBUTION_KEYS = ("hist", "hist_edges", "amax")
_ROUTING_KEYS = ("routed", "route_weight")          # mixture-of-experts models


class StatsError(ValueError):
    """A stats file or object that cannot be used as asked; the message says what to do."""


def _write_all(fd: int, data: bytes) -> None:
    """os.write until every byte is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _sorted_header(data: bytes) -> list:
    """The same safetensors file with its JSON header's keys sorted, as [header, body] chunks
    (the body a view: no copy of a large histogram): safetensors writes the metadata in
    hash-map order, which differs between processes, and equal statistics should give equal
    files (a torchrun scan is checked byte for byte against one process)."""
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":"))
    raw = header.encode("utf-8")
    raw += b" " * (-len(raw) % 8)          # safetensors pads the header to 8 bytes
    return [len(raw).to_bytes(8, "little") + raw, memoryview(data)[8 + n:]]


def write_atomic(path: Path, data) -> None:
    """Replace `path` by `data` (bytes, or a list of bytes-like chunks written in order)
    atomically and durably (see `ActivationStats.save`)."""
    chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else list(data)
    # A fixed name: a temporary file left by a killed writer is overwritten by the next save.
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)   # the umask applies
    try:
        try:
            for chunk in chunks:
                _write_all(fd, chunk)
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
    # ---- distributions (scan --hist): see the "distributions" block below ----
    hist: Optional[Tensor] = None       # int64 [K, L, I, B]: counted tokens per activation bin
    hist_edges: Optional[Tensor] = None  # float32 [B-1]: bin b holds edges[b-1] <= act < edges[b]
    amax: Optional[Tensor] = None       # float32 [K, L, I]: largest activation (-inf: none)
    residual_sums: Optional[Tensor] = None   # float64 [K, L, H]: sum of each layer's output
    # ---- routing of mixture-of-experts models: see the "routing" block below ----
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
        self._check_distributions()
        r = self.residual_sums
        if r is not None and (r.dim() != 3 or tuple(r.shape[:2]) != tuple(self.counts.shape[:2])):
            raise StatsError(f"residual_sums has shape {list(r.shape)}; it must be [K, L, H] "
                             f"with K, L of counts {list(self.counts.shape)}")
        self._check_routing()

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

    def residual_means(self) -> Tensor:
        """Mean output hidden state of each decoder layer per language, float64 [K, L, H]
        (needs a scan with residual means)."""
        if self.residual_sums is None:
            raise StatsError("these stats carry no residual-stream sums; rescan with "
                             "`langneuron scan --residual-means` (scan(..., "
                             "track_residual=True)) to use difference-of-means vectors")
        return self.residual_sums / self.n_tokens.double().clamp(min=1)[:, None, None]

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
                               residual_sums=pick(self.residual_sums),
                               **self._distributions(pick), **self._routing_fields(pick))

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
        out.hist, out.hist_edges, out.amax = self._merged_distributions(other, languages)
        if self.residual_sums is not None and other.residual_sums is not None:
            if self.residual_sums.shape[2] != other.residual_sums.shape[2]:
                raise StatsError("cannot merge residual sums of different hidden sizes; merge "
                                 "only scans of the same model")
            out.residual_sums = torch.zeros(len(languages), L, self.residual_sums.shape[2],
                                            dtype=torch.float64)
            for src in (self, other):
                idx = torch.tensor([languages.index(l) for l in src.languages])
                out.residual_sums.index_add_(0, idx, src.residual_sums.double())
        out.routed, out.route_weight = self._merged_routing(other, languages)
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
        hist = None               # the running maximum cannot be subtracted: amax is dropped
        if self.hist is not None and prefix.hist is not None \
                and torch.equal(self.hist_edges, prefix.hist_edges):
            hist = (self.hist - prefix.hist).clamp(min=0)
        return ActivationStats((self.counts - prefix.counts).clamp(min=0),
                               (self.n_tokens - prefix.n_tokens).clamp(min=0),
                               list(self.languages), sub(self.sums, prefix.sums),
                               sub(self.sumsq, prefix.sumsq), **self._meta(), hist=hist,
                               hist_edges=None if hist is None else self.hist_edges.clone(),
                               residual_sums=sub(self.residual_sums, prefix.residual_sums),
                               **self._routing_minus(prefix))

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
        tensors.update(self._distribution_tensors())
        if self.residual_sums is not None:
            tensors["residual_sums"] = self.residual_sums.double().contiguous()
        tensors.update(self._routing_tensors())
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
        from .filekinds import STATS, wrong_kind
        reason = wrong_kind(path, STATS, "`langneuron scan --out`")
        if reason:
            raise StatsError(reason)
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
                   residual_sums=tensors.get("residual_sums"),
                   **{k: tensors[k] for k in _DISTRIBUTION_KEYS if k in tensors},
                   **{k: tensors[k] for k in _ROUTING_KEYS if k in tensors})

    # ---- routing (mixture-of-experts models; models/routing.py records it) ----
    # routed[k, l, e]: language k's tokens that layer l's router sent to routed expert e;
    # route_weight: the sum of the weights they got there. Both add up like counts.
    def _check_routing(self) -> None:
        if (self.routed is None) != (self.route_weight is None):
            raise StatsError("routed and route_weight come together; give both or neither")
        if self.routed is not None and (
                self.routed.dim() != 3 or self.routed.shape[:2] != self.counts.shape[:2]
                or self.route_weight.shape != self.routed.shape):
            raise StatsError(f"routed {list(self.routed.shape)} and route_weight "
                             f"{list(self.route_weight.shape)} must be [K, L, E] with K, L of "
                             f"counts {list(self.counts.shape)}")
        if self.routed is not None:
            self.routed = self.routed.long()
            self.route_weight = self.route_weight.double()

    def _routing_fields(self, pick) -> dict:
        return dict(routed=pick(self.routed), route_weight=pick(self.route_weight))

    def _routing_tensors(self) -> dict:
        if self.routed is None:
            return {}
        return {"routed": self.routed.contiguous(), "route_weight": self.route_weight.contiguous()}

    def _routing_minus(self, prefix: "ActivationStats") -> dict:
        if self.routed is None or prefix.routed is None:
            return {}
        return dict(routed=(self.routed - prefix.routed).clamp(min=0),
                    route_weight=self.route_weight - prefix.route_weight)

    def _merged_routing(self, other: "ActivationStats", languages: List[str]) -> tuple:
        """(routed, route_weight) of self merged with other over `languages` (sums); dropped
        when one side lacks them, as sums are."""
        if self.routed is None or other.routed is None:
            return None, None
        if other.routed.shape[1:] != self.routed.shape[1:]:
            raise StatsError(f"routed experts {list(self.routed.shape[1:])} vs "
                             f"{list(other.routed.shape[1:])}: merge scans of one model")
        shape = (len(languages),) + tuple(self.routed.shape[1:])
        routed = torch.zeros(shape, dtype=torch.int64)
        weight = torch.zeros(shape, dtype=torch.float64)
        for src in (self, other):
            idx = torch.tensor([languages.index(l) for l in src.languages])
            routed.index_add_(0, idx, src.routed)
            weight.index_add_(0, idx, src.route_weight)
        return routed, weight

    # ---- distributions: histograms, percentiles and the running maximum (scan --hist) ----
    # hist[k, l, i, b] counts language k's tokens whose activation of neuron (l, i) fell in bin
    # b, where bin b holds edges[b-1] <= act < edges[b] (the first and last bins open-ended);
    # every counted token lands in exactly one bin, so hist.sum(-1) == n_tokens. `amax` is the
    # largest activation seen (-inf where a language has no tokens).
    def _check_distributions(self) -> None:
        if (self.hist is None) != (self.hist_edges is None):
            raise StatsError("hist and hist_edges come together (the bins need their edges); "
                             "give both or neither")
        if self.hist is not None:
            edges = self.hist_edges
            if edges.dim() != 1 or edges.dtype != torch.float32 or edges.numel() < 1:
                raise StatsError(f"hist_edges must be float32 [B-1] with B >= 2 bins, got "
                                 f"{edges.dtype} {list(edges.shape)}")
            if bool(torch.isnan(edges).any()) or not bool((edges[1:] > edges[:-1]).all()):
                raise StatsError("hist_edges must be strictly increasing numbers")
            want = [*self.counts.shape, edges.numel() + 1]
            if self.hist.dtype != torch.int64 or list(self.hist.shape) != want:
                raise StatsError(f"hist must be int64 {want} (counts' shape and one more bin "
                                 f"than edges), got {self.hist.dtype} {list(self.hist.shape)}")
        if self.amax is not None and (self.amax.shape != self.counts.shape
                                      or self.amax.dtype != torch.float32):
            raise StatsError(f"amax must be float32 {list(self.counts.shape)}, got "
                             f"{self.amax.dtype} {list(self.amax.shape)}")

    @property
    def hist_bins(self) -> int:
        """B, the number of histogram bins (0 without histograms)."""
        return 0 if self.hist is None else self.hist.shape[-1]

    def _distributions(self, pick) -> dict:
        """hist / hist_edges / amax with `pick` applied to the per-language tensors."""
        return dict(hist=pick(self.hist), amax=pick(self.amax),
                    hist_edges=None if self.hist_edges is None else self.hist_edges.clone())

    def _distribution_tensors(self) -> dict:
        """The optional tensors to save (absent ones are not written)."""
        out = {}
        if self.hist is not None:
            out["hist"] = self.hist.contiguous()
            out["hist_edges"] = self.hist_edges.contiguous()
        if self.amax is not None:
            out["amax"] = self.amax.contiguous()
        return out

    def _merged_distributions(self, other: "ActivationStats", languages: List[str]) -> tuple:
        """(hist, hist_edges, amax) of self merged with other over `languages`: histograms add
        (both must use the same edges), maxima take the max; a field one side lacks is dropped,
        as sums are."""
        K, L, I = len(languages), self.num_layers, self.intermediate_size
        hist = edges = amax = None
        if self.hist is not None and other.hist is not None:
            if not torch.equal(self.hist_edges, other.hist_edges):
                raise StatsError("cannot merge histograms with different bin edges; rescan one "
                                 "side with the other's --hist bins")
            edges = self.hist_edges.clone()
            hist = torch.zeros(K, L, I, edges.numel() + 1, dtype=torch.int64)
        if self.amax is not None and other.amax is not None:
            amax = torch.full((K, L, I), -torch.inf, dtype=torch.float32)
        for src in (self, other):
            idx = torch.tensor([languages.index(l) for l in src.languages])
            if hist is not None:
                hist.index_add_(0, idx, src.hist)
            if amax is not None:
                amax[idx] = torch.maximum(amax[idx], src.amax)
        return hist, edges, amax

    def percentile(self, q: float) -> Tensor:
        """The q-th percentile (q in [0, 100]) of each neuron's activation per language,
        float64 [K, L, I], estimated from the histograms (NaN for a language without tokens).

        torch.quantile's rule (linear): with r = 1 + (n - 1) q / 100, the value between the
        order statistics x_(floor r) and x_(ceil r), weighted by the fraction of r. Each of
        the two is estimated in its own bin, which the counts give exactly, as if the bin's
        tokens were evenly spread between its edges (capped at `amax` when tracked).
        Error bound: each estimate lies in the same bin as the activation it stands for, so
        the result is off by at most one bin's width (the wider of the two bins) when both
        bins are closed. The end bins are open: in the lowest an order statistic is taken as
        edges[0] (the true value lies below); in the highest it is interpolated up to amax
        when tracked, else taken as edges[-1] (a lower bound). The largest activation is
        `amax` exactly when tracked, so percentile(100) is exact.
        """
        if self.hist is None:
            raise StatsError("these stats carry no histograms; rescan with --hist "
                             "(scan(..., hist_bins=32)) to use percentiles and medians")
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 <= q <= 100:
            raise StatsError(f"percentile q must be a number in [0, 100], got {q!r}")
        cum = self.hist.cumsum(-1)
        n = cum[..., -1]
        rank = 1 + (n.double() - 1).clamp(min=0) * (float(q) / 100)
        low = rank.floor()
        value = self._order_statistic(cum, low)
        frac = rank - low
        if bool((frac > 0).any()):
            value = value + frac * (self._order_statistic(cum, low + 1) - value)
        return torch.where(n > 0, value, torch.nan)

    def _order_statistic(self, cum: Tensor, j: Tensor) -> Tensor:
        """Estimate of the j-th smallest activation (j float64 [K, L, I], 1 <= j <= n): in
        the bin holding it, at (j - tokens below the bin - 0.5) / tokens in the bin."""
        B = cum.shape[-1]
        b = torch.searchsorted(cum.double(), j[..., None], side="left").clamp(max=B - 1)
        upto = cum.gather(-1, b).squeeze(-1).double()
        b = b.squeeze(-1)
        in_bin = self.hist.gather(-1, b[..., None]).squeeze(-1).double()
        frac = ((j - (upto - in_bin) - 0.5) / in_bin.clamp(min=1)).clamp(0, 1)
        edges = self.hist_edges.double()
        inf = torch.tensor([torch.inf], dtype=torch.float64)
        lo, hi = torch.cat([-inf, edges])[b], torch.cat([edges, inf])[b]
        if self.amax is not None:
            top = self.amax.double()
            hi = torch.where(torch.isinf(hi) & torch.isfinite(top), torch.maximum(top, lo), hi)
        value = torch.where(torch.isinf(lo), hi, torch.where(torch.isinf(hi), lo,
                                                             lo + frac * (hi - lo)))
        if self.amax is not None:
            top = self.amax.double()
            value = torch.minimum(value, top)                  # none exceeds the maximum
            value = torch.where(j >= cum[..., -1], top, value)  # the largest is the maximum
        return value

    def median(self) -> Tensor:
        """The median activation per language and neuron, float64 [K, L, I]: `percentile(50)`
        (same error bound: at most one bin's width where the middle activations sit in closed
        bins)."""
        return self.percentile(50)

    # ---- display ----
    def summary(self) -> str:
        lines = [f"ActivationStats: model {self.model_name or '?'} ({self.model_type or '?'}), "
                 f"{self.num_layers} layers x {self.intermediate_size} neurons, "
                 f"{self.num_languages} language{'s' if self.num_languages != 1 else ''}"
                 + (", with sums" if self.sums is not None else "")
                 + (f", with {self.hist_bins}-bin histograms" if self.hist is not None else "")
                 + (", with residual means" if self.residual_sums is not None else ""),
                 f"{'language':<10} {'tokens':>12} {'mean P(act>0)':>14}"]
        for k, lang in enumerate(self.languages):
            n = int(self.n_tokens[k])
            p = f"{float(self.counts[k].double().mean() / n):.4f}" if n else "–"  # no NaN
            lines.append(f"{lang:<10} {n:>12,} {p:>14}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"ActivationStats(languages={self.languages}, layers={self.num_layers}, "
                f"neurons={self.intermediate_size}, tokens={self.n_tokens.tolist()})")
