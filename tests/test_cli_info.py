"""`langneuron info`: versions, devices, implementations per device with reasons, build info."""
import json
import os
import subprocess
import sys

import torch

from langneuron_ext.cli import main


def _info_json(capsys):
    assert main(["info", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_json_reports_versions_devices_and_build(capsys):
    info = _info_json(capsys)
    import langneuron_ext
    assert info["langneuron_ext"] == langneuron_ext.__version__
    assert info["versions"]["torch"] == torch.__version__
    assert info["versions"]["transformers"]
    assert info["devices"]["cpu"]["torch_threads"] == torch.get_num_threads()
    assert len(info["devices"]["cuda"]) == (torch.cuda.device_count()
                                            if torch.cuda.is_available() else 0)
    assert info["build"]["cpu"]["loaded"] is True
    assert info["build"]["cpu"]["compiler"]
    assert info["build"]["cpu"]["build"]["cxx_flags"], "setup.py's build.json was not found"


def test_json_lists_implementations_per_device_with_reasons(capsys):
    info = _info_json(capsys)
    cpu_rows = {row["name"]: row for row in info["implementations"]["cpu"]}
    cuda_rows = {row["name"]: row for row in info["implementations"]["cuda"]}
    assert cpu_rows["cpu"]["available"] and cpu_rows["torch"]["available"]
    assert "cuda" not in cpu_rows and "cpu" not in cuda_rows
    assert [r["priority"] for r in info["implementations"]["cuda"]] == sorted(
        (r["priority"] for r in info["implementations"]["cuda"]), reverse=True)
    assert info["selected"]["cpu"] == "cpu"
    for row in cuda_rows.values():   # every unavailable one says why
        assert row["available"] or row["reason"]
    if not torch.cuda.is_available():
        assert "no CUDA device" in info["selected"]["cuda"]


def test_text_output_is_readable(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("langneuron-ext ")
    assert "Implementations of the fused op" in out
    assert "  cpu (selected: cpu)" in out
    assert "Native build:" in out and "compiler:" in out


def test_missing_native_build_is_reported_not_fatal():
    env = dict(os.environ, LANGNEURON_NO_NATIVE="1")
    out = subprocess.run([sys.executable, "-m", "langneuron_ext", "info", "--json"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    info = json.loads(out.stdout)
    cpu_rows = {row["name"]: row for row in info["implementations"]["cpu"]}
    assert cpu_rows["cpu"]["available"] is False
    assert "LANGNEURON_NO_NATIVE" in cpu_rows["cpu"]["reason"]
    assert info["selected"]["cpu"] == "torch"
    assert info["build"]["cpu"]["loaded"] is False
