"""`langneuron info`: versions, devices, the implementations of both ops available per device
(with the reasons for each unavailable one), where the kernel caches live and the build
metadata of the native kernels. `--selftest` reruns every implementation's self-check against
the reference on every device and dtype (ops/selfcheck.py, ops/conformance.py) and reports
pass / FAIL / not run.

    langneuron info [--selftest] [--json]
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import warnings
from typing import Any, Dict, List, Optional

DEVICE_TYPES = ("cpu", "cuda")


def _version(distribution: str) -> Optional[str]:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _devices() -> Dict[str, Any]:
    import torch
    cuda: List[Dict[str, Any]] = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            cuda.append({"index": index, "name": props.name,
                         "capability": f"{props.major}.{props.minor}",
                         "memory_gib": round(props.total_memory / 2**30, 1),
                         "multiprocessors": props.multi_processor_count})
    return {"cpu": {"name": _cpu_name(), "logical_cores": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    "capability": torch.backends.cpu.get_cpu_capability()},
            "cuda": cuda}


def _implementations(op: str = "act_stats") -> Dict[str, List[Dict[str, Any]]]:
    """Per device type: every registered implementation of `op` that targets it, in priority
    order, with the reasons it cannot run (build, device, a failed self-check)."""
    import torch

    from ..ops import dispatch
    from ..ops.args import FLOAT_DTYPES
    table: Dict[str, List[Dict[str, Any]]] = {}
    for device_type in DEVICE_TYPES:
        rows = []
        for impl in dispatch.implementations(op):
            dtypes = [str(d).replace("torch.", "") for d in FLOAT_DTYPES
                      if impl.supports(device_type, d)]
            if not dtypes:
                continue
            # Reasons without running a self-check here (`--selftest` runs them).
            reasons = impl.not_supported_reasons(device_type, torch.float32, selfcheck=False)
            auto_fn = getattr(impl, "auto", None)   # None: picked wherever it is supported
            auto = auto_fn is None or auto_fn(device_type, torch.float32)
            rows.append({"name": impl.name, "priority": impl.priority,
                         "available": not reasons, "reason": "; ".join(reasons),
                         "reasons": reasons, "dtypes": dtypes, "automatic": bool(auto)})
        table[device_type] = rows
    return table


def _caches() -> Dict[str, str]:
    from ..ops import dispatch, selfcheck, settings
    return {"folder": str(settings.kernel_cache_dir()), "selfcheck": str(selfcheck.cache_path()),
            "gated_choice": str(dispatch.choice_cache_path()), "build_id": selfcheck.build_id()}


def selftest() -> List[Dict[str, Any]]:
    """Rerun every self-check on CPU and every visible GPU (cached results are replaced)."""
    import torch

    from ..ops import dispatch
    devices = [torch.device("cpu")]
    devices += [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return dispatch.run_selfchecks(devices)


def _selected() -> Dict[str, str]:
    """What dispatch picks per device type for fp32 (honours LANGNEURON_IMPL)."""
    import torch

    from ..ops import dispatch
    chosen = {}
    for device_type in DEVICE_TYPES:
        if device_type == "cuda" and not torch.cuda.is_available():
            chosen[device_type] = "none (no CUDA device visible)"
            continue
        try:
            chosen[device_type] = dispatch.select_impl(device_type)
        except RuntimeError as exc:  # e.g. LANGNEURON_IMPL names one that cannot run here
            chosen[device_type] = f"error: {exc}"
    return chosen


def collect() -> Dict[str, Any]:
    """Everything `langneuron info` reports, as a JSON-serialisable dict."""
    import torch

    from .. import __version__
    from ..ops import native
    with warnings.catch_warnings():  # unavailable backends are reported below, with reasons
        warnings.simplefilter("ignore", RuntimeWarning)
        implementations = _implementations()
        gated_implementations = _implementations("gated_mlp_stats")
        selected = _selected()
        build = native.build_info()
    return {
        "langneuron_ext": __version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {"torch": torch.__version__, "torch_cuda": torch.version.cuda,
                     "triton": _version("triton"), "transformers": _version("transformers")},
        "devices": _devices(),
        "implementations": implementations,
        "gated_implementations": gated_implementations,
        "selected": selected,
        "kernel_caches": _caches(),
        "env": {key: os.environ[key] for key in ("LANGNEURON_IMPL", "LANGNEURON_GATED_IMPL",
                                                 "LANGNEURON_NO_NATIVE", "LANGNEURON_SELFCHECK",
                                                 "LANGNEURON_GATED_MEASURE", "LANGNEURON_CACHE",
                                                 "TRITON_INTERPRET", "CUDA_HOME")
                if key in os.environ},
        "build": build,
    }


def _format(info: Dict[str, Any]) -> str:
    v = info["versions"]
    cpu = info["devices"]["cpu"]
    lines = [f"langneuron-ext {info['langneuron_ext']}  (python {info['python']}, "
             f"{info['platform']})",
             f"torch {v['torch']} (CUDA {v['torch_cuda'] or 'none'}), "
             f"triton {v['triton'] or 'not installed'}, "
             f"transformers {v['transformers'] or 'not installed'}",
             "", "Devices:",
             f"  cpu   {cpu['name']}: {cpu['logical_cores']} logical cores, "
             f"{cpu['torch_threads']} torch threads, {cpu['capability']}"]
    if info["devices"]["cuda"]:
        for gpu in info["devices"]["cuda"]:
            lines.append(f"  cuda:{gpu['index']} {gpu['name']} (sm {gpu['capability']}, "
                         f"{gpu['memory_gib']} GiB, {gpu['multiprocessors']} SMs)")
    else:
        lines.append("  cuda  none visible")
    lines += ["", "Implementations of the fused op (priority order):"]
    for device_type, rows in info["implementations"].items():
        lines.append(f"  {device_type} (selected: {info['selected'][device_type]})")
        for row in rows:
            state = "available" if row["available"] else f"unavailable: {row['reason']}"
            auto = "" if row["automatic"] else ", explicit only"
            lines.append(f"    {row['name']:<7} p{row['priority']:<3} {state}  "
                         f"[{', '.join(row['dtypes'])}{auto}]")
    lines += ["", "Implementations of the gated MLP with statistics (priority order; the choice "
                  "per shape is measured once and cached):"]
    for device_type, rows in info["gated_implementations"].items():
        lines.append(f"  {device_type}")
        for row in rows:
            state = "available" if row["available"] else f"unavailable: {row['reason']}"
            auto = "" if row["automatic"] else ", explicit only"
            lines.append(f"    {row['name']:<11} p{row['priority']:<3} {state}  "
                         f"[{', '.join(row['dtypes'])}{auto}]")
    caches = info["kernel_caches"]
    lines += ["", f"Kernel caches (build {caches['build_id']}):",
              f"  self-check results: {caches['selfcheck']}",
              f"  measured gated-MLP choice: {caches['gated_choice']}"]
    if "selftest" in info:
        lines += ["", "Self-check against the reference (rerun now):"]
        for row in info["selftest"]:
            detail = f"  {row['detail']}" if row.get("detail") else ""
            lines.append(f"  {row['status']:<8} {row['op']:<16} {row['impl']:<11} "
                         f"{row['device']:<7} {row['dtype'].replace('torch.', ''):<9}{detail}")
    build = info["build"]
    lines += ["", "Native build:"]
    for key in ("cpu", "cuda"):
        module = build[key]
        if not module.get("loaded"):
            lines.append(f"  {key:<5} not loaded: {module.get('reason')}")
            continue
        recorded = module.get("build", {})
        lines.append(f"  {key:<5} {module.get('path')}")
        details = {k: module[k] for k in ("compiler", "torch_version", "openmp", "isa_clones",
                                          "cuda_runtime", "nvcc") if k in module}
        for k in ("cxx_flags", "nvcc_flags", "cuda_arch_list", "torch_cuda_version"):
            if k in recorded:
                value = recorded[k]
                details[k] = " ".join(value) if isinstance(value, list) else value
        for k, value in details.items():
            lines.append(f"        {k}: {value}")
    lines.append(f"  threads: {build['num_threads']}  ({build.get('parallel_info') or ''})")
    if info["env"]:
        lines += ["", "Environment: " + ", ".join(f"{k}={v}" for k, v in info["env"].items())]
    return "\n".join(lines)


def run(args) -> int:
    info = collect()
    status = 0
    if getattr(args, "selftest", False):
        info["selftest"] = selftest()
        status = 1 if any(row["status"] == "FAIL" for row in info["selftest"]) else 0
    print(json.dumps(info, indent=2) if args.json else _format(info))
    return status


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info", help="versions, devices, available kernels and build metadata",
        description="Print the package and library versions, the visible devices, which "
                    "implementations of the fused op can run on each device (and why the "
                    "others cannot), and how the native kernels were built.")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--selftest", action="store_true",
                        help="rerun every implementation's self-check against the reference on "
                             "every device and dtype (exit status 1 when one fails)")
    parser.set_defaults(func=run)
