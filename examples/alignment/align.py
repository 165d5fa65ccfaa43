#!/usr/bin/env python
"""A real multilingual alignment on a CPU, and what it changes in the language neurons.

1. Align a small model (default SmolLM2-135M from its PyPI wheel) by question-translation
   instruction tuning: X -> English translation pairs built from the Debian handbook's parallel
   paragraphs (instruction and source text as prompt, the English paragraph as the target, no
   answers), LoRA adapters through `peft` on every linear layer, merged back afterwards.
   Paragraphs at even positions of the book train; odd positions are never trained on.
2. Scan the model before and after alignment on the same held-out paragraphs (positions
   index % 4 == 1, "text A") in trained and untrained languages; scan the base model once more
   on other paragraphs (index % 4 == 3, "text B") and align a second seed, so the change can be
   set against two spreads: two scans of one model on different text, and two seeds.
3. Compare with `ln.alignment.compare` (specific / related / general neurons, phases, neurons
   shared by n languages, overlap, activation probability change) and write JSON, markdown and
   plots. The translation loss on held-out pairs before and after shows that the alignment
   took, also for languages it did not train ("spontaneous alignment").

    .venv/bin/python examples/alignment/align.py --out docs/results/alignment

Every step is skipped when its output exists in --work-dir (adapters, stats files), so an
interrupted run resumes. `--tiny` runs the whole pipeline on a random 4-layer llama with the
byte-level toy tokenizer in seconds (the CI test).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import sys
import time
from pathlib import Path

import torch

import langneuron_ext as ln
from langneuron_ext.corpus import DebianHandbook
from langneuron_ext.corpus.sources import Document, TextSource

INSTRUCTION = "Translate the following text into English.\n"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---- text -------------------------------------------------------------------------------------
class HandbookPart(TextSource):
    """The handbook paragraphs of the given languages whose position satisfies
    index % modulus == remainder (parallel across languages, disjoint across remainders)."""

    def __init__(self, languages, modulus: int, remainder: int, name: str):
        self.book = DebianHandbook(list(languages), split="all")
        self.languages = list(languages)
        self.modulus, self.remainder = modulus, remainder
        self.description = (f"debian-handbook paragraphs index % {modulus} == {remainder} "
                            f"({name}): {','.join(self.languages)}")

    def paragraphs(self, lang):
        return [p for p in self.book.paragraphs(lang) if p.index % self.modulus == self.remainder]

    def _documents(self, lang):
        for p in self.paragraphs(lang):
            yield Document(lang, p.text)


def translation_pairs(tokenizer, languages, remainders, max_source: int, max_target: int,
                      english_source: str = ""):
    """{lang: [(prompt_ids, target_ids)]} from paragraphs whose index % 4 is in `remainders`,
    keeping pairs that fit the length limits (no truncation: a cut pair is not a translation).

    english_source: the format-only controls. The same pairs (kept by the same length test on
    the X prompt, in the same order, under the same language keys so batches interleave alike)
    with an English paragraph in the prompt: the same instruction and English targets, no
    cross-lingual mapping. "same": the target's own English paragraph (the model learns to copy);
    "other": the English paragraph of the next kept pair whose text differs from the target
    (the model learns to answer in handbook English without using the source). Both English
    prompts fit: their paragraphs are targets that fit --max-target."""
    book = DebianHandbook(["en"] + [lg for lg in languages if lg != "en"], split="all")
    english = {p.index: p.text for p in book.paragraphs("en")}
    eos = tokenizer.eos_token_id
    pairs = {}
    for lang in languages:
        kept = []
        for p in book.paragraphs(lang):
            if p.index % 4 not in remainders or p.index not in english:
                continue
            prompt = tokenizer(f"{INSTRUCTION}{p.text}\nEnglish: ",
                               add_special_tokens=False)["input_ids"]
            target = tokenizer(english[p.index], add_special_tokens=False)["input_ids"]
            if eos is not None:
                target = target + [eos]
            if len(prompt) <= max_source and len(target) <= max_target:
                kept.append((prompt, target, p.index))
        if english_source == "same":
            sources = [i for _, _, i in kept]
        elif english_source == "other":
            sources = []
            for k, (_, _, index) in enumerate(kept):
                shift = 1
                while shift < len(kept) and english[kept[(k + shift) % len(kept)][2]] \
                        == english[index]:
                    shift += 1
                sources.append(kept[(k + shift) % len(kept)][2])
        elif english_source:
            raise ValueError(f"english_source is '', 'same' or 'other', not {english_source!r}")
        if english_source:
            kept = [(tokenizer(f"{INSTRUCTION}{english[src]}\nEnglish: ",
                               add_special_tokens=False)["input_ids"], target, index)
                    for (_, target, index), src in zip(kept, sources)]
        pairs[lang] = [(prompt, target) for prompt, target, _ in kept]
    return pairs


def collate(pairs, pad_id: int):
    """Right-padded input ids, attention mask and labels (-100 on the prompt and padding)."""
    length = max(len(p) + len(t) for p, t in pairs)
    ids = torch.full((len(pairs), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(pairs), length), dtype=torch.long)
    labels = torch.full((len(pairs), length), -100, dtype=torch.long)
    for row, (p, t) in enumerate(pairs):
        n = len(p) + len(t)
        ids[row, :n] = torch.tensor(p + t)
        mask[row, :n] = 1
        labels[row, len(p):n] = torch.tensor(t)
    return ids, mask, labels


@torch.no_grad()
def translation_loss(model, pairs, pad_id: int, batch_size: int = 8) -> float:
    """Mean next-token NLL (nats) of the English targets given the prompts."""
    model.eval()
    total, count = 0.0, 0
    for start in range(0, len(pairs), batch_size):
        ids, mask, labels = collate(pairs[start:start + batch_size], pad_id)
        logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
        target = labels[:, 1:]
        nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), target,
                                                ignore_index=-100, reduction="sum")
        total += float(nll)
        count += int((target != -100).sum())
    return total / max(count, 1)


# ---- models -----------------------------------------------------------------------------------
def load_base(args):
    """(model, tokenizer) of the base model, float32, on the CPU."""
    if args.tiny:
        from transformers import LlamaConfig, LlamaForCausalLM

        from langneuron_ext.models.toy import BYTE_VOCAB_SIZE, byte_tokenizer
        tok = byte_tokenizer()
        torch.manual_seed(1234)
        config = LlamaConfig(vocab_size=BYTE_VOCAB_SIZE, hidden_size=32, intermediate_size=64,
                             num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                             max_position_embeddings=2048, tie_word_embeddings=True)
        model = LlamaForCausalLM(config).eval()
        model.config._name_or_path = "tiny-llama"
        return model, tok
    from langneuron_ext.models import load_model
    return load_model(args.model, dtype="float32", device="cpu", progress=False)


def align(args, seed: int, pairs, pad_id: int, adapter_dir: Path, name: str = ""):
    """LoRA question-translation tuning of a fresh base model; returns (merged model, info).
    The adapter is saved in `adapter_dir`; when it exists training is skipped."""
    name = name or f"seed {seed}"
    from peft import LoraConfig, PeftModel, get_peft_model

    base, _ = load_base(args)
    info_path = adapter_dir / "training.json"
    if info_path.exists():
        log(f"{name}: adapter found in {adapter_dir}, not training again")
        model = PeftModel.from_pretrained(base, str(adapter_dir))
        return model.merge_and_unload().eval(), json.loads(info_path.read_text())
    if args.no_train:
        log(f"{name}: no adapter in {adapter_dir} and --no-train: skipped")
        return None, None

    torch.manual_seed(seed)
    rng = random.Random(seed)
    config = LoraConfig(r=args.lora_rank, lora_alpha=2 * args.lora_rank, lora_dropout=0.05,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                        "up_proj", "down_proj"], task_type="CAUSAL_LM")
    model = get_peft_model(base, config)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  lr=args.lr, weight_decay=0.0)
    warmup = max(1, args.steps // 10)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (args.steps - s) / (args.steps
                                                                                 - warmup))))
    # languages interleaved: every batch holds the trained languages in equal parts
    pool = {lang: list(p) for lang, p in pairs.items()}
    for items in pool.values():
        rng.shuffle(items)
    langs = list(pool)
    losses, start = [], time.perf_counter()
    model.train()
    examples = 0
    for step in range(args.steps):
        batch = []
        for j in range(args.batch_size):
            items = pool[langs[(step * args.batch_size + j) % len(langs)]]
            batch.append(items[(examples // len(langs)) % len(items)])
            examples += 1
        ids, mask, labels = collate(batch, pad_id)
        loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 5 == 0 or step == args.steps - 1:
            log(f"{name} step {step + 1}/{args.steps} loss {losses[-1]:.3f} "
                f"({time.perf_counter() - start:.0f} s)")
        if time.perf_counter() - start > args.max_train_seconds:
            log(f"{name}: stopping at step {step + 1}, past --max-train-seconds")
            break
        if args.stop_at_step and step + 1 >= args.stop_at_step:
            log(f"{name}: stopping at step {step + 1} (--stop-at-step)")
            break
    seconds = time.perf_counter() - start
    model.save_pretrained(str(adapter_dir))
    info = {"seed": seed, "steps": len(losses), "planned_steps": args.steps,
            "examples": examples, "losses": [round(x, 4) for x in losses],
            "batch_size": args.batch_size, "lr": args.lr, "lora_rank": args.lora_rank,
            "trainable_parameters": trainable, "seconds": round(seconds, 1),
            "loss_first10": sum(losses[:10]) / len(losses[:10]),
            "loss_last10": sum(losses[-10:]) / len(losses[-10:])}
    info_path.write_text(json.dumps(info, indent=1))
    log(f"{name}: {len(losses)} steps in {seconds:.0f} s, loss "
        f"{info['loss_first10']:.3f} -> {info['loss_last10']:.3f}")
    return model.merge_and_unload().eval(), info


def cached_loss(path: Path, model, pairs, pad_id: int) -> dict:
    """{lang: translation loss}, computed once and kept in `path`."""
    if path.exists():
        return json.loads(path.read_text())
    start = time.perf_counter()
    loss = {lang: translation_loss(model, p, pad_id) for lang, p in pairs.items()}
    path.write_text(json.dumps(loss, indent=1))
    log(f"{path.name}: " + ", ".join(f"{lg} {v:.3f}" for lg, v in loss.items())
        + f" ({time.perf_counter() - start:.0f} s)")
    return loss


def scan_to(path: Path, model, tok, corpus, args):
    """Scan (or load when the file exists) the statistics of `model` over `corpus`."""
    if path.exists():
        log(f"{path.name}: found, not scanning again")
        return ln.ActivationStats.load(path)
    start = time.perf_counter()
    stats = ln.scan(model, tok, corpus, languages=args.languages,
                    tokens_per_language=args.tokens_per_language, max_length=args.max_length,
                    batch_size=8, progress=False, model_name=path.stem)
    seconds = time.perf_counter() - start
    stats.extra["scan_seconds"] = f"{seconds:.1f}"
    stats.save(path)
    log(f"{path.name}: {int(stats.n_tokens.sum())} tokens in {seconds:.0f} s")
    return stats


def parallel_text(tokenizer, languages, rows: int, max_tokens: int) -> dict:
    """{lang: [paragraph]}: `rows` held-out handbook paragraphs (index % 4 == 1, never trained
    on) present in every language, evenly spread over the book. A row is kept when each
    language's paragraph has 8 to `max_tokens` tokens and differs from the English one (a
    command line or a name is the same in every language and would be found trivially)."""
    book = DebianHandbook(languages, split="all")
    by_lang = {lg: {p.index: p.text for p in book.paragraphs(lg) if p.index % 4 == 1}
               for lg in languages}
    common = sorted(set.intersection(*(set(v) for v in by_lang.values())))

    def fits(index):
        english = " ".join(by_lang["en"][index].split())
        for lg in languages:
            text = by_lang[lg][index]
            n = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            if not 8 <= n <= max_tokens or (lg != "en" and " ".join(text.split()) == english):
                return False
        return True

    kept = [i for i in common if fits(i)]
    if len(kept) < 2:
        raise SystemExit(f"only {len(kept)} parallel rows fit --parallel-max-tokens "
                         f"{max_tokens}; raise it")
    step = max(1, len(kept) // rows)
    picked = kept[::step][:rows]
    return {lg: [by_lang[lg][i] for i in picked] for lg in languages}


def cached_representation(path: Path, model, tok, parallel_path: Path, args) -> dict:
    """`ln.alignment.representation_similarity` of `model`, computed once and kept in `path`."""
    if path.exists():
        return json.loads(path.read_text())
    start = time.perf_counter()
    result = ln.alignment.representation_similarity(
        model, tok, parallel_path, [lg for lg in args.languages if lg != "en"],
        batch_size=8, max_length=args.parallel_max_tokens, model_name=path.stem)
    result["seconds"] = round(time.perf_counter() - start, 1)
    path.write_text(json.dumps(result, indent=1))
    mid = result["num_layers"] // 2
    log(f"{path.name}: retrieval at layer {mid} " + ", ".join(
        f"{lg} {result['layers'][lg]['retrieval'][mid]:.2f}" for lg in result["languages"])
        + f" ({result['seconds']:.0f} s)")
    return result


# The arms of the study: the model trained on X -> English pairs of the trained languages, and
# two format-only controls (the same pairs and targets with an English source: the target's own
# paragraph, or another one). The file names of the aligned arm are those of the study without
# a control, so its runs resume.
ARMS = {"aligned": {"key": "seed{seed}", "adapter": "adapter_seed{seed}",
                    "loss": "loss_seed{seed}.json", "scan": "aligned_seed{seed}_textA",
                    "english_source": "", "label": "aligned"},
        "format": {"key": "format{seed}", "adapter": "adapter_format_seed{seed}",
                   "loss": "loss_format_seed{seed}.json", "scan": "format_seed{seed}_textA",
                   "english_source": "same", "label": "format-only"},
        "format-other": {"key": "other{seed}", "adapter": "adapter_other_seed{seed}",
                         "loss": "loss_other_seed{seed}.json", "scan": "other_seed{seed}_textA",
                         "english_source": "other", "label": "format-other"}}


# ---- main -------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="built-in name, folder or HF id")
    p.add_argument("--trained", default="fr,zh", help="languages the alignment trains")
    p.add_argument("--languages", default="en,fr,de,ru,ja,zh",
                   help="languages scanned (trained and untrained)")
    p.add_argument("--seeds", default="0,1", help="alignment seeds; the first is the headline, "
                                                  "the others measure the seed spread")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--max-source", type=int, default=96, help="longest prompt in tokens")
    p.add_argument("--max-target", type=int, default=64, help="longest target in tokens")
    p.add_argument("--max-train-seconds", type=float, default=840.0,
                   help="stop training a seed after this long (the 15-minute budget)")
    p.add_argument("--stop-at-step", type=int, default=0,
                   help="stop after this many steps, the schedule still planned for --steps "
                        "(to give a second seed the steps the first one reached in time)")
    p.add_argument("--eval-pairs", type=int, default=6,
                   help="held-out translation pairs per language (the shortest) for the loss "
                        "before/after")
    p.add_argument("--arms", default="aligned,format",
                   help="any of aligned (X -> English pairs of --trained), format (the "
                        "format-only control: the same pairs with the target's own English "
                        "paragraph as the source) and format-other (the same pairs with "
                        "another English paragraph as the source)")
    p.add_argument("--parallel-rows", type=int, default=64,
                   help="held-out parallel paragraphs for the representation measure")
    p.add_argument("--parallel-max-tokens", type=int, default=96,
                   help="longest parallel paragraph in tokens (every language)")
    p.add_argument("--tokens-per-language", type=int, default=4_000)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--work-dir", default="alignment-work",
                   help="adapters and stats files (resumable)")
    p.add_argument("--out", default="docs/results/alignment", help="results folder")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                   help="torch threads (1 is faster on a heavily shared machine)")
    p.add_argument("--no-base", action="store_true",
                   help="skip the base model's scans and loss (another process does them)")
    p.add_argument("--no-train", action="store_true",
                   help="train nothing: measure only the models whose adapters exist (another "
                        "process trains the others); implies --no-compare")
    p.add_argument("--no-compare", action="store_true",
                   help="stop after training and scanning (run again without it to compare)")
    p.add_argument("--tiny", action="store_true",
                   help="random 4-layer llama, toy tokenizer: the pipeline in seconds (CI)")
    args = p.parse_args(argv)
    args.trained = [s.strip() for s in args.trained.split(",") if s.strip()]
    args.languages = [s.strip() for s in args.languages.split(",") if s.strip()]
    args.seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    args.arms = [s.strip() for s in args.arms.split(",") if s.strip()]
    unknown = [a for a in args.arms if a not in ARMS]
    if unknown or not args.arms:
        p.error(f"--arms takes aligned, format and/or format-other, got "
                f"{unknown or 'nothing'}")
    if "en" not in args.languages:
        p.error("--languages must include en (the pivot of the representation measure)")
    if args.tiny:   # the toy tokenizer has a token per byte: allow longer pairs
        args.max_source, args.max_target = 8 * args.max_source, 8 * args.max_target
        args.parallel_max_tokens *= 8
    missing = [lg for lg in args.trained if lg not in args.languages]
    if missing:
        p.error(f"--trained {missing} must also be in --languages {args.languages}")
    if "en" in args.trained:
        p.error("--trained names the source languages of X -> English pairs; leave out en")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    wall = time.perf_counter()
    work, out = Path(args.work_dir), Path(args.out)
    work.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, args.threads))
    log(f"load {'tiny model' if args.tiny else args.model}; load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    base, tok = load_base(args)
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

    train_pairs = translation_pairs(tok, args.trained, {0, 2}, args.max_source, args.max_target)
    eval_langs = [lg for lg in args.languages if lg != "en"]
    eval_pairs = translation_pairs(tok, eval_langs, {1}, args.max_source, args.max_target)
    eval_pairs = {lg: sorted(p, key=lambda x: len(x[0]) + len(x[1]))[:args.eval_pairs]
                  for lg, p in eval_pairs.items()}
    log("training pairs: " + ", ".join(f"{lg} {len(p)}" for lg, p in train_pairs.items())
        + "; eval pairs: " + ", ".join(f"{lg} {len(p)}" for lg, p in eval_pairs.items()))
    short = [lg for lg, p in train_pairs.items() if not p]
    if short:
        raise SystemExit(f"no training pairs fit the length limits for {short}; raise "
                         f"--max-source / --max-target")

    text_a = HandbookPart(args.languages, 4, 1, "text A")
    text_b = HandbookPart(args.languages, 4, 3, "text B")
    parallel_path = work / "parallel.tsv"
    if not parallel_path.exists():
        ln.alignment.write_parallel(parallel_path, parallel_text(
            tok, args.languages, args.parallel_rows, args.parallel_max_tokens))
    loss, stats, rep = {}, {}, {}
    if not args.no_base:
        loss["base"] = cached_loss(work / "loss_base.json", base, eval_pairs, pad_id)
        stats["base_A"] = scan_to(work / "base_textA.safetensors", base, tok, text_a, args)
        stats["base_B"] = scan_to(work / "base_textB.safetensors", base, tok, text_b, args)
        rep["base"] = cached_representation(work / "repr_base.json", base, tok, parallel_path,
                                            args)
    del base
    training = {}
    for arm in args.arms:
        spec = ARMS[arm]
        pairs = train_pairs if not spec["english_source"] else translation_pairs(
            tok, args.trained, {0, 2}, args.max_source, args.max_target,
            english_source=spec["english_source"])
        for seed in args.seeds:
            key = spec["key"].format(seed=seed)
            model, training[key] = align(args, seed, pairs, pad_id,
                                         work / spec["adapter"].format(seed=seed),
                                         name=f"{arm} seed {seed}")
            if model is None:
                continue
            loss[key] = cached_loss(work / spec["loss"].format(seed=seed), model, eval_pairs,
                                    pad_id)
            scan = spec["scan"].format(seed=seed)
            stats[f"{key}_A"] = scan_to(work / f"{scan}.safetensors", model, tok, text_a, args)
            rep[key] = cached_representation(work / f"repr_{key}.json", model, tok,
                                             parallel_path, args)
            del model

    if args.no_compare or args.no_base or args.no_train:
        log(f"done without the comparison ({time.perf_counter() - wall:.0f} s)")
        return 0
    from langneuron_ext.report.alignment import write_alignment_report
    from langneuron_ext.report.representation import write_control_report
    first = args.seeds[0]
    heads = {arm: ARMS[arm]["key"] for arm in args.arms}
    main_arm = args.arms[0]
    main_cmp = ln.alignment.compare(stats["base_A"],
                                    stats[f"{heads[main_arm].format(seed=first)}_A"],
                                    trained=args.trained)
    spreads = {"text": ln.alignment.compare(stats["base_A"], stats["base_B"],
                                            trained=args.trained)}
    cmps = {}    # (arm, seed) -> base vs that model
    for arm in args.arms:
        label = ARMS[arm]["label"]
        for seed in args.seeds:
            key = heads[arm].format(seed=seed)
            cmps[arm, seed] = main_cmp if (arm, seed) == (main_arm, first) else \
                ln.alignment.compare(stats["base_A"], stats[f"{key}_A"], trained=args.trained)
            if (arm, seed) != (main_arm, first):
                spreads[f"base vs {label} seed {seed}"] = cmps[arm, seed]
        for seed in args.seeds[1:]:
            spreads[f"{label} seed {first} vs {seed}"] = ln.alignment.compare(
                stats[f"{heads[arm].format(seed=first)}_A"],
                stats[f"{heads[arm].format(seed=seed)}_A"], trained=args.trained)
    for arm in [a for a in args.arms if a != "aligned"] if "aligned" in heads else []:
        for seed in args.seeds:
            spreads[f"{ARMS[arm]['label']} vs aligned seed {seed}"] = ln.alignment.compare(
                stats[f"{heads[arm].format(seed=seed)}_A"], stats[f"seed{seed}_A"],
                trained=args.trained)
    command = "python examples/alignment/align.py " + " ".join(sys.argv[1:] if argv is None
                                                                 else argv)
    run = {"command": command, "model": "tiny-llama" if args.tiny else args.model,
           "seeds": args.seeds, "arms": args.arms, "trained": args.trained,
           "languages": args.languages,
           "training": {str(k): v for k, v in training.items()},
           "translation_loss": loss,
           "tokens_per_language": args.tokens_per_language,
           "scan_seconds": {k: float(v.extra.get("scan_seconds", "nan"))
                            for k, v in stats.items()},
           "wall_seconds": round(time.perf_counter() - wall, 1),
           "machine": f"{platform.machine()}, {os.cpu_count()} cores, torch "
                      f"{torch.__version__}",
           "load_average_end": [round(x, 2) for x in os.getloadavg()]}
    write_alignment_report(out, main_cmp, spreads=spreads, run=run)
    arms = {arm: {seed: heads[arm].format(seed=seed) for seed in args.seeds}
            for arm in args.arms}
    write_control_report(out, arms=arms, trained=args.trained, loss=loss, representation=rep,
                         neurons={f"{arm} seed {seed}": cmps[arm, seed].to_dict()
                                  for arm, seed in cmps}, run=run,
                         text_neurons=spreads["text"].to_dict())
    log(f"wrote {out}/alignment.json, alignment.md, control.json, control.md and plots in "
        f"{time.perf_counter() - wall:.0f} s")
    if not all(math.isfinite(v) for d in loss.values() for v in d.values()):
        raise SystemExit("a translation loss is not finite")
    return 0


if __name__ == "__main__":
    sys.exit(main())
