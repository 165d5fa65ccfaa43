"""`ln.scan`: run a corpus through a patched model and return its `ActivationStats`.

    model, tokenizer = ln.models.load_model("gemma-3-270m")
    corpus = ln.corpus.DebianHandbook(["en", "fr", "de"], split="train")
    stats = ln.scan(model, tokenizer, corpus, tokens_per_language=50_000)

The loop: batches from `corpus.iter_batches` (each row token carries its language slot, -1 for
tokens that do not count) -> `handle.set_rows(row_lang)` -> one forward pass of the base model
(the LM head is skipped: the statistics live in the MLPs, and on a 262k-vocabulary model the head
costs more than all the layers together) -> the patch's per-layer counters. Memory stays flat:
the counters have a fixed size [K, L, I] and batches are produced lazily.

Resume: with `checkpoint=path` the partial statistics are saved every `checkpoint_every` batches
together with the index of the next batch. The batch sequence is deterministic for the same
corpus, tokenizer and options, so a restarted scan regenerates it, skips the batches already
counted (checking that their token counts add up to the checkpoint's) and continues: an
interrupted scan plus its resume equals a one-shot scan exactly.

Distributed: when torch.distributed is initialised, rank r takes batches r, r + W, r + 2W, ...
and the counts are all-reduced at the end (gloo on CPU, NCCL on GPUs); checkpoints are per rank.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path
from typing import Iterable, Optional, Sequence, Union

import torch
from torch import nn

from .stats import ActivationStats, StatsError

DEFAULT_TOKENS_PER_LANGUAGE = 100_000
DEFAULT_CHECKPOINT_EVERY = 100   # batches


class ScanError(ValueError):
    """Scan options or a checkpoint that cannot be used; the message says what to do."""


# ---- small helpers ----------------------------------------------------------------------------
def _world() -> tuple:
    """(rank, world_size) of the initialised process group, else (0, 1)."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _all_reduce(tensors: Iterable[Optional[torch.Tensor]]) -> None:
    """Sum tensors over all ranks in place (NCCL needs them on the GPU for the call)."""
    import torch.distributed as dist
    on_gpu = dist.get_backend() == "nccl"
    for t in tensors:
        if t is None:
            continue
        buf = t.cuda() if on_gpu else t
        dist.all_reduce(buf, op=dist.ReduceOp.SUM)
        if buf is not t:
            t.copy_(buf.cpu())


def _forward_callable(model: nn.Module):
    """The base model (decoder stack without the LM head) when the model has one."""
    base = getattr(model, "base_model", None)
    if isinstance(base, nn.Module) and base is not model:
        return base
    return model


def _input_device(model: nn.Module) -> torch.device:
    embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embeddings is not None and getattr(embeddings, "weight", None) is not None:
        return embeddings.weight.device
    return next(model.parameters()).device


def _checkpoint_path(checkpoint: Union[str, os.PathLike], rank: int, world: int) -> Path:
    path = Path(checkpoint)
    return path if world == 1 else path.with_name(f"{path.name}.rank{rank}-of-{world}")


def _signature(**options) -> str:
    """What must be equal for a checkpoint to be resumable: same batches, same counters."""
    return json.dumps(options, sort_keys=True)


# ---- the scan ---------------------------------------------------------------------------------
def scan(model: nn.Module, tokenizer, corpus, *, languages: Optional[Sequence[str]] = None,
         tokens_per_language: int = DEFAULT_TOKENS_PER_LANGUAGE, max_length: int = 512,
         batch_size: int = 8, packing: bool = True, track_sums: bool = False,
         track_sumsq: bool = False, impl: Optional[str] = None, progress: bool = True,
         checkpoint: Optional[Union[str, os.PathLike]] = None,
         checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
         model_name: Optional[str] = None) -> ActivationStats:
    """Count, per language, layer and neuron, the tokens with act(gate) > 0.

    model / tokenizer: a Hugging Face causal LM of a supported architecture and its tokenizer.
        The model is patched for the scan (and unpatched afterwards, also on error) unless it
        already is; then its handle is used (its current recording is replaced).
    corpus: a `langneuron_ext.corpus.TextSource` (PlainTextFiles, JsonlSource, DebianHandbook).
    languages: the languages to scan, in the order of the result; default corpus.languages.
    tokens_per_language: counted tokens per language (the budget); fewer when the text runs out
        (a warning says which languages fell short).
    max_length / batch_size / packing: passed to `corpus.iter_batches`.
    track_sums / track_sumsq: also sum act(gate) and act(gate)^2 (needed for steering by mean
        activation).
    impl: the op implementation when this call patches the model (None = best available).
    progress: a tqdm bar with tokens/s.
    checkpoint: a file for partial statistics; if it exists the scan resumes from it (it must
        come from a scan with the same model, corpus and options). checkpoint_every: batches
        between saves.
    model_name: stored in the statistics; default the model's alias, folder or hub id.
    Returns ActivationStats (counts int64 [K, L, I], n_tokens int64 [K], optional sums).
    """
    from .models.loading import model_name as loaded_model_name
    from .models.patch import get_handle, patch

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
    rank, world = _world()
    name = model_name if model_name is not None else loaded_model_name(model)
    corpus_description = getattr(corpus, "description", "") or type(corpus).__name__
    signature = _signature(model=name, corpus=corpus_description, languages=languages,
                           tokens_per_language=tokens_per_language, max_length=max_length,
                           batch_size=batch_size, packing=packing, track_sums=bool(track_sums),
                           track_sumsq=bool(track_sumsq), world_size=world)

    handle = get_handle(model)
    patched_here = handle is None
    if patched_here:
        handle = patch(model, impl=impl)
    was_training = model.training
    try:
        stats = _scan_patched(model, tokenizer, corpus, handle, languages, signature, rank,
                              world, checkpoint, checkpoint_every, tokens_per_language,
                              max_length, batch_size, packing, track_sums, track_sumsq,
                              progress, name, corpus_description)
    finally:
        if handle.recording:
            handle.stop_recording()
        if was_training:
            model.train()
        if patched_here:
            handle.unpatch()
    if world > 1:
        _all_reduce([stats.counts, stats.n_tokens, stats.sums, stats.sumsq])
    _warn_short(stats, tokens_per_language)
    return stats


def _scan_patched(model, tokenizer, corpus, handle, languages, signature, rank, world,
                  checkpoint, checkpoint_every, tokens_per_language, max_length, batch_size,
                  packing, track_sums, track_sumsq, progress, name, corpus_description):
    """The loop on a patched model (the caller restores the model whatever happens)."""
    from .corpus.batching import iter_batches

    K = len(languages)
    ckpt = _checkpoint_path(checkpoint, rank, world) if checkpoint is not None else None
    meta = dict(model_name=name, model_type=handle.model_type, corpus=corpus_description,
                extra={"tokens_per_language_budget": str(tokens_per_language),
                       "max_length": str(max_length), "batch_size": str(batch_size),
                       "packing": str(bool(packing)).lower(), "world_size": str(world),
                       "impl": ",".join(sorted(set(getattr(handle, "impls", []) or ["?"])))})
    base, start_batch, digest = (_load_checkpoint(ckpt, signature, languages, handle) if ckpt
                                 else (None, 0, ""))

    forward = _forward_callable(model)
    device = _input_device(model)
    n_tokens = torch.zeros(K, dtype=torch.int64)      # counted in this run (after the resume)
    skipped = torch.zeros(K, dtype=torch.int64)       # this rank's tokens in skipped batches
    fingerprint = hashlib.blake2b(digest_size=16)      # of this rank's batches so far
    bar = None
    try:
        model.eval()
        handle.start_recording(K, track_sums=track_sums, track_sumsq=track_sumsq)
        bar = _progress_bar(progress and rank == 0, K * tokens_per_language,
                            0 if base is None else int(base.n_tokens.sum()) * world)
        batches = iter_batches(corpus, tokenizer, languages,
                               tokens_per_language=tokens_per_language, max_length=max_length,
                               batch_size=batch_size, packing=packing)
        done_since_save = 0
        next_batch = start_batch
        checked = base is None          # the skipped batches are checked before counting more
        for index, batch in enumerate(batches):
            if index % world != rank:
                continue
            batch_tokens = batch.tokens_per_language.to("cpu", torch.int64)
            if index < start_batch:                   # counted before the interruption
                skipped += batch_tokens
                _fingerprint(fingerprint, batch)
                continue
            if not checked:
                _check_skipped(skipped, fingerprint.hexdigest(), base, digest, ckpt)
                checked = True
            _fingerprint(fingerprint, batch)
            handle.set_rows(batch.row_lang)
            with torch.inference_mode():
                forward(input_ids=batch.input_ids.to(device),
                        attention_mask=batch.attention_mask.to(device), use_cache=False)
            n_tokens += batch_tokens
            next_batch = index + 1
            done_since_save += 1
            if bar is not None:
                bar.update(int(batch_tokens.sum()) * world)
            if ckpt is not None and done_since_save >= checkpoint_every:
                _save_checkpoint(ckpt, _result(handle, n_tokens, base, languages, meta),
                                 next_batch, signature, fingerprint.hexdigest(), complete=False)
                done_since_save = 0
        if not checked:                               # nothing new: every batch was skipped
            _check_skipped(skipped, fingerprint.hexdigest(), base, digest, ckpt)
        handle.stop_recording()
        stats = _result(handle, n_tokens, base, languages, meta)
        if ckpt is not None:
            _save_checkpoint(ckpt, stats, max(next_batch, start_batch), signature,
                             fingerprint.hexdigest(), complete=True)
    finally:
        if bar is not None:
            bar.close()
    return stats


def _progress_bar(enabled: bool, total: int, initial: int):
    if not enabled:
        return None
    from tqdm.auto import tqdm
    return tqdm(total=total, initial=min(initial, total), unit="tok", unit_scale=True,
                desc="scan", dynamic_ncols=True, smoothing=0.1)


def _result(handle, n_tokens: torch.Tensor, base: Optional[ActivationStats],
            languages: list, meta: dict) -> ActivationStats:
    """This run's counters plus the resumed checkpoint's (statistics are sums)."""
    got = handle.collect()
    stats = ActivationStats(got["counts"], n_tokens.clone(), list(languages), got.get("sums"),
                            got.get("sumsq"), **{**meta, "extra": dict(meta["extra"])})
    if base is not None:
        stats.counts += base.counts
        stats.n_tokens += base.n_tokens
        if stats.sums is not None:
            stats.sums += base.sums
        if stats.sumsq is not None:
            stats.sumsq += base.sumsq
    return stats


# ---- checkpoints ------------------------------------------------------------------------------
_NEXT = "scan_next_batch"
_SIGNATURE = "scan_signature"
_DIGEST = "scan_batches_digest"
_COMPLETE = "scan_complete"
_KEYS = (_NEXT, _SIGNATURE, _DIGEST, _COMPLETE)


def _fingerprint(hasher, batch) -> None:
    """Fold one batch's token ids and language slots into the running fingerprint."""
    for t in (batch.input_ids, batch.row_lang):
        hasher.update(t.detach().to("cpu", torch.int64).contiguous().numpy().tobytes())


def _save_checkpoint(path: Path, stats: ActivationStats, next_batch: int, signature: str,
                     digest: str, complete: bool) -> None:
    stats.extra.update({_NEXT: str(next_batch), _SIGNATURE: signature, _DIGEST: digest,
                        _COMPLETE: "true" if complete else "false"})
    stats.save(path)          # atomic: temporary file, then rename
    for key in _KEYS:
        stats.extra.pop(key)


def _load_checkpoint(path: Path, signature: str, languages: list, handle):
    """(stats so far, index of the next batch), or (None, 0) when there is no checkpoint."""
    if not path.exists():
        return None, 0, ""
    try:
        stats = ActivationStats.load(path)
    except StatsError as exc:
        raise ScanError(f"checkpoint {path} cannot be read ({exc}); delete it to start the "
                        f"scan afresh") from exc
    if _NEXT not in stats.extra or _SIGNATURE not in stats.extra:
        raise ScanError(f"{path} is a stats file, not a scan checkpoint; choose another "
                        f"checkpoint path")
    if stats.extra[_SIGNATURE] != signature:
        old, new = json.loads(stats.extra[_SIGNATURE]), json.loads(signature)
        differ = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        raise ScanError(f"checkpoint {path} belongs to a scan with other options "
                        f"({', '.join(differ)} differ); rerun with the same options to resume, "
                        f"or delete the checkpoint to start afresh")
    if (stats.languages != languages or stats.num_layers != handle.num_layers
            or stats.intermediate_size != handle.intermediate_size):
        raise ScanError(f"checkpoint {path} has other languages or shapes than this model "
                        f"and scan; delete it to start afresh")
    next_batch = int(stats.extra.pop(_NEXT))
    digest = stats.extra.pop(_DIGEST, "")
    for key in (_SIGNATURE, _COMPLETE):
        stats.extra.pop(key, None)
    return stats, next_batch, digest


def _check_skipped(skipped: torch.Tensor, digest_now: str, base: ActivationStats,
                   digest_then: str, path: Path) -> None:
    """The skipped batches must be exactly the checkpoint's (same corpus, same tokenizer):
    same tokens per language and the same fingerprint of token ids; otherwise resuming would
    double count or lose text."""
    if not torch.equal(skipped, base.n_tokens) or digest_now != digest_then:
        raise ScanError(f"checkpoint {path} does not match the batches this corpus and "
                        f"tokenizer produce now (tokens per language then "
                        f"{base.n_tokens.tolist()}, now {skipped.tolist()}): the text or the "
                        f"tokenizer changed since; delete the checkpoint to start afresh")


def _warn_short(stats: ActivationStats, budget: int) -> None:
    short = [f"{lang} ({int(n):,})" for lang, n in zip(stats.languages, stats.n_tokens)
             if int(n) < budget]
    if short:
        warnings.warn(f"the corpus ran out of text before {budget:,} tokens for: "
                      f"{', '.join(short)}", stacklevel=3)


__all__ = ["scan", "ScanError", "DEFAULT_TOKENS_PER_LANGUAGE", "DEFAULT_CHECKPOINT_EVERY"]
