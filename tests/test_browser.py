"""`langneuron browse` in a real browser: Debian's Chromium (`make chromium`), headless, driven
by Playwright through `executable_path` (no downloaded browser build).

The site is made from a real pass on a tiny llama (scan, a typed neuron set, `ln.examples`), so
the shading of every example token can be checked against the activations the examples file
recorded. The page must load from the file system with no console error and no failed or
non-file request; the overview draws one cell per language and layer with the set's counts;
searching an id opens its page; sorting a column sorts it; the table is usable from the
keyboard; a panel whose input lacks its fields says so while the rest renders; bad inputs are
one-line errors that write nothing.
"""
from __future__ import annotations

import fnmatch
from pathlib import Path

import pytest
import torch
from test_scan import LANGS, tiny_llama, write_corpus

from langneuron_ext.browse import BrowseError, build_site
from langneuron_ext.browse.synthetic import synthetic_inputs
from langneuron_ext.cli import main
from langneuron_ext.examples import examples
from langneuron_ext.identify.neuron_set import NeuronSet
from langneuron_ext.models.toy import byte_tokenizer
from langneuron_ext.scan import scan

CHROMIUM = Path("/usr/bin/chromium")
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--no-first-run"]
OPTS = dict(max_length=32, batch_size=3, docs_per_block=8)


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        pytest.fail("Debian's chromium is missing: run `make chromium` (apt-get install "
                    "chromium chromium-driver)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as pw:
        # launch() gives every browser a fresh temporary profile (user-data-dir)
        b = pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    """stats, a typed neuron set with phases and examples from a tiny llama."""
    root = tmp_path_factory.mktemp("real")
    model, tok = tiny_llama(), byte_tokenizer()
    corpus = write_corpus(root, lines_per_language=30)
    stats = scan(model, tok, corpus, tokens_per_language=300, progress=False, **OPTS)
    stats.save(root / "stats.safetensors")
    probs = stats.probabilities()
    neurons, specific, related = {}, {}, {}
    for k, lang in enumerate(LANGS):          # each language: its 4 most language-leaning
        gap = probs[k] - probs.mean(0)
        top = torch.topk(gap.reshape(-1), 4).indices
        for flat in top.tolist():
            l, i = divmod(flat, stats.intermediate_size)
            neurons.setdefault(lang, {}).setdefault(l, []).append(i)
            (specific if len(specific) <= len(related) else related).setdefault(
                lang, {}).setdefault(l, []).append(i)
    ns = NeuronSet("test", {}, LANGS, stats.num_layers, stats.intermediate_size, neurons,
                   {"specific": specific, "related": related, "general": {}},
                   [dict(name="understanding", start=0, stop=1),
                    dict(name="vocabulary output", start=1, stop=2)])
    ns.save(root / "neurons.json")
    ex = examples(model, tok, corpus, ns, k=5, context=6, tokens_per_language=300,
                  progress=False, **OPTS)
    ex.save(root / "examples.safetensors")
    return root, stats, ns, ex


class Page:
    """A page with every console message, page error and request recorded."""

    def __init__(self, browser, site: Path):
        self.page = browser.new_page(viewport={"width": 1366, "height": 900})
        self.errors, self.failed, self.urls = [], [], []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.failed.append(r.url))
        self.page.on("request", lambda r: self.urls.append(r.url))
        self.page.goto((site / "index.html").as_uri())
        self.page.wait_for_selector("body[data-ready]", timeout=30_000)

    def clean(self) -> bool:
        return (not self.errors and not self.failed
                and all(u.startswith(("file://", "data:", "blob:")) for u in self.urls))


@pytest.fixture(scope="module")
def site(real, tmp_path_factory):
    root, stats, ns, ex = real
    return build_site(stats, ns, tmp_path_factory.mktemp("site") / "site", examples=ex,
                      context=6)


def test_page_loads_clean_and_overview_draws(browser, site, real):
    _, _, ns, _ = real
    p = Page(browser, site)
    assert p.page.get_attribute("body", "data-ready") == "1"
    assert p.clean(), (p.errors, p.failed, p.urls)
    cells = p.page.eval_on_selector_all("#heatmap rect.cell", "es => es.map(e => +e.dataset.count)")
    assert cells == ns.per_layer_counts().reshape(-1).tolist()
    assert p.page.locator("#types rect").count() > 0
    assert p.page.locator("#heatmap .phases rect").count() == 2
    assert p.page.locator("#neuron-table tbody tr").count() == ns.num_unique()
    assert not p.page.is_visible("#note-types") and p.page.is_visible("#note-hist")
    p.page.close()


def test_search_opens_the_neuron_page_with_shading_in_recorded_order(browser, site, real):
    _, stats, ns, ex = real
    layer, neuron = [int(v) for v in ex.columns[2]]
    p = Page(browser, site)
    p.page.fill("#search-box", f"L{layer}.N{neuron}")
    p.page.press("#search-box", "Enter")
    p.page.wait_for_selector("#examples .example")
    assert p.page.inner_text("#neuron-h") == f"Neuron L{layer}.N{neuron}"
    assert p.page.locator("#prob-bars tr").count() == len(stats.languages)
    assert p.page.is_visible("#hist-note")            # these stats carry no histograms
    m = ex.index_of(layer, neuron)
    compared = 0
    for kk, lang in enumerate(ex.languages):
        lines = p.page.locator(f".lang-examples[data-lang='{lang}'] .example")
        recorded = ex.of(layer, neuron, lang)
        assert lines.count() == len(recorded) == int((ex.keys[kk, m] >= 0).sum())
        for j, rec in enumerate(recorded):
            line = lines.nth(j)
            assert float(line.get_attribute("data-value")) == pytest.approx(rec["value"],
                                                                            rel=1e-5)
            shown = line.locator(".tok").evaluate_all(
                "ts => ts.map(t => [+t.dataset.w, t.dataset.q === '' ? null : +t.dataset.q,"
                " t.getAttribute('title')])")
            acts = {w: rec["acts"][w] for w in range(len(rec["acts"]))}
            pairs = [(acts[w], q) for w, q, _ in shown if q is not None]
            assert len(pairs) == sum(a is not None for a in rec["acts"])
            for a1, q1 in pairs:                  # shading never inverts the recorded order
                for a2, q2 in pairs:
                    if a1 > a2:
                        assert q1 >= q2
                        compared += 1
            assert all(title.startswith("activation ") for _, _, title in shown)
    assert compared > 100
    assert p.clean(), (p.errors, p.failed)
    p.page.close()


def test_sorting_and_keyboard(browser, site):
    p = Page(browser, site)
    header = p.page.locator("#neuron-table th[data-key='p1'] button")
    header.click()
    col = "rows => rows.map(r => +r.children[6].textContent)"
    values = p.page.eval_on_selector_all("#neuron-table tbody tr", col)
    assert values == sorted(values, reverse=True) and len(set(values)) > 3
    header.click()
    values = p.page.eval_on_selector_all("#neuron-table tbody tr", col)
    assert values == sorted(values)
    assert p.page.get_attribute("#neuron-table th[data-key='p1']", "aria-sort") == "ascending"
    p.page.locator("#neuron-table th[data-key='entropy'] button").click()
    ent = p.page.eval_on_selector_all("#neuron-table tbody tr",
                                      "rows => rows.map(r => +r.children[4].textContent)")
    assert ent == sorted(ent)
    # keyboard: focus the first row, move down, open with Enter
    rows = p.page.locator("#neuron-table tbody tr")
    second = rows.nth(1).get_attribute("data-id")
    rows.nth(0).focus()
    p.page.keyboard.press("ArrowDown")
    assert p.page.evaluate("document.activeElement.dataset.id") == second
    p.page.keyboard.press("Enter")
    p.page.wait_for_selector("#neuron-h")
    assert p.page.inner_text("#neuron-h") == f"Neuron {second}"
    # filters
    p.page.goto((site / "index.html").as_uri() + "#table")
    p.page.wait_for_selector("body[data-ready]")
    p.page.select_option("#f-type", "related")
    types = p.page.eval_on_selector_all("#neuron-table tbody tr",
                                        "rows => rows.map(r => r.children[3].textContent)")
    assert types and set(types) == {"related"}
    p.page.fill("#search-box", "12-x")
    p.page.press("#search-box", "Enter")
    assert "not a neuron id" in p.page.inner_text("#status")
    assert p.clean(), (p.errors, p.failed)
    p.page.close()


def test_panels_without_their_fields_say_so(browser, real, tmp_path):
    _, stats, ns, _ = real
    untyped = NeuronSet("lape", {}, ns.languages, ns.num_layers, ns.intermediate_size,
                        ns.neurons)
    site = build_site(stats, untyped, tmp_path / "site")
    p = Page(browser, site)
    for note in ("#note-types", "#note-hist", "#note-examples", "#note-phases"):
        assert p.page.is_visible(note), note
    assert p.page.locator("#heatmap rect.cell").count() == len(LANGS) * ns.num_layers
    first = p.page.get_attribute("#neuron-table tbody tr", "data-id")
    p.page.evaluate(f"location.hash = '#n/{first}'")
    p.page.wait_for_selector("#examples-note")
    assert p.page.is_visible("#hist-note")
    assert p.page.locator("#prob-bars tr").count() == len(LANGS)
    p.page.evaluate("location.hash = '#n/L0.N99999'")
    p.page.wait_for_selector("#not-found")
    assert p.clean(), (p.errors, p.failed)
    p.page.close()


def test_histograms_and_a_missing_data_file(browser, tmp_path):
    stats, ns, ex = synthetic_inputs(num_layers=4, intermediate_size=64, languages=("a", "b"),
                                     per_language=6, k=3, context=2, hist_bins=8)
    site = build_site(stats, ns, tmp_path / "site", examples=ex)
    p = Page(browser, site)
    l, i = [int(v) for v in ex.columns[0]]
    p.page.evaluate(f"location.hash = '#n/L{l}.N{i}'")
    p.page.wait_for_selector("#hist svg")
    assert p.page.locator("#hist svg").count() == 2
    assert p.page.locator("#hist svg rect").count() == 2 * 8
    assert p.clean(), (p.errors, p.failed)
    p.page.close()
    (site / "data" / "table.js").unlink()
    p = Page(browser, site)
    assert p.page.get_attribute("body", "data-ready") == "error"
    assert "could not load" in p.page.inner_text("#status")
    assert p.page.locator("#heatmap rect.cell").count() == 2 * 4   # the rest still renders
    p.page.close()


# ---- the command and bad input ----------------------------------------------------------------
def _browse(root: Path, *extra) -> list:
    return ["browse", "--stats", str(root / "stats.safetensors"), "--neurons",
            str(root / "neurons.json"), *extra]


def test_cli_writes_a_site_and_refuses_bad_input(real, tmp_path, capsys):
    root, stats, ns, ex = real
    out = tmp_path / "site"
    assert main(_browse(root, "--examples", str(root / "examples.safetensors"),
                        "--out-dir", str(out))) == 0
    assert (out / "index.html").exists() and (out / "data" / "meta.js").exists()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def refused(args, words):
        capsys.readouterr()
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and words in err, err
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    # a neuron set of another model
    NeuronSet("x", {}, LANGS, 3, 99, {"en": {0: [1]}}).save(tmp_path / "other.json")
    refused(["browse", "--stats", str(root / "stats.safetensors"), "--neurons",
             str(tmp_path / "other.json"), "--out-dir", str(out)], "another model")
    # examples of another neuron set
    smaller = NeuronSet("x", {}, LANGS, ns.num_layers, ns.intermediate_size,
                        {"en": {0: [0]}})
    smaller.save(tmp_path / "smaller.json")
    refused(["browse", "--stats", str(root / "stats.safetensors"), "--neurons",
             str(tmp_path / "smaller.json"), "--examples", str(root / "examples.safetensors"),
             "--out-dir", str(out)], "another neuron set")
    # a stats file given as examples
    refused(_browse(root, "--examples", str(root / "stats.safetensors"), "--out-dir",
                    str(out)), "not an examples file")
    # unwritable or unsuitable out dirs
    refused(_browse(root, "--out-dir", "/proc/langneuron-site"), "cannot")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    refused(_browse(root, "--out-dir", str(foreign)), "not an earlier")
    assert (foreign / "notes.txt").read_text() == "mine"
    refused(_browse(root, "--out-dir", str(root)), "holds the input")
    # an earlier site is replaced whole
    assert main(_browse(root, "--out-dir", str(out))) == 0
    assert not list(out.parent.glob(".site*"))
    text = (out / "data" / "meta.js").read_text()
    assert '"has_examples":false' in text


def test_build_site_checks_before_writing(real, tmp_path):
    _, stats, ns, ex = real
    other = stats.select(LANGS[:2])
    with pytest.raises(BrowseError, match="not in the stats"):
        build_site(other, ns, tmp_path / "s")
    assert not (tmp_path / "s").exists()


def test_the_page_ships_as_package_data():
    """pip install copies browse/static: pyproject's package-data matches every file."""
    import tomllib
    repo = Path(__file__).resolve().parents[1]
    patterns = tomllib.loads((repo / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"]["langneuron_ext.browse"]
    static = repo / "langneuron_ext" / "browse" / "static"
    files = sorted(p.relative_to(static.parent).as_posix() for p in static.iterdir())
    assert files == ["static/app.js", "static/index.html", "static/style.css"]
    assert all(any(fnmatch.fnmatch(f, pat) for pat in patterns) for f in files)
