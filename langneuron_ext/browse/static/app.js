/* Language-neuron browser: runs offline from the file system. Data files in data/ call
   LN.meta / LN.table / LN.layer; they are loaded with <script> tags on demand. */
"use strict";
(function () {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const el = (tag, attrs, ...kids) => {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined || v === false) continue;
      if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : v);
    }
    for (const kid of kids.flat()) if (kid !== null && kid !== undefined)
      e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    return e;
  };
  const SVG = "http://www.w3.org/2000/svg";
  const svgEl = (tag, attrs, ...kids) => {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    for (const kid of kids) e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    return e;
  };
  const fmt = (x, d = 3) => (x === null || x === undefined) ? "–" :
    (Math.abs(x) >= 1000 || (x !== 0 && Math.abs(x) < 0.001) ? x.toExponential(2) : (+x).toFixed(d));
  const TYPE_NAMES = { S: "specific", R: "related", G: "general" };
  const state = { meta: null, table: null, layers: {}, pending: {}, sort: { key: "layer", dir: 1 },
                  shown: 200 };

  function status(msg, cls) {
    const s = $("#status");
    s.textContent = msg || "";
    s.className = cls || "note";
    s.hidden = !msg;
  }
  window.addEventListener("error", (e) => status("Error: " + e.message, "error"));
  window.addEventListener("unhandledrejection", (e) => status("Error: " + (e.reason && e.reason.message || e.reason), "error"));

  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const s = el("script", { src });
      s.onload = resolve;
      s.onerror = () => reject(new Error(src + " could not be loaded: is the site folder complete?"));
      document.head.append(s);
    });
  }

  // ---- data registration (called by data/*.js) ----
  const LN = window.LN = {
    meta(d) { state.meta = d; },
    table(d) { state.table = d; },
    layer(l, packed) { state.pending[l] = packed; },
  };

  async function inflate(b64) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    return JSON.parse(await new Response(stream).text());
  }

  async function layerData(l) {
    if (state.layers[l]) return state.layers[l];
    if (!(l in state.pending)) await loadScript(`data/layer_${l}.js`);
    state.layers[l] = await inflate(state.pending[l]);
    delete state.pending[l];
    return state.layers[l];
  }

  // ---- colours ----
  const heat = (t) => { // 0..1 -> light yellow .. dark blue
    t = Math.max(0, Math.min(1, t));
    const a = [255, 247, 220], b = [8, 64, 129];
    return `rgb(${a.map((v, i) => Math.round(v + (b[i] - v) * t)).join(",")})`;
  };
  const ink = (t) => t > 0.55 ? "#fff" : "#111";
  const diverge = (v, m) => { // red for positive, blue for negative
    if (v === null || !m) return "#fff";
    const t = Math.max(-1, Math.min(1, v / m));
    return t >= 0 ? `rgba(178,24,43,${0.15 + 0.75 * t})` : `rgba(33,102,172,${0.15 + 0.75 * -t})`;
  };

  // ---- overview ----
  function overview() {
    const m = state.meta, root = $("#overview-view");
    root.replaceChildren();
    root.append(el("h2", { id: "overview-h", text: "Overview" }),
      el("p", { class: "muted" }, `${m.model || "model"} (${m.model_type || "?"}) · ${m.num_layers} layers × ` +
        `${m.intermediate_size} neurons · method ${m.method} · languages ${m.languages.join(", ")} · ` +
        `tokens per language ${m.tokens.join(", ")}`));
    for (const n of m.notes || []) if (n === "hist")
      root.append(el("p", { class: "note", id: "note-hist" }, "The stats carry no activation histograms " +
        "(rescan with --hist): neuron pages show probabilities and examples only."));
    if (!m.has_examples) root.append(el("p", { class: "note", id: "note-examples" },
      "No examples file was given (langneuron examples … then browse --examples): neuron pages show no top examples."));
    root.append(...[heatmap(m), typesPanel(m), nllPanel(m), alignmentPanel(m)].filter(Boolean));
    if (m.steer_bench) root.append(el("div", { class: "panel" }, el("h3", { text: "Steering benchmark" }),
      el("pre", { text: JSON.stringify(m.steer_bench, null, 1).slice(0, 20000) })));
  }

  function phaseBands(m, x0, cw, y) {
    const g = svgEl("g", { class: "phases" });
    const colours = ["#e5f5e0", "#fee6ce", "#deebf7", "#f2f0f7"];
    (m.phases || []).forEach((p, i) => {
      const w = (p.stop - p.start) * cw;
      g.append(svgEl("rect", { x: x0 + p.start * cw, y, width: w, height: 16, fill: colours[i % 4],
                               stroke: "#999" }, svgEl("title", {}, `${p.name}: layers ${p.start}–${p.stop - 1}`)),
               svgEl("text", { x: x0 + p.start * cw + 3, y: y + 12 }, p.name.length * 6 < w ? p.name : String(i + 1)));
    });
    return g;
  }

  function heatmap(m) {
    const K = m.languages.length, L = m.num_layers;
    const cw = Math.max(14, Math.min(34, Math.floor(1000 / L))), ch = 22, x0 = 44, y0 = m.phases ? 40 : 20;
    const max = Math.max(1, ...m.counts.flat());
    const svg = svgEl("svg", { id: "heatmap", width: x0 + L * cw + 10, height: y0 + K * ch + 24,
                               role: "img", "aria-label": "neurons per language and layer" });
    if (m.phases) svg.append(phaseBands(m, x0, cw, 2));
    for (let l = 0; l < L; l++) if (l % Math.ceil(L / 24) === 0)
      svg.append(svgEl("text", { x: x0 + l * cw + cw / 2, y: y0 - 4, "text-anchor": "middle" }, l));
    m.languages.forEach((lang, k) => {
      svg.append(svgEl("text", { x: x0 - 6, y: y0 + k * ch + 15, "text-anchor": "end" }, lang));
      for (let l = 0; l < L; l++) {
        const n = m.counts[k][l], t = n / max;
        const cell = svgEl("rect", { x: x0 + l * cw, y: y0 + k * ch, width: cw - 1, height: ch - 1,
                                     fill: heat(t), class: "cell", "data-count": n },
                           svgEl("title", {}, `${lang}, layer ${l}: ${n} neurons`));
        svg.append(cell);
        if (cw >= 22 && n) svg.append(svgEl("text", { x: x0 + l * cw + cw / 2, y: y0 + k * ch + 15,
          "text-anchor": "middle", fill: ink(t), "pointer-events": "none" }, n));
      }
    });
    svg.append(svgEl("text", { x: x0, y: y0 + K * ch + 16 }, `layer → (darker = more neurons; max ${max})`));
    return el("div", { class: "panel" }, el("h3", { text: "Neurons per language × layer" +
      (m.phases ? " with the four phases" : "") }), svg,
      m.phases ? null : el("p", { class: "note", id: "note-phases" }, "The neuron set carries no phases (identify with --method ternary to get them)."));
  }

  function typesPanel(m) {
    const box = el("div", { class: "panel" }, el("h3", { text: "Types per layer (specific / related / general)" }));
    if (!m.types) { box.append(el("p", { class: "note", id: "note-types" },
      "The neuron set carries no types (specific / related / general): identify with --method ternary.")); return box; }
    const L = m.num_layers, cw = Math.max(14, Math.min(34, Math.floor(1000 / L))), x0 = 44, H = 120;
    const per = ["specific", "related", "general"].map((t) =>
      Array.from({ length: L }, (_, l) => m.types[t].reduce((s, row) => s + row[l], 0)));
    const max = Math.max(1, ...Array.from({ length: L }, (_, l) => per[0][l] + per[1][l] + per[2][l]));
    const svg = svgEl("svg", { id: "types", width: x0 + L * cw + 10, height: H + 60, role: "img",
                               "aria-label": "neuron types per layer" });
    if (m.phases) svg.append(phaseBands(m, x0, cw, H + 22));
    const colours = ["#b2182b", "#ef8a62", "#67a9cf"];
    for (let l = 0; l < L; l++) {
      let y = H;
      per.forEach((vals, t) => {
        const h = vals[l] / max * (H - 10);
        y -= h;
        svg.append(svgEl("rect", { x: x0 + l * cw, y, width: cw - 2, height: h, fill: colours[t] },
          svgEl("title", {}, `layer ${l}: ${vals[l]} ${["specific", "related", "general"][t]} (language entries)`)));
      });
      if (l % Math.ceil(L / 24) === 0) svg.append(svgEl("text", { x: x0 + l * cw + cw / 2, y: H + 14, "text-anchor": "middle" }, l));
    }
    const legend = el("p", { class: "legend" }, ["specific", "related", "general"].map((t, i) =>
      el("span", {}, el("span", { class: "swatch", style: `background:${colours[i]}` }), t)));
    const table = el("table", {}, el("thead", {}, el("tr", {}, el("th", { text: "language" }),
      ["specific", "related", "general"].map((t) => el("th", { text: t })))),
      el("tbody", {}, m.languages.map((lang, k) => el("tr", {}, el("td", { text: lang }),
        ["specific", "related", "general"].map((t) => el("td", { text: m.types[t][k].reduce((a, b) => a + b, 0) }))))));
    box.append(svg, legend, table);
    return box;
  }

  function nllPanel(m) {
    const box = el("div", { class: "panel", id: "nll" }, el("h3", { text: "NLL change when a language's neurons are deactivated" }));
    if (!m.nll) { box.append(el("p", { class: "note" }, "No NLL matrix given (browse --nll FILE from langneuron evaluate).")); return box; }
    if (m.nll.note) { box.append(el("p", { class: "note", text: m.nll.note })); return box; }
    const max = Math.max(1e-9, ...m.nll.delta.flat().filter((v) => v !== null).map(Math.abs));
    const rows = m.nll.rows.map((name, r) => el("tr", {}, el("th", { text: name, scope: "row" }),
      m.nll.columns.map((c, j) => {
        const v = m.nll.delta[r][j], ci = m.nll.ci && m.nll.ci[r][j];
        const text = fmt(v) + (ci ? ` [${fmt(ci[0])}, ${fmt(ci[1])}]` : "");
        return el("td", { style: `background:${diverge(v, max)}`, title: `deactivate ${name}, evaluate ${c}: ${text}` }, text);
      })));
    box.append(el("p", { class: "muted", text: "ΔNLL (nats per token) with " + (m.nll.ci ? "95% intervals" : "no intervals") +
      "; rows: deactivated set" + (m.nll.method ? ` (${m.nll.method} neurons)` : "") + ", columns: evaluated language; red = worse." }),
      el("table", {}, el("thead", {}, el("tr", {}, el("th", { text: "set \\ language" }),
        m.nll.columns.map((c) => el("th", { text: c })))), el("tbody", {}, rows)));
    return box;
  }

  function alignmentPanel(m) {
    if (!m.alignment) return null;
    const a = m.alignment, box = el("div", { class: "panel", id: "alignment" }, el("h3", { text: "Alignment: types before and after" }));
    for (const n of a.notes || []) box.append(el("p", { class: "note", text: n }));
    if (a.counts) {
      const types = ["specific", "related", "general"];
      box.append(el("table", {}, el("thead", {}, el("tr", {}, el("th", { text: "language" }),
        types.map((t) => el("th", { text: `${t} before → after` })))),
        el("tbody", {}, Object.keys(a.counts.before).map((lang) => el("tr", {},
          el("td", { text: lang + ((a.counts.trained || []).includes(lang) ? " (trained)" : "") }),
          types.map((t) => el("td", { text: `${a.counts.before[lang][t]} → ${a.counts.after[lang][t]}` })))))));
    }
    return box;
  }

  // ---- neuron table ----
  function tableView() {
    const root = $("#table-view");
    if (root.dataset.built) return renderRows();
    root.dataset.built = "1";
    const t = state.table, m = state.meta;
    const langSel = el("select", { id: "f-lang" }, el("option", { value: "", text: "all" }),
      m.languages.map((l, k) => el("option", { value: k, text: l })));
    const typeSel = el("select", { id: "f-type" }, el("option", { value: "", text: "all" }),
      ["specific", "related", "general"].map((x) => el("option", { value: x, text: x })));
    const layerIn = el("input", { id: "f-layer", placeholder: "e.g. 10-12", size: 8 });
    const entIn = el("input", { id: "f-entropy", placeholder: "max", size: 6, type: "number", step: "0.01" });
    const pIn = el("input", { id: "f-p", placeholder: "min", size: 6, type: "number", step: "0.01" });
    for (const x of [langSel, typeSel, layerIn, entIn, pIn]) x.addEventListener("input", () => { state.shown = 200; renderRows(); });
    const cols = [["id", "neuron"], ["layer", "layer"], ["langs", "languages"], ["type", "type"], ["entropy", "LAPE entropy"]]
      .concat(t.languages.map((l, k) => ["p" + k, "P(act>0) " + l]));
    const head = el("tr", {}, cols.map(([key, label]) => el("th", { "data-key": key, scope: "col" },
      el("button", { type: "button", onclick: () => sortBy(key) }, label))));
    root.append(...[el("h2", { id: "table-h", text: "Neurons" }),
      el("div", { class: "filters" },
        el("label", {}, "language", langSel), el("label", {}, "type", typeSel),
        el("label", {}, "layers", layerIn), el("label", {}, "entropy ≤", entIn),
        el("label", {}, "P in language ≥", pIn),
        el("span", { id: "row-count", class: "muted", "aria-live": "polite" })),
      el("p", { class: "hint", text: "Sort by a column with its header; move through rows with ↑ ↓ (Home / End), open a neuron with Enter." }),
      m.types ? null : el("p", { class: "note", text: "The neuron set carries no types: the type column is empty." }),
      el("div", { class: "scroll" }, el("table", { id: "neuron-table" }, el("thead", {}, head), el("tbody", {}))),
      el("button", { id: "more", type: "button", onclick: () => { state.shown += 1000; renderRows(); } }, "Show more")].filter(Boolean));
    $("#neuron-table tbody").addEventListener("keydown", rowKeys);
    renderRows();
  }

  function parseLayers(text) {
    if (!text.trim()) return null;
    const set = new Set();
    for (const part of text.split(",")) {
      const [a, b] = part.split("-").map((s) => parseInt(s, 10));
      if (Number.isNaN(a)) continue;
      for (let l = a; l <= (Number.isNaN(b) ? a : b); l++) set.add(l);
    }
    return set;
  }

  function sortValue(row, key) {
    if (key === "id" || key === "layer") return row[0] * 1e7 + row[1];
    if (key === "langs") return row[2].length;
    if (key === "type") return ({ specific: 0, related: 1, general: 2 })[row[3]] ?? 3;
    if (key === "entropy") return row[4] ?? Infinity;
    return row[5][+key.slice(1)] ?? -1;
  }

  function sortBy(key) {
    state.sort = { key, dir: state.sort.key === key ? -state.sort.dir : (key.startsWith("p") ? -1 : 1) };
    renderRows();
  }

  function filtered() {
    const lang = $("#f-lang").value, type = $("#f-type").value, layers = parseLayers($("#f-layer").value);
    const ent = parseFloat($("#f-entropy").value), pmin = parseFloat($("#f-p").value);
    const sk = lang === "" ? null : state.table.languages.indexOf(state.meta.languages[+lang]);
    return state.table.rows.filter((r) => (lang === "" || r[2].includes(+lang)) && (!type || r[3] === type) &&
      (!layers || layers.has(r[0])) && (Number.isNaN(ent) || (r[4] !== null && r[4] <= ent)) &&
      (Number.isNaN(pmin) || sk === null || (r[5][sk] ?? 0) >= pmin));
  }

  function renderRows() {
    const { key, dir } = state.sort;
    const rows = filtered().sort((a, b) => (sortValue(a, key) - sortValue(b, key)) * dir || (a[0] - b[0]) || (a[1] - b[1]));
    const body = $("#neuron-table tbody"), m = state.meta;
    const shown = rows.slice(0, state.shown);
    body.replaceChildren(...shown.map((r) => el("tr", { tabindex: 0, "data-id": `L${r[0]}.N${r[1]}`,
      onclick: () => openNeuron(r[0], r[1]) },
      el("td", {}, el("a", { href: `#n/L${r[0]}.N${r[1]}`, tabindex: -1, text: `L${r[0]}.N${r[1]}` })),
      el("td", { text: r[0] }), el("td", { text: r[2].map((k) => m.languages[k]).join(" ") }),
      el("td", { text: r[3] || "–" }), el("td", { text: fmt(r[4]) }),
      r[5].map((p) => el("td", { text: fmt(p) })))));
    for (const th of document.querySelectorAll("#neuron-table th"))
      th.setAttribute("aria-sort", th.dataset.key === key ? (dir > 0 ? "ascending" : "descending") : "none");
    $("#row-count").textContent = `${rows.length} neurons` + (rows.length > shown.length ? `, first ${shown.length} shown` : "");
    $("#more").hidden = rows.length <= shown.length;
  }

  function rowKeys(e) {
    const row = e.target.closest("tr");
    if (!row) return;
    let next = null;
    if (e.key === "ArrowDown") next = row.nextElementSibling;
    else if (e.key === "ArrowUp") next = row.previousElementSibling;
    else if (e.key === "Home") next = row.parentElement.firstElementChild;
    else if (e.key === "End") next = row.parentElement.lastElementChild;
    else if (e.key === "Enter" || e.key === " ") { e.preventDefault(); location.hash = "#n/" + row.dataset.id; return; }
    if (next) { e.preventDefault(); next.focus(); }
  }

  // ---- neuron page ----
  function parseId(text) {
    const m = /^\s*L?\s*(\d+)\s*[.:/, ]\s*N?\s*(\d+)\s*$/i.exec(text || "");
    return m ? [parseInt(m[1], 10), parseInt(m[2], 10)] : null;
  }

  function openNeuron(l, n) { location.hash = `#n/L${l}.N${n}`; }

  async function neuronView(l, n) {
    const root = $("#neuron-view"), m = state.meta, t = state.table;
    root.replaceChildren(el("p", { class: "muted", text: `Loading layer ${l} …` }));
    const row = t.rows.find((r) => r[0] === l && r[1] === n);
    if (!row) {
      root.replaceChildren(el("h2", { text: `L${l}.N${n}` }), el("p", { class: "note", id: "not-found" },
        `L${l}.N${n} is not in this neuron set (${t.rows.length} neurons in ${m.num_layers} layers × ${m.intermediate_size}). ` +
        "Search for another id, or pick one in the table."));
      return;
    }
    const data = await layerData(l);
    const entry = data.neurons[String(n)] || {};
    const types = entry.types || {};
    root.replaceChildren(el("h2", { id: "neuron-h", text: `Neuron L${l}.N${n}` }),
      el("p", {}, `layer ${l}, neuron ${n} · languages: ${row[2].map((k) => m.languages[k]).join(", ")}` +
        ` · type: ${row[3] || "–"} · LAPE entropy ${fmt(row[4])}`));
    if (m.alignment && m.alignment.after_types) {
      const after = m.alignment.after_types[`${l}.${n}`] || {};
      root.append(el("div", { class: "panel", id: "align-types" }, el("h3", { text: "Type before → after alignment" }),
        el("table", {}, el("tbody", {}, m.languages.map((lang) => el("tr", {}, el("td", { text: lang }),
          el("td", { text: `${TYPE_NAMES[types[lang]] || "–"} → ${TYPE_NAMES[after[lang]] || "–"}` })))))));
    }
    // probability bars
    const pmax = Math.max(1e-9, ...row[5].map((p) => p || 0));
    root.append(el("div", { class: "panel" }, el("h3", { text: "Activation probability per language" }),
      el("table", { class: "bars", id: "prob-bars" }, el("tbody", {}, t.languages.map((lang, k) => el("tr", {},
        el("td", { text: lang }), el("td", { class: "barcell" },
          el("span", { class: "bar", style: `width:${(row[5][k] || 0) / pmax * 20}rem`, title: `P(act>0 | ${lang}) = ${fmt(row[5][k], 4)}` })),
        el("td", { text: fmt(row[5][k], 4) }),
        row[6] ? el("td", { class: "muted", text: "mean " + fmt(row[6][k]) }) : null))))));
    // histograms
    const hbox = el("div", { class: "panel", id: "hist" }, el("h3", { text: "Activation histogram per language" }));
    if (!m.has_hist || !entry.hist) hbox.append(el("p", { class: "note", id: "hist-note" },
      "These stats carry no histograms (the scan ran without --hist); the panel needs them."));
    else hbox.append(histograms(entry.hist, data.edges, t.languages));
    root.append(hbox);
    // examples
    const ebox = el("div", { class: "panel", id: "examples" }, el("h3", { text: "Top examples per language" }));
    if (!m.has_examples) ebox.append(el("p", { class: "note", id: "examples-note" },
      "No examples file was given (langneuron examples …, then browse --examples FILE)."));
    else if (!entry.ex) ebox.append(el("p", { class: "note", text: "The examples file has no entry for this neuron." }));
    else {
      const toggle = el("label", {}, el("input", { type: "checkbox", id: "show-values", onchange: (e) =>
        root.classList.toggle("values", e.target.checked) }), " show every token's value");
      ebox.append(el("p", { class: "hint" }, "Each token is shaded by this neuron's activation on it (darker = larger; hover for the value; the framed token is the example's own position). ", toggle));
      const grid = el("div", { class: "langs" });
      entry.ex.forEach(([scale, items], k) => grid.append(examplesOf(m.languages[k] ?? k, scale, items, data.vocab)));
      ebox.append(grid);
    }
    root.append(ebox);
  }

  function histograms(hist, edges, langs) {
    const wrap = el("div", { class: "langs" });
    hist.forEach((counts, k) => {
      const total = counts.reduce((a, b) => a + b, 0), max = Math.max(1, ...counts);
      const W = 320, H = 80, bw = W / counts.length;
      const svg = svgEl("svg", { width: W + 10, height: H + 20, role: "img", "aria-label": `histogram ${langs[k]}` });
      counts.forEach((c, b) => {
        const lo = b === 0 ? "-∞" : fmt(edges ? edges[b - 1] : b), hi = b === counts.length - 1 ? "∞" : fmt(edges ? edges[b] : b + 1);
        const h = c / max * H;
        svg.append(svgEl("rect", { x: b * bw, y: H - h, width: bw - 1, height: h, fill: "#0b5cad" },
          svgEl("title", {}, `${lo} ≤ act < ${hi}: ${c} tokens (${fmt(100 * c / Math.max(1, total), 1)}%)`)));
      });
      svg.append(svgEl("text", { x: 0, y: H + 14 }, `${langs[k]} · ${total} tokens · bins by activation (hover)`));
      wrap.append(svg);
    });
    return wrap;
  }

  function examplesOf(lang, scale, items, vocab) {
    const box = el("div", { class: "lang-examples", "data-lang": lang }, el("h3", { text: `${lang} (${items.length})` }));
    if (!items.length) box.append(el("p", { class: "muted", text: "no token of this language was seen" }));
    items.forEach(([value, pos, center, toks, q], j) => {
      const line = el("div", { class: "example", "data-value": value },
        el("span", { class: "val", text: `#${j + 1} ${fmt(value)} at ${pos}` }));
      toks.forEach((ti, w) => {
        if (ti < 0) return;
        const qq = q[w], shade = qq === null ? 0 : Math.max(0, qq) / 99;
        const approx = qq === null ? "not computed (token routed elsewhere)" : (w === center ? fmt(value, 4) : "≈" + fmt(qq / 99 * scale));
        const text = vocab[ti].replace(/\n/g, "⏎");
        const span = el("span", { class: "tok" + (w === center ? " center" : ""), "data-q": qq === null ? "" : qq,
          "data-w": w, title: `activation ${approx}`, style: `background:rgba(214,39,40,${shade.toFixed(3)})` }, text);
        span.append(el("sub", { class: "v", text: qq === null ? "" : (w === center ? fmt(value, 2) : fmt(qq / 99 * scale, 2)) }));
        line.append(span);
      });
      box.append(line);
    });
    return box;
  }

  // ---- routing ----
  function show(which) {
    for (const id of ["overview-view", "table-view", "neuron-view"]) $("#" + id).hidden = id !== which;
  }

  async function route() {
    const h = decodeURIComponent(location.hash.slice(1));
    if (h.startsWith("n/")) {
      const id = parseId(h.slice(2));
      show("neuron-view");
      if (!id) { $("#neuron-view").replaceChildren(el("p", { class: "note", text: `"${h.slice(2)}" is not a neuron id; write L12.N345.` })); return; }
      await neuronView(id[0], id[1]);
    } else if (h === "table") { show("table-view"); tableView(); }
    else { show("overview-view"); $("#table-view").hidden = false; tableView(); }
  }

  document.addEventListener("DOMContentLoaded", async () => {
    const style = el("style", { text: "#neuron-view:not(.values) .tok sub { display:none }" });
    document.head.append(style);
    $("#search").addEventListener("submit", (e) => {
      e.preventDefault();
      const text = $("#search-box").value, id = parseId(text);
      if (!id) { status(`"${text}" is not a neuron id; write it as L12.N345 (layer 12, neuron 345).`, "error"); return; }
      status("");
      location.hash = `#n/L${id[0]}.N${id[1]}`;
    });
    try {
      await loadScript("data/meta.js");
      if (!state.meta) throw new Error("data/meta.js holds no data");
      $("#title").textContent = `Language neurons · ${state.meta.model || "model"}`;
      overview();
      status("Loading data/table.js …");
      await loadScript("data/table.js");
      status("");
      window.addEventListener("hashchange", () => route().catch((e) => status("Error: " + e.message, "error")));
      await route();
      document.body.dataset.ready = "1";
    } catch (e) {
      status("The page could not load its data: " + e.message, "error");
      document.body.dataset.ready = "error";
    }
  });
})();
