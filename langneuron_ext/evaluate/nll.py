"""The NLL-change matrix: how much deactivating each language's neurons hurts each language.

Rows are variants of the model: the unsteered baseline, each language's neurons deactivated, and
random neuron sets with the same per-layer counts as each language's (the control). Columns are
the evaluated languages. Each cell is the mean next-token NLL on that language's held-out text,
reported as the change against the baseline.

Two ways to run the variants, same numbers:
- per variant: install one variant's steering, run all text, repeat for the next variant;
- batched: replicate each batch once per variant and give the copies steering groups 0..G-1
  (the fused op's `row_group`), so all variants run in the same forward passes.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from ..steer import (Intervention, SteeringError, ensure_patched, install_tables,
                     installed_tables, interventions, random_mask_like, steering_groups)
from .texts import iter_texts, predicted_tokens, token_windows

# Logits dominate memory ([rows, T, vocab] fp32): rows per forward pass are sized to this budget.
LOGITS_BUDGET_BYTES = 1 << 30


@dataclass
class VariantRow:
    """One row of the matrix: a name, what kind of variant it is and its interventions."""
    name: str
    kind: str                     # "baseline" | "language" | "random"
    language: Optional[str]       # whose neurons (or whose neuron counts, for random sets)
    size: int                     # neurons changed
    edits: List[Intervention] = field(default_factory=list, repr=False)


def build_variants(neurons, row_languages: Sequence[str], random_sets: int = 1, seed: int = 0,
                   layers: Optional[Iterable[int]] = None) -> List[VariantRow]:
    """Baseline, each language deactivated, then `random_sets` random sets per language with the
    same per-layer counts (drawn from a generator seeded with `seed`)."""
    if random_sets < 0:
        raise SteeringError(f"random_sets must be >= 0, got {random_sets}")
    layers = None if layers is None else list(layers)
    rows = [VariantRow("baseline", "baseline", None, 0)]
    for lang in row_languages:
        edits = interventions(neurons, [lang], mode="deactivate", layers=layers)
        rows.append(VariantRow(f"-{lang}", "language", lang, edits[0].size, edits))
    gen = torch.Generator().manual_seed(seed)
    for r in range(random_sets):
        for lang in row_languages:
            own = rows[1 + list(row_languages).index(lang)].edits[0].mask
            mask = random_mask_like(own, gen)
            edits = interventions(neurons, [lang], mode="deactivate", layers=layers,
                                  masks={lang: mask})
            rows.append(VariantRow(f"random({lang})#{r}", "random", lang, edits[0].size, edits))
    return rows


@dataclass
class NllMatrix:
    """Mean NLL per variant (rows) and evaluated language (columns), with what produced it."""
    rows: List[str]
    kinds: List[str]
    row_languages: List[Optional[str]]
    sizes: List[int]
    columns: List[str]
    nll: Tensor                           # float64 [R, C]
    tokens: List[int]                     # predicted tokens per column
    meta: Dict[str, object] = field(default_factory=dict)

    def perplexity(self) -> Tensor:
        return self.nll.exp()

    def delta(self) -> Tensor:
        """NLL change against the baseline row, [R, C] (positive = the variant hurts)."""
        return self.nll - self.nll[self.rows.index("baseline")]

    def specificity(self) -> Dict[str, Dict[str, float]]:
        """Per language with a row and a column: the rise of its own NLL when its neurons are
        deactivated, the mean rise of the other languages, and the mean rise of its own NLL
        under the random sets of the same size."""
        d = self.delta()
        out = {}
        for lang in self.columns:
            if f"-{lang}" not in self.rows:
                continue
            r, c = self.rows.index(f"-{lang}"), self.columns.index(lang)
            others = [d[r, j].item() for j in range(len(self.columns)) if j != c]
            rand = [d[i, c].item() for i, (k, l) in enumerate(zip(self.kinds, self.row_languages))
                    if k == "random" and l == lang]
            out[lang] = {"own": d[r, c].item(),
                         "others_mean": sum(others) / len(others) if others else float("nan"),
                         "random_own": sum(rand) / len(rand) if rand else float("nan"),
                         "neurons": self.sizes[r]}
        return out

    def to_markdown(self, digits: int = 3) -> str:
        """Delta-NLL table (rows: variants, columns: languages) plus the baseline NLL / PPL."""
        d = self.delta()
        head = "| variant | neurons | " + " | ".join(self.columns) + " |"
        lines = [head, "|" + "---|" * (len(self.columns) + 2)]
        for i, name in enumerate(self.rows):
            if self.kinds[i] == "baseline":
                cells = [f"{self.nll[i, j]:.{digits}f} (ppl {math.exp(self.nll[i, j]):.1f})"
                         for j in range(len(self.columns))]
                lines.append(f"| baseline NLL | 0 | " + " | ".join(cells) + " |")
                continue
            cells = []
            for j, col in enumerate(self.columns):
                cell = f"{d[i, j]:+.{digits}f}"
                if self.row_languages[i] == col and self.kinds[i] == "language":
                    cell = f"**{cell}**"
                cells.append(cell)
            lines.append(f"| {name} | {self.sizes[i]} | " + " | ".join(cells) + " |")
        lines.append("")
        lines.append(f"Change in mean next-token NLL (nats) against the baseline; "
                     f"{', '.join(f'{c}: {n}' for c, n in zip(self.columns, self.tokens))} "
                     f"tokens per language.")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"rows": self.rows, "kinds": self.kinds, "row_languages": self.row_languages,
                "sizes": self.sizes, "columns": self.columns, "nll": self.nll.tolist(),
                "perplexity": self.perplexity().tolist(), "delta": self.delta().tolist(),
                "tokens": self.tokens, "specificity": self.specificity(), "meta": self.meta}

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict) -> "NllMatrix":
        return cls(data["rows"], data["kinds"], data["row_languages"], data["sizes"],
                   data["columns"], torch.tensor(data["nll"], dtype=torch.float64),
                   data["tokens"], data.get("meta", {}))


def _model_device(model) -> torch.device:
    return next(model.parameters()).device


def _vocab_size(model) -> int:
    emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if emb is not None and hasattr(emb, "weight"):
        return emb.weight.shape[0]
    return int(getattr(model.config, "vocab_size", 32000))


def _pad(windows: Sequence[Sequence[int]], pad_id: int):
    T = max(len(w) for w in windows)
    ids = torch.full((len(windows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(windows), T), dtype=torch.long)
    for i, w in enumerate(windows):
        ids[i, :len(w)] = torch.tensor(w, dtype=torch.long)
        mask[i, :len(w)] = 1
    return ids, mask


def row_nll_sums(model, ids: Tensor, mask: Tensor) -> Tensor:
    """Summed next-token NLL of each row, float64 [R] (padding excluded)."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    out = torch.empty(ids.shape[0], dtype=torch.float64)
    for r in range(ids.shape[0]):  # one row at a time keeps the fp32 log-softmax copy small
        nll = torch.nn.functional.cross_entropy(logits[r, :-1].float(), ids[r, 1:],
                                                reduction="none")
        out[r] = (nll * mask[r, 1:]).double().sum()
    return out


def nll_matrix(model, tokenizer, neurons, texts_or_source, languages: Optional[Sequence[str]] = None,
               *, deactivate: Optional[Sequence[str]] = None, random_sets: int = 1, seed: int = 0,
               max_tokens_per_language: int = 4096, max_length: int = 128,
               batched: bool = True, layers: Optional[Iterable[int]] = None,
               logits_budget_bytes: int = LOGITS_BUDGET_BYTES, impl: Optional[str] = None,
               progress: bool = True) -> NllMatrix:
    """Mean NLL of `languages` (columns) on held-out text under each variant (rows): baseline,
    each of `deactivate`'s neurons set to 0 (default: every language of `neurons`), and
    `random_sets` random sets per language of the same per-layer sizes (seeded by `seed`).

    texts_or_source: {lang: [texts]} or a corpus source (`documents(lang)`), e.g.
    `corpus.DebianHandbook(langs, split="heldout")`. Every column is scored on the same
    `max_tokens_per_language` predicted tokens (windows of `max_length`).
    batched: run all variants in the same forward passes through per-row steering groups
    (default) instead of one pass over the text per variant. Both give the same numbers; the
    batched passes are larger: on this 2-core CPU batched took 0.38x the time of one pass per
    variant for a small random llama and 0.77x for Gemma 3 270M, whose 262k-token vocabulary
    caps the rows per pass (benchmarks/bench_nll_batched.py, results/nll_batched.csv).
    """
    languages = list(languages if languages is not None else neurons.languages)
    deactivate = list(deactivate if deactivate is not None else
                      [l for l in neurons.languages])
    if not languages:
        raise SteeringError("no languages to evaluate; pass languages=[...]")
    variants = build_variants(neurons, deactivate, random_sets=random_sets, seed=seed,
                              layers=layers)
    windows, owner, tokens = [], [], []
    for c, lang in enumerate(languages):
        w = token_windows(tokenizer, iter_texts(texts_or_source, lang),
                          max_tokens_per_language, max_length, lang)
        windows += w
        owner += [c] * len(w)
        tokens.append(predicted_tokens(w))
    owner_t = torch.tensor(owner)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    T = max(len(w) for w in windows)
    rows_per_pass = max(1, logits_budget_bytes // (T * _vocab_size(model) * 4))
    G = len(variants)
    group_chunk = min(G, rows_per_pass) if batched else 1
    windows_per_pass = max(1, rows_per_pass // group_chunk)

    handle, patched_here = ensure_patched(model, impl)
    previous = installed_tables(handle)
    device = _model_device(model)
    sums = torch.zeros(G, len(languages), dtype=torch.float64)
    was_training = model.training
    model.eval()
    n_passes = math.ceil(G / group_chunk) * math.ceil(len(windows) / windows_per_pass)
    bar = tqdm(total=n_passes, desc="nll matrix", unit="pass", disable=not progress)
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            for g0 in range(0, G, group_chunk):
                chunk = variants[g0:g0 + group_chunk]
                if len(chunk) == 1 and not chunk[0].edits:
                    install_tables(handle, [None] * handle.num_layers)
                else:
                    install_tables(handle, steering_groups([v.edits for v in chunk],
                                                           handle.num_layers,
                                                           handle.intermediate_size))
                for w0 in range(0, len(windows), windows_per_pass):
                    ids, mask = _pad(windows[w0:w0 + windows_per_pass], pad_id)
                    B = ids.shape[0]
                    if len(chunk) > 1:
                        group = torch.arange(len(chunk), dtype=torch.int32).repeat_interleave(B)
                        handle.set_rows(None, group[:, None].expand(-1, ids.shape[1])
                                        .contiguous().to(device))
                        ids, mask = ids.repeat(len(chunk), 1), mask.repeat(len(chunk), 1)
                    else:
                        handle.set_rows(None, None)
                    per_row = row_nll_sums(model, ids.to(device), mask.to(device)).view(-1, B)
                    cols = owner_t[w0:w0 + B]
                    for g in range(per_row.shape[0]):
                        sums[g0 + g].index_add_(0, cols, per_row[g])
                    bar.update(1)
    finally:
        bar.close()
        handle.set_rows(None, None)
        install_tables(handle, previous)
        if patched_here:
            handle.unpatch()
        model.train(was_training)
    seconds = time.perf_counter() - start
    nll = sums / torch.tensor(tokens, dtype=torch.float64)
    meta = {"batched": batched, "seconds": round(seconds, 3), "seed": seed,
            "random_sets": random_sets, "max_tokens_per_language": max_tokens_per_language,
            "max_length": max_length, "neuron_method": getattr(neurons, "method", ""),
            "model": getattr(getattr(model, "config", None), "name_or_path", "") or "",
            "layers": None if layers is None else list(layers)}
    return NllMatrix([v.name for v in variants], [v.kind for v in variants],
                     [v.language for v in variants], [v.size for v in variants], languages,
                     nll, tokens, meta)
