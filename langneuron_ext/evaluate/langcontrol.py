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
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
from tqdm.auto import tqdm

from ..steer import (SteeringError, interventions, random_mask_like, steering)


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
    """Shares of generations identified as the target (and source) language per condition."""
    source: str
    target: str
    conditions: List[str]
    target_share: Dict[str, float]
    source_share: Dict[str, float]
    sizes: Dict[str, int]
    outputs: Dict[str, List[str]] = field(repr=False)
    labels: Dict[str, List[str]] = field(repr=False)
    meta: Dict[str, object] = field(default_factory=dict)

    def to_markdown(self) -> str:
        lines = [f"| condition ({self.source} -> {self.target}) | neurons | share {self.target} "
                 f"| share {self.source} |", "|---|---|---|---|"]
        for c in self.conditions:
            lines.append(f"| {c} | {self.sizes[c]} | {self.target_share[c]:.2f} | "
                         f"{self.source_share[c]:.2f} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"source": self.source, "target": self.target, "conditions": self.conditions,
                "target_share": self.target_share, "source_share": self.source_share,
                "sizes": self.sizes, "outputs": self.outputs, "labels": self.labels,
                "meta": self.meta}

    def to_json(self, indent: Optional[int] = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, ensure_ascii=False)


def generate_texts(model, tokenizer, prompts: Sequence[str], max_new_tokens: int = 32,
                   batch_size: int = 8) -> List[str]:
    """Greedy continuations of `prompts` (the new text only), batched with left padding."""
    device = next(model.parameters()).device
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


def language_control(model, tokenizer, neurons, stats, prompts_by_lang: Union[Mapping[str, Sequence[str]], Sequence[str]],
                     source: str, target: str, *, value: Union[str, float] = "mean",
                     random_sets: int = 1, seed: int = 0, max_new_tokens: int = 32,
                     batch_size: int = 8, layers: Optional[Iterable[int]] = None,
                     candidates: Optional[Sequence[str]] = None, impl: Optional[str] = None,
                     progress: bool = True) -> LanguageControl:
    """Generate from `source` prompts with no steering, with `source`'s neurons deactivated and
    `target`'s activated (set to `value`; "mean" = target's mean activation from `stats`), and
    with random sets of the same per-layer sizes; report the share classified as `target`.

    prompts_by_lang: {lang: [prompts]} (the source's are used) or a list of prompts.
    candidates: restrict the language identifier to these languages (None = all of langid's).
    """
    if source == target:
        raise SteeringError(f"source and target are both {source!r}; pick two languages")
    prompts = prompts_by_lang[source] if isinstance(prompts_by_lang, Mapping) else prompts_by_lang
    prompts = [p for p in prompts if p.strip()]
    if not prompts:
        raise SteeringError(f"no prompts for the source language {source!r}")
    steered = (interventions(neurons, [source], "deactivate", layers=layers)
               + interventions(neurons, [target], "activate", value=value, stats=stats,
                               layers=layers))
    conditions = {"no steering": [], f"-{source} +{target}": steered}
    gen = torch.Generator().manual_seed(seed)
    for r in range(random_sets):
        masks = {source: random_mask_like(steered[0].mask, gen),
                 target: random_mask_like(steered[1].mask, gen)}
        conditions[f"random#{r}"] = (
            interventions(neurons, [source], "deactivate", layers=layers, masks=masks)
            + interventions(neurons, [target], "activate", value=value, stats=stats,
                            layers=layers, masks=masks))
    outputs, labels, t_share, s_share, sizes = {}, {}, {}, {}, {}
    for name, edits in tqdm(conditions.items(), desc="language control", disable=not progress):
        with steering(model, edits, impl=impl):
            texts = generate_texts(model, tokenizer, prompts, max_new_tokens, batch_size)
        found = [identify_language(t, candidates) for t in texts]
        outputs[name], labels[name] = texts, found
        t_share[name] = sum(f == langid_code(target) for f in found) / len(found)
        s_share[name] = sum(f == langid_code(source) for f in found) / len(found)
        sizes[name] = sum(e.size for e in edits)
    return LanguageControl(source, target, list(conditions), t_share, s_share, sizes, outputs,
                           labels, {"prompts": len(prompts), "max_new_tokens": max_new_tokens,
                                    "seed": seed, "value": value, "candidates": candidates})


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
