"""What `--dtype auto` means on each device: one rule, used by loading and by the CLI checks.

- A CUDA GPU: bfloat16.
- A CPU with native bfloat16 arithmetic (AVX-512 BF16 or AMX-BF16, as torch's CPU capability
  reports them): bfloat16. On such a CPU (a 2-core Xeon with AMX) a scan's forward ran 2.8x
  (Gemma 3 270M) and 3.2x (SmolLM2-135M) faster in bfloat16 than in float32 on one thread, and
  found nearly the same neurons (Jaccard 0.96-1.0 per language) with the same NLL conclusions
  (benchmarks/results/dtype_speed.csv, dtype_neurons_*.json; benchmarks/bench_dtype.py).
- Any other CPU: float32. Without native bf16 torch emulates it by converting to float32 and
  back around every matmul, which is slower than float32 itself.

`LANGNEURON_CPU_BF16=0` (or `1`) overrides the detection: 0 keeps `auto` at float32 on every
CPU (the test suite sets it, so its fp32 expectations hold on any runner), 1 picks bfloat16.
An explicit `--dtype` always wins.
"""
from __future__ import annotations

import os
from typing import Dict

import torch

ENV_OVERRIDE = "LANGNEURON_CPU_BF16"


def cpu_bf16_features() -> Dict[str, bool]:
    """{'avx512_bf16': bool, 'amx_bf16': bool} for this CPU, from torch's CPU capability
    (both False when this torch cannot tell, or on a non-x86 CPU)."""
    try:
        capability = torch._C._cpu._get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = {}
    return {"avx512_bf16": bool(capability.get("avx512_bf16", False)),
            "amx_bf16": bool(capability.get("amx_bf16", False))}


def cpu_has_native_bf16() -> bool:
    """True when this CPU computes bfloat16 natively (AVX-512 BF16 or AMX-BF16), unless
    $LANGNEURON_CPU_BF16 says otherwise (0 or 1; any other value is an error)."""
    override = os.environ.get(ENV_OVERRIDE, "").strip()
    if override:
        if override not in ("0", "1"):
            raise ValueError(f"{ENV_OVERRIDE}={override!r}: use 1 (bfloat16 for --dtype auto on "
                             f"this CPU), 0 (float32) or leave it unset (detect)")
        return override == "1"
    return any(cpu_bf16_features().values())


def auto_dtype_name(device_type: str) -> str:
    """The dtype name `--dtype auto` picks on a device of this type ('cuda', 'cpu', ...)."""
    if device_type == "cuda":
        return "bfloat16"
    if device_type == "cpu" and cpu_has_native_bf16():
        return "bfloat16"
    return "float32"
