"""Options and parsers shared by several `langneuron` verbs: one place, one meaning.

Verbs import from here, never from each other. What lives here:

- parsers of option values: `parse_languages` (every comma list of languages), `parse_list`
  (other comma lists), `parse_layers` ("0-3,15"), `parse_pair` ("SRC:TGT"), `check_min`;
- argument groups: `add_model_options` (--model, --gguf, --dtype, --device, --impl),
  `add_impl_device_options` (--device, --impl alone) with `resolve_device_and_impl(args)`,
  `add_corpus_options` with `corpus_from_args(args)`, `add_budget_options` with
  `check_budget(args)`, and `add_output_options`;
- `fail(message)` (raises `CliError`: one line `langneuron VERB: error: ...`, exit 2),
  `check_out_file`, `check_out_dir` (one output, through `outputs.check_outputs`, which also
  checks outputs against the verb's inputs), `write_json` (atomic, no NaN), `produced_by(args)` (the
  command line that made a file) and `plural`.

Output convention, the same in every verb: `--out FILE` writes a file, `--out-dir DIR` a
folder of files, `--json` prints a machine-readable result on stdout (and nothing else there).

Nothing here imports torch at module level, so `langneuron --help` stays fast.
"""
from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path
from typing import Any, List, NoReturn, Optional, Sequence, Tuple

from . import CliError

HANDBOOK = "debian-handbook"
DTYPES = ("float32", "bfloat16", "float16")
# The built-in implementations of the fused op, for --help only (building the parser must not
# import torch): --impl takes any registered name and `resolve_device_and_impl` checks it
# against the registry (langneuron_ext/ops/dispatch.py), which lists the known ones.
IMPLS = ("torch", "cpu", "triton", "cuda")


def fail(message: str) -> NoReturn:
    """Stop the verb with a one-line error that says what to do (exit status 2)."""
    raise CliError(message)


def plural(n: int, word: str, many: Optional[str] = None) -> str:
    """'1 language', '2 languages' (`many` for irregular plurals)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


# ---- value parsers ----------------------------------------------------------------------------
def parse_list(text: Optional[str], option: str, example: str = "a,b") -> Optional[List[str]]:
    """A comma-separated list ('a, b,c' -> ['a', 'b', 'c']); None when the option is absent.
    Empty lists and repeated items are errors."""
    if text is None:
        return None
    items = [part.strip() for part in str(text).split(",") if part.strip()]
    if not items:
        fail(f"{option} is empty; give a comma-separated list such as {example}")
    repeated = sorted({item for item in items if items.count(item) > 1})
    if repeated:
        fail(f"{option} repeats {', '.join(repeated)}; give each once")
    return items


def parse_languages(text: Optional[str], option: str = "--languages", *,
                    required: bool = False, at_least: int = 1,
                    known: Optional[Sequence[str]] = None,
                    known_from: str = "") -> Optional[List[str]]:
    """Every comma list of languages in the CLI ('en,fr,de').

    required: the option must be given. at_least: fewest languages. known/known_from: the
    languages allowed (e.g. a neuron set's) and where they come from, for the message.
    Returns None when the option is absent and not required.
    """
    if text is None:
        if required:
            fail(f"{option} is required; give comma-separated language codes such as en,fr,de")
        return None
    langs = parse_list(text, option, example="en,fr,de")
    if len(langs) < at_least:
        fail(f"{option} needs at least {plural(at_least, 'language')}, got {text!r}")
    if known is not None:
        unknown = [lang for lang in langs if lang not in known]
        if unknown:
            where = f" in {known_from}" if known_from else ""
            fail(f"{option}: {', '.join(map(repr, unknown))} not found{where}; it has "
                 f"{', '.join(known)}")
    return langs


def parse_layers(text: Optional[str], option: str = "--layers") -> Optional[List[int]]:
    """'0-3,15' -> [0, 1, 2, 3, 15]; None -> None (all layers)."""
    if text is None:
        return None
    layers: List[int] = []
    for part in str(text).split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            first, last = (int(lo), int(hi)) if sep else (int(part), int(part))
        except ValueError:
            fail(f"{option} {text!r} is not a list of layers such as 0-3,15")
        if first < 0 or last < first:
            fail(f"{option} {text!r}: {part!r} is not a layer or an increasing range such as 0-3")
        layers += range(first, last + 1)
    if not layers:
        fail(f"{option} is empty; give layers such as 0-3,15 or leave it out")
    return sorted(set(layers))


def parse_pair(text: str, option: str, known: Optional[Sequence[str]] = None,
               known_from: str = "") -> Tuple[str, str]:
    """'SRC:TGT' -> (SRC, TGT): two different languages (of `known`, when given)."""
    src, sep, tgt = str(text).partition(":")
    src, tgt = src.strip(), tgt.strip()
    if not sep or not src or not tgt or src == tgt:
        fail(f"{option} {text!r} is not SRC:TGT with two different languages, e.g. fr:de")
    if known is not None:
        for lang in (src, tgt):
            if lang not in known:
                where = f" in {known_from}" if known_from else ""
                fail(f"{option} {text!r}: {lang!r} is not found{where} (it has "
                     f"{', '.join(known)})")
    return src, tgt


def check_min(args, name: str, minimum: int = 1, unit: str = "") -> None:
    """`--name` (args.name, an int option) must be at least `minimum`."""
    value = getattr(args, name)
    if value is not None and value < minimum:
        option = "--" + name.replace("_", "-")
        fail(f"{option} must be at least {minimum}{' ' + unit if unit else ''}, got {value}")


# ---- model, device and implementation --------------------------------------------------------
def add_model_options(p: argparse.ArgumentParser, default_model: Optional[str] = None,
                      gguf: bool = True, auto_dtype: bool = False) -> argparse._ArgumentGroup:
    """--model, --gguf, --dtype, and --device / --impl (see `resolve_device_and_impl`).
    auto_dtype: --dtype also takes 'auto', the default (bfloat16 on a GPU and on a CPU with
    native bf16, else float32; the verb resolves it with `models.loading.resolve_dtype_for`)."""
    g = p.add_argument_group("model")
    g.add_argument("--model", required=default_model is None, default=default_model,
                   metavar="NAME_OR_PATH",
                   help="Hugging Face model id or folder, or a built-in name "
                        "(gemma-3-270m, smollm2-135m)"
                        + (f"; default {default_model}" if default_model else ""))
    if gguf:
        g.add_argument("--gguf", metavar="FILE",
                       help="GGUF weights: a path, or a file name inside the --model folder")
    g.add_argument("--dtype", default="auto" if auto_dtype else "float32",
                   choices=("auto", *DTYPES) if auto_dtype else DTYPES,
                   help="weight and activation dtype (default "
                        + ("auto: bfloat16 on a GPU and on a CPU with native bf16 "
                           "(AVX-512 BF16 or AMX), else float32)" if auto_dtype
                           else "float32)"))
    add_impl_device_options(g)
    return g


def add_impl_device_options(g) -> None:
    """--device and --impl; call `resolve_device_and_impl(args)` before loading anything."""
    g.add_argument("--device", default=None, metavar="DEVICE",
                   help="cpu, cuda, cuda:1, ... (gpu = cuda; default: cuda when present, "
                        "else cpu)")
    g.add_argument("--impl", default=None, metavar="IMPL",
                   help=f"force one implementation of the fused op: {', '.join(IMPLS)} or "
                        f"another registered one (default: the best one available for the "
                        f"device; LANGNEURON_IMPL sets it too)")


def resolve_device_and_impl(args, dtype: Optional[str] = None) -> Tuple[Optional[str],
                                                                      Optional[str]]:
    """Check --device and --impl (and LANGNEURON_IMPL) against this machine before any work.

    Returns (device, impl) and stores them back in `args`: device None means "cuda when
    present, else cpu"; 'gpu' is read as 'cuda'. A device or implementation this machine lacks
    is a one-line `CliError` naming what is available, not a traceback later.
    """
    import torch

    from ..ops import dispatch, settings

    device = getattr(args, "device", None)
    if device is not None:
        device = str(device).strip().lower()
        if device == "gpu" or device.startswith("gpu:"):
            device = "cuda" + device[3:]
        if device == "auto":
            device = None
    if device is not None:
        try:
            parsed = torch.device(device)
        except (RuntimeError, ValueError):
            fail(f"--device {args.device!r} is not a device; use cpu, cuda or cuda:N")
        if parsed.type == "cuda":
            if not torch.cuda.is_available():
                fail(f"--device {args.device}: no CUDA GPU is visible here (torch "
                     f"{torch.__version__}); use --device cpu or leave --device out")
            if parsed.index is not None and parsed.index >= torch.cuda.device_count():
                fail(f"--device {args.device}: this machine has "
                     f"{plural(torch.cuda.device_count(), 'GPU')} (cuda:0 .. "
                     f"cuda:{torch.cuda.device_count() - 1})")
        elif parsed.type != "cpu":
            fail(f"--device {args.device}: only cpu and cuda devices are supported")
    device_type = torch.device(device).type if device is not None else (
        "cuda" if torch.cuda.is_available() else "cpu")
    impl = getattr(args, "impl", None)
    source = "--impl" if impl else "LANGNEURON_IMPL"
    requested = impl or settings.requested_impl()
    if requested:
        name = dtype or getattr(args, "dtype", None) or "float32"
        if name == "auto":                       # as models.loading resolves it
            from ..models.dtype_auto import auto_dtype_name
            name = auto_dtype_name(device_type)
        torch_dtype = getattr(torch, name, None)
        if not isinstance(torch_dtype, torch.dtype):
            fail(f"--dtype {name} is not a dtype; use one of {', '.join(DTYPES)}")
        try:
            dispatch.select_impl(device_type, torch_dtype, requested=requested)
        except (RuntimeError, ValueError) as exc:
            fail(f"{source} {requested} on {device_type}: {exc}")
    args.device, args.impl = device, impl
    return device, impl


def model_folder_layers(model: Optional[str]) -> Optional[int]:
    """The decoder layers a model folder's config.json declares, read without loading the
    model; None for anything else (a built-in name, a Hub id, a folder without a config)."""
    config = Path(model) / "config.json" if model else None
    if config is None or not config.is_file():
        return None
    try:
        cfg = json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, OSError):
        return None
    layers = cfg.get("text_config", cfg).get("num_hidden_layers")
    return layers if isinstance(layers, int) else None


# ---- corpus and budget ------------------------------------------------------------------------
def add_corpus_options(p: argparse.ArgumentParser, split_default: str = "train",
                       default_corpus: Optional[str] = None) -> argparse._ArgumentGroup:
    """--corpus/--languages/--split, --text LANG=PATH (repeatable), --jsonl FILE."""
    g = p.add_argument_group(
        "corpus (--corpus, --text, --jsonl, --dataset and --parallel combine: each language's "
        "documents come from every source that has it, in that order)")
    g.add_argument("--corpus", choices=[HANDBOOK], default=default_corpus,
                   help="a built-in corpus: the Debian handbook (needs the debian-handbook "
                        "package)")
    g.add_argument("--languages", metavar="LIST",
                   help="comma-separated language codes, e.g. en,fr,de (required with --corpus;"
                        " otherwise a subset of the languages the sources hold, default all)")
    why = ("held-out paragraphs stay unseen for evaluation" if split_default == "train"
           else "paragraphs the scan's default train split did not use")
    g.add_argument("--split", default=None, choices=["all", "train", "heldout"],
                   help=f"--corpus paragraphs to use (default {split_default}: {why})")
    g.add_argument("--text", action="append", default=[], metavar="LANG=PATH",
                   help="a plain-text file for one language, one document per line; repeat it")
    g.add_argument("--jsonl", metavar="FILE",
                   help='JSON Lines with {"lang", "text"} or {"lang", "prompt", "response"}')
    p.set_defaults(split_default=split_default)
    from ..corpus.hf_datasets import add_dataset_options
    add_dataset_options(p)    # --dataset, --text-field, --language-field, --parallel, ...
    return g


def corpus_from_args(args):
    """(TextSource, languages) from the corpus options; CliError when unclear."""
    from ..corpus import DebianHandbook, JsonlSource, MixedSource, PlainTextFiles

    languages = parse_languages(args.languages)
    split = args.split or getattr(args, "split_default", "train")
    # Parsers built by add_corpus_options leave --split None unless the user gives it (older
    # parsers set a default split and have no split_default: nothing to tell apart there).
    given = args.split is not None and hasattr(args, "split_default")
    if given and args.corpus != HANDBOOK:
        fail(f"--split {args.split} applies to --corpus {HANDBOOK} only; --text and --jsonl "
             f"files are used whole")
    sources = []
    if args.corpus == HANDBOOK:
        if not languages:
            fail(f"--corpus {HANDBOOK} needs --languages, e.g. --languages en,fr,de")
        sources.append(DebianHandbook(languages, split=split))
    if args.text:
        files = {}
        for item in args.text:
            lang, sep, path = item.partition("=")
            lang, path = lang.strip(), path.strip()
            if not sep or not lang or not path:
                fail(f"--text {item!r} is not LANG=PATH; write e.g. --text en=en.txt")
            if lang in files:
                fail(f"--text gives language {lang!r} twice; use one file per language")
            files[lang] = path
        sources.append(PlainTextFiles(files))
    if args.jsonl:
        sources.append(JsonlSource(args.jsonl))
    from ..corpus.hf_datasets import dataset_sources, with_language_filter
    sources += dataset_sources(args)
    if not sources:
        fail(f"no corpus: give --corpus {HANDBOOK} --languages en,fr,... or --text LANG=PATH "
             f"(repeatable) or --jsonl FILE")
    corpus = sources[0] if len(sources) == 1 else MixedSource(sources)
    corpus = with_language_filter(corpus, args)
    if languages is None:
        languages = list(corpus.languages)
    for lang in languages:
        corpus.check_language(lang)
    return corpus, languages


def add_budget_options(p: argparse.ArgumentParser, default_tokens: int = 100_000,
                       default_max_length: int = 512) -> argparse._ArgumentGroup:
    """--tokens-per-language, --max-length, --batch-size, --no-packing."""
    g = p.add_argument_group("budget and batching")
    g.add_argument("--tokens-per-language", type=int, default=default_tokens, metavar="N",
                   help=f"counted tokens per language (default {default_tokens:,})")
    g.add_argument("--max-length", type=int, default=default_max_length, metavar="T",
                   help=f"tokens per row (default {default_max_length})")
    g.add_argument("--batch-size", type=int, default=8, metavar="B",
                   help="rows per batch (default 8)")
    g.add_argument("--no-packing", action="store_true",
                   help="one document per row (padded) instead of LAPE-style packed windows")
    return g


def check_budget(args) -> None:
    """The numeric budget options, before anything slow happens."""
    check_min(args, "tokens_per_language", 1, "token")
    check_min(args, "max_length", 2, "tokens")
    check_min(args, "batch_size", 1)


# ---- output -----------------------------------------------------------------------------------
def add_output_options(p, *, out: Optional[str] = None, out_required: bool = False,
                       out_dir: Optional[str] = None, out_dir_required: bool = False,
                       out_dir_default: Optional[str] = None, json_help: str = "") -> None:
    """The output convention: `--out FILE` (help text `out`), `--out-dir DIR` (help text
    `out_dir`), `--json` (machine-readable result on stdout). Pass the help text of each
    option the verb has."""
    if out is not None:
        p.add_argument("--out", required=out_required, metavar="FILE", help=out)
    if out_dir is not None:
        p.add_argument("--out-dir", required=out_dir_required, default=out_dir_default,
                       metavar="DIR", help=out_dir)
    p.add_argument("--json", action="store_true",
                   help=json_help or "print the result as JSON on stdout")


def check_out_file(path: Optional[str], example: str = "result.json",
                   option: str = "--out") -> Optional[Path]:
    """A writable file path (not a folder), checked before any work; None stays None."""
    if path is None:
        return None
    out = Path(path)
    if out.is_dir():
        fail(f"{option} {out} is a folder; give a file name such as {out / example}")
    from .outputs import check_outputs  # a real test file: os.access lies to root
    check_outputs(files=[(option, out)])
    return out


def check_out_dir(path: str, option: str = "--out-dir") -> Path:
    """A folder to write into (created when missing), checked before any work."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        fail(f"{option} {out} is a file; give a folder (it is created when missing)")
    from .outputs import check_outputs  # a real test file: os.access lies to root
    check_outputs(dirs=[(option, out)])
    return out


def write_json(path, data: Any) -> Path:
    """Write JSON atomically (temporary file, then rename); the mode follows the umask, as for
    stats files. NaN is refused (ValueError): JSON has no NaN, write null."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    from ..stats import write_atomic
    write_atomic(path, text.encode("utf-8"))
    return path


def produced_by(args) -> str:
    """The command line that ran this verb, for 'Produced by' notes in the files it writes
    (`langneuron.cli.main` stores the argv it parsed in `args.argv`)."""
    argv = getattr(args, "argv", None)
    if argv is None:
        argv = [args.command]
    return "langneuron " + shlex.join(str(a) for a in argv)
