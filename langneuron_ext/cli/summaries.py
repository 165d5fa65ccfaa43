"""What the scan and demo verbs print about a finished scan (shared, so no verb imports
another verb's module)."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def print_scan_summary(stats, out: Path, scan_seconds: float, load_seconds: float,
                       as_json: bool) -> None:
    """Print the summary (or JSON) of a finished scan."""
    tokens = int(stats.n_tokens.sum())
    if as_json:
        mean_p = {}
        for k, lang in enumerate(stats.languages):
            n = int(stats.n_tokens[k])
            mean_p[lang] = float(stats.counts[k].double().mean() / n) if n else None
        print(json.dumps({
            "out": str(out), "model": stats.model_name, "model_type": stats.model_type,
            "languages": stats.languages, "num_layers": stats.num_layers,
            "intermediate_size": stats.intermediate_size,
            "n_tokens": dict(zip(stats.languages, stats.n_tokens.tolist())),
            "mean_p_active": mean_p, "load_seconds": round(load_seconds, 2),
            "scan_seconds": round(scan_seconds, 2),
            "tokens_per_second": round(tokens / scan_seconds, 1) if scan_seconds > 0 else None,
            **_hist_summary(stats, as_json=True),
        }, indent=1))
        return
    print(stats.summary())
    rate = f", {tokens / scan_seconds:,.0f} tokens/s" if scan_seconds > 0 else ""
    print(f"scanned {tokens:,} tokens in {scan_seconds:.1f} s{rate} (model load "
          f"{load_seconds:.1f} s); wrote {out}", file=sys.stdout)
    if stats.hist is not None:
        print(_hist_summary(stats, as_json=False)["histograms"])


def _hist_summary(stats, as_json: bool) -> dict:
    """The histograms' size (scan --hist): one copy of them in memory and in the file."""
    if stats.hist is None:
        return {}
    from ..scan_memory import HistMemory
    memory = HistMemory(stats.num_languages, stats.num_layers, stats.intermediate_size,
                        stats.hist_bins)
    if as_json:
        return {"hist_bins": stats.hist_bins, "hist_bytes": memory.stats_bytes}
    return {"histograms": f"histograms: {memory.describe()}; a scan holds them on the layers' "
                          f"devices and, while saving, twice more on the CPU"}
