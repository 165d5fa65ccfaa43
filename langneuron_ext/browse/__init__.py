"""`langneuron browse`: one self-contained offline site to explore a model's language neurons.

    site = build_site(stats, neurons, out_dir, examples=ex, nll=nll_json, alignment=[...])

The site is `index.html` + `app.js` + `style.css` (package data in `browse/static/`) and a
`data/` folder of JavaScript files that register their data with the page (`LN.meta(...)`,
`LN.table(...)`, `LN.layer(...)`): script tags work from the file system, where a browser
refuses fetch() of local files. Nothing is fetched from the network. The page loads
`meta.js` (overview) first, `table.js` (all neurons' rows) next, and one `layer_<l>.js` when a
neuron of layer l is opened, so a 7B-size set opens as fast as a small one.

Layer files carry the histograms and top examples of their neurons as gzip-compressed JSON in
base64 (the page inflates it with the browser's DecompressionStream): the examples' windows are
most of the bytes. Window activations are stored as integers -99..99 relative to the largest
|activation| among the neuron's windows in that language (`scale`): enough for shading and an
approximate value on hover; each example's own activation is stored exactly.

Mixture-of-experts stats add an experts panel (`data/experts.js`): each language's routing
divergence from the reference language per layer, the routed share per language x expert of a
chosen layer with the language experts outlined (`ln.identify.experts`, from a file or computed
from the stats with its defaults), and per neuron its expert and P(act > 0 | routed there).

Inputs that do not belong together (a neuron set of another model, examples of another neuron
set, language experts of another model) raise `BrowseError` before anything is written; an input
without the fields a panel needs (no histograms, no types, no examples, no routing counts) gives
that panel a visible note.
"""
from __future__ import annotations

import base64
import gzip
import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

STATIC = Path(__file__).resolve().parent / "static"
MARKER = ".langneuron-browse"
DEFAULT_CONTEXT = 8
TYPE_CODES = {"specific": "S", "related": "R", "general": "G"}


class BrowseError(ValueError):
    """Inputs that cannot make a page together; the message says what to do."""


def _round(x: float, digits: int = 4):
    if x is None or not math.isfinite(x):
        return None
    if x == 0:
        return 0
    return float(f"{x:.{digits}g}")


def _js(call: str, payload) -> str:
    return f"{call}({json.dumps(payload, ensure_ascii=False, separators=(',', ':'))});\n"


def _packed(payload) -> str:
    raw = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    return base64.b64encode(gzip.compress(raw, compresslevel=9, mtime=0)).decode("ascii")


# ---- checks -----------------------------------------------------------------------------------
def check_inputs(stats, neurons, examples=None, language_experts=None) -> List[str]:
    """BrowseError when the inputs come from different models or neuron sets; returns the
    notes for panels whose fields are missing."""
    from ..examples import columns_digest, columns_of
    if (neurons.num_layers, neurons.intermediate_size) != (stats.num_layers,
                                                           stats.intermediate_size):
        raise BrowseError(f"the neuron set ({neurons.num_layers} layers x "
                          f"{neurons.intermediate_size} neurons) comes from another model than "
                          f"the stats ({stats.model_name or '?'}: {stats.num_layers} x "
                          f"{stats.intermediate_size}); give the neuron set identified from "
                          f"these stats")
    params = neurons.params if isinstance(neurons.params, dict) else {}
    model = params.get("model") or params.get("model_name")     # `identify` records the model
    if model and stats.model_name and model != stats.model_name:
        raise BrowseError(f"the neuron set was made for {model}, the stats for "
                          f"{stats.model_name}; give files of one model")
    missing = [lang for lang in neurons.languages if lang not in stats.languages]
    if missing:
        raise BrowseError(f"the neuron set's language(s) {missing} are not in the stats "
                          f"({stats.languages}); give the stats the set was identified from")
    if examples is not None:
        if examples.model_name and stats.model_name and examples.model_name != stats.model_name:
            raise BrowseError(f"the examples were recorded on {examples.model_name}, the stats "
                              f"on {stats.model_name}; give files of one model")
        if examples.digest != columns_digest(columns_of(neurons)):
            raise BrowseError("the examples were recorded for another neuron set; rerun "
                              "`langneuron examples --neurons` with this neuron set")
    if language_experts is not None:
        _check_experts(stats, language_experts)
    notes = []
    if getattr(stats, "hist", None) is None:
        notes.append("hist")
    return notes


def _check_experts(stats, found) -> None:
    """Language experts must come from a mixture-of-experts scan of this model."""
    if stats.expert_layout() is None:
        raise BrowseError(f"language experts were given, but the stats of "
                          f"{stats.model_name or 'this model'} ({stats.model_type or '?'}) have "
                          f"no experts: it is a dense model; drop --experts")
    if stats.routed is None:
        raise BrowseError("language experts were given, but these stats of a mixture-of-experts "
                          "model lack the routing counts (scanned by an older version); rescan "
                          "with `langneuron scan`")
    model = (found.params or {}).get("model")
    if model and stats.model_name and model != stats.model_name:
        raise BrowseError(f"the language experts were found for {model}, the stats are of "
                          f"{stats.model_name}; give files of one model")
    if list(found.languages) != list(stats.languages) or tuple(found.mask.shape) != tuple(
            stats.routed.shape):
        raise BrowseError(f"the language experts ({found.languages}, {found.num_layers} layers "
                          f"x {found.num_experts} experts) do not match the stats "
                          f"({stats.languages}, {list(stats.routed.shape[1:])}); run "
                          f"`langneuron identify STATS --experts` on these stats")


# ---- the data ---------------------------------------------------------------------------------
def _neuron_types(neurons) -> Dict[tuple, Dict[str, str]]:
    """{(layer, id): {lang: "S" | "R" | "G"}} (empty without types)."""
    out: Dict[tuple, Dict[str, str]] = {}
    if neurons.types is None:
        return out
    for t, code in TYPE_CODES.items():
        for lang, layers in neurons.types[t].items():
            for layer, ids in layers.items():
                for i in ids:
                    out.setdefault((layer, i), {})[lang] = code
    return out


def _meta(stats, neurons, notes, nll, alignment, steer_bench, examples, context) -> dict:
    K, L = len(neurons.languages), neurons.num_layers
    counts = neurons.per_layer_counts().tolist()
    types = None
    if neurons.types is not None:
        types = {t: [[len(neurons.types[t][lang][l]) for l in range(L)]
                     for lang in neurons.languages] for t in TYPE_CODES}
    meta = dict(model=stats.model_name, model_type=stats.model_type, method=neurons.method,
                languages=neurons.languages, stats_languages=stats.languages, num_layers=L,
                intermediate_size=neurons.intermediate_size, layer_sizes=stats.layer_sizes(),
                tokens=[int(n) for n in stats.n_tokens.tolist()], counts=counts, types=types,
                phases=neurons.phases, has_sums=stats.sums is not None,
                has_hist=getattr(stats, "hist", None) is not None,
                has_examples=examples is not None, context=context,
                k=None if examples is None else examples.k, notes=notes,
                example_languages=None if examples is None else examples.languages)
    if stats.expert_layout() is not None:             # mixture-of-experts models only
        meta.update(expert_layout=stats.expert_layout(),
                    has_routing=getattr(stats, "routed", None) is not None)
    meta["nll"] = _nll_panel(nll)
    meta["alignment"] = _alignment_panel(alignment, neurons)
    meta["steer_bench"] = steer_bench
    assert K == len(counts)
    return meta


def _nll_panel(nll) -> Optional[dict]:
    if nll is None:
        return None
    need = ("rows", "columns", "delta")
    if not all(key in nll for key in need):
        return {"note": "the NLL file lacks rows / columns / delta; write it with `langneuron "
                        "evaluate --out`"}
    meta = nll.get("meta") if isinstance(nll.get("meta"), dict) else {}
    return {"rows": nll["rows"], "columns": nll["columns"],
            "method": meta.get("neuron_method"),
            "delta": [[_round(v) for v in row] for row in nll["delta"]],
            "ci": None if "delta_ci" not in nll else
            [[[_round(c[0]), _round(c[1])] if c else None for c in row]
             for row in nll["delta_ci"]]}


def _alignment_panel(alignment, neurons) -> Optional[dict]:
    """Counts before/after from `langneuron alignment` JSON; per-neuron types after from an
    aligned model's neuron set."""
    if not alignment:
        return None
    panel: dict = {"counts": None, "after_types": None, "notes": []}
    for item in alignment:
        if isinstance(item, dict) and "before" in item and "after" in item and "counts" \
                not in item and "neurons" not in item:
            panel["counts"] = {"languages": item.get("languages"), "before": item["before"],
                               "after": item["after"], "trained": item.get("trained", [])}
        elif hasattr(item, "types"):
            if item.types is None:
                panel["notes"].append("the aligned model's neuron set has no types")
                continue
            panel["after_types"] = {f"{l}.{i}": codes for (l, i), codes
                                    in _neuron_types(item).items()}
    if panel["after_types"] is None:
        panel["notes"].append("per-neuron types after alignment need the aligned model's "
                              "neuron set (--alignment AFTER_NEURONS.json)")
    return panel


def _table(stats, neurons) -> dict:
    probs = stats.probabilities()
    idx = [stats.languages.index(lang) for lang in stats.languages]
    members: Dict[tuple, List[int]] = {}
    for k, lang in enumerate(neurons.languages):
        for layer, ids in neurons.neurons[lang].items():
            for i in ids:
                members.setdefault((layer, i), []).append(k)
    types = _neuron_types(neurons)
    cells = sorted(members)
    if not cells:
        return {"rows": [], "languages": stats.languages}
    li = torch.tensor([c[0] for c in cells])
    ni = torch.tensor([c[1] for c in cells])
    p = probs[:, li, ni].T.double()                       # [M, K_stats]
    share = p / p.sum(1, keepdim=True).clamp(min=1e-300)
    entropy = -(share * share.clamp(min=1e-300).log()).sum(1)
    mean = None
    if stats.sums is not None:
        mean = (stats.sums[:, li, ni].T / stats.n_tokens.double().clamp(min=1)).tolist()
    routed = None                 # P(act > 0 | routed to the neuron's expert), MoE scans only
    if stats.expert_layout() is not None and getattr(stats, "routed", None) is not None:
        routed = _routed_probability(stats, li, ni).T.tolist()
    rows = []
    for m, (layer, i) in enumerate(cells):
        codes = types.get((layer, i), {})
        kind = ("specific" if "S" in codes.values() else "related" if "R" in codes.values()
                else "general" if "G" in codes.values() else "")
        rows.append([layer, i, members[(layer, i)], kind, _round(float(entropy[m])),
                     [_round(float(v)) for v in p[m].tolist()],
                     None if mean is None else [_round(v) for v in mean[m]]]
                    + ([] if routed is None else [[_round(v) for v in routed[m]]]))
    assert len(idx) == p.shape[1]
    return {"rows": rows, "languages": stats.languages,
            "columns": ["layer", "neuron", "languages", "type", "entropy", "p", "mean"]
            + ([] if routed is None else ["p_routed"])}


def _routed_probability(stats, li, ni):
    """`stats.activation_probability("routed")[:, li, ni]` for the chosen neurons only (the
    full [K, L, N] of a large MoE model is hundreds of MB)."""
    den = stats.n_tokens.double()[:, None].expand(-1, li.numel()).clone()
    for layer, segs in enumerate(stats.expert_layout()):
        for seg in segs:
            if seg["kind"] != "routed":
                continue
            off, W = int(seg["offset"]), int(seg["expert_size"])
            sel = (li == layer) & (ni >= off) & (ni < off + int(seg["experts"]) * W)
            if bool(sel.any()):
                den[:, sel] = stats.routed[:, layer, (ni[sel] - off) // W].double()
    return stats.counts[:, li, ni].double() / den.clamp(min=1)


def _plain(t) -> list:
    """A float tensor as nested lists, NaN / inf as null, 4 significant digits."""
    if t.dim() == 1:
        return [_round(float(v)) for v in t.tolist()]
    return [_plain(row) for row in t]


def _experts_panel(stats, found) -> Optional[dict]:
    """The experts panel's data (None for a dense model's stats): routed counts and shares,
    per-layer divergence and entropy, and the language experts."""
    from ..identify.experts import experts
    from ..identify.neuron_set import IdentifyError
    from ..routing_stats import (
        routed_experts,
        routed_share,
        routing_divergence,
        routing_entropy,
    )
    if stats.expert_layout() is None:
        return None
    if getattr(stats, "routed", None) is None:
        return {"note": "these stats of a mixture-of-experts model carry no routing counts "
                        "(scanned by an older version): rescan with `langneuron scan` to see "
                        "the routing per language and the language experts"}
    source, note = "file", None
    if found is None:
        source = "computed"
        try:
            found = experts(stats)
        except IdentifyError as exc:       # e.g. too few experts for the default top_rate
            note = (f"no language experts with the defaults: {exc} (`langneuron identify "
                    f"--experts --top-rate ...`, then browse --experts FILE)")
    per_layer = routed_experts(stats)
    panel = {"source": source, "note_experts": note, "languages": list(stats.languages),
             "experts_per_layer": per_layer,
             "moe_layers": [l for l, e in enumerate(per_layer) if e],
             "routed": stats.routed.tolist()}
    if found is not None:
        panel.update(reference=found.reference, params=found.params,
                     share=_plain(found.probability),
                     experts={lang: {str(l): e for l, e in found.experts(lang).items()}
                              for lang in found.languages},
                     divergence=_plain(found.divergence),
                     routing_entropy=_plain(found.routing_entropy))
    else:                             # the routing itself needs no thresholds
        reference = "en" if "en" in stats.languages else stats.languages[0]
        panel.update(reference=reference, params=None, experts=None,
                     share=_plain(routed_share(stats)),
                     divergence=_plain(routing_divergence(stats, reference)),
                     routing_entropy=_plain(routing_entropy(stats)))
    return panel


def _layer_payload(layer: int, ids: Sequence[int], stats, examples, context: int,
                   types: Dict[tuple, Dict[str, str]]) -> dict:
    hist = getattr(stats, "hist", None)
    edges = getattr(stats, "hist_edges", None)
    vocab: Dict[str, int] = {}
    neurons = {}
    for i in ids:
        entry: dict = {"types": types.get((layer, i), {})}
        if hist is not None:
            entry["hist"] = hist[:, layer, i].tolist()
        if examples is not None:
            m = examples.index_of(layer, i)
            entry["ex"] = None if m is None else _examples_of(examples, m, context, vocab)
        neurons[str(i)] = entry
    return {"layer": layer, "neurons": neurons, "vocab": list(vocab),
            "edges": None if edges is None else [_round(float(e)) for e in edges.tolist()]}


def _examples_of(ex, m: int, context: int, vocab: Dict[str, int]) -> list:
    """Per language: [scale, [[value, position, center, [token idx], [q]] ...]]."""
    from ..examples import decode_key
    c = ex.context
    lo, hi = c - min(context, c), c + min(context, c) + 1
    out = []
    for kk in range(len(ex.languages)):
        keys = ex.keys[kk, m].tolist()
        window = ex.window[kk, m, :, lo:hi]
        finite = window[torch.isfinite(window)]
        scale = float(finite.abs().max()) if finite.numel() else 0.0
        items = []
        for j, key in enumerate(keys):
            if key < 0:
                break
            tok = ex.tokens[kk, m, j, lo:hi].tolist()
            acts = window[j].tolist()
            idx = [vocab.setdefault(ex.vocab.get(t, "?"), len(vocab)) if t >= 0 else -1
                   for t in tok]
            q = [None if t < 0 or a != a else (round(99 * a / scale) if scale else 0)
                 for t, a in zip(tok, acts)]
            r, b, row, token = decode_key(key)
            items.append([_round(float(ex.values[kk, m, j]), 6), f"{r}.{b}.{row}.{token}",
                          c - lo, idx, q])
        out.append([_round(scale, 6), items])
    return out


# ---- writing ----------------------------------------------------------------------------------
def build_site(stats, neurons, out_dir, *, examples=None, nll=None, alignment=None,
               steer_bench=None, context: int = DEFAULT_CONTEXT, language_experts=None) -> Path:
    """Write the site into `out_dir` (created; an existing folder must be empty or an earlier
    site, which is replaced as a whole only after the new one is complete).

    `language_experts` (`ln.identify.experts(...)` or `LanguageExperts.load(...)`) is shown for
    mixture-of-experts stats; without it they are computed from the stats with the defaults."""
    notes = check_inputs(stats, neurons, examples, language_experts)
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir())
                                              and not (out / MARKER).exists())):
        raise BrowseError(f"{out} exists and is not an earlier `langneuron browse` site; give "
                          f"an empty or new folder (nothing was written)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)          # a folder like any other (mkdtemp makes it 0700)
    try:
        _write(tmp, stats, neurons, notes, examples, nll, alignment, steer_bench, context,
               language_experts)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _write(root: Path, stats, neurons, notes, examples, nll, alignment, steer_bench,
           context, language_experts) -> None:
    for name in ("index.html", "app.js", "style.css"):
        shutil.copyfile(STATIC / name, root / name)
    data = root / "data"
    data.mkdir()
    meta = _meta(stats, neurons, notes, nll, alignment, steer_bench, examples, context)
    table = _table(stats, neurons)
    types = _neuron_types(neurons)
    by_layer: Dict[int, List[int]] = {}
    for row in table["rows"]:
        by_layer.setdefault(row[0], []).append(row[1])
    meta["layers_with_data"] = sorted(by_layer)
    panel = _experts_panel(stats, language_experts)
    if panel is not None:
        meta["has_experts"] = True       # [K, L, E] arrays: their own file, loaded after the table
        (data / "experts.js").write_text(_js("LN.experts", panel), encoding="utf-8")
    (data / "meta.js").write_text(_js("LN.meta", meta), encoding="utf-8")
    (data / "table.js").write_text(_js("LN.table", table), encoding="utf-8")
    for layer, ids in by_layer.items():
        payload = _layer_payload(layer, ids, stats, examples, context, types)
        (data / f"layer_{layer}.js").write_text(
            f"LN.layer({layer},\"{_packed(payload)}\");\n", encoding="ascii")
    (root / MARKER).write_text("written by langneuron browse\n")


def site_size(root) -> int:
    """Bytes on disk of every file of a site."""
    return sum(p.stat().st_size for p in Path(root).rglob("*") if p.is_file())


__all__ = ["build_site", "check_inputs", "BrowseError", "site_size", "DEFAULT_CONTEXT"]
