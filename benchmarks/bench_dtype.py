"""Float32 against bfloat16 on the CPU: the measurements behind `--dtype auto`.

Three measurements, each appending to or writing a file under benchmarks/results/:

    # scan throughput, fp32 vs bf16, interleaved rounds -> dtype_speed.csv
    python benchmarks/bench_dtype.py --model gemma-3-270m --rounds 9 --threads 1

    # the neurons and NLL conclusions of two demo folders (one run per dtype, same text)
    #   -> dtype_neurons_<model>.json
    python benchmarks/bench_dtype.py --neurons FP32_DIR BF16_DIR --model gemma-3-270m \
        --made-by "langneuron demo --dtype float32 ..." --made-by "langneuron demo ..."

    # greedy generation (the demo's control step): prompts per call -> generation_batch.csv
    python benchmarks/bench_dtype.py --generate --model gemma-3-270m --dtypes bfloat16 \
        --batch-sizes 8,20 --prompts 20 --rounds 3 --threads 1

    # the same for the whole NLL matrix (random neuron sets) -> nll_matrix_head.csv
    python benchmarks/bench_dtype.py --matrix --model gemma-3-270m --rounds 3 --threads 1

    # the NLL matrix's LM head: full logits vs the chunked head, time and peak memory per
    # dtype, interleaved rounds -> lm_head.csv
    python benchmarks/bench_dtype.py --head --model gemma-3-270m --seq-len 128 --rounds 5 \
        --threads 1

Speed: loads the model once in float32 and once in bfloat16 (the same weights), patches both to
record K languages the way `ln.scan` does (the base model without the LM head,
`use_cache=False`, `torch.inference_mode`) and times one pass over the same handbook batches in
each dtype, alternating which goes first from round to round. The ratio per round is the float32
pass's time over the bfloat16 pass's (> 1: bfloat16 is faster); the median over rounds is
reported, with the load average at the start and the end, and the same ratio on this process's
CPU time (less disturbed by other processes on a shared machine).

Neurons: per method (LAPE, specific/related/general) and language, the sizes of both sets, their
intersection and Jaccard; for the NLL matrix, the languages whose own-language rise is separated
from the random sets in each run, and the own rises side by side.

Head: per-token NLL of R rows x T handbook tokens through the model's own logits
(`nll.row_token_nll`) and through `ChunkedHead.token_nll`; peak resident memory above the start
of each (first pass, after a warm-up forward), median wall time over interleaved rounds, and the
largest per-token difference between the two.

Matrix: `evaluate.nll_matrix` over the same held-out windows and (random) neuron sets with the
chunked head and with the full logits (the path it takes for heads the chunked one does not
know); time, peak memory of the first run of each, and the largest difference in the matrix.

Generate: greedy continuations of the same held-out prompts (`langcontrol.generate_texts`, as
the demo's control and per-phase steps make them) with several prompts-per-call, interleaved
rounds; this process's CPU time per batch size, its median ratio to the first size, and how many
texts equal the first size's (batch composition changes the last bits of a 16-bit forward, and
greedy decoding can then pick another token).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

RESULTS_DIR = Path(__file__).resolve().parent / "results"
RESULTS = RESULTS_DIR / "dtype_speed.csv"
HEAD_RESULTS = RESULTS_DIR / "lm_head.csv"
GENERATE_RESULTS = RESULTS_DIR / "generation_batch.csv"
MATRIX_RESULTS = RESULTS_DIR / "nll_matrix_head.csv"
FIELDS = ["run_id", "machine", "model", "threads", "batch", "seq_len", "n_batches", "K", "rounds",
          "fp32_tokens_per_s", "bf16_tokens_per_s", "ratio_fp32_time_over_bf16",
          "ratio_iqr", "ratio_min", "ratio_max", "cpu_time_ratio_fp32_over_bf16",
          "load_avg_start", "load_avg_end",
          "cpu_avx512_bf16", "cpu_amx_bf16", "command"]
HEAD_FIELDS = ["run_id", "machine", "model", "dtype", "threads", "rows", "seq_len", "rounds",
               "full_s", "chunked_s", "ratio_full_time_over_chunked",
               "full_peak_extra_mib", "chunked_peak_extra_mib", "max_abs_diff_nats",
               "load_avg_start", "load_avg_end", "command"]
GENERATE_FIELDS = ["run_id", "machine", "model", "dtype", "threads", "prompts", "new_tokens",
                   "rounds", "batch_size", "wall_s", "cpu_s", "cpu_ratio_vs_first",
                   "same_texts_as_first", "load_avg_start", "load_avg_end", "command"]
MATRIX_FIELDS = ["run_id", "revision", "machine", "model", "dtype", "threads", "languages",
                 "tokens_per_language", "random_sets", "variants", "rounds", "full_s", "chunked_s",
                 "ratio_full_time_over_chunked", "full_peak_extra_mib", "chunked_peak_extra_mib",
                 "max_abs_diff_nll", "load_avg_start", "load_avg_end", "command"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def _iqr(values):
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[2] - q[0]


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _machine() -> str:
    """CPU model, cores and torch version: the rows of several machines stay apart."""
    name = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {os.cpu_count()} cores, torch {torch.__version__.split('+')[0]}"


def _revision() -> str:
    """The repository's commit (short), '+changes' when the work tree differs from it."""
    import subprocess
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, check=True,
                              capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty.strip() else "")


def _command(args) -> str:
    """The command line as it was given (every default it left out is the script's)."""
    return "python benchmarks/bench_dtype.py " + shlex.join(sys.argv[1:])


def _append(path: Path, fields, row) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        if new:
            w.writeheader()
        w.writerow(row)


# ---- scan throughput --------------------------------------------------------------------------
def speed(args) -> None:
    from langneuron_ext.bench.scan import make_batches
    from langneuron_ext.models.dtype_auto import cpu_bf16_features
    from langneuron_ext.models.loading import load_model
    from langneuron_ext.models.patch import patch
    from langneuron_ext.scan import _forward_callable

    models = {}
    for name, dtype in DTYPES.items():
        model, tokenizer = load_model(args.model, dtype=dtype, device="cpu", progress=False)
        handle = patch(model)
        handle.start_recording(args.languages)
        models[name] = (model, handle, _forward_callable(model))
    batches, _ = make_batches(tokenizer, models["float32"][0].config.vocab_size,
                              batch_size=args.batch_size, seq_len=args.seq_len,
                              n_batches=args.batches, languages=args.languages)
    tokens = sum(b.input_ids.numel() for b in batches)

    def one_pass(name):
        _, handle, forward = models[name]
        start, cpu_start = time.perf_counter(), time.process_time()
        with torch.inference_mode():
            for b in batches:
                handle.set_rows(b.row_lang)
                forward(input_ids=b.input_ids, attention_mask=b.attention_mask,
                        use_cache=False)
        return time.perf_counter() - start, time.process_time() - cpu_start

    for name in models:                       # warm-up
        one_pass(name)
    load_start = os.getloadavg()[0]
    times = {"float32": [], "bfloat16": []}
    cpu = {"float32": [], "bfloat16": []}
    order = ["float32", "bfloat16"]
    for r in range(args.rounds):
        for name in (order if r % 2 == 0 else order[::-1]):
            wall, used = one_pass(name)
            times[name].append(wall)
            cpu[name].append(used)
    load_end = os.getloadavg()[0]
    ratios = [a / b for a, b in zip(times["float32"], times["bfloat16"])]
    cpu_ratios = [a / b for a, b in zip(cpu["float32"], cpu["bfloat16"])]
    features = cpu_bf16_features()
    row = dict(
        run_id=_now(), machine=_machine(), model=args.model, threads=torch.get_num_threads(),
        batch=args.batch_size, seq_len=args.seq_len, n_batches=args.batches, K=args.languages,
        rounds=args.rounds,
        fp32_tokens_per_s=round(tokens / statistics.median(times["float32"]), 1),
        bf16_tokens_per_s=round(tokens / statistics.median(times["bfloat16"]), 1),
        ratio_fp32_time_over_bf16=round(statistics.median(ratios), 3),
        ratio_iqr=round(_iqr(ratios), 3), ratio_min=round(min(ratios), 3),
        ratio_max=round(max(ratios), 3),
        cpu_time_ratio_fp32_over_bf16=round(statistics.median(cpu_ratios), 3),
        load_avg_start=round(load_start, 2),
        load_avg_end=round(load_end, 2), cpu_avx512_bf16=features["avx512_bf16"],
        cpu_amx_bf16=features["amx_bf16"], command=_command(args))
    print(row)
    _append(Path(args.csv or RESULTS), FIELDS, row)


# ---- neuron sets and NLL conclusions of two demo folders ----------------------------------------
def _jaccard_rows(a, b) -> dict:
    rows = {}
    for lang in a.languages:
        if lang not in b.languages:
            continue
        ma, mb = a.mask(lang), b.mask(lang)
        inter, union = int((ma & mb).sum()), int((ma | mb).sum())
        rows[lang] = {"fp32": int(ma.sum()), "bf16": int(mb.sum()), "both": inter,
                      "jaccard": round(inter / union, 4) if union else 1.0}
    return rows


def neurons(args) -> None:
    from langneuron_ext.identify.neuron_set import NeuronSet
    dirs = {"fp32": Path(args.neurons[0]), "bf16": Path(args.neurons[1])}
    for d in dirs.values():
        if not (d / "neurons_lape.json").exists():
            raise SystemExit(f"bench_dtype.py: error: {d} has no neurons_lape.json; give two "
                             f"`langneuron demo` output folders (fp32 first, then bf16)")
    out = {"model": args.model, "made_by": args.made_by or [], "command": _command(args),
           "date": _now(), "machine": _machine(), "note": args.note,
           "folders": {k: str(v) for k, v in dirs.items()},
           "min_neurons_for_target": args.min_neurons, "methods": {}}
    for method in ("lape", "ternary"):
        paths = [d / f"neurons_{method}.json" for d in dirs.values()]
        if not all(p.exists() for p in paths):
            continue
        rows = _jaccard_rows(NeuronSet.load(paths[0]), NeuronSet.load(paths[1]))
        big = [r["jaccard"] for r in rows.values()
               if min(r["fp32"], r["bf16"]) >= args.min_neurons]
        out["methods"][method] = {
            "languages": rows,
            "min_jaccard_languages_with_enough_neurons": min(big) if big else None,
            "mean_jaccard": round(statistics.mean(r["jaccard"] for r in rows.values()), 4)}
    runs = {}
    for key, d in dirs.items():
        summary = d / "demo.json"
        if summary.exists():
            runs[key] = json.loads(summary.read_text())
    if all(k in runs and "specificity" in runs[k].get("evaluate", {}) for k in dirs):
        spec = {k: runs[k]["evaluate"]["specificity"] for k in dirs}
        out["nll"] = {
            "separated": {k: sorted(l for l, s in spec[k].items() if s["separated"])
                          for k in dirs},
            "own_rise": {lang: {k: round(spec[k][lang]["own"], 4) for k in dirs}
                         for lang in spec["fp32"] if lang in spec["bf16"]},
            "seconds": {k: runs[k]["evaluate"].get("seconds") for k in dirs}}
        out["nll"]["same_languages_separated"] = (out["nll"]["separated"]["fp32"]
                                                  == out["nll"]["separated"]["bf16"])
    if all("scan" in runs.get(k, {}) for k in dirs):
        out["scan_seconds"] = {k: runs[k]["scan"]["seconds"] for k in dirs}
    text = json.dumps(out, indent=1)
    print(text)
    path = Path(args.out or RESULTS_DIR / f"dtype_neurons_{args.model}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


# ---- the NLL matrix's LM head -----------------------------------------------------------------
def head(args) -> None:
    for dtype_name in args.dtypes.split(","):
        _head_one(args, dtype_name)


def _head_one(args, dtype_name: str) -> None:
    from langneuron_ext.bench.scan import PeakMemory
    from langneuron_ext.corpus import DebianHandbook
    from langneuron_ext.evaluate.lm_head import ChunkedHead
    from langneuron_ext.evaluate.nll import row_token_nll
    from langneuron_ext.models.loading import load_model

    model, tokenizer = load_model(args.model, dtype=DTYPES[dtype_name], device="cpu",
                                  progress=False)
    chunked = ChunkedHead.for_model(model)
    if chunked is None:
        raise SystemExit(f"bench_dtype.py: error: {args.model}'s LM head is not one the "
                         f"chunked head knows; nothing to compare")
    docs = DebianHandbook(["en"], split="heldout").documents("en")
    text = " ".join(d.text for _, d in zip(range(200), docs))
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    need = args.rows * args.seq_len
    if ids.numel() < need:
        raise SystemExit(f"bench_dtype.py: error: only {ids.numel()} tokens of held-out "
                         f"text; lower --rows or --seq-len")
    ids = ids[:need].reshape(args.rows, args.seq_len)
    mask = torch.ones_like(ids)
    ways = {"full": lambda: row_token_nll(model, ids, mask),
            "chunked": lambda: chunked.token_nll(ids, mask)}
    with torch.inference_mode():
        model(input_ids=ids[:1, :16], attention_mask=mask[:1, :16], use_cache=False)
        peak, values = {}, {}
        for name, fn in ways.items():         # first pass from fresh buffers: peak memory
            with PeakMemory(torch.device("cpu")) as mem:
                values[name] = fn()
            peak[name] = mem.extra
        load_start = os.getloadavg()[0]
        times = {name: [] for name in ways}
        for r in range(args.rounds):
            for name in (list(ways) if r % 2 == 0 else list(ways)[::-1]):
                start = time.perf_counter()
                ways[name]()
                times[name].append(time.perf_counter() - start)
        load_end = os.getloadavg()[0]
    ratios = [a / b for a, b in zip(times["full"], times["chunked"])]
    diff = float((values["full"] - values["chunked"]).abs().max())
    row = dict(run_id=_now(), machine=_machine(), model=args.model, dtype=dtype_name,
               threads=torch.get_num_threads(), rows=args.rows, seq_len=args.seq_len,
               rounds=args.rounds, full_s=round(statistics.median(times["full"]), 3),
               chunked_s=round(statistics.median(times["chunked"]), 3),
               ratio_full_time_over_chunked=round(statistics.median(ratios), 3),
               full_peak_extra_mib=round(peak["full"], 1),
               chunked_peak_extra_mib=round(peak["chunked"], 1),
               max_abs_diff_nats=float(f"{diff:.3g}"),
               load_avg_start=round(load_start, 2), load_avg_end=round(load_end, 2),
               command=_command(args))
    print(row)
    _append(Path(args.csv or HEAD_RESULTS), HEAD_FIELDS, row)


# ---- the whole NLL matrix with either head -----------------------------------------------------
def matrix(args) -> None:
    for dtype_name in args.dtypes.split(","):
        _matrix_one(args, dtype_name)


def _matrix_one(args, dtype_name: str) -> None:
    from unittest import mock

    from langneuron_ext.bench.scan import PeakMemory
    from langneuron_ext.corpus import DebianHandbook
    from langneuron_ext.evaluate import nll as nll_module
    from langneuron_ext.evaluate import nll_matrix
    from langneuron_ext.identify.neuron_set import NeuronSet
    from langneuron_ext.models.loading import load_model

    languages = args.matrix_languages.split(",")
    model, tokenizer = load_model(args.model, dtype=DTYPES[dtype_name], device="cpu",
                                  progress=False)
    config = model.config.get_text_config()
    gen = torch.Generator().manual_seed(1)
    masks = torch.rand(len(languages), config.num_hidden_layers, config.intermediate_size,
                       generator=gen) < 0.01
    neurons = NeuronSet.from_masks("random", {}, languages, masks)
    source = DebianHandbook(languages, split="heldout")
    kw = dict(random_sets=args.random_sets, max_tokens_per_language=args.tokens,
              max_length=128, progress=False, bootstrap_samples=0)
    no_chunked = mock.patch.object(nll_module.ChunkedHead, "for_model",
                                   classmethod(lambda cls, m: None))

    def run(name):
        if name == "full":
            with no_chunked:
                return nll_matrix(model, tokenizer, neurons, source, languages, **kw)
        return nll_matrix(model, tokenizer, neurons, source, languages, **kw)

    ways = ["full", "chunked"]
    peak, result = {}, {}
    for name in ways:                     # first run from fresh buffers: peak memory
        with PeakMemory(torch.device("cpu")) as mem:
            result[name] = run(name)
        peak[name] = mem.extra
    if (result["full"].meta["lm_head"], result["chunked"].meta["lm_head"]) != \
            ("full", "chunked"):
        raise SystemExit("bench_dtype.py: error: the chunked head was not used (or not "
                         f"avoided) on {args.model}; nothing to compare")
    load_start = os.getloadavg()[0]
    times = {name: [] for name in ways}
    for r in range(args.rounds):
        for name in (ways if r % 2 == 0 else ways[::-1]):
            start = time.perf_counter()
            run(name)
            times[name].append(time.perf_counter() - start)
    load_end = os.getloadavg()[0]
    ratios = [a / b for a, b in zip(times["full"], times["chunked"])]
    diff = (result["full"].nll - result["chunked"].nll).abs().nan_to_num().max()
    row = dict(run_id=_now(), revision=_revision(), machine=_machine(), model=args.model,
               dtype=dtype_name, threads=torch.get_num_threads(), languages=len(languages),
               tokens_per_language=args.tokens, random_sets=args.random_sets,
               variants=len(result["chunked"].rows), rounds=args.rounds,
               full_s=round(statistics.median(times["full"]), 2),
               chunked_s=round(statistics.median(times["chunked"]), 2),
               ratio_full_time_over_chunked=round(statistics.median(ratios), 3),
               full_peak_extra_mib=round(peak["full"], 1),
               chunked_peak_extra_mib=round(peak["chunked"], 1),
               max_abs_diff_nll=float(f"{float(diff):.3g}"),
               load_avg_start=round(load_start, 2), load_avg_end=round(load_end, 2),
               command=_command(args))
    print(row)
    _append(Path(args.csv or MATRIX_RESULTS), MATRIX_FIELDS, row)


# ---- greedy generation: prompts per generate() call ----------------------------------------------
def generate(args) -> None:
    from langneuron_ext.corpus import DebianHandbook
    from langneuron_ext.evaluate.langcontrol import generate_texts, prompts_from_texts
    from langneuron_ext.models.loading import load_model

    sizes = [int(x) for x in args.batch_sizes.split(",")]
    docs = DebianHandbook(["en"], split="heldout").documents("en")
    prompts = prompts_from_texts((d.text for d in docs), n=args.prompts)
    for dtype_name in args.dtypes.split(","):
        model, tokenizer = load_model(args.model, dtype=DTYPES[dtype_name], device="cpu",
                                      progress=False)
        generate_texts(model, tokenizer, prompts[:2], 2)          # warm-up
        wall = {b: [] for b in sizes}
        cpu = {b: [] for b in sizes}
        texts = {}
        load_start = os.getloadavg()[0]
        for r in range(args.rounds):
            for b in (sizes if r % 2 == 0 else sizes[::-1]):
                start, cpu_start = time.perf_counter(), time.process_time()
                texts[b] = generate_texts(model, tokenizer, prompts, args.new_tokens,
                                          batch_size=b)
                wall[b].append(time.perf_counter() - start)
                cpu[b].append(time.process_time() - cpu_start)
        load_end = os.getloadavg()[0]
        first = sizes[0]
        for b in sizes:
            ratios = [c / f for c, f in zip(cpu[b], cpu[first])]
            row = dict(run_id=_now(), machine=_machine(), model=args.model, dtype=dtype_name,
                       threads=torch.get_num_threads(), prompts=len(prompts),
                       new_tokens=args.new_tokens, rounds=args.rounds, batch_size=b,
                       wall_s=round(statistics.median(wall[b]), 2),
                       cpu_s=round(statistics.median(cpu[b]), 2),
                       cpu_ratio_vs_first=round(statistics.median(ratios), 3),
                       same_texts_as_first=sum(x == y for x, y in zip(texts[b], texts[first])),
                       load_avg_start=round(load_start, 2), load_avg_end=round(load_end, 2),
                       command=_command(args))
            print(row)
            _append(Path(args.csv or GENERATE_RESULTS), GENERATE_FIELDS, row)
        del model


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gemma-3-270m")
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batches", type=int, default=1)
    p.add_argument("--languages", type=int, default=8)
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--csv", default=None, help="the CSV to append to (speed and --head)")
    p.add_argument("--neurons", nargs=2, metavar=("FP32_DIR", "BF16_DIR"), default=None,
                   help="compare the neuron sets and NLL matrices of two demo folders")
    p.add_argument("--made-by", action="append", default=None, metavar="COMMAND",
                   help="with --neurons: the commands that made the folders (recorded)")
    p.add_argument("--min-neurons", type=int, default=20,
                   help="with --neurons: languages with at least this many neurons in both "
                        "sets count towards the minimum Jaccard (default 20)")
    p.add_argument("--out", default=None, help="with --neurons: the JSON to write")
    p.add_argument("--note", default=None,
                   help="with --neurons: recorded as it is (e.g. the load during the runs)")
    p.add_argument("--head", action="store_true",
                   help="time and peak memory of the full vs the chunked LM head")
    p.add_argument("--rows", type=int, default=8, help="with --head: rows per pass (default 8)")
    p.add_argument("--dtypes", default="float32,bfloat16",
                   help="with --head or --generate (default both)")
    p.add_argument("--matrix", action="store_true",
                   help="time and peak memory of the NLL matrix with the full vs chunked head")
    p.add_argument("--matrix-languages", default="en,fr,de", help="with --matrix")
    p.add_argument("--tokens", type=int, default=128,
                   help="with --matrix: held-out tokens per language (default 128)")
    p.add_argument("--random-sets", type=int, default=1, help="with --matrix (default 1)")
    p.add_argument("--generate", action="store_true",
                   help="CPU time of greedy generation per prompts-per-call (--batch-sizes)")
    p.add_argument("--batch-sizes", default="8,20", help="with --generate (default 8,20)")
    p.add_argument("--prompts", type=int, default=20, help="with --generate (default 20)")
    p.add_argument("--new-tokens", type=int, default=16, help="with --generate (default 16)")
    args = p.parse_args()
    if sum(map(bool, (args.neurons, args.head, args.generate, args.matrix))) > 1:
        p.error("--neurons, --head, --matrix and --generate are separate measurements: give one")
    for name in args.dtypes.split(","):
        if name not in DTYPES:
            p.error(f"--dtypes {name}: use {' or '.join(DTYPES)} (comma-separated)")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.neurons:
        neurons(args)
    elif args.head:
        head(args)
    elif args.generate:
        generate(args)
    elif args.matrix:
        matrix(args)
    else:
        speed(args)


if __name__ == "__main__":
    main()
