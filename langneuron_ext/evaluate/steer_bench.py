"""The steering benchmark: neuron steering against DiffMean and random sets, every method x
strength x language pair over the same prompts.

    bench = SteerBench(model, tokenizer, neurons, stats, items_by_pair, methods, strengths)
    result = bench.run(checkpoint=path)           # dict: table rows, generations, config

Conditions of a pair SRC:TGT (docs/steering_bench.md has the full definitions):
- `none`: the unsteered model (its generations are made once per prompt text and shared by
  every pair and method that uses that prompt);
- neuron methods (the fused op's steering groups): `deactivate` (SRC's neurons set to 0),
  `mean` / `median` (also TGT's set to its mean / median activation), `add` (TGT's += s x its
  mean), `scale` (TGT's x s); SRC's neurons are deactivated in every neuron method;
- `diffmean[LAYERS]`: alpha x (residual mean of TGT - of SRC) added to those decoder layers'
  outputs (per-row vectors, so its rows share batches with everything else);
- `random#r` rows: every neuron condition again with random sets of the same per-layer sizes
  (optionally matched on activation frequency), the control.

Speed: all conditions run in the same batches (rows of one batch carry different steering
groups and DiffMean vectors); each batch's generations are scored for fluency by the unsteered
model right away. The batch plan is fixed before the first batch and every finished batch is
appended to the checkpoint (JSON lines, fsynced), so a run interrupted at any point and resumed
gives exactly the uninterrupted result.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..steer import SteeringError, install_tables, interventions, steering_groups
from . import steer_metrics as M
from .controls import pooled_frequency, random_control_mask
from .langcontrol import langid_code

NEURON_METHODS = ("deactivate", "mean", "median", "add", "scale")
METHODS = NEURON_METHODS + ("diffmean",)
NO_STRENGTH = ("deactivate", "mean", "median")      # a single condition each
DEFAULT_STRENGTHS = {"add": (1.0, 2.0, 4.0), "scale": (2.0, 4.0, 8.0),
                     "diffmean": (2.0, 4.0, 8.0)}


class BenchError(SteeringError):
    """Benchmark options that cannot work; raised before any generation."""


@dataclass(frozen=True)
class PairItem:
    """One prompt of a pair: the opening of the source paragraph, the same paragraph in the
    target language (the chrF reference) and the opening of that target paragraph (the native
    continuation that sets the content scale)."""
    prompt: str
    reference: str
    native_prompt: str


@dataclass(frozen=True)
class Condition:
    pair: Tuple[str, str]
    method: str                       # "none", a neuron method, or "diffmean"
    strength: Optional[float] = None
    layers: Optional[Tuple[int, ...]] = None   # diffmean only
    random: Optional[int] = None      # random control set index (neuron methods)

    @property
    def label(self) -> str:
        name = self.method
        if self.method == "diffmean":
            name = f"diffmean[{','.join(str(l) for l in self.layers)}]"
        if self.strength is not None:
            name += f" x{_num(self.strength)}"
        if self.random is not None:
            name += f" random#{self.random}"
        return name

    @property
    def key(self) -> str:
        return f"{self.pair[0]}:{self.pair[1]}|{self.label}"


def _num(x: float) -> str:
    return f"{x:g}"


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# checking the request (before any model call)
# ---------------------------------------------------------------------------------------------
def check_request(neurons, stats, pairs: Sequence[Tuple[str, str]], methods: Sequence[str],
                  strengths: Dict[str, Sequence[float]],
                  diffmean_layers: Sequence[Sequence[int]], random_sets: int) -> None:
    """Every error the benchmark can know about before generating: one line each."""
    if not pairs:
        raise BenchError("no language pairs; give at least one SRC:TGT, e.g. en:fr")
    for method in methods:
        if method not in METHODS:
            raise BenchError(f"unknown method {method!r}; use some of {', '.join(METHODS)}")
    for name, grid in strengths.items():
        if name not in DEFAULT_STRENGTHS:
            raise BenchError(f"strengths given for {name!r}, which takes none; only "
                             f"{', '.join(DEFAULT_STRENGTHS)} have a strength grid")
        if not grid:
            raise BenchError(f"the strength grid of {name} is empty")
        for s in grid:
            if not isinstance(s, (int, float)) or not math.isfinite(float(s)):
                raise BenchError(f"the strength grid of {name} holds {s!r}; every strength "
                                 f"must be a finite number")
    if random_sets < 0:
        raise BenchError(f"random sets must be >= 0, got {random_sets}")
    neuron_methods = [m for m in methods if m in NEURON_METHODS]
    for src, tgt in pairs:
        if src == tgt:
            raise BenchError(f"pair {src}:{tgt} names one language twice; pick two")
        if neuron_methods:
            for lang in (src, tgt):
                if lang not in neurons.languages:
                    raise BenchError(f"pair {src}:{tgt}: language {lang!r} is not in the neuron "
                                     f"set (it has {', '.join(neurons.languages)}); identify "
                                     f"neurons for it or drop the pair")
        needs_stats = [m for m in methods if m in ("mean", "median", "add", "diffmean")]
        if needs_stats or random_sets:
            for lang in (src, tgt):
                if lang not in stats.languages:
                    raise BenchError(f"pair {src}:{tgt}: language {lang!r} is not in the "
                                     f"stats ({', '.join(stats.languages)}); scan it too")
    if any(m in methods for m in ("mean", "add")) and stats.sums is None:
        raise BenchError("methods mean and add need activation sums, which these stats lack; "
                         "rescan with `langneuron scan --sums` or drop those methods")
    if "median" in methods and not callable(getattr(stats, "median", None)):
        raise BenchError("method median needs activation histograms (`langneuron scan --hist`), "
                         "which this version cannot record; drop median")
    if "median" in methods and getattr(stats, "hist", None) is None:
        raise BenchError("method median needs activation histograms, which these stats lack; "
                         "rescan with `langneuron scan --hist` or drop median")
    if "scale" in methods and _scale_op() is None:
        raise BenchError("method scale needs the op's scale mode, which this build lacks; drop "
                         "scale")
    if "diffmean" in methods:
        if stats.residual_sums is None:
            raise BenchError("method diffmean needs residual means, which these stats lack; "
                             "rescan with `langneuron scan --residual-means` or drop diffmean")
        if not diffmean_layers:
            raise BenchError("method diffmean needs at least one layer choice")
        L = stats.residual_sums.shape[1]
        for choice in diffmean_layers:
            if not choice:
                raise BenchError("an empty DiffMean layer choice; give layers like 6 or 6,9")
            for layer in choice:
                if not 0 <= layer < L:
                    raise BenchError(f"DiffMean layer {layer} is out of range: the model has "
                                     f"{L} layers (0..{L - 1})")


def _scale_op() -> Optional[int]:
    from ..ops import reference
    return getattr(reference, "STEER_SCALE", None)


# ---------------------------------------------------------------------------------------------
# the grid
# ---------------------------------------------------------------------------------------------
def build_conditions(pairs, methods, strengths, diffmean_layers, random_sets,
                     random_methods: Optional[Sequence[str]] = None) -> List[Condition]:
    """Every condition of the grid in a fixed order: per pair, `none`, then each method at each
    strength (DiffMean per layer choice), then the random sets of each neuron condition (of
    the `random_methods` only, when given)."""
    out: List[Condition] = []
    for pair in pairs:
        pair = (pair[0], pair[1])
        out.append(Condition(pair, "none"))
        neuron = []
        for method in methods:
            grid = [None] if method in NO_STRENGTH else \
                [float(s) for s in strengths.get(method, DEFAULT_STRENGTHS[method])]
            if method == "diffmean":
                for layers in diffmean_layers:
                    out += [Condition(pair, method, s, tuple(int(l) for l in layers))
                            for s in grid]
            else:
                conds = [Condition(pair, method, s) for s in grid]
                out += conds
                if random_methods is None or method in random_methods:
                    neuron += conds
        for r in range(random_sets):
            out += [Condition(c.pair, c.method, c.strength, random=r) for c in neuron]
    return out


def _neuron_edits(cond: Condition, neurons, stats, masks=None) -> list:
    src, tgt = cond.pair
    edits = interventions(neurons, [src], "deactivate", masks=masks)
    if cond.method == "deactivate":
        return edits
    if cond.method == "mean":
        return edits + interventions(neurons, [tgt], "activate", value="mean", stats=stats,
                                     masks=masks)
    if cond.method == "median":
        return edits + _value_edits(neurons, tgt, stats.median(), stats, masks, set_to=True)
    if cond.method == "add":
        return edits + [_scaled(e, cond.strength) for e in
                        interventions(neurons, [tgt], "add", value="mean", stats=stats,
                                      masks=masks)]
    if cond.method == "scale":
        from ..steer import Intervention
        base = interventions(neurons, [tgt], "activate", value=0.0, masks=masks)[0]
        values = torch.full_like(base.value, float(cond.strength))
        return edits + [Intervention(base.mask, _scale_op(), values)]
    raise BenchError(f"unknown neuron method {cond.method!r}")


def _scaled(edit, factor: float):
    from ..steer import Intervention
    return Intervention(edit.mask, edit.op, edit.value * float(factor))


def _value_edits(neurons, lang, per_language, stats, masks, set_to: bool):
    from ..ops.reference import STEER_SET
    from ..steer import Intervention
    base = interventions(neurons, [lang], "activate", value=0.0, masks=masks)[0]
    values = per_language[stats.languages.index(lang)].float()
    return [Intervention(base.mask, STEER_SET, values)]


# ---------------------------------------------------------------------------------------------
# the benchmark
# ---------------------------------------------------------------------------------------------
class SteerBench:
    """One grid over one model (see the module docstring); `run()` returns the result dict."""

    def __init__(self, model, tokenizer, neurons, stats, items: Dict[Tuple[str, str],
                 Sequence[PairItem]], methods: Sequence[str],
                 strengths: Optional[Dict[str, Sequence[float]]] = None,
                 diffmean_layers: Sequence[Sequence[int]] = (), random_sets: int = 1,
                 random_match: str = "none", seed: int = 0, max_new_tokens: int = 16,
                 batch_size: int = 32, impl: Optional[str] = None,
                 random_methods: Optional[Sequence[str]] = None):
        self.model, self.tokenizer, self.neurons, self.stats = model, tokenizer, neurons, stats
        self.items = {tuple(k): list(v) for k, v in items.items()}
        self.pairs = list(self.items)
        self.methods = list(dict.fromkeys(methods))
        self.strengths = {k: [float(s) for s in v] for k, v in (strengths or {}).items()}
        self.diffmean_layers = [tuple(int(l) for l in c) for c in diffmean_layers]
        self.random_sets, self.random_match, self.seed = int(random_sets), random_match, seed
        self.max_new_tokens, self.batch_size, self.impl = max_new_tokens, batch_size, impl
        self.random_methods = None if random_methods is None else list(random_methods)
        for method in self.random_methods or []:
            if method not in self.methods or method not in NEURON_METHODS:
                raise BenchError(f"random sets for {method!r}: it is not one of the neuron "
                                 f"methods being run ({', '.join(self.methods)})")
        check_request(neurons, stats, self.pairs, self.methods, self.strengths,
                      self.diffmean_layers, self.random_sets)
        if max_new_tokens < 1 or batch_size < 1:
            raise BenchError("max_new_tokens and batch_size must be at least 1")
        for pair, rows in self.items.items():
            if not rows:
                raise BenchError(f"pair {pair[0]}:{pair[1]} has no prompts")
        self.conditions = build_conditions(self.pairs, self.methods, self.strengths,
                                           self.diffmean_layers, self.random_sets,
                                           self.random_methods)

    # ---- configuration and plan -----------------------------------------------------------
    def config(self) -> dict:
        from ..models.loading import model_name
        return {"model": model_name(self.model), "pairs": [f"{s}:{t}" for s, t in self.pairs],
                "methods": self.methods,
                "strengths": {m: self.strengths.get(m, list(DEFAULT_STRENGTHS[m]))
                              for m in self.methods if m in DEFAULT_STRENGTHS},
                "diffmean_layers": [list(c) for c in self.diffmean_layers],
                "random_sets": self.random_sets, "random_match": self.random_match,
                "random_methods": self.random_methods or [m for m in self.methods
                                                          if m in NEURON_METHODS],
                "seed": self.seed, "max_new_tokens": self.max_new_tokens,
                "batch_size": self.batch_size,
                "prompts": {f"{s}:{t}": len(v) for (s, t), v in self.items.items()},
                "neurons": {l: self.neurons.count(l) for l in self.neurons.languages},
                "prompt_digest": _sha(json.dumps(
                    [[f"{s}:{t}", [[i.prompt, i.reference, i.native_prompt] for i in v]]
                     for (s, t), v in self.items.items()], ensure_ascii=False))}

    def _jobs(self) -> List[Tuple[str, Optional[int], str]]:
        """Unique generations to make: (text, steered condition index or None, key). Unsteered
        generations are keyed by their prompt text alone, so pairs and methods share them."""
        jobs, seen = [], set()

        def add(text, cond_index):
            key = f"u|{text}" if cond_index is None else f"c{cond_index}|{text}"
            if key not in seen:
                seen.add(key)
                jobs.append((text, cond_index, key))
        for c, cond in enumerate(self.conditions):
            for item in self.items[cond.pair]:
                add(item.prompt, None if cond.method == "none" else c)
            if cond.method == "none":
                for item in self.items[cond.pair]:
                    add(item.native_prompt, None)
        return jobs

    def plan(self) -> List[List[Tuple[str, Optional[int], str]]]:
        """The fixed batches: jobs ordered by prompt length in tokens (little padding), then
        cut into batches of `batch_size` rows."""
        jobs = self._jobs()
        lengths = {t: len(self.tokenizer(t)["input_ids"]) for t in {j[0] for j in jobs}}
        order = sorted(range(len(jobs)), key=lambda i: (lengths[jobs[i][0]], jobs[i][0], i))
        ordered = [jobs[i] for i in order]
        return [ordered[i:i + self.batch_size] for i in range(0, len(ordered), self.batch_size)]

    # ---- steering tables and vectors ------------------------------------------------------
    def _tables(self, handle) -> Dict[int, int]:
        """Install one steering group per neuron condition; returns condition -> group."""
        groups, variants = {}, []
        gen = torch.Generator().manual_seed(self.seed)
        frequency = pooled_frequency(self.stats) if self.random_match == "frequency" else None
        own_masks: Dict[Tuple, list] = {}
        for c, cond in enumerate(self.conditions):
            if cond.method not in NEURON_METHODS:
                continue
            if cond.random is None:
                edits = _neuron_edits(cond, self.neurons, self.stats)
                own_masks[(cond.pair, cond.method, cond.strength)] = edits
            else:
                own = own_masks[(cond.pair, cond.method, cond.strength)]
                src, tgt = cond.pair
                masks = {src: random_control_mask(own[0].mask, gen, self.random_match,
                                                  frequency, self.stats.layer_sizes())}
                if len(own) > 1:
                    masks[tgt] = random_control_mask(own[1].mask, gen, self.random_match,
                                                     frequency, self.stats.layer_sizes())
                edits = _neuron_edits(cond, self.neurons, self.stats, masks=masks)
            groups[c] = len(variants)
            variants.append(edits)
        self.sizes = {c: sum(e.size for e in variants[g]) for c, g in groups.items()}
        if variants:
            install_tables(handle, steering_groups(variants, handle.num_layers,
                                                   handle.intermediate_size))
        return groups

    def _vectors(self) -> Dict[int, Dict[int, torch.Tensor]]:
        """condition -> {layer: alpha * DiffMean vector} for the DiffMean conditions."""
        from ..steering.diffmean import diffmean_vectors
        out = {}
        for c, cond in enumerate(self.conditions):
            if cond.method == "diffmean":
                vecs = diffmean_vectors(self.stats, cond.pair[0], cond.pair[1], cond.layers)
                out[c] = {l: v * float(cond.strength) for l, v in vecs.items()}
        return out

    # ---- one batch ------------------------------------------------------------------------
    def _generate(self, handle, batch, groups, vectors) -> List[List[int]]:
        from ..scan import input_device
        from ..steering.diffmean import diffmean_steering
        tok = self.tokenizer
        device = input_device(self.model)
        row_group = torch.tensor([groups.get(c, -1) if c is not None else -1
                                  for _, c, _ in batch], dtype=torch.int32)
        layers = sorted({l for _, c, _ in batch if c in vectors for l in vectors[c]})
        hidden = self.model.config.get_text_config().hidden_size
        per_row = {}
        for layer in layers:
            v = torch.zeros(len(batch), hidden, dtype=torch.float32)
            for b, (_, c, _) in enumerate(batch):
                if c in vectors and layer in vectors[c]:
                    v[b] = vectors[c][layer]
            per_row[layer] = v
        side = tok.padding_side
        tok.padding_side = "left"
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        hook = self.model.register_forward_pre_hook(_rows_hook(handle, row_group),
                                                    with_kwargs=True)
        try:
            enc = tok([t for t, _, _ in batch], return_tensors="pt", padding=True)
            enc = {k: v.to(device) for k, v in enc.items()}
            with diffmean_steering(self.model, per_row), torch.inference_mode():
                out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens,
                                          do_sample=False, pad_token_id=pad_id)
        finally:
            hook.remove()
            tok.padding_side = side
        new = out[:, enc["input_ids"].shape[1]:].tolist()
        return [_until_stop(ids, _stop_ids(tok, self.model)) for ids in new]

    def _fluency(self, handle, generations: List[List[int]]) -> List[Tuple[float, int]]:
        """(summed NLL, tokens) of each generation under the unsteered model (BOS + text)."""
        hook = self.model.register_forward_pre_hook(_rows_hook(handle, None), with_kwargs=True)
        try:
            return fluency_nll(self.model, self.tokenizer, generations)
        finally:
            hook.remove()

    # ---- the run --------------------------------------------------------------------------
    def run(self, checkpoint: Optional[os.PathLike] = None, progress: bool = True,
            on_batch=None) -> dict:
        from tqdm.auto import tqdm

        from ..models.patch import patched
        batches = self.plan()
        config = self.config()
        signature = _sha(json.dumps(config, sort_keys=True))
        done = _read_checkpoint(checkpoint, signature) if checkpoint else {}
        started = time.perf_counter()
        timing = {"batches": len(batches), "resumed_batches": len(done)}
        with patched(self.model, self.impl) as handle:
            previous = [handle.get_steering(l) for l in range(handle.num_layers)]
            try:
                groups = self._tables(handle)
                vectors = self._vectors()
                bar = tqdm(total=sum(len(b) for b in batches), unit="gen", desc="steer-bench",
                           disable=not progress, dynamic_ncols=True)
                bar.update(sum(len(batches[i]) for i in done))
                if checkpoint and not done:
                    _start_checkpoint(checkpoint, signature)
                for i, batch in enumerate(batches):
                    if i in done:
                        continue
                    gens = self._generate(handle, batch, groups, vectors)
                    nll = self._fluency(handle, gens)
                    record = {"batch": i, "rows": [[key, ids, s, n] for (_, _, key), ids, (s, n)
                                                   in zip(batch, gens, nll)]}
                    done[i] = record["rows"]
                    if checkpoint:
                        _append_checkpoint(checkpoint, record)
                    bar.update(len(batch))
                    if on_batch is not None:
                        on_batch(i)
                bar.close()
            finally:
                handle.set_rows(None, None)
                install_tables(handle, previous)
        timing["seconds"] = time.perf_counter() - started
        rows = {key: (ids, s, n) for recs in done.values() for key, ids, s, n in recs}
        result = self._score(rows, config)
        self.timing = timing
        return result

    # ---- scoring --------------------------------------------------------------------------
    def _score(self, rows, config) -> dict:
        tok = self.tokenizer
        decoded = {key: tok.decode(ids, skip_special_tokens=True) for key, (ids, _, _)
                   in rows.items()}
        table, generations = [], {}
        native: Dict[Tuple[str, str], float] = {}
        for pair in self.pairs:
            scores = [M.chrf(decoded[f"u|{i.native_prompt}"], i.reference)
                      for i in self.items[pair]]
            native[pair] = M.bootstrap_mean(scores, seed=self.seed)[0]
        for c, cond in enumerate(self.conditions):
            keys = [f"u|{i.prompt}" if cond.method == "none" else f"c{c}|{i.prompt}"
                    for i in self.items[cond.pair]]
            texts = [decoded[k] for k in keys]
            langid = [M.identify_langid(t) for t in texts]
            lingua = [M.identify_lingua(t) for t in texts]
            src, tgt = cond.pair
            fl = [rows[k][1] / rows[k][2] if rows[k][2] else float("nan") for k in keys]
            ch = [M.chrf(t, i.reference) for t, i in zip(texts, self.items[cond.pair])]
            s_langid = M.share([M.is_target(l, tgt) for l in langid])
            s_lingua = M.share([M.is_target(l, tgt) for l in lingua])
            src_share = M.share([M.is_target(l, src) for l in langid])
            fluency = M.bootstrap_mean(fl, seed=self.seed)
            content = M.bootstrap_mean(ch, seed=self.seed)
            table.append({
                "pair": f"{src}:{tgt}", "method": cond.method, "strength": cond.strength,
                "layers": list(cond.layers) if cond.layers else None, "random": cond.random,
                "condition": cond.label, "neurons": getattr(self, "sizes", {}).get(c),
                "prompts": len(keys),
                "success_langid": s_langid[0], "success_langid_ci": list(s_langid[1:]),
                "success_lingua": s_lingua[0], "success_lingua_ci": list(s_lingua[1:]),
                "source_share_langid": src_share[0],
                "fluency_nll": fluency[0], "fluency_nll_ci": list(fluency[1:]),
                "chrf": content[0], "chrf_ci": list(content[1:]),
                "chrf_native": native[cond.pair],
                "score": M.summary_score(s_langid[0], content[0], native[cond.pair])})
            generations[cond.key] = [{"text": t, "langid": a, "lingua": b}
                                     for t, a, b in zip(texts, langid, lingua)]
        _add_random_ranks(table)
        from .uncertainty import json_safe
        return json_safe({"config": config, "table": table, "generations": generations,
                          "score_formula": "2 s c / (s + c), s = langid success share, "
                                           "c = min(1, chrF / chrF of the unsteered model's "
                                           "continuation of the target-language opening)"})


def _add_random_ranks(table: List[dict]) -> None:
    """Per steered neuron row: its random sets' pooled success and the empirical p-value / rank
    of its success among them."""
    by_key: Dict[tuple, List[dict]] = {}
    for row in table:
        if row["random"] is not None:
            by_key.setdefault((row["pair"], row["method"], row["strength"]), []).append(row)
    for row in table:
        if row["random"] is not None or row["method"] not in NEURON_METHODS:
            continue
        randoms = by_key.get((row["pair"], row["method"], row["strength"]), [])
        succ = [r["success_langid"] for r in randoms]
        p, rank = M.empirical_p(row["success_langid"], succ)
        hits = sum(round(r["success_langid"] * r["prompts"]) for r in randoms)
        n = sum(r["prompts"] for r in randoms)
        from .uncertainty import wilson_interval
        row["random_sets"] = len(randoms)
        row["random_success_pooled"] = hits / n if n else None
        row["random_success_pooled_ci"] = list(wilson_interval(hits, n)) if n else None
        row["random_p"] = p
        row["random_rank"] = rank


def _rows_hook(handle, row_group: Optional[torch.Tensor]):
    """Before every forward of `generate`: each batch row's steering group for all its
    positions (the prompt pass and every one-token step); None = group -1 (unsteered) for every
    row (row_group None would steer every row as group 0)."""
    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            ids = kwargs["inputs_embeds"][..., 0]
        groups = row_group if row_group is not None else \
            torch.full((ids.shape[0],), -1, dtype=torch.int32)
        handle.set_rows(None, groups[:, None].expand(ids.shape[0], ids.shape[1]))
    return hook


def _stop_ids(tokenizer, model) -> set:
    ids = set()
    for value in (tokenizer.eos_token_id, tokenizer.pad_token_id,
                  getattr(model.generation_config, "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def _until_stop(ids: List[int], stop: set) -> List[int]:
    for j, t in enumerate(ids):
        if t in stop:
            return ids[:j]
    return ids


def fluency_nll(model, tokenizer, generations: Sequence[Sequence[int]],
                batch_size: int = 16) -> List[Tuple[float, int]]:
    """(summed NLL, predicted tokens) of each token list on its own under `model`: BOS (when
    the tokenizer has one) + the tokens, each token predicted from those before it."""
    from ..corpus.bos import bos_token_id
    from ..scan import input_device
    bos = bos_token_id(tokenizer)
    head = [bos] if bos is not None else []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = input_device(model)
    out: List[Tuple[float, int]] = []
    for start in range(0, len(generations), batch_size):
        chunk = [head + list(g) for g in generations[start:start + batch_size]]
        width = max(len(c) for c in chunk)
        ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        mask = torch.zeros(len(chunk), width, dtype=torch.long)
        for b, c in enumerate(chunk):
            ids[b, :len(c)] = torch.tensor(c, dtype=torch.long)
            mask[b, :len(c)] = 1
        if width < 2:
            out += [(0.0, 0)] * len(chunk)
            continue
        with torch.inference_mode():
            logits = model(input_ids=ids.to(device), attention_mask=mask.to(device),
                           use_cache=False).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        target = ids[:, 1:].to(logp.device)
        nll = -logp.gather(2, target[..., None])[..., 0]
        valid = mask[:, 1:].to(nll.device).bool()     # without BOS the first token is context
        for b in range(len(chunk)):
            n = int(valid[b].sum())
            out.append((float(nll[b][valid[b]].double().sum()), n))
    return out


# ---------------------------------------------------------------------------------------------
# checkpoint: JSON lines, a header then one line per finished batch
# ---------------------------------------------------------------------------------------------
def _start_checkpoint(path, signature: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write(json.dumps({"signature": signature}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _append_checkpoint(path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _read_checkpoint(path, signature: str) -> Dict[int, list]:
    """Finished batches of an earlier run ({} when there is no checkpoint); a torn last line
    (killed while writing) is ignored; another run's checkpoint is refused."""
    path = Path(path)
    if not path.exists():
        return {}
    lines = path.read_text(encoding="utf-8").split("\n")
    try:
        head = json.loads(lines[0])
    except (ValueError, IndexError):
        head = {}
    if head.get("signature") != signature:
        raise BenchError(f"checkpoint {path} belongs to a run with other options, prompts or "
                         f"model; rerun with the same ones to resume, or delete it")
    done = {}
    for line in lines[1:]:
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except ValueError:
            break
        done[int(rec["batch"])] = rec["rows"]
    return done


# ---------------------------------------------------------------------------------------------
# prompts: aligned handbook paragraphs
# ---------------------------------------------------------------------------------------------
def handbook_items(pairs: Sequence[Tuple[str, str]], n: int, split: str = "heldout",
                   words: int = 8, chars: int = 24) -> Dict[Tuple[str, str], List[PairItem]]:
    """Per pair, the first `n` held-out paragraph positions present in both languages: prompt =
    the opening of the source paragraph, reference = the target paragraph, native prompt = the
    opening of the target paragraph (openings as `prompts_from_texts` cuts them)."""
    from ..corpus import DebianHandbook
    from .langcontrol import prompts_from_texts
    langs = list(dict.fromkeys(l for p in pairs for l in p))
    book = DebianHandbook(langs, split=split)
    paragraphs = {l: {p.index: p.text for p in book.paragraphs(l)} for l in langs}
    out = {}
    for src, tgt in pairs:
        items = []
        for index in sorted(set(paragraphs[src]) & set(paragraphs[tgt])):
            try:
                prompt = prompts_from_texts([paragraphs[src][index]], 1, words, chars)[0]
                native = prompts_from_texts([paragraphs[tgt][index]], 1, words, chars)[0]
            except SteeringError:
                continue
            items.append(PairItem(prompt, paragraphs[tgt][index], native))
            if len(items) == n:
                break
        if not items:
            raise BenchError(f"no aligned {split} paragraphs for {src}:{tgt}")
        out[(src, tgt)] = items
    return out


def langid_target(lang: str) -> str:
    return langid_code(lang)
