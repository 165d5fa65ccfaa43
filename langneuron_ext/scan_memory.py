"""The memory a scan's histograms take (`scan --hist`), and whether it fits.

Histograms are int64 [K, L, N, B]: with 10 languages, 36 layers of 18944 neurons and 32 bins
that is 1.6 GiB, next to which the model's own statistics (counts, maxima) are small. Where
the copies live:
- the recording's buffers, on the device of each layer (GPU or CPU), for the whole scan;
- on the CPU, the collected statistics and the bytes of the file being written at each
  checkpoint and at the end (two copies), plus the checkpoint read back when resuming.
A scan whose histograms do not fit is refused before the model loads (the CLI, from the
model's config) or, when the config cannot be read in advance, before the first batch.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Optional, Tuple

import torch

GiB = 1024 ** 3


@dataclass(frozen=True)
class HistMemory:
    """Bytes of the histograms (and maxima) of a scan of K languages, L layers, N neurons (the
    widest layer), B bins."""
    languages: int
    layers: int
    neurons: int
    bins: int

    @property
    def stats_bytes(self) -> int:
        """One copy: hist int64 [K, L, N, B] and amax float32 [K, L, N]."""
        cells = self.languages * self.layers * self.neurons
        return cells * self.bins * 8 + cells * 4

    def host_bytes(self, resuming: bool = False) -> int:
        """CPU memory at a checkpoint: the collected statistics and the file's bytes (and the
        checkpoint read back when resuming)."""
        return self.stats_bytes * (3 if resuming else 2)

    def describe(self) -> str:
        return (f"{_size(self.stats_bytes)} ({self.languages} languages x {self.layers} layers "
                f"x {self.neurons} neurons x {self.bins} bins, int64, and maxima)")


def _size(n: float) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", 1024 ** 2), ("KiB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def available_host_bytes() -> Optional[int]:
    """MemAvailable of /proc/meminfo (free memory the kernel can hand out), else free pages."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_device_bytes(device: torch.device) -> Optional[int]:
    """Free memory of a CUDA device (None for other devices)."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    free, _ = torch.cuda.mem_get_info(device)
    return int(free)


def check_fits(memory: HistMemory, device: Optional[torch.device], resuming: bool = False,
               host: Optional[int] = None, device_free: Optional[int] = None) -> None:
    """Raise ScanError (one line, says what to do) when the histograms cannot fit.

    device: where the layers run (None or cpu: the recording's buffers are on the CPU too).
    host / device_free: the available bytes (default: measured now)."""
    from .scan import ScanError

    device = torch.device("cpu") if device is None else torch.device(device)
    need_host = memory.host_bytes(resuming)
    if device.type == "cpu":
        need_host += memory.stats_bytes            # the recording's buffers
    else:
        free = device_free if device_free is not None else available_device_bytes(device)
        if free is not None and memory.stats_bytes > free:
            raise ScanError(_refusal(memory, memory.stats_bytes, free, str(device)))
    # under torchrun every rank on this machine holds its own copies
    need_host *= max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    host = host if host is not None else available_host_bytes()
    if host is not None and need_host > host:
        raise ScanError(_refusal(memory, need_host, host, "this machine's memory"))


def _refusal(memory: HistMemory, need: int, have: int, where: str) -> str:
    fewer = max(memory.bins // 2, 8)
    return (f"--hist {memory.bins} needs about {_size(need)} for histograms of "
            f"{memory.describe()} but {where} has {_size(have)} free; use fewer bins "
            f"(--hist {fewer}), fewer languages per scan (merge the results), or more memory")


def config_dimensions(config) -> Optional[Tuple[int, int]]:
    """(layers, widest layer's neurons) from a transformers config, or None when it does not
    say. MoE: routed experts x their width (+ shared experts), or the dense width if larger."""
    config = getattr(config, "text_config", None) or config
    get = lambda *names: next((int(v) for v in (getattr(config, n, None) for n in names)  # noqa
                               if isinstance(v, int) and v > 0), None)
    layers = get("num_hidden_layers", "n_layer", "num_layers")
    hidden = get("hidden_size", "n_embd", "d_model")
    dense = get("intermediate_size", "n_inner", "ffn_dim") or (4 * hidden if hidden else None)
    experts = get("num_experts", "num_local_experts", "n_routed_experts")
    width = get("moe_intermediate_size")
    if experts and width:
        shared = get("shared_expert_intermediate_size") or width * (get("n_shared_experts") or 0)
        dense = max(dense or 0, experts * width + shared)
    if not layers or not dense:
        return None
    return layers, dense


def model_dimensions(name_or_path: str, gguf_file: Optional[str] = None
                     ) -> Optional[Tuple[int, int]]:
    """(layers, neurons) of a model from its config, without loading weights; None when the
    config cannot be read in advance (GGUF files, unreachable hub ids)."""
    if gguf_file is not None or str(name_or_path).endswith(".gguf"):
        return None
    try:
        from transformers import AutoConfig

        from .models.loading import resolve_model
        return config_dimensions(AutoConfig.from_pretrained(resolve_model(str(name_or_path))))
    except Exception:         # any failure here: scan() checks again once the model is loaded
        return None
