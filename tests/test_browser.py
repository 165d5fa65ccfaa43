"""`langneuron browse` in a real browser: Debian's Chromium (`make chromium`), headless, driven
by Playwright through `executable_path` (no downloaded browser build).

The site is made from a real pass on a tiny llama (scan, a typed neuron set, `ln.examples`), so
the shading of every example token can be checked against the activations the examples file
recorded. The page must load from the file system with no console error and no failed or
non-file request; the overview draws one cell per language and layer with the set's counts;
searching an id opens its page; sorting a column sorts it; the table is usable from the
keyboard; a panel whose input lacks its fields says so while the rest renders; bad inputs are
one-line errors that write nothing. A mixture-of-experts scan (a tiny qwen2_moe: a dense layer,
then four routed experts and a shared one) adds the routing panel, whose shares, outlines and
divergences must equal `routed_share`, the language experts and `routing_divergence`, and per
neuron its expert and P(act > 0 | routed), equal to `activation_probability("routed")`.
"""
from __future__ import annotations

import copy
import fnmatch
import json
from pathlib import Path

import pytest
import torch
from test_scan import LANGS, tiny_llama, write_corpus

from langneuron_ext.browse import BrowseError, _round, build_site
from langneuron_ext.browse.synthetic import synthetic_inputs
from langneuron_ext.cli import main
from langneuron_ext.examples import examples
from langneuron_ext.identify.experts import experts as language_experts
from langneuron_ext.identify.neuron_set import IdentifyError, NeuronSet
from langneuron_ext.models.toy import byte_tokenizer
from langneuron_ext.routing_stats import routed_share, routing_divergence
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
    # a dense model: no routing panel, no expert column
    assert p.page.locator("#experts").count() == 0
    assert p.page.locator("#neuron-table th[data-key='expert']").count() == 0
    assert not (site / "data" / "experts.js").exists()
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
    # same shape, but identified from another model's scan
    named = NeuronSet.load(root / "neurons.json")
    named.params["model"] = "gemma-3-270m"
    named.save(tmp_path / "named.json")
    refused(["browse", "--stats", str(root / "stats.safetensors"), "--neurons",
             str(tmp_path / "named.json"), "--out-dir", str(out)], "made for gemma-3-270m")
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


# ---- mixture-of-experts models ----------------------------------------------------------------
@pytest.fixture(scope="module")
def moe(tmp_path_factory):
    """A tiny qwen2_moe's scan; a neuron set with dense, routed and shared-expert neurons per
    language; its examples; language experts (loose thresholds, so every language has some)."""
    from test_moe_routing import byte_moe
    root = tmp_path_factory.mktemp("moe")
    model, tok = byte_moe("qwen2_moe"), byte_tokenizer()
    corpus = write_corpus(root, lines_per_language=30)
    stats = scan(model, tok, corpus, tokens_per_language=300, progress=False, impl="torch",
                 **OPTS)
    stats.save(root / "stats.safetensors")
    probs = stats.probabilities()
    layout = stats.expert_layout()
    routed_end = layout[1][0]["experts"] * layout[1][0]["expert_size"]
    neurons = {}
    for k, lang in enumerate(stats.languages):   # per language: 2 dense, 3 routed, 1 shared
        gap = probs[k] - probs.mean(0)
        for layer, lo, hi, n in ((0, 0, stats.layer_sizes()[0], 2), (1, 0, routed_end, 3),
                                 (1, routed_end, stats.layer_sizes()[1], 1)):
            ids = (torch.topk(gap[layer, lo:hi], n).indices + lo).tolist()
            neurons.setdefault(lang, {}).setdefault(layer, []).extend(ids)
    ns = NeuronSet("test", {}, stats.languages, stats.num_layers, stats.intermediate_size,
                   neurons)
    ns.save(root / "neurons.json")
    ex = examples(model, tok, corpus, ns, k=3, context=4, tokens_per_language=300,
                  progress=False, **OPTS)
    found = language_experts(stats, top_rate=0.5, filter_rate=0.5, activation_bar_ratio=0.5)
    found.save(root / "experts.json")
    return root, stats, ns, ex, found


def _olmoe(experts: int):
    from test_moe import _BASE
    from transformers import AutoConfig, AutoModelForCausalLM

    from langneuron_ext.models.toy import BYTE_VOCAB_SIZE
    torch.manual_seed(7)
    cfg = AutoConfig.for_model("olmoe", **{**_BASE, "vocab_size": BYTE_VOCAB_SIZE,
                                           "num_hidden_layers": 4},
                               num_experts=experts, intermediate_size=8)
    model = AutoModelForCausalLM.from_config(cfg).float().eval()
    with torch.no_grad():                  # a peaked router, so languages route apart
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.normal_(0, 1.0)
    return model


def _expert_of(stats, layer, i):
    for seg in stats.expert_layout()[layer]:
        W, E = seg["expert_size"], seg["experts"]
        if seg["offset"] <= i < seg["offset"] + E * W:
            return seg["kind"], (i - seg["offset"]) // W
    raise AssertionError((layer, i))


def test_moe_site_shows_routing_experts_and_routed_probabilities(browser, moe, tmp_path):
    root, stats, ns, ex, found = moe
    site = build_site(stats, ns, tmp_path / "site", examples=ex, context=4,
                      language_experts=found)
    p = Page(browser, site)
    assert p.page.get_attribute("body", "data-ready") == "1"
    assert p.clean(), (p.errors, p.failed, p.urls)
    K, langs = stats.num_languages, stats.languages
    assert any(found.count(lang) for lang in langs)
    # language experts in text
    counts = p.page.eval_on_selector_all(
        "#experts-table tbody tr",
        "rs => rs.map(r => [r.dataset.lang, +r.children[1].textContent])")
    assert counts == [[lang, found.count(lang)] for lang in langs]
    # routed share of the only MoE layer (1), its language experts framed
    assert p.page.get_attribute("#routed-share", "data-layer") == "1"
    cells = p.page.eval_on_selector_all(
        "#routed-share rect.share-cell",
        "cs => cs.map(c => [c.dataset.lang, +c.dataset.expert, +c.dataset.share,"
        " c.classList.contains('lang-expert')])")
    share = routed_share(stats)
    E = stats.routed.shape[2]
    assert len(cells) == K * E
    for lang, e, value, framed in cells:
        k = langs.index(lang)
        assert value == pytest.approx(float(share[k, 1, e]), rel=1e-3, abs=1e-9)
        assert framed == bool(found.mask[k, 1, e])
    assert sum(c[3] for c in cells) == int(found.mask[:, 1].sum()) > 0
    # divergence from the reference: a mark per non-reference language on MoE layers only
    marks = p.page.eval_on_selector_all(
        "#divergence .mark",
        "ms => ms.map(m => [m.dataset.lang, +m.dataset.layer, +m.dataset.value])")
    assert sorted((lang, layer) for lang, layer, _ in marks) == sorted(
        (lang, 1) for lang in langs if lang != found.reference)
    for lang, layer, value in marks:
        assert value == pytest.approx(float(found.divergence[langs.index(lang), layer]),
                                      rel=1e-3, abs=1e-9)
    # the table: an expert column, and P given routed on request
    rows = p.page.eval_on_selector_all(
        "#neuron-table tbody tr", "rs => rs.map(r => [r.dataset.id, r.children[2].textContent])")
    assert len(rows) == ns.num_unique()
    for nid, label in rows:
        layer, i = (int(v) for v in nid[1:].split(".N"))
        kind, e = _expert_of(stats, layer, i)
        assert label == {"routed": f"E{e}", "shared": "shared", "dense": "dense"}[kind]
    header = "#neuron-table th[data-key='p0'] button"
    assert p.page.inner_text(header).startswith("P(act>0) ")
    p.page.select_option("#f-given", "routed")
    assert p.page.inner_text(header).startswith("P(act>0 | routed) ")
    given = stats.activation_probability("routed")
    token = stats.probabilities()
    shown = p.page.eval_on_selector_all(
        "#neuron-table tbody tr",
        "rs => rs.map(r => [r.dataset.id, [...r.children].slice(6).map(c => c.textContent)])")
    differs = 0
    for nid, values in shown:
        layer, i = (int(v) for v in nid[1:].split(".N"))
        assert len(values) == K
        for k, text in enumerate(values):
            assert float(text) == pytest.approx(float(given[k, layer, i]), abs=6e-4)
        differs += any(abs(float(given[k, layer, i]) - float(token[k, layer, i])) > 1e-3
                       for k in range(K))
    assert differs > 0
    # a routed neuron's page: its expert, P given routed with the routed tokens
    nid = next(n for n, label in rows if label.startswith("E"))
    layer, i = (int(v) for v in nid[1:].split(".N"))
    _, e = _expert_of(stats, layer, i)
    p.page.evaluate(f"location.hash = '#n/{nid}'")
    p.page.wait_for_selector("#prob-routed")
    assert f"routed expert {e} " in p.page.inner_text("#neuron-where")
    owners = [lang for k, lang in enumerate(langs) if found.mask[k, layer, e]]
    text = p.page.inner_text("#expert-languages")
    assert (f"language expert of {', '.join(owners)}." in text) if owners else ("not a" in text)
    bars = p.page.eval_on_selector_all(
        "#prob-routed tr",
        "rs => rs.map(r => [+r.children[2].textContent, r.children[3].textContent])")
    assert len(bars) == K
    for k, (value, routed_text) in enumerate(bars):
        assert value == pytest.approx(float(given[k, layer, i]), abs=6e-5)
        assert routed_text.startswith(f"{int(stats.routed[k, layer, e])} of "
                                      f"{int(stats.n_tokens[k])} tokens")
    # a shared-expert neuron: every token reaches it, no routed panel
    nid = next(n for n, label in rows if label == "shared")
    p.page.evaluate(f"location.hash = '#n/{nid}'")
    p.page.wait_for_function(f"document.querySelector('#neuron-h')?.textContent === 'Neuron {nid}'")
    assert "shared expert" in p.page.inner_text("#neuron-where")
    assert p.page.locator("#prob-routed").count() == 0
    assert p.clean(), (p.errors, p.failed)
    p.page.close()


def test_moe_site_computes_the_experts_when_not_given(browser, moe, tmp_path):
    root, stats, ns, _, _ = moe
    site = build_site(stats, ns, tmp_path / "site")
    text = (site / "data" / "experts.js").read_text()
    assert text.startswith("LN.experts(") and text.endswith(");\n")
    panel = json.loads(text[len("LN.experts("):-3])
    assert panel["source"] == "computed" and panel["moe_layers"] == [1]
    assert panel["routed"] == stats.routed.tolist()
    # four experts: the default top_rate (5%) selects none, which the panel says; the routing
    # shares and divergences need no thresholds and are still drawn
    with pytest.raises(IdentifyError, match="raise top_rate") as err:
        language_experts(stats)
    assert str(err.value) in panel["note_experts"] and panel["experts"] is None
    share, ref = routed_share(stats), panel["reference"]
    assert panel["share"][1][1] == [pytest.approx(float(v), rel=1e-3) for v in share[1, 1]]
    div = routing_divergence(stats, ref)
    assert panel["divergence"][2][1] == pytest.approx(float(div[2, 1]), rel=1e-3)
    assert panel["divergence"][2][0] is None                 # the dense layer
    table = json.loads((site / "data" / "table.js").read_text()[len("LN.table("):-3])
    given = stats.activation_probability("routed")
    assert table["columns"][-1] == "p_routed" and len(table["rows"]) == ns.num_unique()
    for row in table["rows"]:
        assert row[7] == [_round(float(v)) for v in given[:, row[0], row[1]]]
    p = Page(browser, site)
    assert "raise top_rate" in p.page.inner_text("#note-experts")
    assert p.page.locator("#experts-table").count() == 0
    assert p.page.locator("#routed-share rect.share-cell").count() == stats.num_languages * 4
    assert p.page.locator("#routed-share rect.lang-expert").count() == 0
    assert p.page.locator("#divergence .mark").count() == stats.num_languages - 1
    assert p.clean(), (p.errors, p.failed)
    p.page.close()


@pytest.fixture(scope="module")
def moe_many(tmp_path_factory):
    """An olmoe of 4 layers x 24 experts: enough experts for the defaults of identify.experts."""
    root = tmp_path_factory.mktemp("moe_many")
    stats = scan(_olmoe(24), byte_tokenizer(), write_corpus(root, lines_per_language=10),
                 tokens_per_language=120, progress=False, impl="torch", **OPTS)
    few = NeuronSet("test", {}, stats.languages, stats.num_layers, stats.intermediate_size,
                    {lang: {0: [k]} for k, lang in enumerate(stats.languages)})
    return stats, few


def test_moe_site_computes_the_experts_of_identify_defaults(browser, moe_many, tmp_path):
    stats, few = moe_many
    default = language_experts(stats)
    site = build_site(stats, few, tmp_path / "many")
    panel = json.loads((site / "data" / "experts.js").read_text()[len("LN.experts("):-3])
    assert panel["note_experts"] is None and panel["params"] == default.params
    assert panel["experts"] == {lang: {str(l): e for l, e in default.experts(lang).items()}
                                for lang in stats.languages}
    assert int(default.mask.sum()) > 0
    # the heatmap opens on the first layer with a language expert; another layer redraws it
    p = Page(browser, site)
    first = next(l for l in range(stats.num_layers) if bool(default.mask[:, l].any()))
    assert p.page.get_attribute("#routed-share", "data-layer") == str(first)
    share = routed_share(stats)
    for layer in range(stats.num_layers):
        p.page.select_option("#experts-layer", str(layer))
        assert p.page.get_attribute("#routed-share", "data-layer") == str(layer)
        cells = p.page.eval_on_selector_all(
            "#routed-share rect.share-cell",
            "cs => cs.map(c => [c.dataset.lang, +c.dataset.expert, +c.dataset.share,"
            " c.classList.contains('lang-expert')])")
        assert len(cells) == stats.num_languages * 24
        for lang, e, value, framed in cells:
            k = stats.languages.index(lang)
            assert value == pytest.approx(float(share[k, layer, e]), rel=1e-3, abs=1e-9)
            assert framed == bool(default.mask[k, layer, e])
    assert p.clean(), (p.errors, p.failed)
    p.page.close()


def test_moe_stats_without_routing_say_so(browser, moe, tmp_path):
    root, stats, ns, _, _ = moe
    old = copy.copy(stats)
    old.routed = old.route_weight = None
    site = build_site(old, ns, tmp_path / "site")
    p = Page(browser, site)
    assert p.page.get_attribute("body", "data-ready") == "1"
    assert "no routing counts" in p.page.inner_text("#note-experts")
    assert p.page.locator("#heatmap rect.cell").count() == len(ns.languages) * ns.num_layers
    assert p.page.locator("#f-given").count() == 0       # no P given routed to offer
    assert p.page.locator("#neuron-table th[data-key='expert']").count() == 1
    assert p.clean(), (p.errors, p.failed)
    p.page.close()
    with pytest.raises(BrowseError, match="lack the routing counts"):
        build_site(old, ns, tmp_path / "other", language_experts=moe[4])


def test_cli_experts_file(moe, real, tmp_path, capsys):
    root, stats, ns, _, found = moe
    out = tmp_path / "site"
    args = ["browse", "--stats", str(root / "stats.safetensors"), "--neurons",
            str(root / "neurons.json"), "--out-dir", str(out)]
    assert main([*args, "--experts", str(root / "experts.json")]) == 0
    assert '"source":"file"' in (out / "data" / "experts.js").read_text()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def refused(extra, words, base=args):
        capsys.readouterr()
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and words in err, err
        assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before

    dense_root = real[0]
    dense = ["browse", "--stats", str(dense_root / "stats.safetensors"), "--neurons",
             str(dense_root / "neurons.json"), "--out-dir", str(out)]
    refused(["--experts", str(root / "experts.json")], "dense model", base=dense)
    other = copy.deepcopy(found)
    other.languages = ["xx", *other.languages[1:]]
    other.save(tmp_path / "other.json")
    refused(["--experts", str(tmp_path / "other.json")], "do not match")
    named = copy.deepcopy(found)
    named.params["model"] = "Qwen/Qwen3-30B-A3B"
    named.save(tmp_path / "named.json")
    refused(["--experts", str(tmp_path / "named.json")], "found for Qwen/Qwen3-30B-A3B")
    refused(["--experts", str(root / "neurons.json")], "not a language experts file")
    refused(["--experts", str(tmp_path / "missing.json")], "does not exist")


def test_the_readme_figures_of_the_browser_are_committed():
    """Every file the README's browser section shows or cites is in the repository."""
    import re
    repo = Path(__file__).resolve().parents[1]
    text = (repo / "README.md").read_text(encoding="utf-8")
    section = text[text.index("## Neuron browser"):]
    section = section[:section.index("\n## ", 1)]
    cited = set(re.findall(r"\((docs/results/browser/[^)\s]+)\)", section))
    assert {"docs/results/browser/overview.png", "docs/results/browser/neuron.png",
            "docs/results/browser/synthetic_7b.json"} <= cited
    for path in cited:
        assert (repo / path).is_file(), path
    shots = json.loads((repo / "docs/results/browser/screenshots.json").read_text())
    assert all((repo / "docs/results/browser" / f).stat().st_size > 10_000
               for f in shots["files"])
