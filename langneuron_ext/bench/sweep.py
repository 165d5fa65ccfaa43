"""How a scan's cost grows: tokens/s and peak memory of plain / hooks / patch over sequence
length, batch size, number of languages K and model size, and the memory of a whole `ln.scan`
for two corpus sizes ten times apart (it must stay flat: counters are [K, L, I] and batches are
made lazily).

Points (the first model gets all of them, every further model the base point):
- sequence length 128 ... 2048 at batch 1, K = 8;
- batch size 1, 4, 16 at length 256, K = 8;
- K = 1, 8, 64 at batch 4, length 256 (the base point is batch 4, length 256, K = 8).
Every timed block passes at least `TOKENS_PER_BLOCK` tokens (several batches when they are
small). Rows carry experiment="sweep"; the plot picks each axis by the fixed values above.
"""
from __future__ import annotations

import datetime
import os
import time
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .scan import (
    CSV_FIELDS,
    PeakMemory,
    _fmt,
    implementations,
    load_bench_model,
    make_batches,
    run_scan_benchmark,
)

BASE = (4, 256, 8)                                   # batch, sequence length, K
SEQ_LENS = (128, 256, 512, 1024, 2048)
SEQ_AXIS_BATCH = 1                                   # a 2048-token row is a batch on its own
BATCHES = (1, 4, 16)
LANGUAGE_COUNTS = (1, 8, 64)
TOKENS_PER_BLOCK = 512
CORPUS_LANGUAGES = ("en", "fr")
CORPUS_TOKENS = (1_000, 10_000)                      # tokens per language: ten times apart


def sweep_points(full: bool) -> List[Tuple[int, int, int]]:
    """(batch, seq_len, K) to measure: every axis when `full`, else the base point only."""
    if not full:
        return [BASE]
    batch, seq_len, K = BASE
    points = [(SEQ_AXIS_BATCH, t, K) for t in SEQ_LENS] + [(b, seq_len, K) for b in BATCHES]
    points += [(batch, seq_len, k) for k in LANGUAGE_COUNTS]
    return list(dict.fromkeys(points))               # unique, in order


def run_sweep(model_names: Sequence[str], *, dtype: torch.dtype, device: torch.device,
              impl: Optional[str] = None, rounds: int = 3, text: bool = True,
              corpus_tokens: Sequence[int] = CORPUS_TOKENS, progress: bool = True,
              on_rows=None) -> List[Dict[str, object]]:
    """All rows of the sweep (CSV_FIELDS). `on_rows(rows)` is called after every point so a
    caller can save as it goes (an interrupted sweep keeps what it measured)."""
    impls, default = implementations(device, dtype, impl)
    all_rows: List[Dict[str, object]] = []
    for index, name in enumerate(model_names):
        model, tokenizer = load_bench_model(name, dtype, device)
        for batch, seq_len, K in sweep_points(full=index == 0):
            n_batches = max(1, TOKENS_PER_BLOCK // (batch * seq_len))
            batches, source = make_batches(tokenizer, model.config.vocab_size,
                                           batch_size=batch, seq_len=seq_len,
                                           n_batches=n_batches, languages=K, device=device,
                                           text=text)
            if progress:
                print(f"sweep {name}: batch {batch} x {seq_len} tokens x {n_batches}, K = {K}",
                      flush=True)
            result = run_scan_benchmark(model, batches, languages=K, impls=[default],
                                        default_impl=default, rounds=rounds,
                                        experiment="sweep", model_name=name, text=source)
            rows = result.rows()
            all_rows += rows
            if on_rows:
                on_rows(rows)
        if index == 0 and corpus_tokens:
            rows = corpus_size_rows(model, tokenizer, name, corpus_tokens, impl=default)
            all_rows += rows
            if on_rows:
                on_rows(rows)
        del model, tokenizer
    return all_rows


def corpus_size_rows(model, tokenizer, name: str, budgets: Sequence[int], *, impl: str,
                     languages: Sequence[str] = CORPUS_LANGUAGES, batch_size: int = 4,
                     max_length: int = 256) -> List[Dict[str, object]]:
    """Peak memory and tokens/s of a whole `ln.scan` (tokenisation included) per budget.

    A warm-up scan with a small budget first reads and caches the handbook pages, so every
    measured scan starts from the same state.
    """
    from ..corpus import DebianHandbook, handbook_available
    from ..ops.benchmark import device_description
    from ..scan import _input_device, scan

    if not handbook_available():
        return []
    corpus = DebianHandbook(list(languages), split="train")
    device = _input_device(model)

    def one(budget: int):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return scan(model, tokenizer, corpus, tokens_per_language=budget,
                        max_length=max_length, batch_size=batch_size, impl=impl,
                        progress=False)

    one(64)
    machine, device_name = device_description(device)
    rows = []
    for budget in budgets:
        load_start = os.getloadavg()[0]
        with PeakMemory(device) as mem:
            start = time.perf_counter()
            stats = one(budget)
            seconds = time.perf_counter() - start
        counted = int(stats.n_tokens.sum())
        row = dict(run_id=datetime.datetime.now(datetime.timezone.utc).isoformat(
                       timespec="seconds"),
                   experiment="corpus", machine=machine, device_name=device_name,
                   torch_version=torch.__version__, threads=torch.get_num_threads(),
                   load_avg_start=round(load_start, 2), load_avg_end=round(os.getloadavg()[0], 2),
                   model=name, params_m=round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
                   layers=stats.num_layers, intermediate=stats.intermediate_size,
                   dtype=str(next(model.parameters()).dtype).replace("torch.", ""),
                   device=device.type, text=f"debian-handbook {','.join(languages)}",
                   batch=batch_size, seq_len=max_length, K=len(languages),
                   variant=f"scan:{impl}", rounds=1, tokens=counted,
                   tokens_per_s=counted / seconds, peak_mem_mb=mem.extra, peak_rss_mb=mem.peak)
        rows.append({k: _fmt(row.get(k)) for k in CSV_FIELDS})
    return rows
