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
  const state = { meta: null, table: null, experts: null, layers: {}, pending: {},
                  sort: { key: "layer", dir: 1 }, shown: 200, given: "token" };

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
    experts(d) { state.experts = d; },
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
    root.append(...[heatmap(m), typesPanel(m),
      m.has_experts ? el("div", { class: "panel", id: "experts" }, el("h3", { text: "Mixture of experts: routing per language" }),
        el("p", { class: "muted", text: "Loading data/experts.js …" })) : null,
      nllPanel(m), alignmentPanel(m)].filter(Boolean));
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
    const svg = svgEl("svg", { id: "heatmap", width: Math.max(x0 + L * cw + 10, 420), height: y0 + K * ch + 24,
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


  // ---- mixture of experts ----
  // Which expert a neuron belongs to: routed neurons are expert-major (e * W + i), the shared
  // expert's follow them (meta.expert_layout, per layer).
  function expertOf(l, n) {
    const layout = state.meta.expert_layout;
    if (!layout || !layout[l]) return null;
    for (const seg of layout[l]) {
      const W = seg.expert_size || 0, E = seg.experts || 1, end = seg.offset + (seg.kind === "dense" ? W || Infinity : E * W);
      if (n < seg.offset || n >= end) continue;
      if (seg.kind === "routed") return { kind: "routed", e: Math.floor((n - seg.offset) / W), i: (n - seg.offset) % W };
      if (seg.kind === "shared") return { kind: "shared", e: Math.floor((n - seg.offset) / W), i: (n - seg.offset) % W };
      return { kind: "dense" };
    }
    return { kind: "dense" };
  }
  const expertLabel = (x) => !x ? "" : x.kind === "routed" ? `E${x.e}` : x.kind === "shared" ? "shared" : "dense";
  const expertRank = (x) => !x ? -1 : x.kind === "routed" ? x.e : x.kind === "shared" ? 1e6 : -1;

  function languagesOfExpert(l, e) {
    // [] when no language experts could be found
    const x = state.experts;
    if (!x || !x.experts) return [];
    return x.languages.filter((lang) => (x.experts[lang][String(l)] || []).includes(e));
  }

  function expertsPanel() {
    const box = $("#experts"), x = state.experts, m = state.meta;
    if (!box) return;
    box.replaceChildren(el("h3", { text: "Mixture of experts: routing per language" }));
    if (!x) { box.append(el("p", { class: "note", id: "note-experts" }, "data/experts.js holds no data.")); return; }
    if (x.note) { box.append(el("p", { class: "note", id: "note-experts", text: x.note })); return; }
    const pr = x.params || {};
    if (x.note_experts) box.append(el("p", { class: "note", id: "note-experts", text: x.note_experts }));
    else box.append(el("p", { class: "muted" }, `Language experts: LAPE over (layer, expert) on the share of each language's tokens ` +
      `the router sends there (top_rate ${pr.top_rate}, filter ${pr.filter_rate}, bar ${pr.activation_bar_ratio}; ` +
      (x.source === "file" ? "from the --experts file" : "computed from the stats with the defaults of `langneuron identify --experts`") + ")."));
    // language experts per language, in text
    if (x.experts) box.append(el("table", { id: "experts-table" }, el("thead", {}, el("tr", {}, el("th", { text: "language" }),
      el("th", { text: "experts" }), el("th", { text: "per layer" }))),
      el("tbody", {}, x.languages.map((lang) => {
        const per = Object.entries(x.experts[lang]);
        const n = per.reduce((s, [, ids]) => s + ids.length, 0);
        return el("tr", { "data-lang": lang }, el("td", { text: lang }), el("td", { text: n }),
          el("td", { text: per.map(([l, ids]) => `L${l}: ` + ids.map((e) => "E" + e).join(" ")).join(" · ") || "–" }));
      }))));
    box.append(el("p", { class: "hint", text: "Routing is often language-specific in the first and last layers and shared in the middle " +
      "(Bandarkar et al. 2025); a neuron's page shows its expert and how often it fires once a token is routed there." }));
    // the heatmap opens on the first layer that holds a language expert
    const first = x.moe_layers.find((l) => x.experts && x.languages.some((lang) => (x.experts[lang][String(l)] || []).length));
    box.append(divergenceChart(x), shareHeatmap(x, first === undefined ? x.moe_layers[0] : first));
  }

  function divergenceChart(x) {
    const wrap = el("div", { id: "divergence-wrap" }, el("h4", { text: `Routing divergence from ${x.reference} per layer (Jensen-Shannon, nats)` }));
    const L = x.divergence[0].length, cw = Math.max(14, Math.min(40, Math.floor(900 / Math.max(1, L)))), x0 = 50, H = 160;
    const vals = x.divergence.flat().filter((v) => v !== null);
    const max = Math.max(1e-9, ...vals);
    const svg = svgEl("svg", { id: "divergence", width: Math.max(x0 + L * cw + 90, 420), height: H + 40, role: "img",
                               "aria-label": `routing divergence from ${x.reference} per layer and language` });
    const colours = ["#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#e6ab02", "#a6761d", "#666666", "#1f78b4", "#b2df8a"];
    const marks = ["●", "■", "▲", "◆", "▼", "○", "□", "△", "◇", "▽"];
    const xy = (l, v) => [x0 + l * cw + cw / 2, 10 + (H - 10) * (1 - v / max)];
    svg.append(svgEl("line", { x1: x0, y1: H, x2: x0 + L * cw, y2: H, stroke: "#999" }),
               svgEl("text", { x: x0 - 4, y: 14, "text-anchor": "end" }, fmt(max, 2)),
               svgEl("text", { x: x0 - 4, y: H, "text-anchor": "end" }, "0"));
    for (let l = 0; l < L; l++) if (l % Math.ceil(L / 24) === 0)
      svg.append(svgEl("text", { x: x0 + l * cw + cw / 2, y: H + 14, "text-anchor": "middle" }, l));
    svg.append(svgEl("text", { x: x0, y: H + 30 }, "layer → (gaps: dense layers; hover a mark for its value)"));
    let c = 0;
    x.languages.forEach((lang, k) => {
      if (lang === x.reference) return;
      const colour = colours[c % colours.length], mark = marks[c % marks.length];
      c++;
      let d = "", pen = false;
      for (let l = 0; l < L; l++) {
        const v = x.divergence[k][l];
        if (v === null) { pen = false; continue; }
        const [px, py] = xy(l, v);
        d += (pen ? "L" : "M") + px.toFixed(1) + " " + py.toFixed(1);
        pen = true;
      }
      svg.append(svgEl("path", { d, fill: "none", stroke: colour, "stroke-width": 1.5 }));
      for (let l = 0; l < L; l++) {
        const v = x.divergence[k][l];
        if (v === null) continue;
        const [px, py] = xy(l, v);
        svg.append(svgEl("text", { x: px, y: py + 4, "text-anchor": "middle", fill: colour, class: "mark",
                                   "data-lang": lang, "data-layer": l, "data-value": v },
          mark, svgEl("title", {}, `${lang}, layer ${l}: divergence ${fmt(v, 4)} from ${x.reference}`)));
      }
      const [, ly] = xy(L - 1, x.divergence[k][L - 1] ?? 0);
      svg.append(svgEl("text", { x: x0 + L * cw + 6, y: 12 + 14 * (c - 1), fill: colour }, `${mark} ${lang}`));
      void ly;
    });
    const moe = x.moe_layers;
    const table = el("table", { id: "divergence-table", class: "compact" },
      el("thead", {}, el("tr", {}, el("th", { text: "language \\ layer" }), moe.map((l) => el("th", { text: l })))),
      el("tbody", {}, x.languages.map((lang, k) => el("tr", { "data-lang": lang }, el("th", { scope: "row", text: lang }),
        moe.map((l) => el("td", { "data-layer": l, text: fmt(x.divergence[k][l], 3),
          title: `routing entropy ${fmt(x.routing_entropy[k][l], 3)} nats` }))))));
    wrap.append(svg, el("details", {}, el("summary", { text: "the values (hover a cell for the routing entropy)" }),
      el("div", { class: "scroll-x" }, table)));
    return wrap;
  }

  function shareHeatmap(x, layer) {
    const wrap = el("div", { id: "share-wrap" });
    const select = el("select", { id: "experts-layer", "aria-label": "layer of the routed-share heatmap" },
      x.moe_layers.map((l) => el("option", { value: l, text: `layer ${l}`, selected: l === layer })));
    select.addEventListener("change", () => wrap.replaceWith(shareHeatmap(x, +select.value)));
    const E = x.experts_per_layer[layer], K = x.languages.length;
    const cw = Math.max(8, Math.min(30, Math.floor(1000 / Math.max(1, E)))), ch = 22, x0 = 44, y0 = 20;
    const rows = x.languages.map((_, k) => x.share[k][layer].slice(0, E));
    const max = Math.max(1e-9, ...rows.flat().filter((v) => v !== null));
    const svg = svgEl("svg", { id: "routed-share", width: Math.max(x0 + E * cw + 10, 620), height: y0 + K * ch + 24, role: "img",
                               "aria-label": `share of each language's routed tokens per expert, layer ${layer}`, "data-layer": layer });
    for (let e = 0; e < E; e++) if (e % Math.ceil(E / 32) === 0)
      svg.append(svgEl("text", { x: x0 + e * cw + cw / 2, y: y0 - 4, "text-anchor": "middle" }, e));
    x.languages.forEach((lang, k) => {
      svg.append(svgEl("text", { x: x0 - 6, y: y0 + k * ch + 15, "text-anchor": "end" }, lang));
      const own = x.experts ? x.experts[lang][String(layer)] || [] : [];
      for (let e = 0; e < E; e++) {
        const v = rows[k][e] ?? 0, t = v / max, mine = own.includes(e);
        const r = x.routed[k][layer][e];
        svg.append(svgEl("rect", { x: x0 + e * cw, y: y0 + k * ch, width: cw - 1, height: ch - 1, fill: heat(t),
          class: "share-cell" + (mine ? " lang-expert" : ""), "data-lang": lang, "data-expert": e, "data-share": v,
          stroke: mine ? "#000" : "none", "stroke-width": mine ? 2 : 0 },
          svgEl("title", {}, `${lang} → expert ${e}, layer ${layer}: ${fmt(100 * v, 2)}% of ${lang}'s routed slots (${r} tokens)` +
            (mine ? ` · a language expert of ${lang}` : ""))));
        if (cw >= 26) svg.append(svgEl("text", { x: x0 + e * cw + cw / 2, y: y0 + k * ch + 15, "text-anchor": "middle",
          fill: ink(t), "pointer-events": "none" }, Math.round(100 * v)));
      }
    });
    svg.append(svgEl("text", { x: x0, y: y0 + K * ch + 16 }, "expert → (darker = larger share; framed = language expert; % in cells or on hover)"));
    wrap.append(el("h4", {}, "Routed share per language × expert in ", select), el("div", { class: "scroll-x" }, svg));
    return wrap;
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
    const moe = !!m.expert_layout, routed = moe && t.rows.some((r) => r[7]);
    const givenSel = routed ? el("select", { id: "f-given" }, el("option", { value: "token", text: "per token" }),
      el("option", { value: "routed", text: "given routed to its expert" })) : null;
    for (const x of [langSel, typeSel, layerIn, entIn, pIn, givenSel].filter(Boolean)) x.addEventListener("input", () => {
      state.shown = 200;
      if (x === givenSel) { state.given = givenSel.value; relabel(); }
      renderRows();
    });
    const cols = [["id", "neuron"], ["layer", "layer"]].concat(moe ? [["expert", "expert"]] : [],
      [["langs", "languages"], ["type", "type"], ["entropy", "LAPE entropy"]],
      t.languages.map((l, k) => ["p" + k, "P(act>0) " + l]));
    const head = el("tr", {}, cols.map(([key, label]) => el("th", { "data-key": key, scope: "col" },
      el("button", { type: "button", onclick: () => sortBy(key) }, label))));
    root.append(...[el("h2", { id: "table-h", text: "Neurons" }),
      el("div", { class: "filters" },
        el("label", {}, "language", langSel), el("label", {}, "type", typeSel),
        el("label", {}, "layers", layerIn), el("label", {}, "entropy ≤", entIn),
        el("label", {}, "P in language ≥", pIn),
        givenSel ? el("label", {}, "P(act>0)", givenSel) : null,
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

  // P(act>0) of a row per stats language: per token, or given the token reached its expert
  const probs = (row) => (state.given === "routed" && row[7]) ? row[7] : row[5];

  function relabel() {
    for (const th of document.querySelectorAll("#neuron-table th[data-key^='p']")) {
      const k = +th.dataset.key.slice(1);
      th.querySelector("button").textContent = (state.given === "routed" ? "P(act>0 | routed) " : "P(act>0) ") + state.table.languages[k];
    }
  }

  function sortValue(row, key) {
    if (key === "id" || key === "layer") return row[0] * 1e7 + row[1];
    if (key === "expert") return row[0] * 1e14 + (expertRank(expertOf(row[0], row[1])) + 1) * 1e7 + row[1];
    if (key === "langs") return row[2].length;
    if (key === "type") return ({ specific: 0, related: 1, general: 2 })[row[3]] ?? 3;
    if (key === "entropy") return row[4] ?? Infinity;
    return probs(row)[+key.slice(1)] ?? -1;
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
      (Number.isNaN(pmin) || sk === null || (probs(r)[sk] ?? 0) >= pmin));
  }

  function renderRows() {
    const { key, dir } = state.sort;
    const rows = filtered().sort((a, b) => (sortValue(a, key) - sortValue(b, key)) * dir || (a[0] - b[0]) || (a[1] - b[1]));
    const body = $("#neuron-table tbody"), m = state.meta;
    const shown = rows.slice(0, state.shown);
    body.replaceChildren(...shown.map((r) => el("tr", { tabindex: 0, "data-id": `L${r[0]}.N${r[1]}`,
      onclick: () => openNeuron(r[0], r[1]) },
      el("td", {}, el("a", { href: `#n/L${r[0]}.N${r[1]}`, tabindex: -1, text: `L${r[0]}.N${r[1]}` })),
      el("td", { text: r[0] }), m.expert_layout ? el("td", { text: expertLabel(expertOf(r[0], r[1])) }) : null,
      el("td", { text: r[2].map((k) => m.languages[k]).join(" ") }),
      el("td", { text: r[3] || "–" }), el("td", { text: fmt(r[4]) }),
      probs(r).map((p) => el("td", { text: fmt(p) })))));
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
    const ex = expertOf(l, n);
    const where = !ex ? "" : ex.kind === "routed" ? ` · routed expert ${ex.e} (its neuron ${ex.i})` :
      ex.kind === "shared" ? ` · shared expert${ex.e ? " " + ex.e : ""} (its neuron ${ex.i}; sees every token)` : " · dense layer";
    root.replaceChildren(el("h2", { id: "neuron-h", text: `Neuron L${l}.N${n}` }),
      el("p", { id: "neuron-where" }, `layer ${l}, neuron ${n}${where} · languages: ${row[2].map((k) => m.languages[k]).join(", ")}` +
        ` · type: ${row[3] || "–"} · LAPE entropy ${fmt(row[4])}`));
    if (ex && ex.kind === "routed" && state.experts && state.experts.experts) {
      const of = languagesOfExpert(l, ex.e);
      root.append(el("p", { id: "expert-languages" }, of.length ? `Expert ${ex.e} of layer ${l} is a language expert of ${of.join(", ")}.` :
        `Expert ${ex.e} of layer ${l} is not a language expert.`));
    }
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
    if (ex && ex.kind === "routed" && row[7]) {
      const x = state.experts, rmax = Math.max(1e-9, ...row[7].map((p) => p || 0));
      const routedOf = (k) => x && x.routed ? x.routed[k][l][ex.e] : null;
      root.append(el("div", { class: "panel", id: "prob-routed" }, el("h3", { text: `Activation probability once routed to expert ${ex.e}` }),
        el("p", { class: "muted", text: "P(act>0 | routed) = times it fired / tokens of the language the router sent to its expert; " +
          "the bars above divide by all tokens of the language." }),
        el("table", { class: "bars" }, el("tbody", {}, t.languages.map((lang, k) => el("tr", {},
          el("td", { text: lang }), el("td", { class: "barcell" },
            el("span", { class: "bar", style: `width:${(row[7][k] || 0) / rmax * 20}rem`, title: `P(act>0 | ${lang}, routed to E${ex.e}) = ${fmt(row[7][k], 4)}` })),
          el("td", { text: fmt(row[7][k], 4) }),
          el("td", { class: "muted", text: routedOf(k) === null ? "" : `${routedOf(k)} of ${m.tokens[k]} tokens routed here` })))))));
    }
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
      // the neuron's own languages first, then the others
      const own = new Set(row[2].map((k) => m.languages[k]));
      const order = m.example_languages.map((lang, k) => [own.has(lang) ? 0 : 1, k]).sort((a, b) => a[0] - b[0] || a[1] - b[1]);
      for (const [, k] of order) grid.append(examplesOf(m.example_languages[k], entry.ex[k][0], entry.ex[k][1], data.vocab));
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
      if (state.meta.has_experts) {
        status("Loading data/experts.js …");
        await loadScript("data/experts.js");
        expertsPanel();
      }
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
