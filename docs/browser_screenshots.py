"""Screenshots of the neuron browser for the README: the overview and one neuron page.

    python docs/browser_screenshots.py SITE_DIR --neuron L17.N123 --out docs/results/browser

SITE_DIR is a site written by `langneuron browse` (or `langneuron demo`'s browser/ folder).
Opens it in Debian's headless Chromium (Playwright, /usr/bin/chromium) at 1366 x 900 and
writes overview.png and neuron.png.
"""
from __future__ import annotations

import argparse
from pathlib import Path

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("site")
    p.add_argument("--neuron", required=True, help="id of the neuron page, e.g. L17.N123")
    p.add_argument("--out", default="docs/results/browser")
    args = p.parse_args()
    from playwright.sync_api import sync_playwright
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    index = (Path(args.site).resolve() / "index.html").as_uri()
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
        page = browser.new_page(viewport={"width": 1366, "height": 900})
        page.goto(index)
        page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        page.screenshot(path=str(out / "overview.png"), full_page=False)
        page.fill("#search-box", args.neuron)
        page.press("#search-box", "Enter")
        page.wait_for_selector("#examples .example, #examples-note", timeout=60_000)
        page.screenshot(path=str(out / "neuron.png"), full_page=False)
        browser.close()
    print(f"wrote {out / 'overview.png'} and {out / 'neuron.png'}")


if __name__ == "__main__":
    main()
