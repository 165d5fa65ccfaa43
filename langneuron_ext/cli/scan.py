"""`langneuron scan`: count language-conditional neuron activations of a model over a corpus.

    langneuron scan --model gemma-3-270m --corpus debian-handbook --languages en,fr,de \\
        --tokens-per-language 50000 --out stats.safetensors
    langneuron scan --model path/to/folder --text en=en.txt --text fr=fr.txt --out s.safetensors
    langneuron scan --model ./big --device-map auto --corpus debian-handbook --languages en,fr \\
        --out s.safetensors                       # layers across GPUs, CPU and disk
    torchrun --nproc-per-node 8 -m langneuron_ext scan --model ./dir ... --out s.safetensors

Everything the user can get wrong (budget, corpus, languages, --out, device, implementation) is
checked before the model is loaded. The statistics are written atomically; a partial scan is
checkpointed next to --out (`<out>.partial`, one per rank under torchrun) every
--checkpoint-every batches or --checkpoint-seconds seconds and continued with --resume.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from pathlib import Path

from . import options
from .options import fail
from .outputs import check_outputs, corpus_inputs, keep_result
from .summaries import print_scan_summary


def register(subparsers) -> None:
    from ..scan import DEFAULT_CHECKPOINT_EVERY, DEFAULT_CHECKPOINT_SECONDS

    p = subparsers.add_parser(
        "scan", help="count per-language neuron activations of a model over a corpus",
        description="Run per-language text through a model whose MLPs call the fused op and "
                    "write the per-language, per-layer, per-neuron activation counts. Under "
                    "torchrun every rank scans its share of the documents and rank 0 writes "
                    "--out.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Built-in models: gemma-3-270m, smollm2-135m (converted once from their PyPI "
               "wheels into $LANGNEURON_CACHE, default ~/.cache/langneuron).")
    g = options.add_model_options(p, auto_dtype=True)
    g.add_argument("--device-map", metavar="auto|balanced|FILE",
                   help="spread the layers over the GPUs, the CPU and disk with accelerate: "
                        "auto (fill GPU 0 first), balanced (even), or a JSON file mapping "
                        "module names to devices ({\"model.layers.0\": 0, ..., \"lm_head\": "
                        "\"cpu\"}); for models larger than one GPU")
    options.add_corpus_options(p)
    b = options.add_budget_options(p)
    b.add_argument("--bos", action=argparse.BooleanOptionalAction, default=None,
                   help="start every row with the tokenizer's BOS token (default: when the "
                        "tokenizer has one; Qwen-style tokenizers have none)")
    b.add_argument("--docs-per-block", type=int, default=None, metavar="D",
                   help="documents per block, the unit a rank reads and packs (default 256; "
                        "part of the batch layout, so a resume needs the same value)")
    p.add_argument("--sums", action="store_true",
                   help="also record the sum of act(gate) (needed for steering by mean)")
    p.add_argument("--sumsq", action="store_true", help="also record the sum of act(gate)^2")
    add_hist_option(p)
    p.add_argument("--residual-means", action="store_true",
                   help="also sum each decoder layer's output hidden state per language "
                        "(residual means: DiffMean steering vectors for steer-bench)")
    options.add_output_options(p, out="output statistics file (.safetensors); written "
                                      "atomically", out_required=True)
    c = p.add_argument_group("checkpoints")
    c.add_argument("--resume", action="store_true",
                   help="continue the interrupted scan checkpointed in <out>.partial")
    c.add_argument("--checkpoint-every", type=int, default=DEFAULT_CHECKPOINT_EVERY,
                   metavar="BATCHES",
                   help=f"save a resumable checkpoint every BATCHES batches (default "
                        f"{DEFAULT_CHECKPOINT_EVERY}) ...")
    c.add_argument("--checkpoint-seconds", type=float, default=DEFAULT_CHECKPOINT_SECONDS,
                   metavar="S",
                   help=f"... or every S seconds, whichever comes first (default "
                        f"{DEFAULT_CHECKPOINT_SECONDS:g})")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def add_hist_option(p: argparse.ArgumentParser) -> None:
    from ..ops.reference import DEFAULT_HIST_BINS
    p.add_argument("--hist", type=int, nargs="?", const=DEFAULT_HIST_BINS, default=None,
                   metavar="B",
                   help=f"also record a histogram of every neuron's activation per language "
                        f"with B bins (default {DEFAULT_HIST_BINS}: a few negative bins, 0, "
                        f"log-spaced positive bins) and its maximum, for percentiles, medians "
                        f"and `steer --value median|pQ`; the summary says the memory it takes")


def check_hist(args, languages, device, device_map) -> None:
    """--hist: a valid bin count whose histograms fit in memory; before the model loads
    (when the model's config can be read without loading it)."""
    if args.hist is None:
        return
    from ..ops import default_hist_edges
    from ..scan import ScanError
    from ..scan_memory import HistMemory, check_fits, model_dimensions
    try:
        default_hist_edges(args.hist)
    except ValueError as exc:
        fail(f"--hist {args.hist}: {exc}")
    dims = model_dimensions(args.model, args.gguf)
    if dims is None:
        return                # scan() checks again with the loaded model, before any batch
    memory = HistMemory(len(languages), dims[0], dims[1], args.hist)
    try:
        check_fits(memory, None if device_map is not None else _torch_device(device),
                   resuming=args.resume)
    except ScanError as exc:
        fail(str(exc))


def _torch_device(device):
    import torch
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ---- validation and construction --------------------------------------------------------------
def check_out(path: str, inputs=()) -> Path:
    """--out: not one of the inputs, its folder created, a real file writable there."""
    check_outputs(inputs=inputs, files=[("--out", path)])
    return Path(path)


def checkpoint_path(out: Path) -> Path:
    return out.with_name(out.name + ".partial")


def mine_checkpoint(out: Path, rank: int, world: int) -> Path:
    """This rank's checkpoint file (the scan's naming: one per rank under torchrun)."""
    ckpt = checkpoint_path(out)
    return ckpt if world == 1 else ckpt.with_name(f"{ckpt.name}.rank{rank}-of-{world}")


def checkpoint_files(out: Path) -> list:
    """The checkpoint files of an interrupted scan to `out` (one per rank under torchrun)."""
    ckpt = checkpoint_path(out)
    return [p for p in [ckpt, *sorted(ckpt.parent.glob(ckpt.name + ".rank*-of-*"))]
            if p.exists()]


def read_device_map(text: str | None):
    """--device-map: 'auto' / 'balanced' / ... as given, or the dict in a JSON file."""
    if text is None or text in ("auto", "balanced", "balanced_low_0", "sequential"):
        return text
    path = Path(text)
    if not path.is_file():
        fail(f"--device-map {text}: not auto, balanced or an existing JSON file mapping module "
             f"names to devices, e.g. {{\"model.embed_tokens\": 0, \"model.layers.0\": 0, "
             f"\"model.layers.1\": \"cpu\", \"model.norm\": \"cpu\", \"lm_head\": \"cpu\"}}")
    try:
        mapping = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        fail(f"--device-map {text} is not valid JSON ({exc}); write an object mapping module "
             f"names to devices")
    if not isinstance(mapping, dict) or not mapping:
        fail(f"--device-map {text} must hold a JSON object mapping module names to devices "
             f"(a GPU number, \"cpu\" or \"disk\")")
    return mapping


def _dtype_name(dtype: str, device: str | None, device_map) -> str:
    """--dtype auto resolved for the implementation check (a bad --device is reported by
    `options.resolve_device_and_impl`, which this feeds)."""
    from ..models.loading import resolve_dtype_for

    text = str(device).strip().lower() if device is not None else None
    if text is not None and text.startswith("gpu"):
        text = "cuda" + text[3:]
    try:
        return resolve_dtype_for(dtype, text, device_map)
    except (RuntimeError, ValueError):
        return resolve_dtype_for(dtype, "cpu", device_map)


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
    from ..corpus.shards import DOCS_PER_BLOCK
    from ..models.loading import load_model
    from ..scan import scan

    options.check_budget(args)
    options.check_min(args, "checkpoint_every", 1, "batch")
    if not args.checkpoint_seconds > 0:
        fail(f"--checkpoint-seconds must be a positive number of seconds, got "
             f"{args.checkpoint_seconds:g}")
    options.check_min(args, "docs_per_block", 1, "document")
    device_map = read_device_map(args.device_map)
    if device_map is not None and args.device is not None:
        fail("give --device or --device-map, not both (--device-map places every layer)")
    if device_map is not None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        fail("--device-map spreads one model over this machine's devices; under torchrun "
             "give each rank one GPU instead (leave --device-map out)")
    device, _ = options.resolve_device_and_impl(
        args, dtype=_dtype_name(args.dtype, args.device, device_map))
    corpus, languages = options.corpus_from_args(args)
    device_map_file = args.device_map if isinstance(device_map, dict) else None
    out = check_out(args.out, inputs=[*corpus_inputs(args), device_map_file])
    leftovers = checkpoint_files(out)
    if leftovers and not args.resume:
        fail(f"an interrupted scan left {leftovers[0]}; pass --resume to continue it, or "
             f"delete it to start afresh")
    if args.resume and not leftovers and int(os.environ.get("RANK", "0")) == 0:
        print(f"note: --resume: no checkpoint {checkpoint_path(out)} to continue; starting "
              f"afresh", file=sys.stderr)
    check_hist(args, languages, device, device_map)
    rank, world, device = init_distributed(device)
    ckpt = checkpoint_path(out)
    start = time.perf_counter()
    model, tokenizer = load_model(args.model, gguf_file=args.gguf, dtype=args.dtype,
                                  device=device, device_map=device_map,
                                  progress=not args.no_progress and rank == 0)
    loaded = time.perf_counter()
    try:
        with warnings.catch_warnings(record=True) as caught:  # a clean note, not a warning
            warnings.simplefilter("always")
            stats = scan(model, tokenizer, corpus, languages=languages,
                         tokens_per_language=args.tokens_per_language, max_length=args.max_length,
                         batch_size=args.batch_size, packing=not args.no_packing, bos=args.bos,
                         track_sums=args.sums, track_sumsq=args.sumsq, impl=args.impl,
                         progress=not args.no_progress, checkpoint=ckpt,
                         checkpoint_every=args.checkpoint_every,
                         checkpoint_seconds=args.checkpoint_seconds,
                         docs_per_block=args.docs_per_block or DOCS_PER_BLOCK,
                         hist_bins=args.hist, track_residual=args.residual_means)
    except KeyboardInterrupt:
        saved = checkpoint_files(out)
        if saved and rank == 0:
            print(f"langneuron scan: progress is saved in {saved[0]}; rerun the same command "
                  f"with --resume to continue", file=sys.stderr)
        raise
    seconds = time.perf_counter() - loaded
    for caught_warning in caught:
        if rank == 0:
            print(f"note: {caught_warning.message}", file=sys.stderr)
    if rank == 0:             # every rank holds the all-reduced result; one writes it
        from ..corpus.hf_datasets import filter_metadata
        stats.extra.update(filter_metadata(corpus))    # --filter-language: dropped per language
        saved = mine_checkpoint(out, rank, world)
        try:
            stats.save(out)
        except OSError as exc:
            if saved.exists():
                fail(f"cannot write {out}: {exc.strerror or exc}; the finished statistics are "
                     f"safe in {saved}: free space (or fix the folder), then rerun the same "
                     f"command with --resume, which writes them without scanning again")
            keep_result(out, stats.save, "--out", "statistics")
        print_scan_summary(stats, out, seconds, loaded - start, as_json=args.json)
    if world > 1:
        import torch.distributed as dist
        dist.barrier()        # --out exists before any rank removes its checkpoint
    mine_checkpoint(out, rank, world).unlink(missing_ok=True)
    return 0


