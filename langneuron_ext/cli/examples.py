"""`langneuron examples`: the top-k activating token positions of a neuron set, per language.

    langneuron examples --model gemma-3-270m --neurons neurons.json --corpus debian-handbook \\
        --languages en,fr,de --split heldout --tokens-per-language 20000 --out examples.safetensors
    langneuron examples --model ./m --neurons n.json --top 50 --stats stats.safetensors ...
    torchrun --nproc-per-node 2 -m langneuron_ext examples ... --out examples.safetensors

Bad input (a neuron set that does not fit the model, an --out that is an input or cannot be
written, a leftover checkpoint without --resume) is a one-line error before the model loads,
where the model's folder tells its shape. Partial results are checkpointed next to --out
(`<out>.partial`, one per rank under torchrun) and continued with --resume.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import options
from .options import fail
from .outputs import check_outputs, corpus_inputs, keep_result


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "examples", help="record the top-k activating tokens of each neuron per language",
        description="One pass over held-out text that records, for every neuron of a neuron "
                    "set (or of --layers / --top N per language), the k token positions per "
                    "language with the largest activation, with a window of tokens around "
                    "each and the neuron's activation on every one of them (for `langneuron "
                    "browse`). Ties go to the earlier position in corpus order.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_pos", nargs="?", metavar="MODEL",
                   help="the model (same as --model)")
    options.add_model_options(p, default_model="")
    options.add_corpus_options(p, split_default="heldout")
    b = options.add_budget_options(p, default_tokens=20_000)
    b.add_argument("--docs-per-block", type=int, default=None, metavar="D",
                   help="documents per block (default 256; a resume needs the same value)")
    b.add_argument("--bos", action=argparse.BooleanOptionalAction, default=None,
                   help="start every row with BOS (default: when the tokenizer has one)")
    s = p.add_argument_group("neurons")
    s.add_argument("--neurons", required=True, metavar="FILE",
                   help="neuron set (JSON from `langneuron identify`)")
    s.add_argument("--layers", metavar="LIST", help="only these layers, e.g. 0-3,15")
    s.add_argument("--top", type=int, metavar="N",
                   help="per language, only its N neurons with the highest activation "
                        "probability in that language (needs --stats)")
    s.add_argument("--stats", metavar="FILE", help="stats file for --top")
    s.add_argument("-k", "--k", type=int, default=20, help="examples per language and neuron "
                   "(default 20)")
    s.add_argument("--context", type=int, default=16,
                   help="tokens shown on each side of an example (default 16)")
    options.add_output_options(p, out="output file: .safetensors (compact) or .json",
                               out_required=True)
    c = p.add_argument_group("checkpoints")
    c.add_argument("--resume", action="store_true",
                   help="continue the interrupted pass checkpointed in <out>.partial")
    c.add_argument("--checkpoint-every", type=int, default=100, metavar="BATCHES",
                   help="save a resumable checkpoint every BATCHES batches (default 100) ...")
    c.add_argument("--checkpoint-seconds", type=float, default=600, metavar="S",
                   help="... or every S seconds (default 600)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _checkpoints(out: Path) -> list:
    ckpt = out.with_name(out.name + ".partial")
    return [q for q in [ckpt, *sorted(ckpt.parent.glob(ckpt.name + ".rank*-of-*"))]
            if q.exists()]


def _folder_shape(model: str):
    """(layers, neurons per layer or None) from a model folder's config.json, else None."""
    config = Path(model) / "config.json"
    if not config.is_file():
        return None
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    cfg = cfg.get("text_config", cfg)
    layers = cfg.get("num_hidden_layers")
    moe = any(key in cfg for key in ("num_local_experts", "num_experts", "n_routed_experts"))
    width = None if moe else cfg.get("intermediate_size")
    return (layers, width) if isinstance(layers, int) else None


def _init_distributed(device):
    """Under torchrun: join the process group (gloo on CPU, NCCL on GPUs)."""
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


def run(args) -> int:
    from ..examples import ExamplesError, columns_of, top_per_language
    from ..identify.neuron_set import NeuronSet

    model_name = args.model_pos or args.model
    if not model_name:
        fail("give the model: langneuron examples MODEL ... (or --model MODEL)")
    if args.model_pos and args.model and args.model != args.model_pos:
        fail(f"the model is given twice ({args.model_pos} and --model {args.model}); give it "
             f"once")
    options.check_budget(args)
    options.check_min(args, "k", 1)
    options.check_min(args, "context", 0, "tokens")
    options.check_min(args, "top", 1, "neuron")
    options.check_min(args, "checkpoint_every", 1, "batch")
    options.check_min(args, "docs_per_block", 1, "document")
    device, _ = options.resolve_device_and_impl(args)
    check_outputs(inputs=[args.neurons, args.stats, *corpus_inputs(args)],
                  files=[("--out", args.out)])
    out = Path(args.out)
    neurons = NeuronSet.load(args.neurons)
    layers = options.parse_layers(args.layers)
    corpus, languages = options.corpus_from_args(args)
    if args.languages is None:
        languages = [lang for lang in neurons.languages if lang in corpus.languages] or languages
    selection = neurons
    if args.top is not None:
        if not args.stats:
            fail("--top N ranks each language's neurons by activation probability: give "
                 "--stats STATS (the scan the neuron set was made from)")
        from ..stats import ActivationStats
        selection = top_per_language(neurons, ActivationStats.load(args.stats), args.top)
    try:
        columns = columns_of(selection, layers)
    except ExamplesError as exc:
        fail(str(exc))
    shape = _folder_shape(model_name)
    if shape is not None:
        L, width = shape
        if int(columns[:, 0].max()) >= L or (width is not None
                                              and int(columns[:, 1].max()) >= width):
            fail(f"the neuron set {args.neurons} ({neurons.num_layers} layers x "
                 f"{neurons.intermediate_size} neurons) comes from another model than "
                 f"{model_name} ({L} layers x {width or '?'} neurons); use a neuron set of "
                 f"this model")
    leftovers = _checkpoints(out)
    if leftovers and not args.resume:
        fail(f"an interrupted examples pass left {leftovers[0]}; pass --resume to continue it, "
             f"or delete it to start afresh")
    if args.resume and not leftovers and int(os.environ.get("RANK", "0")) == 0:
        print(f"note: --resume: no checkpoint {out}.partial to continue; starting afresh",
              file=sys.stderr)
    rank, world, device = _init_distributed(device)
    from ..corpus.shards import DOCS_PER_BLOCK
    from ..examples import examples
    from ..models.loading import load_model
    start = time.perf_counter()
    model, tokenizer = load_model(model_name, gguf_file=args.gguf, dtype=args.dtype,
                                  device=device, progress=not args.no_progress and rank == 0)
    loaded = time.perf_counter()
    ckpt = out.with_name(out.name + ".partial")
    try:
        result = examples(model, tokenizer, corpus, columns.tolist(), k=args.k,
                          context=args.context, languages=languages,
                          tokens_per_language=args.tokens_per_language,
                          max_length=args.max_length, batch_size=args.batch_size,
                          packing=not args.no_packing, bos=args.bos, impl=args.impl,
                          progress=not args.no_progress, checkpoint=ckpt,
                          checkpoint_every=args.checkpoint_every,
                          checkpoint_seconds=args.checkpoint_seconds,
                          docs_per_block=args.docs_per_block or DOCS_PER_BLOCK)
    except KeyboardInterrupt:
        if _checkpoints(out) and rank == 0:
            print(f"langneuron examples: progress is saved in {ckpt}; rerun the same command "
                  f"with --resume to continue", file=sys.stderr)
        raise
    seconds = time.perf_counter() - loaded
    mine = ckpt if world == 1 else ckpt.with_name(f"{ckpt.name}.rank{rank}-of-{world}")
    if rank == 0:
        result.extra["neuron_set"] = str(args.neurons)
        try:
            result.save(out)
        except OSError as exc:
            if mine.exists():
                fail(f"cannot write {out}: {exc.strerror or exc}; the finished top-k are safe "
                     f"in {mine}: fix the folder, then rerun the same command with --resume")
            keep_result(out, result.save, "--out", "examples")
        summary = {"out": str(out), "languages": result.languages,
                   "neurons": int(result.columns.shape[0]), "k": result.k,
                   "context": result.context, "seconds": round(seconds, 2),
                   "load_seconds": round(loaded - start, 2)}
        if args.json:
            print(json.dumps(summary))
        else:
            print(f"wrote {out}: top {result.k} examples of {summary['neurons']} neurons in "
                  f"{len(result.languages)} languages ({seconds:.1f} s after {loaded - start:.1f}"
                  f" s loading)")
    if world > 1:
        import torch.distributed as dist
        dist.barrier()
    mine.unlink(missing_ok=True)
    return 0
