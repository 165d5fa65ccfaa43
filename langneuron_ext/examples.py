"""`ln.examples`: the top-k activating token positions of selected neurons, per language.

    neurons = ln.identify.NeuronSet.load("neurons.json")
    ex = ln.examples(model, tokenizer, corpus, neurons, k=20, context=16)
    ex.save("examples.safetensors")

One pass over the corpus (the scan's batches, `corpus.shards`): the patched MLPs gather
`act(gate[..., ids])` of the selected columns only (`PatchState.set_tap`), and a streaming top-k
keeps, for every language and selected neuron, the k token positions with the largest
activation, with the tokens of a window of `context` tokens on each side of the position and
the neuron's activation on each of them. Memory is fixed by K x M x k x (2 context + 1), whatever
the corpus size.

Order (documented tie-break rule): larger activation first; among equal activations the
earlier position in corpus order wins, where corpus order is (round, batch, row, token) of the
scan's batch layout, which does not depend on the number of processes. NaN activations (and
routed-expert neurons on tokens not routed to their expert) are never recorded. The order is
total, so per-batch, per-checkpoint and per-rank top-k merge into exactly the one-pass result.

Positions are stored as one int64 `key`: round << 40 | batch << 24 | row << 14 | token
(`decode_key`); a position's "document" is the row the model read (a packed window, or one
document with packing off). Checkpoints and torchrun work like the scan's.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

DEFAULT_K = 20
DEFAULT_CONTEXT = 16
FORMAT = "langneuron-examples"
FORMAT_VERSION = "1"

# Bits of the position key: round, batch in round, row in batch, token in row.
_TOKEN_BITS, _ROW_BITS, _BATCH_BITS, _ROUND_BITS = 14, 10, 16, 23
_EMPTY = torch.iinfo(torch.int64).max
_LOW = torch.iinfo(torch.int64).min


class ExamplesError(ValueError):
    """Options, neurons or files the examples pass cannot use; the message says what to do."""


def position_key(round_: int, batch: int, row: int = 0, token: int = 0) -> int:
    return (((round_ << _BATCH_BITS | batch) << _ROW_BITS | row) << _TOKEN_BITS) | token


def decode_key(key: int) -> Tuple[int, int, int, int]:
    """(round, batch, row, token) of a position key."""
    token = key & ((1 << _TOKEN_BITS) - 1)
    row = (key >> _TOKEN_BITS) & ((1 << _ROW_BITS) - 1)
    batch = (key >> (_TOKEN_BITS + _ROW_BITS)) & ((1 << _BATCH_BITS) - 1)
    return key >> (_TOKEN_BITS + _ROW_BITS + _BATCH_BITS), batch, row, token


def _ordered(values: Tensor) -> Tensor:
    """int64 that orders like the fp32 `values` (a total order on non-NaN floats)."""
    bits = values.float().contiguous().view(torch.int32).long()
    return torch.where(bits < 0, bits ^ 0x7FFFFFFF, bits)


# ---- the neurons ------------------------------------------------------------------------------
def columns_of(neurons, layers: Optional[Iterable[int]] = None,
               languages: Optional[Sequence[str]] = None) -> Tensor:
    """int64 [M, 2] sorted unique (layer, neuron) pairs from a NeuronSet (every language's
    neurons, or `languages`'), a {layer: ids} mapping or (layer, neuron) pairs; `layers` keeps
    only those layers."""
    from .identify.neuron_set import NeuronSet
    pairs = set()
    if isinstance(neurons, NeuronSet):
        for lang in languages or neurons.languages:
            for layer, ids in neurons.neurons[lang].items():
                pairs.update((layer, i) for i in ids)
    elif isinstance(neurons, Mapping):
        for layer, ids in neurons.items():
            pairs.update((int(layer), int(i)) for i in ids)
    else:
        pairs.update((int(layer), int(i)) for layer, i in neurons)
    if layers is not None:
        keep = {int(l) for l in layers}
        pairs = {p for p in pairs if p[0] in keep}
    if not pairs:
        raise ExamplesError("no neurons selected: the neuron set (with --layers / --top) is "
                            "empty; choose other layers or another neuron set")
    return torch.tensor(sorted(pairs), dtype=torch.int64)


def top_per_language(neurons, stats, n: int) -> Dict[int, List[int]]:
    """{layer: ids}: per language, its `n` neurons of the set with the highest activation
    probability in that language (ties: lower layer, then lower id)."""
    probs = stats.probabilities()
    out: Dict[int, set] = {}
    for lang in neurons.languages:
        if lang not in stats.languages:
            raise ExamplesError(f"language {lang!r} of the neuron set is not in the stats "
                                f"({stats.languages}); give the stats the set was made from")
        p = probs[stats.languages.index(lang)]
        cells = [(-float(p[l, i]), l, i) for l, ids in neurons.neurons[lang].items() for i in ids]
        for _, l, i in sorted(cells)[:n]:
            out.setdefault(l, set()).add(i)
    return {l: sorted(ids) for l, ids in out.items()}


def columns_digest(columns: Tensor) -> str:
    """A short digest that names a selection of columns (examples of another set differ)."""
    return hashlib.blake2b(columns.to(torch.int64).contiguous().numpy().tobytes(),
                           digest_size=8).hexdigest()


# ---- the result -------------------------------------------------------------------------------
@dataclass
class Examples:
    """Top-k examples per language and selected neuron.

    columns int64 [M, 2] (layer, neuron); values fp32 [K, M, k] (NaN: empty slot, fewer than
    k positions seen); keys int64 [K, M, k] (position keys, `decode_key`; -1 empty); tokens
    int64 [K, M, k, 2c+1] (the window's token ids, -1 outside the row); window fp32
    [K, M, k, 2c+1] (the neuron's activation on each window token, NaN where none);
    vocab {token id: text} for every id in `tokens`.
    """
    languages: List[str]
    columns: Tensor
    values: Tensor
    keys: Tensor
    tokens: Tensor
    window: Tensor
    context: int
    vocab: Dict[int, str] = field(default_factory=dict)
    model_name: str = ""
    model_type: str = ""
    num_layers: int = 0
    intermediate_size: int = 0
    corpus: str = ""
    extra: Dict[str, str] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return self.values.shape[2]

    @property
    def digest(self) -> str:
        return columns_digest(self.columns)

    def index_of(self, layer: int, neuron: int) -> Optional[int]:
        hit = ((self.columns[:, 0] == layer) & (self.columns[:, 1] == neuron)).nonzero()
        return int(hit[0, 0]) if hit.numel() else None

    def of(self, layer: int, neuron: int, lang: str) -> List[dict]:
        """The recorded examples of one neuron in one language, best first: dicts with
        value, round, batch, row, token, tokens (texts) and acts (None where none)."""
        m = self.index_of(layer, neuron)
        if m is None:
            raise ExamplesError(f"L{layer}.N{neuron} is not among the examples' neurons")
        kk = self.languages.index(lang)
        out = []
        for j in range(self.k):
            key = int(self.keys[kk, m, j])
            if key < 0:
                break
            ids = self.tokens[kk, m, j].tolist()
            acts = self.window[kk, m, j].tolist()
            r, b, row, t = decode_key(key)
            out.append(dict(value=float(self.values[kk, m, j]), round=r, batch=b, row=row,
                            token=t, tokens=[self.vocab.get(i, "") if i >= 0 else None
                                             for i in ids],
                            acts=[None if i < 0 or a != a else a for i, a in zip(ids, acts)]))
        return out

    # ---- files ----
    def _meta(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION,
                "languages": json.dumps(self.languages), "context": str(self.context),
                "model_name": self.model_name, "model_type": self.model_type,
                "num_layers": str(self.num_layers),
                "intermediate_size": str(self.intermediate_size), "corpus": self.corpus,
                "neurons_digest": self.digest,
                "vocab": json.dumps({str(i): s for i, s in sorted(self.vocab.items())},
                                    ensure_ascii=False), **self.extra}

    def save(self, path: Union[str, os.PathLike]) -> Path:
        """Write atomically: `.json` (readable, larger) or safetensors (any other suffix)."""
        from .stats import _sorted_header, write_atomic
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".json":
            data = dict(self._meta(), languages=self.languages, vocab=None,
                        columns=self.columns.tolist(), neurons=[
                            dict(layer=int(l), neuron=int(i), examples={
                                lang: self.of(int(l), int(i), lang) for lang in self.languages})
                            for l, i in self.columns.tolist()])
            write_atomic(path, (json.dumps(data, ensure_ascii=False, allow_nan=False)
                                + "\n").encode("utf-8"))
            return path
        from safetensors.torch import save as serialize
        tensors = {"columns": self.columns.contiguous(), "values": self.values.contiguous(),
                   "keys": self.keys.contiguous(), "tokens": self.tokens.contiguous(),
                   "window": self.window.contiguous()}
        write_atomic(path, _sorted_header(serialize(tensors, metadata=self._meta())))
        return path

    @classmethod
    def load(cls, path: Union[str, os.PathLike]) -> "Examples":
        path = Path(path)
        if not path.exists():
            raise ExamplesError(f"examples file {path} does not exist; create it with "
                                f"`langneuron examples ... --out {path}`")
        if path.suffix == ".json":
            return cls._from_json(path)
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:
            raise ExamplesError(f"{path} is not an examples file (safetensors): {exc}") from None
        if meta.get("format") != FORMAT:
            raise ExamplesError(f"{path} is not an examples file written by `langneuron "
                                f"examples` (a stats file? pass it as --stats)")
        known = {"format", "format_version", "languages", "context", "model_name",
                 "model_type", "num_layers", "intermediate_size", "corpus", "neurons_digest",
                 "vocab"}
        return cls(json.loads(meta["languages"]), tensors["columns"], tensors["values"],
                   tensors["keys"], tensors["tokens"], tensors["window"], int(meta["context"]),
                   {int(i): s for i, s in json.loads(meta.get("vocab", "{}")).items()},
                   meta.get("model_name", ""), meta.get("model_type", ""),
                   int(meta.get("num_layers", 0)), int(meta.get("intermediate_size", 0)),
                   meta.get("corpus", ""), {k: v for k, v in meta.items() if k not in known})

    @classmethod
    def _from_json(cls, path: Path) -> "Examples":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("format") != FORMAT:
                raise KeyError("format")
            languages, context = data["languages"], int(data["context"])
            columns = torch.tensor(data["columns"], dtype=torch.int64).reshape(-1, 2)
            K, M, W = len(languages), columns.shape[0], 2 * context + 1
            k = max([len(e) for n in data["neurons"] for e in n["examples"].values()] or [0])
            ex = cls.empty(languages, columns, k, context)
            vocab: Dict[str, int] = {}
            for m, n in enumerate(data["neurons"]):
                for kk, lang in enumerate(languages):
                    for j, e in enumerate(n["examples"][lang]):
                        ex.values[kk, m, j] = e["value"]
                        ex.keys[kk, m, j] = position_key(e["round"], e["batch"], e["row"],
                                                         e["token"])
                        for w, (s, a) in enumerate(zip(e["tokens"], e["acts"])):
                            if s is not None:
                                ex.tokens[kk, m, j, w] = vocab.setdefault(s, len(vocab))
                            ex.window[kk, m, j, w] = float("nan") if a is None else a
            assert ex.tokens.shape[-1] == W and ex.values.shape[:2] == (K, M)
        except (KeyError, TypeError, ValueError, AssertionError, UnicodeDecodeError) as exc:
            raise ExamplesError(f"{path} is not an examples file written by `langneuron "
                                f"examples` ({exc})") from None
        ex.vocab = {i: s for s, i in vocab.items()}
        ex.model_name, ex.model_type = data.get("model_name", ""), data.get("model_type", "")
        ex.num_layers = int(data.get("num_layers", 0))
        ex.intermediate_size = int(data.get("intermediate_size", 0))
        ex.corpus = data.get("corpus", "")
        return ex

    @classmethod
    def empty(cls, languages: Sequence[str], columns: Tensor, k: int,
              context: int, **meta) -> "Examples":
        K, M, W = len(languages), columns.shape[0], 2 * context + 1
        return cls(list(languages), columns, torch.full((K, M, k), float("nan")),
                   torch.full((K, M, k), -1, dtype=torch.int64),
                   torch.full((K, M, k, W), -1, dtype=torch.int64),
                   torch.full((K, M, k, W), float("nan")), context, **meta)


# ---- the streaming top-k ----------------------------------------------------------------------
class TopK:
    """The running top-k of every (language, column); `update` takes one batch, `merge` another
    TopK's (or a checkpoint's) tensors. Empty slots have key _EMPTY while running."""

    def __init__(self, num_languages: int, num_columns: int, k: int, context: int):
        K, M, W = num_languages, num_columns, 2 * context + 1
        self.k, self.context = k, context
        self.values = torch.full((K, M, k), float("nan"))
        self.keys = torch.full((K, M, k), _EMPTY, dtype=torch.int64)
        self.tokens = torch.full((K, M, k, W), -1, dtype=torch.int64)
        self.window = torch.full((K, M, k, W), float("nan"))

    def tensors(self) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        return self.values, self.keys, self.tokens, self.window

    def merge(self, lang: int, values: Tensor, keys: Tensor, tokens: Tensor,
              window: Tensor) -> None:
        """Fold candidates [M, c] (tokens / window [M, c, W]) into language `lang`."""
        v = torch.cat([self.values[lang], values], dim=1)
        key = torch.cat([self.keys[lang], keys], dim=1)
        # lexicographic: filled first, then larger value, then smaller key (stable sorts from
        # the last criterion to the first); keys are unique, so the order is total
        order = torch.sort(key, dim=1, stable=True).indices
        by_value = torch.sort(torch.where(key.gather(1, order) == _EMPTY, _LOW,
                                          _ordered(v.gather(1, order))),
                              dim=1, descending=True, stable=True).indices
        order = order.gather(1, by_value)[:, :self.k]
        self.values[lang] = v.gather(1, order)
        self.keys[lang] = key.gather(1, order)
        W = self.tokens.shape[-1]
        expand = order[:, :, None].expand(-1, -1, W)
        self.tokens[lang] = torch.cat([self.tokens[lang], tokens], 1).gather(1, expand)
        self.window[lang] = torch.cat([self.window[lang], window], 1).gather(1, expand)

    def merge_all(self, values: Tensor, keys: Tensor, tokens: Tensor, window: Tensor) -> None:
        for lang in range(self.values.shape[0]):
            self.merge(lang, values[lang], keys[lang], tokens[lang], window[lang])

    def update(self, acts: Tensor, row_lang: Tensor, input_ids: Tensor,
               attention_mask: Tensor, base_key: int) -> None:
        """One batch: acts fp32 [B*T, M] of the selected columns, row_lang [B, T], input_ids /
        attention_mask [B, T]; positions get key base_key | row << 14 | token."""
        B, T = input_ids.shape
        flat_lang = row_lang.reshape(-1).to(acts.device)
        c, W = self.context, 2 * self.context + 1
        offsets = torch.arange(-c, c + 1)
        for lang in range(self.values.shape[0]):
            rows = (flat_lang == lang).nonzero().reshape(-1)
            if rows.numel() == 0:
                continue
            a = acts.index_select(0, rows)                                   # [n, M]
            local = (rows // T) << _TOKEN_BITS | (rows % T)
            composite = (_ordered(a) << 32) | ((1 << 32) - 1 - local)[:, None]
            composite = torch.where(torch.isnan(a), _LOW, composite)
            top = torch.topk(composite.T, min(self.k, rows.numel()), dim=1)  # [M, c']
            filled = top.values != _LOW
            flat = rows[top.indices]                                        # [M, c']
            m = torch.arange(acts.shape[1])[:, None].expand_as(flat)
            values = acts[flat, m]
            row, token = flat // T, flat % T
            keys = torch.where(filled, base_key + (row << _TOKEN_BITS | token), _EMPTY)
            values = torch.where(filled, values, float("nan"))
            pos = token[:, :, None] + offsets                               # [M, c', W]
            inside = (pos >= 0) & (pos < T)
            pos = pos.clamp(0, T - 1)
            r = row[:, :, None].expand_as(pos)
            inside &= attention_mask[r, pos].bool() & filled[:, :, None]
            tokens = torch.where(inside, input_ids[r, pos], -1)
            window = torch.where(inside, acts[r * T + pos, m[:, :, None].expand_as(pos)],
                                 float("nan"))
            assert tokens.shape[-1] == W
            self.merge(lang, values, keys, tokens, window)

    def result(self, languages: Sequence[str], columns: Tensor, tokenizer=None,
               **meta) -> Examples:
        keys = torch.where(self.keys == _EMPTY, -1, self.keys)
        ex = Examples(list(languages), columns.clone(), self.values.clone(), keys,
                      self.tokens.clone(), self.window.clone(), self.context, **meta)
        if tokenizer is not None:
            ex.vocab = token_texts(tokenizer, ex.tokens)
        return ex


def token_texts(tokenizer, tokens: Tensor) -> Dict[int, str]:
    """{id: the text the tokenizer decodes it to} for every id in `tokens`."""
    ids = torch.unique(tokens[tokens >= 0]).tolist()
    out = {}
    for i in ids:
        try:
            text = tokenizer.decode([i])
        except Exception:                  # ids a tokenizer cannot decode alone
            text = str(tokenizer.convert_ids_to_tokens(i))
        out[int(i)] = text
    return out


# ---- the pass ---------------------------------------------------------------------------------
class _Keys:
    """The (round, batch-in-round) of each batch a ShardedBatches yields, from its position."""

    def __init__(self, batches, rank: int, world: int):
        self.batches, self.rank, self.world = batches, rank, world
        start = batches.position
        self.step, self.index = start.step, start.batches - 1

    def base(self) -> int:
        p = self.batches.position          # where the rank stands after the batch just yielded
        if p.batches > 0:
            step, index = p.step, p.batches - 1
        else:                              # the step's last batch
            step = p.step - 1
            index = self.index + 1 if self.step == step else 0
        self.step, self.index = step, index
        round_ = step * self.world + self.rank
        if round_ >= 1 << _ROUND_BITS or index >= 1 << _BATCH_BITS:
            raise ExamplesError(f"round {round_} / batch {index} do not fit the position key; "
                                f"use larger --docs-per-block or a larger batch size")
        return position_key(round_, index)


def record_batch(handle, forward, top: TopK, layer_order: Sequence[int], batch, device,
                 base_key: int) -> None:
    """One batch of the pass: a forward of the tapped model, then the top-k update."""
    handle.set_rows(None)
    with torch.inference_mode():
        forward(input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device), use_cache=False)
    tapped = handle.take_tapped()
    acts = torch.cat([tapped[l].cpu() for l in layer_order], dim=1)
    top.update(acts, batch.row_lang, batch.input_ids, batch.attention_mask, base_key)


def examples(model, tokenizer, corpus, neurons, *, k: int = DEFAULT_K,
             context: int = DEFAULT_CONTEXT, languages: Optional[Sequence[str]] = None,
             layers: Optional[Iterable[int]] = None, tokens_per_language: int = 100_000,
             max_length: int = 512, batch_size: int = 8, packing: bool = True,
             bos: Optional[bool] = None, impl: Optional[str] = None, progress: bool = True,
             checkpoint: Optional[Union[str, os.PathLike]] = None,
             checkpoint_every: int = 100, checkpoint_seconds: Optional[float] = 600,
             docs_per_block: Optional[int] = None,
             model_name: Optional[str] = None) -> Examples:
    """Record the top-k activating positions of the selected neurons per language.

    neurons: a NeuronSet (all its languages' neurons), {layer: ids} or (layer, id) pairs;
    layers keeps only those layers. k / context: examples per language and neuron, and tokens
    shown on each side. Corpus and batching options as `ln.scan` (held-out text: e.g.
    DebianHandbook(..., split="heldout")). checkpoint: a file for partial results; an existing
    one is continued (same options). Under torchrun each rank keeps its own top-k; they are
    merged at the end (every rank returns the result).
    """
    from .corpus import CorpusError, bos_token_id
    from .corpus.shards import DOCS_PER_BLOCK, CorpusChanged, ShardedBatches
    from .models.loading import model_name as loaded_model_name
    from .models.patch import patched
    from .scan import _all_gather, _checkpoint_path, _forward_callable, _world, input_device

    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ExamplesError(f"k must be a positive integer, got {k!r}")
    if isinstance(context, bool) or not isinstance(context, int) or context < 0:
        raise ExamplesError(f"context must be a non-negative integer, got {context!r}")
    if batch_size > 1 << _ROW_BITS or max_length > 1 << _TOKEN_BITS:
        raise ExamplesError(f"batch_size <= {1 << _ROW_BITS} and max_length <= "
                            f"{1 << _TOKEN_BITS} for the examples pass")
    from .identify.neuron_set import NeuronSet
    if languages is None:
        languages = neurons.languages if isinstance(neurons, NeuronSet) else corpus.languages
    languages = list(languages)
    columns = columns_of(neurons, layers)
    try:
        bos_id = bos_token_id(tokenizer, bos)
    except CorpusError as exc:
        raise ExamplesError(str(exc)) from exc
    rank, world = _world()
    name = model_name if model_name is not None else loaded_model_name(model)
    description = getattr(corpus, "description", "") or type(corpus).__name__
    docs_per_block = docs_per_block or DOCS_PER_BLOCK
    signature = json.dumps(dict(model=name, corpus=description, languages=languages,
                                tokens_per_language=tokens_per_language,
                                max_length=max_length, batch_size=batch_size, packing=packing,
                                bos=bos_id, docs_per_block=docs_per_block, k=k, context=context,
                                neurons=columns_digest(columns), world_size=world),
                           sort_keys=True)
    ckpt = _checkpoint_path(checkpoint, rank, world) if checkpoint is not None else None
    top = TopK(len(languages), columns.shape[0], k, context)
    position = _load_checkpoint(ckpt, signature, top) if ckpt else None
    try:
        batches = ShardedBatches(corpus, tokenizer, languages, rank=rank, world=world,
                                 exchange=_all_gather if world > 1 else None, position=position,
                                 tokens_per_language=tokens_per_language, max_length=max_length,
                                 batch_size=batch_size, packing=packing, bos=bos,
                                 docs_per_block=docs_per_block)
    except ValueError as exc:
        raise ExamplesError(str(exc)) from exc
    by_layer: Dict[int, List[int]] = {}
    for l, i in columns.tolist():
        by_layer.setdefault(l, []).append(i)
    layer_order = sorted(by_layer)
    keys = _Keys(batches, rank, world)
    forward, device = _forward_callable(model), input_device(model)
    was_training = model.training
    bar = None
    if progress and rank == 0:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(languages) * tokens_per_language, unit="tok", unit_scale=True,
                   desc="examples", dynamic_ncols=True)
    with patched(model, impl=impl) as handle:
        if columns[:, 0].max() >= handle.num_layers or any(
                max(ids) >= handle.layer_sizes[l] for l, ids in by_layer.items()):
            raise ExamplesError(f"the neurons do not fit this model ({handle.num_layers} "
                                f"layers x {handle.intermediate_size} neurons): they come from "
                                f"another model; use a neuron set of this model")
        handle.set_tap(by_layer)
        model.eval()
        saved_at, since = time.monotonic(), 0
        try:
            for batch in batches:
                record_batch(handle, forward, top, layer_order, batch, device, keys.base())
                since += 1
                if bar is not None:
                    bar.update(int(batch.tokens_per_language.sum()) * world)
                if ckpt is not None and (since >= checkpoint_every or (
                        checkpoint_seconds and time.monotonic() - saved_at >= checkpoint_seconds)):
                    _save_checkpoint(ckpt, top, batches.position, signature)
                    saved_at, since = time.monotonic(), 0
        except CorpusChanged as exc:
            raise ExamplesError(f"checkpoint {ckpt} cannot be continued: {exc}; delete it to "
                                f"start afresh") from exc
        finally:
            handle.set_tap(None)
            if bar is not None:
                bar.close()
            if was_training:
                model.train()
        if ckpt is not None:
            _save_checkpoint(ckpt, top, batches.position, signature)
        layer_sizes = list(handle.layer_sizes)
    if world > 1:                          # every rank's top-k, merged by the same total order
        gathered, top = [_all_gather(t) for t in top.tensors()], TopK(*top.values.shape[:3],
                                                                        context)
        for parts in zip(*gathered):
            top.merge_all(*parts)
    return top.result(languages, columns, tokenizer, model_name=name,
                      model_type=getattr(model.config, "model_type", ""),
                      num_layers=len(layer_sizes), intermediate_size=max(layer_sizes),
                      corpus=description,
                      extra={"k": str(k), "tokens_per_language": str(tokens_per_language),
                             "max_length": str(max_length)})


def _save_checkpoint(path: Path, top: TopK, position, signature: str) -> None:
    from safetensors.torch import save as serialize

    from .stats import _sorted_header, write_atomic
    names = ("values", "keys", "tokens", "window")
    data = serialize(dict(zip(names, (t.contiguous() for t in top.tensors()))),
                     metadata={"examples_signature": signature,
                               "examples_position": position.to_json()})
    try:
        write_atomic(path, _sorted_header(data))
    except OSError as exc:
        raise ExamplesError(f"cannot write the checkpoint {path}: {exc.strerror or exc}; the "
                            f"one saved before is intact: fix the folder and rerun with "
                            f"--resume") from exc


def _load_checkpoint(path: Path, signature: str, top: TopK):
    from safetensors import safe_open

    from .corpus.shards import Position
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:
        raise ExamplesError(f"checkpoint {path} cannot be read ({exc}); delete it to start "
                            f"afresh") from None
    if meta.get("examples_signature") != signature:
        raise ExamplesError(f"checkpoint {path} belongs to an examples pass with other options; "
                            f"rerun with the same options, or delete it to start afresh")
    top.values, top.keys = tensors["values"], tensors["keys"]
    top.tokens, top.window = tensors["tokens"], tensors["window"]
    return Position.from_json(meta["examples_position"])


__all__ = ["examples", "Examples", "ExamplesError", "TopK", "columns_of", "columns_digest",
           "top_per_language", "decode_key", "position_key", "DEFAULT_K", "DEFAULT_CONTEXT"]
