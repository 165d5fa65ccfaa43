"""Render a steering-benchmark result (`langneuron steer-bench`): CSV, markdown and the plot of
success against fluency (one curve per method over its strengths, 95% intervals as bars)."""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Dict, List, Mapping, Optional

CSV_FIELDS = ["pair", "method", "strength", "layers", "random", "condition", "neurons",
              "prompts", "success_langid", "success_langid_lo", "success_langid_hi",
              "success_lingua", "success_lingua_lo", "success_lingua_hi", "source_share_langid",
              "fluency_nll", "fluency_nll_lo", "fluency_nll_hi", "chrf", "chrf_lo", "chrf_hi",
              "chrf_native", "score", "random_sets", "random_success_pooled", "random_p",
              "random_rank"]


class SteerBenchReportError(ValueError):
    """A file that is not a steer-bench result."""


def check_result(data) -> Mapping:
    if not isinstance(data, Mapping) or not isinstance(data.get("table"), list) \
            or "config" not in data:
        raise SteerBenchReportError("not a steer-bench result (no `table` / `config`); write "
                                    "one with `langneuron steer-bench --out-dir DIR`")
    return data


def _flat(row: Mapping) -> Dict[str, object]:
    out = {k: row.get(k) for k in CSV_FIELDS if k in row}
    for name in ("success_langid", "success_lingua", "fluency_nll", "chrf"):
        ci = row.get(f"{name}_ci") or [None, None]
        out[f"{name}_lo"], out[f"{name}_hi"] = ci[0], ci[1]
    if row.get("layers"):
        out["layers"] = ",".join(str(l) for l in row["layers"])
    return out


def to_csv(data: Mapping) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in check_result(data)["table"]:
        writer.writerow(_flat(row))
    return buf.getvalue()


def _f(x, digits=2, signed=False) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def _ci(row, name, digits=2) -> str:
    v, ci = row.get(name), row.get(f"{name}_ci") or [None, None]
    return f"{_f(v, digits)} [{_f(ci[0], digits)}, {_f(ci[1], digits)}]"


def main_rows(data: Mapping) -> List[Mapping]:
    """The rows that are not random controls."""
    return [r for r in check_result(data)["table"] if r.get("random") is None]


def to_markdown(data: Mapping, include_random: bool = False) -> str:
    rows = check_result(data)["table"]
    if not include_random:
        rows = [r for r in rows if r.get("random") is None]
    lines = ["| pair | condition | success langid [95% CI] | success lingua [95% CI] | "
             "fluency NLL [95% CI] | chrF [95% CI] | score | random sets: pooled success, "
             "p (rank) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        rand = "-"
        if r.get("random_sets"):
            rand = (f"{_f(r.get('random_success_pooled'))}, p = {_f(r.get('random_p'), 3)} "
                    f"({r.get('random_rank')} of {r['random_sets'] + 1})")
        lines.append(f"| {r['pair']} | {r['condition']} | {_ci(r, 'success_langid')} | "
                     f"{_ci(r, 'success_lingua')} | {_ci(r, 'fluency_nll')} | "
                     f"{_ci(r, 'chrf', 1)} | {_f(r.get('score'))} | {rand} |")
    return "\n".join(lines)


def method_summary(data: Mapping) -> List[Dict[str, object]]:
    """Per method and strength, averaged over pairs: success (langid), fluency, chrF and score;
    sorted by score (best first)."""
    groups: Dict[str, List[Mapping]] = {}
    for r in main_rows(data):
        groups.setdefault(r["condition"], []).append(r)
    out = []
    for cond, rows in groups.items():
        def mean(key):
            vals = [r[key] for r in rows if r.get(key) is not None]
            return sum(vals) / len(vals) if vals else None
        out.append({"condition": cond, "method": rows[0]["method"], "pairs": len(rows),
                    "success_langid": mean("success_langid"),
                    "success_lingua": mean("success_lingua"),
                    "fluency_nll": mean("fluency_nll"), "chrf": mean("chrf"),
                    "score": mean("score")})
    out.sort(key=lambda r: -(r["score"] if r["score"] is not None else -1))
    return out


def summary_markdown(data: Mapping) -> str:
    lines = ["| condition | pairs | mean success langid | mean success lingua | mean fluency NLL "
             "| mean chrF | mean score |", "|---|---|---|---|---|---|---|"]
    for r in method_summary(data):
        lines.append(f"| {r['condition']} | {r['pairs']} | {_f(r['success_langid'])} | "
                     f"{_f(r['success_lingua'])} | {_f(r['fluency_nll'])} | {_f(r['chrf'], 1)} | "
                     f"{_f(r['score'])} |")
    return "\n".join(lines)


def _bars(points, name) -> List[List[float]]:
    """Lower and upper error-bar lengths from the 95% intervals (0 where there is none)."""
    def gap(p, side):
        ci = p.get(f"{name}_ci") or [None, None]
        if ci[side] is None:
            return 0.0
        return max(0.0, (p[name] - ci[0]) if side == 0 else (ci[1] - p[name]))
    return [[gap(p, 0) for p in points], [gap(p, 1) for p in points]]


def plot(data: Mapping, path) -> Path:
    """Success (langid) against fluency NLL per pair (one panel each): one curve per method
    over its strengths, 95% intervals as bars, the random sets in grey."""
    from .plots import _pyplot
    plt = _pyplot()
    rows = check_result(data)["table"]
    pairs = list(dict.fromkeys(r["pair"] for r in rows))
    cols = min(len(pairs), 2)
    nrows = math.ceil(len(pairs) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(6.2 * cols, 4.6 * nrows), squeeze=False)
    for ax, pair in zip(axes.flat, pairs):
        curves: Dict[str, List[Mapping]] = {}
        for r in rows:
            if r["pair"] != pair:
                continue
            name = r["method"] if r["method"] != "diffmean" else \
                f"diffmean[{','.join(str(l) for l in r['layers'])}]"
            if r.get("random") is not None:
                name = "random sets"
            curves.setdefault(name, []).append(r)
        for name, pts in curves.items():
            pts = [p for p in pts if p.get("fluency_nll") is not None]
            if not pts:
                continue
            pts.sort(key=lambda p: (p.get("strength") or 0))
            x = [p["fluency_nll"] for p in pts]
            y = [p["success_langid"] for p in pts]
            xerr = _bars(pts, "fluency_nll")
            yerr = _bars(pts, "success_langid")
            style = dict(fmt="o", color="0.6", alpha=0.5, ms=3) if name == "random sets" else \
                dict(fmt="o-" if len(pts) > 1 and name != "none" else "s", ms=5, capsize=2)
            ax.errorbar(x, y, xerr=xerr, yerr=yerr, label=name, **style)
        ax.set_title(f"{pair}")
        ax.set_xlabel("fluency: unsteered model's NLL of the generation (lower is better)")
        ax.set_ylabel("success: share identified as target (langid)")
        ax.set_ylim(-0.05, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(pairs):]:
        ax.set_visible(False)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def render(data: Mapping, out_dir, stem: str = "steer_bench", command: Optional[str] = None
           ) -> List[Path]:
    """Write STEM.csv, STEM.md and STEM.png into `out_dir`; returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / f"{stem}.csv"
    csv_path.write_text(to_csv(data), encoding="utf-8")
    png = plot(data, out_dir / f"{stem}.png")
    cfg = data["config"]
    md = [f"# Steering benchmark: {cfg.get('model', '?')}", ""]
    if command:
        md += [f"Produced by `{command}`", ""]
    md += [f"Pairs {', '.join(cfg['pairs'])}; prompts per pair "
           f"{', '.join(f'{k}: {v}' for k, v in cfg['prompts'].items())}; "
           f"{cfg['max_new_tokens']} new tokens (greedy); {cfg['random_sets']} random set(s) "
           f"per neuron condition (matching: {cfg['random_match']}).", "",
           f"Score: {data.get('score_formula', '')}.", "", "## Summary (mean over pairs)", "",
           summary_markdown(data), "", "## Full table", "", to_markdown(data), "",
           f"![success against fluency]({png.name})", ""]
    md_path = out_dir / f"{stem}.md"
    md_path.write_text("\n".join(md), encoding="utf-8")
    return [out_dir / f"{stem}.json", csv_path, md_path, png]
