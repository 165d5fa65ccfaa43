"""Combine the per-pair results of run.sh into one table: steer_bench.{json,csv,md,png} beside
the pair folders (all pairs' rows, generations left in the pair files) and summary.md, success
pooled over the pairs' prompts with Wilson 95% intervals.

    python docs/results/steering_bench/combine.py [DIR]
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from langneuron_ext.evaluate.uncertainty import wilson_interval
from langneuron_ext.report.steer_bench import render

PAIRS = ("en_fr", "en_ru", "fr_de", "en_zh")


def load(root: Path) -> dict:
    parts = [json.loads((root / p / "steer_bench.json").read_text(encoding="utf-8"))
             for p in PAIRS if (root / p / "steer_bench.json").is_file()]
    if not parts:
        sys.exit(f"no finished pair under {root}; run run.sh first")
    config = dict(parts[0]["config"])
    config["pairs"] = [p for part in parts for p in part["config"]["pairs"]]
    config["prompts"] = {k: v for part in parts for k, v in part["config"]["prompts"].items()}
    config.pop("prompt_digest", None)
    return {"config": config, "table": [r for part in parts for r in part["table"]],
            "score_formula": parts[0]["score_formula"],
            "commands": [part.get("command") for part in parts]}


def pooled(rows, key) -> tuple:
    hits = sum(round(r[key] * r["prompts"]) for r in rows)
    n = sum(r["prompts"] for r in rows)
    lo, hi = wilson_interval(hits, n)
    return hits, n, lo, hi


def summary(data: dict) -> str:
    groups: dict = {}
    randoms: dict = {}
    for r in data["table"]:
        if r["random"] is None:
            groups.setdefault(r["condition"], []).append(r)
        else:
            randoms.setdefault(r["condition"].rsplit(" random#", 1)[0], []).append(r)
    lines = ["| condition | success langid, pooled [95% CI] | success lingua, pooled [95% CI] "
             "| fluency NLL (mean over pairs) | chrF (mean over pairs) | score (mean) | random "
             "sets: success pooled [95% CI] |", "|---|---|---|---|---|---|---|"]
    body = []
    for cond, rows in groups.items():
        a = pooled(rows, "success_langid")
        b = pooled(rows, "success_lingua")
        flu = sum(r["fluency_nll"] for r in rows) / len(rows)
        chrf = sum(r["chrf"] for r in rows) / len(rows)
        score = sum(r["score"] for r in rows) / len(rows)
        rand = "-"
        if cond in randoms:
            c = pooled(randoms[cond], "success_langid")
            rand = f"{c[0]}/{c[1]} = {c[0] / c[1]:.2f} [{c[2]:.2f}, {c[3]:.2f}]"
        body.append((score, f"| {cond} | {a[0]}/{a[1]} = {a[0] / a[1]:.2f} [{a[2]:.2f}, "
                            f"{a[3]:.2f}] | {b[0] / b[1]:.2f} [{b[2]:.2f}, {b[3]:.2f}] | "
                            f"{flu:.2f} | {chrf:.1f} | {score:.2f} | {rand} |"))
    body.sort(key=lambda t: -t[0])
    return "\n".join(lines + [line for _, line in body])


def main() -> None:
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    data = load(root)
    (root / "steer_bench.json").write_text(json.dumps(data, indent=1, ensure_ascii=False,
                                                      allow_nan=False), encoding="utf-8")
    render(data, root, command="docs/results/steering_bench/run.sh (one steer-bench per pair)")
    text = ["# Steering benchmark, all pairs", "",
            f"Pairs {', '.join(data['config']['pairs'])}, "
            f"{sum(data['config']['prompts'].values())} prompts in all. Success pooled over "
            f"the pairs' prompts (Wilson 95% intervals); fluency, chrF and score averaged over "
            f"the pairs. Sorted by score ({data['score_formula']}).", "", summary(data), ""]
    (root / "summary.md").write_text("\n".join(text), encoding="utf-8")
    print("\n".join(text))


if __name__ == "__main__":
    main()
