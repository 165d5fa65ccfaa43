"""Cross-lingual alignment measured directly on parallel text: per layer, how close a
paragraph's representation in language X is to its English version, against non-parallel
English paragraphs.

    parallel = ln.alignment.load_parallel("parallel.tsv")      # {lang: [paragraph, ...]}
    sim = ln.alignment.representation_similarity(model, tok, parallel, ["fr", "de"])
    sim["layers"]["fr"]["retrieval"]      # per layer, share of fr paragraphs whose nearest
                                          # English paragraph is their own translation

Definitions (per layer l, language X, N parallel rows; the pivot is English):
- a paragraph's representation: the mean over its tokens of the residual stream after decoder
  layer l (the output of layer l, before any final norm), in float64. A BOS token the model
  expects is put in front, as the scan does, but left out of the mean: it carries no text and
  its large activations would dominate every paragraph alike.
- `parallel`: mean over rows i of cos(x_i, e_i); `nonparallel`: mean over i != j of
  cos(x_i, e_j); `margin` = parallel - nonparallel. A shift shared by all representations
  moves both cosines, so the margin, unlike the raw cosine, is not fooled by it.
- `retrieval`: share of rows i whose own translation is strictly the most similar English
  paragraph (cos(x_i, e_i) > cos(x_i, e_j) for every j != i); chance is 1 / N.

The file format (`load_parallel` / `write_parallel`): UTF-8 TSV, a header row of language
codes (one of them the pivot, `en`), then one row per parallel paragraph, no tabs or newlines
inside a cell.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import Tensor, nn

PIVOT = "en"
METRICS = ("parallel", "nonparallel", "margin", "retrieval")

Parallel = Union[Mapping[str, Sequence[str]], str, os.PathLike]


class ParallelTextError(ValueError):
    """A parallel text that cannot be measured; the message says what to do."""


# ---- the parallel file ------------------------------------------------------------------------
def _clean(text: str) -> str:
    return " ".join(str(text).split())


def write_parallel(path, parallel: Mapping[str, Sequence[str]]) -> Path:
    """Write {lang: [paragraph]} (equal lengths) as a TSV; whitespace runs in a paragraph,
    tabs and newlines included, become one space."""
    parallel = check_parallel(parallel)
    path = Path(path)
    langs = list(parallel)
    lines = ["\t".join(langs)] + ["\t".join(_clean(t) for t in row)
                                   for row in zip(*(parallel[lg] for lg in langs))]
    from .stats import write_atomic
    write_atomic(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return path


def load_parallel(path) -> Dict[str, List[str]]:
    """{lang: [paragraph]} from a parallel TSV (see the module docstring); ParallelTextError
    for a missing file, a header without the pivot, repeated languages, ragged or empty rows."""
    path = Path(path)
    if not path.is_file():
        raise ParallelTextError(f"parallel file {path} does not exist; give a TSV with a header "
                                f"row of language codes and one parallel paragraph per row")
    with open(path, encoding="utf-8", newline="") as f:
        rows = [line.rstrip("\n").split("\t") for line in f if line.strip()]
    if not rows:
        raise ParallelTextError(f"parallel file {path} is empty; give a header row of language "
                                f"codes and one parallel paragraph per row")
    header = [h.strip() for h in rows[0]]
    if len(set(header)) != len(header):
        raise ParallelTextError(f"{path} repeats a language in its header ({', '.join(header)}); "
                                f"give each once")
    for n, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise ParallelTextError(
                f"{path} line {n} has {len(row)} tab-separated cells, the header "
                f"{len(header)} ({', '.join(header)}); give every row one cell per language")
    return check_parallel({lg: [row[k] for row in rows[1:]] for k, lg in enumerate(header)},
                          where=str(path))


def check_parallel(parallel: Mapping[str, Sequence[str]], where: str = "the parallel text"
                   ) -> Dict[str, List[str]]:
    """The parallel text as {lang: [paragraph]}, or ParallelTextError."""
    langs = [str(lg) for lg in parallel]
    if any(not lg or lg != lg.strip() for lg in langs):
        raise ParallelTextError(f"{where} has an empty or padded language code in {langs}")
    if len(set(langs)) != len(langs):
        raise ParallelTextError(f"{where} repeats a language: {langs}; give each once")
    if PIVOT not in langs:
        raise ParallelTextError(f"{where} has no '{PIVOT}' column ({', '.join(langs)}); the "
                                f"measure compares every language with its English version")
    if len(langs) < 2:
        raise ParallelTextError(f"{where} has only the '{PIVOT}' column; add the languages to "
                                f"compare with it")
    out = {lg: [str(t) for t in parallel[lg]] for lg in langs}
    sizes = {len(v) for v in out.values()}
    if len(sizes) != 1:
        raise ParallelTextError(f"{where}: the languages have different numbers of paragraphs "
                                f"({ {lg: len(v) for lg, v in out.items()} }); they must be "
                                f"parallel")
    n = sizes.pop()
    if n < 2:
        raise ParallelTextError(f"{where} has {n} parallel paragraph(s); retrieval needs at "
                                f"least 2 (non-parallel pairs to compare against)")
    for lg, texts in out.items():
        empty = [i for i, t in enumerate(texts) if not t.strip()]
        if empty:
            raise ParallelTextError(f"{where}: paragraph {empty[0] + 1} of '{lg}' is empty; "
                                    f"every row needs text in every language")
    return out


def _as_parallel(parallel: Parallel) -> Dict[str, List[str]]:
    if isinstance(parallel, (str, os.PathLike)):
        return load_parallel(parallel)
    return check_parallel(parallel)


# ---- the representations ----------------------------------------------------------------------
def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The model's decoder layers (the ones the scans count neurons in)."""
    from .models.adapters import _decoder_layers, layout_for

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    return _decoder_layers(model, layout_for(model_type))[1]


def _token_rows(tok, texts: Sequence[str], max_length: int):
    """(ids, first) per text: BOS (when the tokenizer has one) + at most max_length text tokens;
    `first` is the index of the first text token."""
    from .corpus import bos_token_id

    bos = bos_token_id(tok)
    rows = []
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"][:max_length]
        if not ids:
            raise ParallelTextError(f"paragraph {text!r} has no tokens")
        rows.append(([bos] + ids, 1) if bos is not None else (ids, 0))
    return rows


@torch.no_grad()
def pooled_hidden_states(model: nn.Module, tok, texts: Sequence[str], *, batch_size: int = 8,
                         max_length: int = 256, padding_side: str = "right") -> Tensor:
    """float64 [L, N, H]: per decoder layer, each text's mean hidden state over its tokens
    (BOS excluded), from batched forwards with padding on `padding_side` (masked out and
    given no positions, so neither batch size nor padding side changes the result beyond
    float rounding)."""
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    layers = decoder_layers(model)
    rows = _token_rows(tok, texts, max_length)
    pad = tok.pad_token_id if getattr(tok, "pad_token_id", None) is not None else 0
    device = next(model.parameters()).device
    captured: List[Optional[Tensor]] = [None] * len(layers)

    def hook(index):
        def keep(module, inputs, output):
            captured[index] = output[0] if isinstance(output, (tuple, list)) else output
        return keep

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    out: Optional[Tensor] = None
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]))   # less padding
    was_training = model.training
    model.eval()
    try:
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            width = max(len(rows[i][0]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            pool = torch.zeros((len(chunk), width), dtype=torch.float64)
            for r, i in enumerate(chunk):
                seq, first = rows[i]
                lo = width - len(seq) if padding_side == "left" else 0
                ids[r, lo:lo + len(seq)] = torch.tensor(seq)
                mask[r, lo:lo + len(seq)] = 1
                pool[r, lo + first:lo + len(seq)] = 1.0 / (len(seq) - first)
            positions = (mask.cumsum(dim=1) - 1).clamp(min=0)
            model(input_ids=ids.to(device), attention_mask=mask.to(device),
                  position_ids=positions.to(device), use_cache=False)
            for k, h in enumerate(captured):
                if h is None:
                    raise RuntimeError(f"decoder layer {k} produced no output in the forward")
                # padded positions may hold anything (NaN from a fully masked row): zero them
                h = h.double().masked_fill(pool.to(h.device)[..., None] == 0, 0.0)
                mean = torch.einsum("bt,bth->bh", pool.to(h.device), h).cpu()
                if out is None:
                    out = torch.empty((len(layers), len(rows), h.shape[-1]),
                                      dtype=torch.float64)
                out[k, chunk] = mean
            captured[:] = [None] * len(layers)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    assert out is not None
    return out


def similarity_scores(x: Tensor, e: Tensor) -> Dict[str, float]:
    """The four metrics (module docstring) of representations x [N, H] against their parallel
    English representations e [N, H] (row i of both is one parallel pair)."""
    if x.shape != e.shape or x.dim() != 2 or x.shape[0] < 2:
        raise ValueError(f"x and e must both be [N >= 2, H], got {tuple(x.shape)} and "
                         f"{tuple(e.shape)}")
    x, e = x.double(), e.double()
    sim = (x / x.norm(dim=1, keepdim=True)) @ (e / e.norm(dim=1, keepdim=True)).T   # [N, N]
    n = sim.shape[0]
    diag = sim.diagonal()
    off = ~torch.eye(n, dtype=torch.bool)
    parallel = float(diag.mean())
    nonparallel = float(sim[off].mean())
    best_other = sim.masked_fill(~off, -math.inf).max(dim=1).values
    return {"parallel": parallel, "nonparallel": nonparallel,
            "margin": parallel - nonparallel,
            "retrieval": int((diag > best_other).sum()) / n}


def representation_similarity(model: nn.Module, tok, parallel: Parallel,
                              languages: Optional[Sequence[str]] = None, *,
                              batch_size: int = 8, max_length: int = 256,
                              padding_side: str = "right", model_name: str = "") -> dict:
    """Per layer and language, the similarity of parallel paragraphs to their English versions
    against non-parallel ones (module docstring).

    parallel: {lang: [paragraph]} (parallel lists, with an 'en' column) or a TSV path.
    languages: the languages to compare with English (default: every column but 'en').
    Returns a JSON-ready dict: languages, pivot, paragraphs, num_layers, model, max_length
    and `layers` = {lang: {metric: [one float per layer]}}; ParallelTextError for a
    language the text lacks.
    """
    texts = _as_parallel(parallel)
    langs = [lg for lg in texts if lg != PIVOT] if languages is None else \
        [str(lg) for lg in languages if str(lg) != PIVOT]
    missing = [lg for lg in langs if lg not in texts]
    if missing:
        raise ParallelTextError(f"the parallel text has no {missing} column(s) (it has "
                                f"{', '.join(texts)}); give a file with those languages")
    if not langs:
        raise ParallelTextError("no language to compare with English; name at least one")
    kw = dict(batch_size=batch_size, max_length=max_length, padding_side=padding_side)
    english = pooled_hidden_states(model, tok, texts[PIVOT], **kw)
    layers: Dict[str, Dict[str, List[float]]] = {}
    for lang in langs:
        reps = pooled_hidden_states(model, tok, texts[lang], **kw)
        per_layer = [similarity_scores(reps[k], english[k]) for k in range(reps.shape[0])]
        layers[lang] = {m: [row[m] for row in per_layer] for m in METRICS}
    name = model_name or str(getattr(getattr(model, "config", None), "_name_or_path", "") or "")
    return {"languages": langs, "pivot": PIVOT, "paragraphs": len(texts[PIVOT]),
            "num_layers": int(english.shape[0]), "model": name, "max_length": max_length,
            "layers": layers}


def group_means(result: Mapping, trained: Sequence[str],
                layers: Optional[Sequence[int]] = None) -> Dict[str, Dict[str, float]]:
    """{group: {metric: mean over the group's languages and the given layers (default all)}}
    for the trained and untrained languages of a `representation_similarity` result."""
    num = result["num_layers"]
    picked = list(range(num)) if layers is None else list(layers)
    out = {}
    for group in ("trained", "untrained"):
        langs = [lg for lg in result["languages"] if (lg in trained) == (group == "trained")]
        if not langs:
            continue
        out[group] = {m: sum(result["layers"][lg][m][k] for lg in langs for k in picked)
                      / (len(langs) * len(picked)) for m in METRICS}
    return out
