"""The scan benchmark's plot, drawn from its CSV (`langneuron bench scan --csv F --plot P`).

Panels: tokens/s of every variant in the latest `compare` run of each model (IQR bars, median
paired ratio to plain printed on each bar); tokens/s over sequence length, batch size and K,
and peak memory over sequence length (latest row of each sweep point); peak memory and
tokens/s of a whole scan for two corpus sizes.
"""
from __future__ import annotations

import csv
import os
from typing import Dict, List

COLORS = {"plain": "#7f7f7f", "hooks": "#d62728", "patch:cpu": "#1f77b4",
          "patch:torch": "#ff7f0e", "patch:cuda": "#2ca02c", "patch:triton": "#9467bd"}


def _read(path) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _latest_points(rows, experiment: str) -> List[Dict[str, str]]:
    """The last row of each (model, batch, seq_len, K, variant) of `experiment` (and of each
    corpus size, for whole scans)."""
    latest: Dict[tuple, Dict[str, str]] = {}
    for row in rows:
        if row["experiment"] == experiment:
            size = row["tokens"] if experiment == "corpus" else ""
            latest[(row["model"], row["batch"], row["seq_len"], row["K"], row["variant"],
                    size)] = row
    return list(latest.values())


def _f(row, key) -> float:
    try:
        return float(row[key])
    except (TypeError, ValueError):
        return float("nan")


def plot_scan(csv_path, png_path) -> str:
    """Draw `png_path` from the rows in `csv_path`; returns the path."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .sweep import BASE, SEQ_AXIS_BATCH

    rows = _read(csv_path)
    fig, axes = plt.subplots(2, 3, figsize=(16, 9))
    _compare_panel(axes[0][0], rows)
    sweep = _latest_points(rows, "sweep")
    models = list(dict.fromkeys(r["model"] for r in sweep))
    first = [r for r in sweep if models and r["model"] == models[0]]
    B, T, K = (str(x) for x in BASE)
    B1 = str(SEQ_AXIS_BATCH)
    _line_panel(axes[0][1], first, "seq_len", dict(batch=B1, K=K), "ratio",
                f"vs plain over sequence length (batch {B1}, K {K})", log_x=True)
    _line_panel(axes[0][2], first, "batch", dict(seq_len=T, K=K), "ratio",
                f"vs plain over batch size (length {T}, K {K})", log_x=True)
    _line_panel(axes[1][0], first, "K", dict(batch=B, seq_len=T), "ratio",
                f"vs plain over languages K (batch {B} x {T})", log_x=True)
    _line_panel(axes[1][1], first, "seq_len", dict(batch=B1, K=K), "peak_mem_mb",
                f"peak memory above the model over length (batch {B1}, K {K})", log_x=True)
    _corpus_panel(axes[1][2], rows)
    loads = [_f(r, "load_avg_end") for r in rows if r.get("load_avg_end")]
    machine = rows[-1]["device_name"].split(" (")[0] if rows else ""
    fig.suptitle(f"langneuron scan forward: plain vs hook code vs patch -- {machine}, torch "
                 f"{rows[-1]['torch_version'] if rows else ''}; 1-min load average "
                 f"{min(loads, default=0):.1f}-{max(loads, default=0):.1f} on "
                 f"{os.cpu_count()} cores (other processes running)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    fig.savefig(png_path, dpi=110)
    plt.close(fig)
    return str(png_path)


def _group(row) -> tuple:
    return row["model"], row["threads"], row["dtype"], row["device"]


def _latest_compare_runs(rows) -> Dict[tuple, str]:
    """run_id of the latest `compare` run of each (model, threads, dtype, device)."""
    runs: Dict[tuple, str] = {}
    for row in rows:
        if row["experiment"] == "compare":
            runs[_group(row)] = row["run_id"]
    return runs


def _compare_panel(ax, rows) -> None:
    runs = _latest_compare_runs(rows)
    chosen = [r for r in rows if r["experiment"] == "compare" and runs.get(_group(r)) ==
              r["run_id"]]
    models = list(runs)
    variants = list(dict.fromkeys(r["variant"] for r in chosen))
    width = 0.8 / max(1, len(variants))
    for j, variant in enumerate(variants):
        for i, model in enumerate(models):
            match = [r for r in chosen if _group(r) == model and r["variant"] == variant]
            if not match:
                continue
            r = match[0]
            x = i + (j - (len(variants) - 1) / 2) * width
            ax.bar(x, _f(r, "tokens_per_s"), width, yerr=_f(r, "tokens_per_s_iqr") / 2,
                   color=COLORS.get(variant, None), label=variant if i == 0 else None,
                   capsize=2)
            ax.text(x, _f(r, "tokens_per_s"), f"{_f(r, 'ratio_vs_plain'):.2f}",
                    ha="center", va="bottom", fontsize=7)
    labels = []
    for model in models:
        r = next(r for r in chosen if _group(r) == model)
        labels.append(f"{r['model']}\n{r['threads']} thr, {r['batch']}x{r['seq_len']}\n"
                      f"load {r['load_avg_end']}")
    ax.set_xticks(range(len(models)), labels, fontsize=6)
    ax.set_ylabel("tokens/s (median over rounds)")
    ax.set_title("forward tokens/s; on bars: ratio to plain (paired)", fontsize=9)
    if variants:
        ax.legend(fontsize=7)


def _line_panel(ax, rows, axis: str, fixed: Dict[str, str], value: str, title: str,
                log_x: bool = False) -> None:
    """`value` "ratio": paired ratios to plain (solid: CPU time, dashed: wall clock), which
    points measured at different loads can share an axis with; else that CSV column."""
    chosen = [r for r in rows if all(r[k] == v for k, v in fixed.items())]
    for variant in dict.fromkeys(r["variant"] for r in chosen):
        if value == "ratio" and variant == "plain":
            continue
        lines = ([("cpu_ratio_vs_plain", "-", " (CPU time)"), ("ratio_vs_plain", "--", " (wall)")]
                 if value == "ratio" else [(value, "-", "")])
        for column, style, suffix in lines:
            pts = sorted((int(r[axis]), _f(r, column)) for r in chosen
                         if r["variant"] == variant)
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker="o",
                        color=COLORS.get(variant), label=variant + suffix)
    if value == "ratio":
        ax.axhline(1.0, color=COLORS["plain"], linewidth=0.8)
    if log_x:
        ax.set_xscale("log", base=2)
    ax.set_xlabel(axis)
    ax.set_ylabel("MiB" if value.startswith("peak") else "tokens/s / plain's, same round")
    model = chosen[0]["model"] if chosen else ""
    ax.set_title(f"{model}: {title}", fontsize=9)
    if chosen:
        ax.legend(fontsize=7)


def _corpus_panel(ax, rows) -> None:
    chosen = _latest_points(rows, "corpus")
    chosen = sorted(chosen, key=lambda r: int(r["tokens"]))
    if not chosen:
        ax.set_title("whole scan over corpus size: no rows", fontsize=9)
        return
    labels = [f"{int(r['tokens']):,} tokens\n{_f(r, 'tokens_per_s'):.0f} tok/s" for r in chosen]
    ax.bar(range(len(chosen)), [_f(r, "peak_mem_mb") for r in chosen], color="#1f77b4")
    ax.set_xticks(range(len(chosen)), labels, fontsize=8)
    ax.set_ylabel("peak memory above the model, MiB")
    ax.set_title(f"{chosen[0]['model']}: whole ln.scan (tokenisation included), corpus 10x "
                 f"apart", fontsize=9)


def markdown_tables(csv_path) -> str:
    """The README's tables from the CSV: the latest `compare` run of each model, then the
    sweep's latest point rows and the corpus-size rows (figures exactly as in the CSV)."""
    rows = _read(csv_path)
    runs = _latest_compare_runs(rows)
    out = ["| model | threads | variant | tokens/s (IQR) | vs plain | vs hooks | "
           "CPU-time vs plain | CPU-time vs hooks | peak MiB | counts differing | load |",
           "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for row in rows:
        if row["experiment"] == "compare" and runs[_group(row)] == row["run_id"]:
            out.append(f"| {row['model']} | {row['threads']} | `{row['variant']}` | "
                       f"{_f(row, 'tokens_per_s'):.1f} "
                       f"({_f(row, 'tokens_per_s_iqr'):.1f}) | {_f(row, 'ratio_vs_plain'):.3f} | "
                       f"{_f(row, 'ratio_vs_hooks'):.3f} | {_f(row, 'cpu_ratio_vs_plain'):.3f} | "
                       f"{_f(row, 'cpu_ratio_vs_hooks'):.3f} | {_f(row, 'peak_mem_mb'):.1f} | "
                       f"{row['counts_differing'] or '-'} | {row['load_avg_start']}-"
                       f"{row['load_avg_end']} |")
    sweep = _latest_points(rows, "sweep")
    if sweep:
        out += ["", "| model | batch x length | K | variant | tokens/s | vs plain | vs hooks | "
                "CPU-time vs plain | CPU-time vs hooks | peak MiB | load |",
                "|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
        for row in sweep:
            out.append(f"| {row['model']} | {row['batch']} x {row['seq_len']} | {row['K']} | "
                       f"`{row['variant']}` | {_f(row, 'tokens_per_s'):.1f} | "
                       f"{_f(row, 'ratio_vs_plain'):.3f} | {_f(row, 'ratio_vs_hooks'):.3f} | "
                       f"{_f(row, 'cpu_ratio_vs_plain'):.3f} | "
                       f"{_f(row, 'cpu_ratio_vs_hooks'):.3f} | {_f(row, 'peak_mem_mb'):.1f} | "
                       f"{row['load_avg_end']} |")
    corpus = _latest_points(rows, "corpus")
    if corpus:
        out += ["", "| model | whole scan, counted tokens | tokens/s | peak MiB above the model | "
                "load |", "|---|---:|---:|---:|---|"]
        for row in sorted(corpus, key=lambda r: int(r["tokens"])):
            out.append(f"| {row['model']} | {int(row['tokens']):,} | {_f(row, 'tokens_per_s'):.1f}"
                       f" | {_f(row, 'peak_mem_mb'):.1f} | {row['load_avg_end']} |")
    return "\n".join(out)


if __name__ == "__main__":
    import sys
    print(markdown_tables(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/results/scan.csv"))
