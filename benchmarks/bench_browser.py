"""Size on disk and opening time of the neuron browser for a 7B-size neuron set.

    python benchmarks/bench_browser.py --rounds 5

Builds a synthetic set the size of a 7B model's (32 layers x 11008 neurons, 10 languages, about
3,500 language neurons, k = 20 examples per language and neuron, histograms of 32 bins;
`langneuron_ext/browse/synthetic.py`), writes the site with `build_site` (default page context)
and opens it in Debian's headless Chromium (Playwright, /usr/bin/chromium) `--rounds` times:
the time from navigation to the page's ready mark (overview drawn, neuron table loaded and
rendered), and to a neuron page with its examples drawn (its layer file loaded and inflated).
Writes docs/results/browser/synthetic_7b.json with the medians, the bytes on disk, the machine
and its load.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "results" / "browser" / "synthetic_7b.json"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--per-language", type=int, default=390)
    p.add_argument("--out", default=str(OUT))
    p.add_argument("--keep", metavar="DIR", help="write the site here and keep it")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright

    from langneuron_ext.browse import DEFAULT_CONTEXT, build_site, site_size
    from langneuron_ext.browse.synthetic import synthetic_inputs

    t0 = time.perf_counter()
    stats, neurons, examples = synthetic_inputs(per_language=args.per_language, k=20,
                                                context=16, hist_bins=32)
    made = time.perf_counter()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-browser-"))
    site = build_site(stats, neurons, work / "site", examples=examples)
    built = time.perf_counter()
    size = site_size(site)
    largest_layer = max(f.stat().st_size for f in (site / "data").glob("layer_*.js"))
    columns = examples.columns
    probe = f"L{int(columns[len(columns) // 2, 0])}.N{int(columns[len(columns) // 2, 1])}"
    opened, neuron_page = [], []
    with sync_playwright() as pw:
        for _ in range(args.rounds):
            # launch() starts every browser with a fresh temporary profile (user-data-dir)
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            start = time.perf_counter()
            page.goto((site / "index.html").as_uri())
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            opened.append(time.perf_counter() - start)
            start = time.perf_counter()
            page.evaluate(f"location.hash = '#n/{probe}'")
            page.wait_for_selector("#examples .example", timeout=60_000)
            neuron_page.append(time.perf_counter() - start)
            browser.close()
    load = os.getloadavg()
    result = dict(
        command="python benchmarks/bench_browser.py --rounds %d" % args.rounds,
        model_shape="32 layers x 11008 neurons (7B-size, synthetic)",
        languages=len(stats.languages), neurons=int(columns.shape[0]),
        language_entries=int(sum(neurons.count(lang) for lang in neurons.languages)),
        k=examples.k, recorded_context=examples.context, page_context=DEFAULT_CONTEXT,
        hist_bins=32, bytes_on_disk=size, mb_on_disk=round(size / 1e6, 2),
        largest_layer_file_bytes=largest_layer, files=sum(1 for f in site.rglob("*")
                                                           if f.is_file()),
        open_seconds_median=round(statistics.median(opened), 3),
        open_seconds=[round(x, 3) for x in opened],
        neuron_page_seconds_median=round(statistics.median(neuron_page), 3),
        neuron_page_seconds=[round(x, 3) for x in neuron_page], probe=probe,
        build_seconds=round(built - made, 1), synth_seconds=round(made - t0, 1),
        browser="Debian chromium (headless, Playwright executable_path)",
        machine=f"{platform.machine()}, {os.cpu_count()} cpus", load_1m=round(load[0], 2),
        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    if not args.keep:
        import shutil
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
