"""benchmarks/gpu_validate.py --dry-run: the one-command GPU validation runs end to end on CPU
(the `cpu` kernel and Triton's interpreter standing in, tiny shapes), so the script cannot
crash on its first real use; every check must pass and both reports must be written."""
import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_gpu_validate_dry_run(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_validate.py"),
                           "--out", str(tmp_path), "--dry-run"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    report = json.loads((tmp_path / "gpu_validate.json").read_text())
    assert report["ok"] and report["environment"]["dry_run"]
    assert [s["name"] for s in report["steps"]] == ["build", "correctness", "bandwidth",
                                                    "gemm", "model"]
    assert all(s["status"] == "done" for s in report["steps"])
    names = " ".join(c["name"] for c in report["checks"])
    for needle in ("cpu bfloat16", "triton float16", "K=64", "gate_up", "2^40",
                   "out-of-range", "gated triton_gemm", "model: patched with triton",
                   "graph capture", "counts agree", "hist B=32 + amax + scale steering"):
        assert needle in names, needle
    kinds = {m["kind"] for m in report["measurements"]}
    assert kinds == {"bandwidth", "gemm", "model"}
    variants = {m["variant"] for m in report["measurements"] if m["kind"] == "bandwidth"}
    assert {"cpu +hist+amax", "cpu steer set", "cpu steer scale"} <= variants
    assert "| copy |" in (tmp_path / "gpu_validate.md").read_text()
    # its self-checks and measured choice went to DIR, not the user's cache
    assert (tmp_path / "cache" / "kernels" / "gated_choice.json").exists()
