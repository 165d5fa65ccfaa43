"""The NLL-change matrix: how much deactivating each language's neurons hurts each language.

Rows are variants of the model: the unsteered baseline, each language's neurons deactivated, and
random neuron sets with the same per-layer counts as each language's (the control). Columns are
the evaluated languages. Each cell is the mean next-token NLL on that language's held-out text,
reported as the change against the baseline, with a 95% interval from a paired bootstrap over
the evaluated documents (`uncertainty.py`). A language's own rise counts as real only when its
interval lies above every random set's: on held-out text random 124-neuron sets have raised
NLL by 0.1-0.5 nats on Gemma 3 270M, as much as some languages' own neurons.

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

from ..models.patch import layer_sizes as model_layer_sizes
from ..models.patch import patched
from ..steer import (
    Intervention,
    SteeringError,
    install_tables,
    installed_tables,
    interventions,
    random_mask_like,
    steering_groups,
)
from .controls import random_control_mask
from .lm_head import ChunkedHead
from .texts import iter_texts, predicted_tokens, token_windows_with_documents
from .uncertainty import BOOTSTRAP_SAMPLES, LEVEL, bootstrap_nll, interval_text, json_safe

# Below this many documents per language the bootstrap has few distinct resamples (3 documents:
# 10) and its intervals are rough; the table says so.
FEW_DOCUMENTS = 10
# Random sets per language by default (`nll_matrix`, `langneuron evaluate`): the own effect's
# empirical p-value among 20 sets can go down to 1/21.
RANDOM_SETS = 20
# Rows per forward pass are sized to this budget: with the full LM head the logits dominate
# ([rows, T, vocab] fp32); with the chunked head (`lm_head.py`) the decoder's activations.
LOGITS_BUDGET_BYTES = 1 << 30
# Tokens of the first window on which the chunked head is checked against the model's logits.
HEAD_CHECK_TOKENS = 8


@dataclass
class VariantRow:
    """One row of the matrix: a name, what kind of variant it is and its interventions."""
    name: str
    kind: str                     # "baseline" | "language" | "random" | "phase"
    language: Optional[str]       # whose neurons (or whose neuron counts, for random sets)
    size: int                     # neurons changed
    edits: List[Intervention] = field(default_factory=list, repr=False)
    phase: Optional[str] = None   # kind "phase": the phase whose layers are steered
    # kinds "experts" / "random_experts" (MoE): bool [L, E], the experts blocked (expert_variants)
    experts: Optional[Tensor] = field(default=None, repr=False)

    @property
    def layer_sizes(self) -> List[int]:
        """Neurons changed per layer (what the random sets must match, layer by layer)."""
        if not self.edits:
            return []
        return self.edits[0].mask.sum(dim=1).tolist()


def _phase_layers(phase: dict, layers: Optional[List[int]]) -> List[int]:
    inside = range(int(phase["start"]), int(phase["stop"]))
    return [l for l in inside if layers is None or l in layers]


def build_variants(neurons, row_languages: Sequence[str], random_sets: int = 1, seed: int = 0,
                   layers: Optional[Iterable[int]] = None,
                   phases: Optional[Sequence[dict]] = None,
                   phase_languages: Optional[Sequence[str]] = None,
                   layer_sizes: Optional[Sequence[int]] = None, random_match: str = "none",
                   frequency: Optional[Tensor] = None) -> List[VariantRow]:
    """Baseline, each language deactivated, then `random_sets` random sets per language with the
    same per-layer counts (drawn from a generator seeded with `seed`, among each layer's
    `layer_sizes[l]` neurons when given: MoE models); with `phases` (dicts with
    name, start, stop) also each of `phase_languages` (default `row_languages`) deactivated in
    one phase's layers only. random_match="frequency" draws each random neuron from the same
    layer and P(act > 0) bin as the neuron it replaces (`frequency` [L, I], e.g.
    `controls.pooled_frequency(stats)`; `evaluate.controls`)."""
    if random_sets < 0:
        raise SteeringError(f"random_sets must be >= 0, got {random_sets}")
    layers = None if layers is None else list(layers)
    rows = [VariantRow("baseline", "baseline", None, 0)]
    own = {}
    for lang in row_languages:
        edits = interventions(neurons, [lang], mode="deactivate", layers=layers)
        own[lang] = edits[0].mask
        rows.append(VariantRow(f"-{lang}", "language", lang, edits[0].size, edits))
    gen = torch.Generator().manual_seed(seed)
    for r in range(random_sets):
        for lang in row_languages:
            mask = random_mask_like(own[lang], gen, layer_sizes) if random_match == "none" \
                else random_control_mask(own[lang], gen, random_match, frequency, layer_sizes)
            edits = interventions(neurons, [lang], mode="deactivate", layers=layers,
                                  masks={lang: mask})
            rows.append(VariantRow(f"random({lang})#{r}", "random", lang, edits[0].size, edits))
    for lang in (phase_languages if phase_languages is not None else row_languages) \
            if phases else []:
        for phase in phases:
            edits = interventions(neurons, [lang], mode="deactivate",
                                  layers=_phase_layers(phase, layers))
            rows.append(VariantRow(f"-{lang}@{phase['name']}", "phase", lang, edits[0].size,
                                   edits, phase=phase["name"]))
    return rows


@dataclass
class NllMatrix:
    """Mean NLL per variant (rows) and evaluated language (columns), with 95% intervals from a
    bootstrap over the evaluation documents and what produced it."""
    rows: List[str]
    kinds: List[str]
    row_languages: List[Optional[str]]
    sizes: List[int]
    columns: List[str]
    nll: Tensor                           # float64 [R, C]
    tokens: List[int]                     # predicted tokens per column
    meta: Dict[str, object] = field(default_factory=dict)
    nll_ci: Optional[Tensor] = None       # float64 [R, C, 2]; NaN where no interval
    delta_ci: Optional[Tensor] = None     # float64 [R, C, 2], change against the baseline
    documents: Optional[List[int]] = None  # documents (bootstrap units) per column
    layer_sizes: Optional[List[List[int]]] = None  # neurons changed per layer, per row
    phases: Optional[List[Optional[str]]] = None   # per row: the phase of a "phase" row

    def perplexity(self) -> Tensor:
        return self.nll.exp()

    def delta(self) -> Tensor:
        """NLL change against the baseline row, [R, C] (positive = the variant hurts)."""
        return self.nll - self.nll[self.rows.index("baseline")]

    def _ci(self, which: Optional[Tensor], r: int, c: int) -> Optional[List[float]]:
        if which is None:
            return None
        lo, hi = which[r, c].tolist()
        return None if math.isnan(lo) else [lo, hi]

    def random_summary(self) -> Dict[str, Dict[str, object]]:
        """Per language with random sets: how many, and per column their mean change, standard
        deviation across sets (0 for one set) and the highest upper interval end."""
        d = self.delta()
        out = {}
        for lang in dict.fromkeys(l for k, l in zip(self.kinds, self.row_languages)
                                  if k == "random"):
            idx = [i for i, (k, l) in enumerate(zip(self.kinds, self.row_languages))
                   if k == "random" and l == lang]
            vals = d[idx]
            sd = vals.std(dim=0, unbiased=True) if len(idx) > 1 else torch.zeros(vals.shape[1])
            high = vals.max(dim=0).values
            if self.delta_ci is not None and not torch.isnan(self.delta_ci[idx]).all():
                high = torch.maximum(high, self.delta_ci[idx, :, 1].nan_to_num(-math.inf)
                                     .max(dim=0).values)
            out[lang] = {"sets": len(idx), "neurons": self.sizes[idx[0]],
                         "mean": vals.mean(dim=0).tolist(), "sd": sd.tolist(),
                         "high": high.tolist()}
        return out

    def specificity(self) -> Dict[str, Dict[str, object]]:
        """Per language with a row and a column: the rise of its own NLL when its neurons are
        deactivated (with its interval), the mean rise of the other languages, the rise of its
        own NLL under random sets of the same per-layer sizes (mean, sd, highest upper interval
        end), and `separated`: the own rise's lower interval end lies above every random set's
        upper interval end (None without random sets)."""
        d = self.delta()
        summary = self.random_summary()
        out = {}
        for lang in self.columns:
            if f"-{lang}" not in self.rows:
                continue
            r, c = self.rows.index(f"-{lang}"), self.columns.index(lang)
            others = [d[r, j].item() for j in range(len(self.columns)) if j != c]
            own_ci = self._ci(self.delta_ci, r, c)
            rand = summary.get(lang)
            entry = {"own": d[r, c].item(), "own_ci": own_ci,
                     "others_mean": sum(others) / len(others) if others else float("nan"),
                     "random_own": rand["mean"][c] if rand else float("nan"),
                     "random_own_sd": rand["sd"][c] if rand else float("nan"),
                     "random_own_high": rand["high"][c] if rand else float("nan"),
                     "random_sets": rand["sets"] if rand else 0,
                     "neurons": self.sizes[r]}
            low = own_ci[0] if own_ci else d[r, c].item()
            entry["separated"] = bool(low > rand["high"][c]) if rand else None
            # the own rise's empirical p-value and rank among the random sets' own-column rises
            sets = [d[i, c].item() for i, (k, l) in enumerate(zip(self.kinds, self.row_languages))
                    if k == "random" and l == lang]
            beaten = sum(v >= d[r, c].item() for v in sets)
            entry["random_p"] = (1 + beaten) / (1 + len(sets)) if sets else None
            entry["random_rank"] = 1 + beaten if sets else None
            out[lang] = entry
        return out

    def _cell(self, i: int, j: int, digits: int) -> str:
        """"+0.123 [+0.101, +0.150]": one number of decimals in the cell; "–" when unscored."""
        from ..report.cells import num
        value = float(self.delta()[i, j])
        if not math.isfinite(value):
            return num(None)
        return num(value, f"{{:+.{digits}f}}") + interval_text(self._ci(self.delta_ci, i, j),
                                                                 digits)

    def to_markdown(self, digits: int = 3) -> str:
        """Delta-NLL table with 95% intervals (rows: variants, columns: languages); random sets
        summarised per language as mean +- sd over the sets; own-language cells in bold, marked
        with a dagger when not separated from the random sets."""
        from ..report.cells import num
        spec = self.specificity()
        head = "| variant | neurons | " + " | ".join(self.columns) + " |"
        lines = [head, "|" + "---|" * (len(self.columns) + 2)]
        for i, name in enumerate(self.rows):
            kind = self.kinds[i]
            if kind == "baseline":
                cells = [num(float(self.nll[i, j]), f"{{:.{digits}f}}")
                         + interval_text(self._ci(self.nll_ci, i, j), digits, signed=False)
                         if math.isfinite(float(self.nll[i, j])) else num(None)
                         for j in range(len(self.columns))]
                lines.append("| baseline NLL | 0 | " + " | ".join(cells) + " |")
            elif kind in ("language", "phase", "experts", "random_experts"):
                cells = []
                for j, col in enumerate(self.columns):
                    cell = self._cell(i, j, digits)
                    if self.row_languages[i] == col and kind == "language":
                        cell = f"**{cell}**"
                        if spec.get(col, {}).get("separated") is False:
                            cell += " \u2020"
                    cells.append(cell)
                lines.append(f"| {name} | {self.sizes[i]} | " + " | ".join(cells) + " |")
        for lang, s in self.random_summary().items():
            cells = [f"{m:+.{digits}f} \u00b1 {num(sd, f'{{:.{digits}f}}')}"
                     if m is not None and math.isfinite(m) else num(None)
                     for m, sd in zip(s["mean"], s["sd"])]
            lines.append(f"| random({lang}) x{s['sets']} | {s['neurons']} | "
                         + " | ".join(cells) + " |")
        lines.append("")
        docs = self.documents or [None] * len(self.columns)
        lines.append("Change in mean next-token NLL (nats) against the baseline, [95% interval] "
                     "from a bootstrap over documents; " + ", ".join(
                         f"{c}: {n} token{'s' * (n != 1)}"
                         + (f" / {k} document{'s' * (k != 1)}" if k is not None else "")
                         for c, n, k in zip(self.columns, self.tokens, docs)) + ".")
        few = [c for c, k in zip(self.columns, docs) if k is not None and k < FEW_DOCUMENTS]
        if few:
            lines.append(f"Fewer than {FEW_DOCUMENTS} documents in {', '.join(few)}: a bootstrap "
                         f"over so few units gives rough intervals; evaluate more tokens.")
        if self.random_summary():
            lines.append("random(x) xR: R random sets with x's neurons per layer, mean \u00b1 "
                         "sd over the sets. \u2020: the own-language rise is not separated from "
                         "the random sets (its lower interval end is not above every random "
                         "set's upper end).")
        return "\n".join(lines)

    def summary_dict(self) -> dict:
        """The matrix with random sets folded into one mean row per language and without
        per-phase rows: what a plot of the matrix shows."""
        d = self.delta()
        keep = [i for i, k in enumerate(self.kinds) if k in ("baseline", "language")]
        rows = [self.rows[i] for i in keep]
        delta = [d[i].tolist() for i in keep]
        for lang, s in self.random_summary().items():
            rows.append(f"random({lang}) x{s['sets']}")
            delta.append(s["mean"])
        return {"rows": rows, "columns": self.columns, "delta": delta}

    def phase_table(self, digits: int = 3) -> str:
        """Per-phase rows: each language's neurons deactivated in one phase's layers only."""
        from ..report.cells import cell
        d = self.delta()
        idx = [i for i, k in enumerate(self.kinds) if k == "phase"]
        if not idx:
            return ""
        lines = ["| deactivated | phase | neurons | own language | mean of the others |",
                 "|---|---|---|---|---|"]
        for i in idx:
            lang = self.row_languages[i]
            if lang in self.columns:
                c = self.columns.index(lang)
                own = self._cell(i, c, digits)
                others = [d[i, j].item() for j in range(len(self.columns)) if j != c]
            else:
                own, others = "–", d[i].tolist()
            others = [v for v in others if not math.isnan(v)]
            mean = f"{sum(others) / len(others):+.{digits}f}" if others else "–"
            phase = cell(self.phases[i]) if self.phases else "?"
            lines.append(f"| {cell(lang)} | {phase} | {self.sizes[i]} | {own} | {mean} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        def ci(t):
            return None if t is None else t.tolist()
        return json_safe({
            "rows": self.rows, "kinds": self.kinds, "row_languages": self.row_languages,
            "sizes": self.sizes, "layer_sizes": self.layer_sizes, "phases": self.phases,
            "columns": self.columns, "nll": self.nll.tolist(),
            "perplexity": self.perplexity().tolist(), "delta": self.delta().tolist(),
            "nll_ci": ci(self.nll_ci), "delta_ci": ci(self.delta_ci),
            "tokens": self.tokens, "documents": self.documents,
            "specificity": self.specificity(), "random_summary": self.random_summary(),
            "meta": self.meta})

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict) -> "NllMatrix":
        def tensor(v):  # JSON null (no value, e.g. a random set off its column) -> NaN
            if isinstance(v, list):
                return [tensor(x) for x in v]
            return float("nan") if v is None else v

        def ci(key):
            v = data.get(key)
            return None if v is None else torch.tensor(tensor(v), dtype=torch.float64)
        return cls(data["rows"], data["kinds"], data["row_languages"], data["sizes"],
                   data["columns"], torch.tensor(tensor(data["nll"]), dtype=torch.float64),
                   data["tokens"], data.get("meta", {}), ci("nll_ci"), ci("delta_ci"),
                   data.get("documents"), data.get("layer_sizes"), data.get("phases"))


def _model_device(model) -> torch.device:
    # the input ids' device: a CPU/disk-offloaded model has 'meta' weights (the scan's rule)
    from ..scan import input_device
    return input_device(model)


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


def row_token_nll(model, ids: Tensor, mask: Tensor) -> Tensor:
    """Next-token NLL of each predicted position, float64 [R, T-1] (0 at padding)."""
    logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits
    out = torch.empty(ids.shape[0], ids.shape[1] - 1, dtype=torch.float64)
    for r in range(ids.shape[0]):  # one row at a time keeps the fp32 log-softmax copy small
        nll = torch.nn.functional.cross_entropy(logits[r, :-1].float(), ids[r, 1:],
                                                reduction="none")
        out[r] = (nll * mask[r, 1:]).double().cpu()
    return out


def _activation_bytes_per_token(model, T: int) -> int:
    """A generous estimate of a decoder forward's live fp32 activations per token: residual
    stream and attention projections (~4 H), the MLP's gate, up and product (3 I) and one row
    of eager attention scores per head (heads x T)."""
    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") \
        else model.config
    H = int(getattr(config, "hidden_size", 1024))
    intermediate = int(getattr(config, "intermediate_size", None) or 4 * H)
    heads = int(getattr(config, "num_attention_heads", 16))
    return 4 * (4 * H + 3 * intermediate + heads * T)


def _token_nll_function(model, windows, pad_id: int, impl: Optional[str]):
    """(ids, mask) -> float64 [R, T-1] per-token NLL: the chunked LM head when this model's
    head is one it knows and it matches the model's logits on the first window's first
    tokens, else the full logits (`row_token_nll`). Returns (function, 'chunked' | 'full')."""
    head = ChunkedHead.for_model(model)
    if head is not None:
        ids, mask = _pad([windows[0][:HEAD_CHECK_TOKENS]], pad_id)
        device = _model_device(model)
        with patched(model, impl) as handle, torch.inference_mode():
            handle.set_rows(None, None)
            tables = installed_tables(handle)
            install_tables(handle, [None] * handle.num_layers)
            try:
                ok = head.verify(model, ids.to(device), mask.to(device), row_token_nll)
            finally:
                install_tables(handle, tables)
        if ok:
            return head.token_nll, "chunked"
    return (lambda ids, mask: row_token_nll(model, ids, mask)), "full"


def row_nll_sums(model, ids: Tensor, mask: Tensor) -> Tensor:
    """Summed next-token NLL of each row, float64 [R] (padding excluded)."""
    return row_token_nll(model, ids, mask).sum(dim=1)


def nll_matrix(model, tokenizer, neurons, texts_or_source,
               languages: Optional[Sequence[str]] = None, *,
               deactivate: Optional[Sequence[str]] = None, random_sets: int = RANDOM_SETS,
               seed: int = 0, max_tokens_per_language: int = 4096, max_length: int = 128,
               batched: bool = True, layers: Optional[Iterable[int]] = None,
               phases: Optional[Sequence[dict]] = None,
               phase_languages: Optional[Sequence[str]] = None,
               bootstrap_samples: int = BOOTSTRAP_SAMPLES, random_columns: str = "own",
               phase_columns: str = "all",
               logits_budget_bytes: int = LOGITS_BUDGET_BYTES, impl: Optional[str] = None,
               progress: bool = True, experts=None,
               block_experts: Optional[Sequence[str]] = None, random_match: str = "none",
               frequency: Optional[Tensor] = None) -> NllMatrix:
    """Mean NLL of `languages` (columns) on held-out text under each variant (rows): baseline,
    each of `deactivate`'s neurons set to 0 (default: every language of `neurons`), and
    `random_sets` random sets per language of the same per-layer sizes (seeded by `seed`;
    default 20: single neurons have heavy-tailed effects, so a few sets make a weak control,
    and with random_columns="own" each set adds one variant to its own column's passes only);
    with `phases` (e.g. `neurons.phases`) also each of `phase_languages` deactivated in one
    phase's layers only. Every cell gets a 95% interval from a paired bootstrap over the
    evaluated texts (`bootstrap_samples` resamples; 0 = none).
    random_columns: "own" scores each random set on its own language's column only (the
    comparison the control is for; cells elsewhere are NaN), "all" on every column.
    phase_columns: the same for the per-phase rows (default "all": the table shows the other
    languages' mean rise; "own" costs K times less).

    texts_or_source: {lang: [texts]} or a corpus source (`documents(lang)`), e.g.
    `corpus.DebianHandbook(langs, split="heldout")`. Every column is scored on the same
    `max_tokens_per_language` predicted tokens (windows of `max_length`).
    batched: run all variants in the same forward passes through per-row steering groups
    (default) instead of one pass over the text per variant. Both give the same numbers; the
    batched passes are larger: on this 2-core CPU batched took 0.38x the time of one pass per
    variant for a small random llama and 0.77x for Gemma 3 270M, whose 262k-token vocabulary
    caps the rows per pass (benchmarks/bench_nll_batched.py, results/nll_batched.csv).
    The cost is one pass through the model and its LM head per variant and token; what all
    variants share exactly (the texts, their tokenisation and windows, the baseline) is
    computed once.
    experts (mixture-of-experts models): a LanguageExperts; adds the rows "-L experts" (L's
    experts blocked in the router) and `random_sets` rows "random-experts(L)#r" (as many random
    experts per layer) for each of `block_experts` (default: its languages). `neurons` may then
    be None (no neuron rows).
    """
    for name, value in (("random_columns", random_columns), ("phase_columns", phase_columns)):
        if value not in ("own", "all"):
            raise SteeringError(f"{name} must be 'own' or 'all', got {value!r}")
    if neurons is None and experts is None:
        raise SteeringError("nll_matrix needs a NeuronSet (or experts= for a MoE model)")
    languages = list(languages if languages is not None
                     else (neurons if neurons is not None else experts).languages)
    deactivate = list(deactivate if deactivate is not None
                      else neurons.languages if neurons is not None else [])
    if not languages:
        raise SteeringError("no languages to evaluate; pass languages=[...]")
    variants = build_variants(neurons, deactivate, random_sets=random_sets, seed=seed,
                              layers=layers, phases=phases, phase_languages=phase_languages,
                              layer_sizes=model_layer_sizes(model), random_match=random_match,
                              frequency=frequency)
    if experts is not None:                # MoE: block each language's experts, and controls
        from .expert_variants import expert_variants
        variants += expert_variants(model, experts, block_experts, random_sets, seed)
    windows, owner, tokens, doc_ids = [], [], [], []
    n_docs: List[int] = []
    for c, lang in enumerate(languages):
        w, docs = token_windows_with_documents(tokenizer, iter_texts(texts_or_source, lang),
                                               max_tokens_per_language, max_length, lang)
        offset = sum(n_docs)
        windows += w
        owner += [c] * len(w)
        doc_ids += [[offset + d for d in ds[1:]] for ds in docs]   # predicted positions
        tokens.append(predicted_tokens(w))
        n_docs.append(1 + max(max(ds) for ds in docs))
    D = sum(n_docs)
    doc_column = torch.tensor([c for c, n in enumerate(n_docs) for _ in range(n)])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    T = max(len(w) for w in windows)
    doc_index = torch.full((len(windows), T - 1), D, dtype=torch.long)  # D: padding, dropped
    for i, ds in enumerate(doc_ids):
        doc_index[i, :len(ds)] = torch.tensor(ds, dtype=torch.long)
    doc_tokens = torch.bincount(doc_index.flatten(), minlength=D + 1)[:D]
    token_nll, head_mode = _token_nll_function(model, windows, pad_id, impl)
    per_row = T * (_activation_bytes_per_token(model, T) if head_mode == "chunked"
                   else _vocab_size(model) * 4)
    rows_per_pass = max(1, logits_budget_bytes // per_row)
    G = len(variants)
    owner_t = torch.tensor(owner)
    # Which variants each column needs: a random set is the control of its own language, so
    # with random_columns="own" it is scored on that column only (K times fewer random passes).
    needed = []
    for c, lang in enumerate(languages):
        own_only = {"random": random_columns == "own", "phase": phase_columns == "own",
                    "random_experts": random_columns == "own"}
        needed.append([g for g, v in enumerate(variants)
                       if not own_only.get(v.kind) or v.language == lang])
    plan = []                                  # (variant ids of the pass group, window ids)
    for c in range(len(languages)):
        win = (owner_t == c).nonzero().squeeze(1).tolist()
        ids = needed[c]
        group_chunk = min(len(ids), rows_per_pass) if batched else 1
        per_pass = max(1, rows_per_pass // group_chunk)
        for g0 in range(0, len(ids), group_chunk):
            plan.append((ids[g0:g0 + group_chunk],
                         [win[w0:w0 + per_pass] for w0 in range(0, len(win), per_pass)]))

    with patched(model, impl) as handle:   # a patch made here is undone on exit
        previous = installed_tables(handle)
        previous_routers = [handle.router_steering.get(l) for l in range(handle.num_layers)]
        device = _model_device(model)
        doc_sums = torch.zeros(G, D + 1, dtype=torch.float64)
        scored = torch.zeros(G, len(languages), dtype=torch.bool)
        was_training = model.training
        model.eval()
        bar = tqdm(total=sum(len(w) for _, w in plan), desc="nll matrix", unit="pass",
                   disable=not progress)
        start = time.perf_counter()
        try:
            with torch.inference_mode():
                for group_ids, window_batches in plan:
                    chunk = [variants[g] for g in group_ids]
                    if len(chunk) == 1 and not chunk[0].edits:
                        install_tables(handle, [None] * handle.num_layers)
                    else:
                        install_tables(handle, steering_groups([v.edits for v in chunk],
                                                               handle.num_layers,
                                                               handle.intermediate_size))
                    if experts is not None:
                        from .expert_variants import install_expert_groups
                        install_expert_groups(handle, chunk)
                    for batch in window_batches:
                        ids, mask = _pad([windows[w] for w in batch], pad_id)
                        B, width = ids.shape
                        if len(chunk) > 1:
                            group = torch.arange(len(chunk), dtype=torch.int32).repeat_interleave(B)
                            handle.set_rows(None, group[:, None].expand(-1, width)
                                            .contiguous().to(device))
                            ids, mask = ids.repeat(len(chunk), 1), mask.repeat(len(chunk), 1)
                        else:
                            handle.set_rows(None, None)
                        per_tok = token_nll(ids.to(device), mask.to(device))
                        per_tok = per_tok.view(-1, B, width - 1)
                        where = doc_index[batch, :width - 1].flatten()
                        for g, gid in enumerate(group_ids):
                            doc_sums[gid].index_add_(0, where, per_tok[g].flatten())
                            scored[gid, owner_t[batch]] = True
                        bar.update(1)
        finally:
            bar.close()
            handle.set_rows(None, None)
            install_tables(handle, previous)
            if experts is not None:
                from ..steer_experts import install_router_tables
                install_router_tables(handle, previous_routers)
            model.train(was_training)
    seconds = time.perf_counter() - start
    doc_sums = doc_sums[:, :D]
    sums = torch.zeros(G, len(languages), dtype=torch.float64)
    sums.index_add_(1, doc_column, doc_sums)
    nll = (sums / torch.tensor(tokens, dtype=torch.float64)).masked_fill(~scored, math.nan)
    nll_ci = delta_ci = None
    if bootstrap_samples > 0:
        nll_ci, delta_ci = bootstrap_nll(doc_sums, doc_tokens, doc_column, len(languages),
                                         samples=bootstrap_samples, seed=seed)
        nll_ci[~scored] = math.nan
        delta_ci[~scored] = math.nan
    meta = {"batched": batched, "seconds": round(seconds, 3), "seed": seed,
            "random_sets": random_sets, "max_tokens_per_language": max_tokens_per_language,
            "max_length": max_length, "neuron_method": getattr(neurons, "method", ""),
            "model": getattr(getattr(model, "config", None), "name_or_path", "") or "",
            "layers": None if layers is None else list(layers),
            "bootstrap_samples": bootstrap_samples, "random_columns": random_columns,
            "phase_columns": phase_columns,
            "lm_head": head_mode, "rows_per_pass": rows_per_pass,
            "interval_level": LEVEL,
            "bootstrap_unit": "document"}
    return NllMatrix([v.name for v in variants], [v.kind for v in variants],
                     [v.language for v in variants], [v.size for v in variants], languages,
                     nll, tokens, meta, nll_ci, delta_ci, n_docs,
                     [v.layer_sizes for v in variants], [v.phase for v in variants])
