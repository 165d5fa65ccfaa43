"""Output-language control: can steering make the model answer in another language?

From prompts in a source language, generate (greedy) while the source language's neurons are
deactivated and the target's are set to the target's mean activation (from the scan's sums).
A real language identifier from PyPI (`langid`) classifies each continuation; the result is the
share assigned to the target (and to the source) for three conditions: no steering, the language
neurons, and random neuron sets with the same per-layer counts (the control).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from tqdm.auto import tqdm

from ..steer import SteeringError, interventions, random_mask_like, steering
from .uncertainty import json_safe, wilson_interval


def langid_code(lang: str) -> str:
    """Our language names (handbook style: "pt-BR", "zh-CN") -> langid's ISO 639-1 codes."""
    return lang.split("-")[0].split("_")[0].lower()


def _identifier():
    """langid's shared identifier (loading its model takes seconds, so only once per process)."""
    from langid import langid
    if langid.identifier is None:
        langid.load_model()
    return langid.identifier


def identify_language(text: str, candidates: Optional[Sequence[str]] = None) -> str:
    """ISO 639-1 code that `langid` assigns to `text` ("" for empty text); `candidates`
    restricts the answer to the best-ranked of those languages."""
    if not text.strip():
        return ""
    if not candidates:
        return _identifier().classify(text)[0]
    allowed = {langid_code(c) for c in candidates}
    return next(lang for lang, _ in _identifier().rank(text) if lang in allowed)


@dataclass
class LanguageControl:
    """Shares of generations identified as the target (and source) language per condition,
    with 95% Wilson intervals; the random sets are also pooled into one share."""
    source: str
    target: str
    conditions: List[str]
    target_share: Dict[str, float]
    source_share: Dict[str, float]
    sizes: Dict[str, int]
    outputs: Dict[str, List[str]] = field(repr=False)
    labels: Dict[str, List[str]] = field(repr=False)
    meta: Dict[str, object] = field(default_factory=dict)

    def _interval(self, names: Sequence[str], lang: str):
        hits = sum(l == langid_code(lang) for c in names for l in self.labels[c])
        n = sum(len(self.labels[c]) for c in names)
        return hits, n, wilson_interval(hits, n)

    @property
    def steered(self) -> str:
        return next(c for c in self.conditions if c.startswith(f"-{self.source} "))

    @property
    def random_conditions(self) -> List[str]:
        return [c for c in self.conditions if c.startswith("random#")]

    def target_interval(self, condition: str):
        return self._interval([condition], self.target)[2]

    def random_pooled(self) -> Optional[Dict[str, object]]:
        """All random sets' generations together: target share and its Wilson interval."""
        names = self.random_conditions
        if not names:
            return None
        hits, n, ci = self._interval(names, self.target)
        return {"sets": len(names), "generations": n, "target_share": hits / n,
                "target_ci": list(ci)}

    def controlled(self) -> Optional[bool]:
        """The steered target share's interval lies above the unsteered one's and the pooled
        random sets' (None without random sets)."""
        pooled = self.random_pooled()
        if pooled is None or "no steering" not in self.conditions:
            return None
        low = self.target_interval(self.steered)[0]
        return bool(low > self.target_interval("no steering")[1]
                    and low > pooled["target_ci"][1])

    def to_markdown(self) -> str:
        lines = [f"| condition ({self.source} -> {self.target}) | neurons | share {self.target} "
                 f"[95% CI] | share {self.source} |", "|---|---|---|---|"]
        for c in self.conditions:
            lo, hi = self.target_interval(c)
            lines.append(f"| {c} | {self.sizes[c]} | {self.target_share[c]:.2f} "
                         f"[{lo:.2f}, {hi:.2f}] | {self.source_share[c]:.2f} |")
        pooled = self.random_pooled()
        if pooled and pooled["sets"] > 1:
            lo, hi = pooled["target_ci"]
            lines.append(f"| random, {pooled['sets']} sets pooled | {self.sizes[self.steered]} "
                         f"| {pooled['target_share']:.2f} [{lo:.2f}, {hi:.2f}] | |")
        n = len(self.labels[self.conditions[0]])
        verdict = {True: "yes", False: "no", None: "not tested (no random sets)"}[self.controlled()]
        lines += ["", f"{n} prompt{'s' * (n != 1)} per condition; Wilson 95% intervals. "
                      f"Steered share above both the unsteered and the random sets' intervals: "
                      f"{verdict}."]
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return json_safe({
            "source": self.source, "target": self.target, "conditions": self.conditions,
            "target_share": self.target_share, "source_share": self.source_share,
            "target_ci": {c: list(self.target_interval(c)) for c in self.conditions},
            "random_pooled": self.random_pooled(), "controlled": self.controlled(),
            "sizes": self.sizes, "outputs": self.outputs, "labels": self.labels,
            "meta": self.meta})

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False, allow_nan=False)


def generate_texts(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 32,
                   batch_size: int = 8) -> List[str]:
    """Greedy continuations of `prompts` (the new text only), batched with left padding."""
    from ..scan import input_device  # 'meta' weights when offloaded: the inputs' device
    device = input_device(model)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None \
        else tokenizer.eos_token_id
    out: List[str] = []
    try:
        for i in range(0, len(prompts), batch_size):
            enc = tokenizer(list(prompts[i:i + batch_size]), return_tensors="pt", padding=True)
            enc = {k: v.to(device) for k, v in enc.items()}
            with torch.inference_mode():
                gen = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=pad_id)
            new = gen[:, enc["input_ids"].shape[1]:]
            out += tokenizer.batch_decode(new, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return out


def language_control(model, tokenizer, neurons, stats,
                     prompts_by_lang: Union[Mapping[str, Sequence[str]], Sequence[str]],
                     source: str, target: str, *, value: Union[str, float] = "mean",
                     random_sets: int = 1, seed: int = 0, max_new_tokens: int = 32,
                     batch_size: int = 8, layers: Optional[Iterable[int]] = None,
                     deactivate_layers: Optional[Iterable[int]] = None,
                     activate_layers: Optional[Iterable[int]] = None,
                     candidates: Optional[Sequence[str]] = None, impl: Optional[str] = None,
                     unsteered: Optional[Sequence[str]] = None,
                     progress: bool = True) -> LanguageControl:
    """Generate from `source` prompts with no steering, with `source`'s neurons deactivated and
    `target`'s activated (set to `value`; "mean" = target's mean activation from `stats`), and
    with `random_sets` random sets of the same per-layer sizes; report the share classified as
    `target` with Wilson intervals.

    prompts_by_lang: {lang: [prompts]} (the source's are used) or a list of prompts.
    layers: steer only these layers; deactivate_layers / activate_layers: restrict the
    deactivation and the activation separately (e.g. deactivate in one phase, activate in
    another). candidates: restrict the language identifier to these languages (None = all of
    langid's). unsteered: the unsteered generations of the same prompts, if already made (they
    do not depend on the target: `language_controls` shares them across pairs).
    """
    if source == target:
        raise SteeringError(f"source and target are both {source!r}; pick two languages")
    if random_sets < 0:
        raise SteeringError(f"random_sets must be >= 0, got {random_sets}")
    prompts = prompts_by_lang[source] if isinstance(prompts_by_lang, Mapping) else prompts_by_lang
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise SteeringError(f"no prompts for the source language {source!r}")
    off = list(deactivate_layers) if deactivate_layers is not None else layers
    on = list(activate_layers) if activate_layers is not None else layers

    def edits(masks=None):
        return (interventions(neurons, [source], "deactivate", layers=off, masks=masks)
                + interventions(neurons, [target], "activate", value=value, stats=stats,
                                layers=on, masks=masks))

    steered = edits()
    conditions = {"no steering": [], f"-{source} +{target}": steered}
    gen = torch.Generator().manual_seed(seed)
    for r in range(random_sets):
        conditions[f"random#{r}"] = edits({source: random_mask_like(steered[0].mask, gen),
                                           target: random_mask_like(steered[1].mask, gen)})
    outputs, labels, t_share, s_share, sizes = {}, {}, {}, {}, {}
    for name, variant in tqdm(conditions.items(), desc=f"control {source}->{target}",
                              disable=not progress):
        if name == "no steering" and unsteered is not None:
            if len(unsteered) != len(prompts):
                raise SteeringError(f"{len(unsteered)} unsteered generations for "
                                    f"{len(prompts)} prompts")
            texts = list(unsteered)
        else:
            with steering(model, variant, impl=impl):
                texts = generate_texts(model, tokenizer, prompts, max_new_tokens, batch_size)
        found = [identify_language(t, candidates) for t in texts]
        outputs[name], labels[name] = texts, found
        t_share[name] = sum(f == langid_code(target) for f in found) / len(found)
        s_share[name] = sum(f == langid_code(source) for f in found) / len(found)
        sizes[name] = sum(e.size for e in variant)
    return LanguageControl(source, target, list(conditions), t_share, s_share, sizes, outputs,
                           labels, {"prompts": len(prompts), "max_new_tokens": max_new_tokens,
                                    "seed": seed, "value": value, "candidates": candidates,
                                    "random_sets": random_sets,
                                    "deactivate_layers": off, "activate_layers": on})


def language_controls(model, tokenizer, neurons, stats,
                      prompts_by_lang: Mapping[str, Sequence[str]],
                      pairs: Sequence[Tuple[str, str]], **kwargs) -> List[LanguageControl]:
    """`language_control` for several SRC:TGT pairs in one run; the unsteered generations of a
    source language are made once and shared by all its pairs (the same prompts and tokens)."""
    unsteered: Dict[str, List[str]] = {}
    results = []
    for source, target in pairs:
        res = language_control(model, tokenizer, neurons, stats, prompts_by_lang, source,
                               target, unsteered=unsteered.get(source), **kwargs)
        unsteered[source] = res.outputs["no steering"]
        results.append(res)
    return results


def phase_control(model, tokenizer, neurons, stats, prompts: Sequence[str], source: str,
                  target: str, phases: Sequence[dict],
                  combinations: Optional[Sequence[Tuple[str, str]]] = None,
                  **kwargs) -> List[Dict[str, object]]:
    """Which phase carries output-language control: for each (deactivate phase, activate
    phase) combination (default: the same phase for both), `source` deactivated only in the
    first phase's layers and `target` activated only in the second's. One row per combination:
    the target share with its Wilson interval (no random sets: the full-layer control is
    their reference)."""
    by_name = {p["name"]: list(range(int(p["start"]), int(p["stop"]))) for p in phases}
    combinations = combinations or [(p["name"], p["name"]) for p in phases]
    rows = []
    unsteered = kwargs.pop("unsteered", None)
    for off, on in combinations:
        for name in (off, on):
            if name not in by_name:
                raise SteeringError(f"unknown phase {name!r}; the phases are "
                                    f"{', '.join(by_name)}")
        res = language_control(model, tokenizer, neurons, stats, list(prompts), source, target,
                               deactivate_layers=by_name[off], activate_layers=by_name[on],
                               random_sets=0, unsteered=unsteered, **kwargs)
        unsteered = res.outputs["no steering"]
        hits = sum(l == langid_code(target) for l in res.labels[res.steered])
        rows.append({"deactivate_phase": off, "activate_phase": on,
                     "neurons": res.sizes[res.steered],
                     "target_share": res.target_share[res.steered],
                     "target_ci": list(wilson_interval(hits, len(res.labels[res.steered]))),
                     "unsteered_share": res.target_share["no steering"]})
    return rows


def prompts_from_texts(texts: Iterable[str], n: int = 20, words: int = 8,
                       chars: int = 24) -> List[str]:
    """The first `n` usable prompts: the opening `words` words of each text (the opening
    `chars` characters for scripts written without spaces, such as Chinese or Japanese)."""
    prompts: List[str] = []
    for text in texts:
        parts, text = text.split(), text.strip()
        opening = " ".join(parts[:words])
        if len(parts) >= words and len(opening) <= 6 * chars:
            prompts.append(opening)
        elif len(parts) < words and len(text) >= chars and len(text) > 10 * len(parts):
            prompts.append(text[:chars])      # long runs without spaces: cut by characters
        if len(prompts) == n:
            break
    if not prompts:
        raise SteeringError(f"no text long enough for a prompt of {words} words")
    return prompts
