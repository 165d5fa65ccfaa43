"""`langneuron scan` under the real torchrun launcher, two gloo processes on the CPU.

The batch layout does not depend on the number of processes (corpus/shards.py), so the file two
ranks write (`torchrun -m langneuron_ext scan`) equals the one-process file byte for byte
(without --sums: float sums are added in another order across ranks). A rank that dies (here
under `torchrun .venv/bin/langneuron scan`, the entry point) takes the job down with its one-line
error and leaves --out untouched.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_loading import _tiny_folder
from test_scan import TEXTS

from langneuron_ext.cli import main

BIN = Path(sys.executable).parent
TORCHRUN = BIN / "torchrun"


def _texts(folder: Path, lines: int = 60) -> list:
    args = []
    for lang, templates in TEXTS.items():
        path = folder / f"{lang}.txt"
        path.write_text("\n".join(templates[i % 2].format(i=i) for i in range(lines)) + "\n",
                        encoding="utf-8")
        args += ["--text", f"{lang}={path}"]
    return args


def _env() -> dict:
    # one thread per rank: two ranks on a loaded 2-core machine
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


def _torchrun(args: list, *launcher) -> subprocess.CompletedProcess:
    command = [str(TORCHRUN), "--standalone", "--nproc-per-node", "2", *launcher, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=240, env=_env())


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    root = tmp_path_factory.mktemp("torchrun")
    model = _tiny_folder(root / "tiny", layers=2, neurons=32)
    # 4 documents a block: 15 blocks per language, so both ranks get several rounds
    common = ["scan", "--model", str(model), *_texts(root), "--tokens-per-language", "1500",
              "--max-length", "32", "--batch-size", "4", "--docs-per-block", "4",
              "--no-progress"]
    return root, common


def test_two_ranks_write_the_one_process_file_byte_for_byte(job):
    root, common = job
    one = root / "one.safetensors"
    assert main([*common, "--out", str(one)]) == 0
    two = root / "two.safetensors"
    done = _torchrun([*common, "--out", str(two)], "-m", "langneuron_ext")
    assert done.returncode == 0, done.stderr[-3000:]
    assert two.read_bytes() == one.read_bytes()
    assert sorted(p.name for p in root.glob("two.*partial*")) == []


def test_a_rank_that_dies_stops_the_job_and_keeps_out(job):
    root, common = job
    bad = root / "bad"
    bad.mkdir()
    texts = _texts(bad)
    # invalid UTF-8 in the 6th document of 'fr': block 1 (documents 4-7), which rank 1 reads
    fr = bad / "fr.txt"
    lines = fr.read_bytes().split(b"\n")
    lines[5] = b"caf\xe9 au lait"
    fr.write_bytes(b"\n".join(lines))
    out = bad / "stats.safetensors"
    out.write_bytes(b"an earlier result")
    args = [a for a in common if not a.startswith(("en=", "fr=", "ru="))]
    args = [a for i, a in enumerate(args) if not (a == "--text")] + texts
    done = _torchrun([*args, "--out", str(out)], str(BIN / "langneuron"))   # the entry point
    assert done.returncode != 0
    assert "invalid UTF-8" in done.stderr and "iconv" in done.stderr
    assert "langneuron scan: error:" in done.stderr
    assert out.read_bytes() == b"an earlier result"
