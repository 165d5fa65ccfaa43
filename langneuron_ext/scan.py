"""`ln.scan`: run a corpus through a patched model and return its `ActivationStats`.

    model, tokenizer = ln.models.load_model("gemma-3-270m")
    corpus = ln.corpus.DebianHandbook(["en", "fr", "de"], split="train")
    stats = ln.scan(model, tokenizer, corpus, tokens_per_language=50_000)

The loop: batches from `corpus.ShardedBatches` (each row token carries its language slot, -1 for
tokens that do not count) -> `handle.set_rows(row_lang)` -> one forward pass of the base model
(the LM head is skipped: the statistics live in the MLPs, and on a 262k-vocabulary model the head
costs more than all the layers together) -> the patch's per-layer counters, which live on each
layer's device (models split across devices with accelerate work) and are gathered on the CPU
at the end. Memory stays flat: the counters have a fixed size [K, L, I] and batches are made
lazily.

Checkpoints: with `checkpoint=path` the partial statistics are saved, together with the reader
position (`corpus.Position`), every `checkpoint_every` batches or `checkpoint_seconds` seconds,
whichever comes first; each save is atomic and fsynced (`ActivationStats.save`), so a crash or
SIGKILL at any moment leaves the previous checkpoint or the new one. A restarted scan with the
same checkpoint continues from the position: it reads past the counted documents without
tokenising them (checking a digest of their text), never runs the model over counted text, and
equals a one-shot scan exactly. Ctrl-C (SIGINT) and SIGTERM finish the batch in progress, save,
then stop (a second Ctrl-C stops at once; the last checkpoint stays valid).

Histograms: with `hist_bins=B` every neuron's activations are also binned per language
(int64 [K, L, I, B] over `ops.default_hist_edges(B)`, or `hist_edges`) and their maximum kept
(`amax`); `stats.percentile(q)` / `stats.median()` read them. They are summed like the counts
(the maxima all-reduced by max); `scan_memory` says what they take and refuses a scan whose
histograms would not fit.

Distributed: when torch.distributed is initialised (torchrun), rank r reads and tokenises only
its own blocks of documents (`corpus/shards.py`); the batches are the same as one process's,
split between the ranks, so after the all-reduce of the counters (gloo on CPU, NCCL on GPUs)
the result equals a one-process scan bit for bit. Checkpoints are per rank.
"""
from __future__ import annotations

import contextlib
import json
import os
import signal
import threading
import time
import warnings
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import torch
from torch import nn

from .corpus.shards import DOCS_PER_BLOCK, CorpusChanged, Position, ShardedBatches
from .stats import ActivationStats, StatsError

DEFAULT_TOKENS_PER_LANGUAGE = 100_000
DEFAULT_CHECKPOINT_EVERY = 100      # batches
DEFAULT_CHECKPOINT_SECONDS = 600    # a long scan loses at most ~10 minutes to a crash


class ScanError(ValueError):
    """Scan options or a checkpoint that cannot be used; the message says what to do."""


# ---- small helpers ----------------------------------------------------------------------------
def _world() -> tuple:
    """(rank, world_size) of the initialised process group, else (0, 1)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _collective_device():
    import torch.distributed as dist
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _all_reduce(tensors: Iterable[Optional[torch.Tensor]], op: str = "sum") -> None:
    """Sum (or max) tensors over all ranks in place (NCCL needs them on the GPU for the
    call)."""
    import torch.distributed as dist
    device = _collective_device()
    reduce_op = dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM
    for t in tensors:
        if t is None:
            continue
        buf = t.to(device)
        dist.all_reduce(buf, op=reduce_op)
        if buf is not t:
            t.copy_(buf.cpu())


def _all_gather(local: torch.Tensor) -> torch.Tensor:
    """[W, *local.shape]: every rank's `local` (the reader's exchange, K numbers a step)."""
    import torch.distributed as dist
    device = _collective_device()
    buf = local.to(device)
    parts = [torch.empty_like(buf) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, buf)
    return torch.stack(parts).cpu()


def _forward_callable(model: nn.Module):
    """The base model (decoder stack without the LM head) when the model has one."""
    base = getattr(model, "base_model", None)
    if isinstance(base, nn.Module) and base is not model:
        return base
    return model


def input_device(model: nn.Module) -> torch.device:
    """Where the input ids go: the embeddings' device; with an accelerate device map the first
    module's (offloaded weights sit on 'meta' until their hook loads them: inputs stay on the
    CPU and the hooks move them)."""
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        first = next(iter(device_map.values()))
        if isinstance(first, int):
            return torch.device("cuda", first)
        return torch.device("cpu" if first in ("cpu", "disk") else first)
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        device = embeddings.weight.device
    else:
        device = next(model.parameters()).device
    return torch.device("cpu") if device.type == "meta" else device   # offloaded (cpu_offload)


_input_device = input_device     # the benchmarks' name for it


def _checkpoint_path(checkpoint: Union[str, os.PathLike], rank: int, world: int) -> Path:
    path = Path(checkpoint)
    return path if world == 1 else path.with_name(f"{path.name}.rank{rank}-of-{world}")


def _signature(**options) -> str:
    """What must be equal for a checkpoint to be resumable: same batches, same counters."""
    return json.dumps(options, sort_keys=True)


class _Stop:
    """Ctrl-C (SIGINT) and SIGTERM while scanning: the first one asks the loop to stop after the
    batch in progress (and save); a second SIGINT stops at once. Only in the main thread."""

    def __init__(self):
        self.signal: Optional[int] = None
        self._previous: dict = {}

    def _handle(self, signum, frame):
        if self.signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signal = signum

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        try:
            yield self
        finally:
            for signum, previous in self._previous.items():
                signal.signal(signum, previous)


# ---- the scan ---------------------------------------------------------------------------------
def scan(model: nn.Module, tokenizer, corpus, *, languages: Optional[Sequence[str]] = None,
         tokens_per_language: int = DEFAULT_TOKENS_PER_LANGUAGE, max_length: int = 512,
         batch_size: int = 8, packing: bool = True, bos: Optional[bool] = None,
         track_sums: bool = False, track_sumsq: bool = False, impl: Optional[str] = None,
         progress: bool = True, checkpoint: Optional[Union[str, os.PathLike]] = None,
         checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
         checkpoint_seconds: Optional[float] = DEFAULT_CHECKPOINT_SECONDS,
         docs_per_block: int = DOCS_PER_BLOCK,
         model_name: Optional[str] = None, hist_bins: Optional[int] = None,
         hist_edges: Optional[torch.Tensor] = None,
         track_residual: bool = False) -> ActivationStats:
    """Count, per language, layer and neuron, the tokens with act(gate) > 0.

    model / tokenizer: a Hugging Face causal LM of a supported architecture and its tokenizer
        (the model may be split across devices by accelerate: `load_model(device_map=...)`).
        The model is patched for the scan (and unpatched afterwards, also on error) unless it
        already is; then its handle is used (its current recording is replaced).
    corpus: a `langneuron_ext.corpus.TextSource` (PlainTextFiles, JsonlSource, DebianHandbook).
    languages: the languages to scan, in the order of the result; default corpus.languages.
    tokens_per_language: counted tokens per language (the budget); fewer when the text runs out
        (a warning says which languages fell short).
    max_length / batch_size / packing / docs_per_block: the batch layout (`corpus.shards`).
    bos: rows start with BOS; None = when the tokenizer has one (`corpus.bos_token_id`).
    track_sums / track_sumsq: also sum act(gate) and act(gate)^2 (needed for steering by mean
        activation).
    impl: the op implementation when this call patches the model (None = best available).
    progress: a tqdm bar with tokens/s.
    checkpoint: a file for partial statistics; if it exists the scan resumes from it (it must
        come from a scan with the same model, corpus and options). Saved every
        `checkpoint_every` batches or `checkpoint_seconds` seconds (None: no time limit).
    model_name: stored in the statistics; default the model's alias, folder or hub id.
    hist_bins: also a histogram of every neuron's activation per language with this many bins
        (`ops.default_hist_edges(hist_bins)`, e.g. 32) and its maximum; `hist_edges` (fp32
        [B-1], strictly increasing) gives the edges instead. Refused (ScanError) when the
        histograms would not fit in memory (`scan_memory`).
    track_residual: also sum each decoder layer's output hidden state per language
        (`residual_sums` [K, L, H], fp64; the means give DiffMean steering vectors).
    Returns ActivationStats (counts int64 [K, L, I], n_tokens int64 [K], optional sums,
    hist int64 [K, L, I, B] with hist_edges, amax float32 [K, L, I], residual_sums).
    """
    from .corpus import CorpusError, bos_token_id
    from .models.loading import model_name as loaded_model_name
    from .models.patch import patched

    languages = list(languages) if languages is not None else list(corpus.languages)
    if not languages:
        raise ScanError("no languages to scan: pass languages=[...] or a corpus that has some")
    if len(set(languages)) != len(languages):
        raise ScanError(f"languages repeat: {languages}; give each language once")
    if isinstance(tokens_per_language, bool) or not isinstance(tokens_per_language, int) \
            or tokens_per_language <= 0:
        raise ScanError(f"tokens_per_language must be a positive integer, got "
                        f"{tokens_per_language!r}; it is the number of counted tokens per "
                        f"language")
    if not isinstance(checkpoint_every, int) or checkpoint_every < 1:
        raise ScanError(f"checkpoint_every must be a positive number of batches, got "
                        f"{checkpoint_every!r}")
    if checkpoint_seconds is not None and not checkpoint_seconds > 0:
        raise ScanError(f"checkpoint_seconds must be a positive number of seconds (or None), "
                        f"got {checkpoint_seconds!r}")
    edges = _hist_edges(hist_bins, hist_edges)
    try:
        bos_id = bos_token_id(tokenizer, bos)
    except CorpusError as exc:
        raise ScanError(str(exc)) from exc
    rank, world = _world()
    name = model_name if model_name is not None else loaded_model_name(model)
    corpus_description = getattr(corpus, "description", "") or type(corpus).__name__
    signature = _signature(model=name, corpus=corpus_description, languages=languages,
                           tokens_per_language=tokens_per_language, max_length=max_length,
                           batch_size=batch_size, packing=packing, track_sums=bool(track_sums),
                           track_sumsq=bool(track_sumsq), world_size=world, bos=bos_id,
                           docs_per_block=docs_per_block,
                           hist=None if edges is None else edges.tolist(),
                           **({"track_residual": True} if track_residual else {}))
    options = dict(tokens_per_language=tokens_per_language, max_length=max_length,
                   batch_size=batch_size, packing=packing, bos=bos, docs_per_block=docs_per_block)

    was_training = model.training
    with patched(model, impl=impl) as handle:
        if edges is not None:
            _check_hist_memory(model, handle, len(languages), edges, checkpoint, rank, world)
        try:
            stats = _scan_patched(model, tokenizer, corpus, handle, languages, signature, rank,
                                  world, checkpoint, checkpoint_every, checkpoint_seconds,
                                  options, track_sums, track_sumsq, progress, name,
                                  corpus_description, edges, track_residual)
        finally:
            if handle.recording:
                handle.stop_recording()
            if was_training:
                model.train()
    if world > 1:
        _all_reduce([stats.counts, stats.n_tokens, stats.sums, stats.sumsq, stats.hist,
                     stats.residual_sums])
        _all_reduce([stats.amax], op="max")
        _all_reduce([stats.routed, stats.route_weight])          # MoE routing (None if dense)
    _warn_short(stats, tokens_per_language)
    return stats


def _scan_patched(model, tokenizer, corpus, handle, languages, signature, rank, world,
                  checkpoint, checkpoint_every, checkpoint_seconds, options, track_sums,
                  track_sumsq, progress, name, corpus_description, edges=None,
                  track_residual=False):
    """The loop on a patched model (the caller restores the model whatever happens)."""
    K = len(languages)
    ckpt = _checkpoint_path(checkpoint, rank, world) if checkpoint is not None else None
    meta = dict(model_name=name, model_type=handle.model_type, corpus=corpus_description,
                extra={"tokens_per_language_budget": str(options["tokens_per_language"]),
                       "max_length": str(options["max_length"]),
                       "batch_size": str(options["batch_size"]),
                       "packing": str(bool(options["packing"])).lower(),
                       "docs_per_block": str(options["docs_per_block"]),
                       "impl": ",".join(sorted(set(getattr(handle, "impls", []) or ["?"]))),
                       **handle.stats_metadata()})   # MoE / unequal layers: neuron layout
    base, position = (_load_checkpoint(ckpt, signature, languages, handle) if ckpt
                      else (None, None))
    try:
        batches = ShardedBatches(corpus, tokenizer, languages, rank=rank, world=world,
                                 exchange=_all_gather if world > 1 else None, position=position,
                                 **options)
    except ValueError as exc:
        raise ScanError(str(exc)) from exc

    forward = _forward_callable(model)
    device = input_device(model)
    n_tokens = torch.zeros(K, dtype=torch.int64)      # counted in this run (after the resume)
    stop = _Stop()
    bar = None
    residual = _residual_recorder(model, K, track_residual)

    def save(complete: bool) -> None:
        try:
            _save_checkpoint(ckpt, _result(handle, n_tokens, base, languages, meta, residual),
                             batches.position, signature, complete)
        except OSError as exc:
            raise ScanError(f"cannot write the checkpoint {ckpt}: {exc.strerror or exc}; the "
                            f"one saved before is intact: free space (or fix the folder) and "
                            f"rerun with the same checkpoint (--resume) to continue from it"
                            ) from exc

    try:
        model.eval()
        handle.start_recording(K, track_sums=track_sums, track_sumsq=track_sumsq,
                               hist_edges=edges, track_amax=edges is not None)
        bar = _progress_bar(progress and rank == 0, K * options["tokens_per_language"],
                            0 if base is None else int(base.n_tokens.sum()) * world)
        done_since_save, saved_at = 0, time.monotonic()
        with stop.installed(), residual:
            for batch in batches:
                handle.set_rows(batch.row_lang)
                residual.rows = batch.row_lang
                with torch.inference_mode():
                    forward(input_ids=batch.input_ids.to(device),
                            attention_mask=batch.attention_mask.to(device), use_cache=False)
                batch_tokens = batch.tokens_per_language.to("cpu", torch.int64)
                n_tokens += batch_tokens
                done_since_save += 1
                if bar is not None:
                    advance(bar, int(batch_tokens.sum()) * world)
                if ckpt is not None and (done_since_save >= checkpoint_every or stop.signal or (
                        checkpoint_seconds and time.monotonic() - saved_at >= checkpoint_seconds)):
                    save(complete=False)
                    done_since_save, saved_at = 0, time.monotonic()
                if stop.signal is not None:
                    raise KeyboardInterrupt(f"signal {stop.signal}: stopped after a complete "
                                            f"batch" + (f", progress saved in {ckpt}"
                                                        if ckpt else ""))
        handle.stop_recording()
        stats = _result(handle, n_tokens, base, languages, meta, residual)
        if ckpt is not None:
            save(complete=True)
    except CorpusChanged as exc:
        raise ScanError(f"checkpoint {ckpt} cannot be continued: {exc}; the text or the "
                        f"tokenizer changed since; delete the checkpoint to start afresh") from exc
    finally:
        if bar is not None:
            bar.close()
    return stats


def advance(bar, tokens: int) -> None:
    """Move the progress bar by `tokens`, never past its total: under torchrun rank 0 counts
    its own tokens times the world size, an estimate that overshoots when shares differ."""
    bar.update(max(0, min(tokens, bar.total - bar.n)))


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=min(initial, total), unit="tok", unit_scale=True,
                desc="scan", dynamic_ncols=True, smoothing=0.1)


def _residual_recorder(model, K: int, enabled: bool):
    """Hooks summing each decoder layer's output per language, or a no-op stand-in."""
    if not enabled:
        return _NoResidual()
    from .steering.diffmean import ResidualRecorder
    return ResidualRecorder(model, K)


class _NoResidual(contextlib.nullcontext):
    rows = None


def _result(handle, n_tokens: torch.Tensor, base: Optional[ActivationStats],
            languages: list, meta: dict, residual=None) -> ActivationStats:
    """This run's counters plus the resumed checkpoint's (statistics are sums)."""
    got = handle.collect()
    stats = ActivationStats(got["counts"], n_tokens.clone(), list(languages), got.get("sums"),
                            got.get("sumsq"), **{**meta, "extra": dict(meta["extra"])},
                            hist=got.get("hist"), hist_edges=got.get("hist_edges"),
                            amax=got.get("amax"), routed=got.get("routed"),
                            route_weight=got.get("route_weight"))
    if residual is not None and not isinstance(residual, _NoResidual):
        hidden = handle.model.config.get_text_config().hidden_size
        stats.residual_sums = residual.collect(hidden)
        if base is not None and base.residual_sums is None:
            raise ScanError("the checkpoint has no residual sums but this scan records them; "
                            "delete it to start afresh")
        if base is not None:
            stats.residual_sums += base.residual_sums
    if base is not None:
        if stats.hist is not None:
            stats.hist += base.hist
        if stats.amax is not None:
            torch.maximum(stats.amax, base.amax, out=stats.amax)
        stats.counts += base.counts
        stats.n_tokens += base.n_tokens
        if stats.sums is not None:
            stats.sums += base.sums
        if stats.sumsq is not None:
            stats.sumsq += base.sumsq
        if stats.routed is not None and base.routed is not None:
            stats.routed += base.routed
            stats.route_weight += base.route_weight
    return stats


# ---- histograms ------------------------------------------------------------------------------
def _hist_edges(bins, edges) -> Optional[torch.Tensor]:
    """The histogram edges a scan uses (None: no histograms); bad values are a ScanError."""
    if edges is not None:
        from .models.recording import _checked_edges
        try:
            return _checked_edges(edges)
        except ValueError as exc:
            raise ScanError(str(exc)) from exc
    if bins is None or bins is False or bins == 0:
        return None
    from .ops import default_hist_edges
    try:
        if isinstance(bins, bool) or not isinstance(bins, int):
            raise ValueError(f"bins must be an integer, got {bins!r}")
        return default_hist_edges(bins)
    except ValueError as exc:
        raise ScanError(f"hist_bins (--hist): {exc}") from exc


def _check_hist_memory(model, handle, languages: int, edges, checkpoint, rank, world) -> None:
    """Refuse histograms that would not fit, before the first batch."""
    from .scan_memory import HistMemory, check_fits
    memory = HistMemory(languages, handle.num_layers, handle.intermediate_size,
                        edges.numel() + 1)
    resuming = checkpoint is not None and _checkpoint_path(checkpoint, rank, world).exists()
    spread = len({p.device for p in model.parameters() if p.device.type != "meta"}) > 1
    check_fits(memory, None if spread else input_device(model), resuming)


# ---- checkpoints ------------------------------------------------------------------------------
_POSITION = "scan_position"
_SIGNATURE = "scan_signature"
_COMPLETE = "scan_complete"
_KEYS = (_POSITION, _SIGNATURE, _COMPLETE)


def _save_checkpoint(path: Path, stats: ActivationStats, position: Position, signature: str,
                     complete: bool) -> None:
    stats.extra.update({_POSITION: position.to_json(), _SIGNATURE: signature,
                        _COMPLETE: "true" if complete else "false"})
    stats.save(path)          # atomic and durable: temporary file, fsync, rename, fsync folder
    for key in _KEYS:
        stats.extra.pop(key)


def _load_checkpoint(path: Path, signature: str, languages: list, handle):
    """(stats so far, reader position), or (None, None) when there is no checkpoint."""
    if not path.exists():
        return None, None
    try:
        stats = ActivationStats.load(path)
    except StatsError as exc:
        raise ScanError(f"checkpoint {path} cannot be read ({exc}); delete it to start the "
                        f"scan afresh") from exc
    if _POSITION not in stats.extra or _SIGNATURE not in stats.extra:
        raise ScanError(f"{path} is a stats file, not a scan checkpoint; choose another "
                        f"checkpoint path")
    if stats.extra[_SIGNATURE] != signature:
        old, new = json.loads(stats.extra[_SIGNATURE]), json.loads(signature)
        differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ScanError(f"checkpoint {path} belongs to a scan with other options "
                        f"({', '.join(differ)} differ); rerun with the same options to resume, "
                        f"or delete the checkpoint to start afresh")
    if (stats.languages != languages or stats.num_layers != handle.num_layers
            or stats.intermediate_size != handle.intermediate_size
            or (json.loads(signature).get("hist") is not None) != (stats.hist is not None)):
        raise ScanError(f"checkpoint {path} has other languages or shapes than this model "
                        f"and scan; delete it to start afresh")
    try:
        position = Position.from_json(stats.extra[_POSITION])
    except (TypeError, ValueError) as exc:
        raise ScanError(f"checkpoint {path} has an unreadable reader position ({exc}); delete "
                        f"it to start afresh") from exc
    for key in _KEYS:
        stats.extra.pop(key, None)
    return stats, position


def _warn_short(stats: ActivationStats, budget: int) -> None:
    short = [f"{lang} ({int(n):,})" for lang, n in zip(stats.languages, stats.n_tokens)
             if int(n) < budget]
    if short:
        warnings.warn(f"the corpus ran out of text before {budget:,} tokens for: "
                      f"{', '.join(short)}", stacklevel=3)


__all__ = ["scan", "ScanError", "DEFAULT_TOKENS_PER_LANGUAGE", "DEFAULT_CHECKPOINT_EVERY",
           "DEFAULT_CHECKPOINT_SECONDS"]
