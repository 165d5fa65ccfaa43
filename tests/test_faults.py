"""The README's "Faults and what you get", one test per fault not covered elsewhere: a full disk
(final write and checkpoint), an --out that cannot exist, a corrupt checkpoint, invalid UTF-8,
empty and huge lines, a device or implementation this machine lacks, --bos without a BOS token.
Every error is one line with exit status 2; nothing already computed is lost."""
from __future__ import annotations

import errno
import sys

import pytest
import torch
from test_cli_scan import _fails
from test_loading import _tiny_folder
from test_scan import LANGS, TEXTS

from langneuron_ext.cli import main
from langneuron_ext.stats import ActivationStats

SENTINEL = b"an earlier result that must survive"
stats_module = sys.modules["langneuron_ext.stats"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _tiny_folder(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
def common(tiny, tmp_path):
    args = ["scan", "--model", str(tiny)]
    for lang, templates in TEXTS.items():
        path = tmp_path / f"{lang}.txt"
        path.write_text("\n".join(templates[i % 2].format(i=i) for i in range(30)),
                        encoding="utf-8")
        args += ["--text", f"{lang}={path}"]
    return args + ["--tokens-per-language", "150", "--max-length", "32", "--batch-size", "2",
                   "--docs-per-block", "4", "--checkpoint-every", "1", "--no-progress"]


def _full_disk_for(monkeypatch, name: str, after: int = 0):
    """Writes to files called `name` fail with ENOSPC after `after` successful ones."""
    real = stats_module.write_atomic
    seen = []

    def write(path, data):
        if path.name == name:
            seen.append(path)
            if len(seen) > after:
                raise OSError(errno.ENOSPC, "No space left on device")
        real(path, data)
    monkeypatch.setattr(stats_module, "write_atomic", write)


def test_full_disk_on_the_final_write_keeps_the_result(capsys, monkeypatch, common, tmp_path):
    ref = tmp_path / "ref.safetensors"
    assert main([*common, "--out", str(ref)]) == 0
    out = tmp_path / "out.safetensors"
    out.write_bytes(SENTINEL)
    _full_disk_for(monkeypatch, out.name)
    err = _fails(capsys, [*common, "--out", str(out)], "No space left on device")
    assert "out.safetensors.partial" in err and "--resume" in err
    assert out.read_bytes() == SENTINEL
    monkeypatch.undo()
    calls = []
    monkeypatch.setattr(torch.nn.Module, "__call__",
                        lambda self, *a, **k: calls.append(1) or torch.nn.Module._call_impl(
                            self, *a, **k))
    assert main([*common, "--out", str(out), "--resume"]) == 0
    assert calls == [], "the finished checkpoint is written without running the model again"
    monkeypatch.undo()
    assert out.read_bytes() == ref.read_bytes()


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(capsys, monkeypatch, common,
                                                              tmp_path):
    ref = tmp_path / "ref.safetensors"
    assert main([*common, "--out", str(ref)]) == 0
    out = tmp_path / "out.safetensors"
    partial = tmp_path / "out.safetensors.partial"
    _full_disk_for(monkeypatch, partial.name, after=3)
    _fails(capsys, [*common, "--out", str(out)], "cannot write the checkpoint")
    before = ActivationStats.load(partial)           # the third checkpoint, whole
    assert 0 < int(before.n_tokens.sum()) < int(ActivationStats.load(ref).n_tokens.sum())
    monkeypatch.undo()
    assert main([*common, "--out", str(out), "--resume"]) == 0
    assert out.read_bytes() == ref.read_bytes()


def test_out_under_a_file_fails_before_loading(capsys, common, tmp_path):
    (tmp_path / "file").write_text("x")
    _fails(capsys, [*common, "--out", str(tmp_path / "file" / "s.safetensors")],
           "is a file, not a folder; choose another --out")


def test_corrupt_checkpoint_is_a_one_line_error(capsys, common, tmp_path):
    out = tmp_path / "out.safetensors"
    (tmp_path / "out.safetensors.partial").write_bytes(b"\x00" * 100)
    _fails(capsys, [*common, "--out", str(out), "--resume"], "delete it to start")


def test_invalid_utf8_names_the_line(capsys, common, tmp_path):
    (tmp_path / "fr.txt").write_bytes(b"Bonjour\ncaf\xe9 au lait\n")
    out = tmp_path / "out.safetensors"
    out.write_bytes(SENTINEL)
    err = _fails(capsys, [*common, "--out", str(out)], "fr.txt:2: invalid UTF-8")
    assert "iconv" in err and out.read_bytes() == SENTINEL


def test_empty_and_huge_lines(common, tmp_path):
    """Blank lines are skipped; a 100,000-character line is one document in a block of its own
    size (blocks stop at 1M characters) and is cut exactly at the budget."""
    huge = "word " * 20_000
    (tmp_path / "en.txt").write_text("\n\n   \nshort line\n" + huge + "\n\nlast line\n",
                                     encoding="utf-8")
    out = tmp_path / "out.safetensors"
    args = [a if a != "150" else "1000" for a in common] + ["--checkpoint-every", "1000"]
    assert main([*args, "--out", str(out)]) == 0
    stats = ActivationStats.load(out)
    assert stats.n_tokens.tolist() == [1000, 1000, 1000]
    assert stats.languages == LANGS


@pytest.mark.skipif(torch.cuda.is_available(), reason="these errors are for machines without "
                                                       "a GPU")
@pytest.mark.parametrize("option, match", [
    (["--device", "cuda"], "no CUDA GPU"), (["--device", "gpu"], "no CUDA GPU"),
    (["--device", "cuda:1"], "no CUDA GPU"), (["--impl", "cuda"], "--impl cuda"),
    (["--device", "tpu"], "not a device")])
def test_missing_device_or_implementation_is_one_line(capsys, common, tmp_path, option, match):
    _fails(capsys, [*common, *option, "--out", str(tmp_path / "s.safetensors")], match)


def test_device_map_file_errors(capsys, common, tmp_path):
    _fails(capsys, [*common, "--device-map", str(tmp_path / "none.json"),
                    "--out", str(tmp_path / "s")], "not auto, balanced or an existing JSON")
    (tmp_path / "bad.json").write_text("{not json")
    _fails(capsys, [*common, "--device-map", str(tmp_path / "bad.json"),
                    "--out", str(tmp_path / "s")], "not valid JSON")
    _fails(capsys, [*common, "--device-map", "auto", "--device", "cpu",
                    "--out", str(tmp_path / "s")], "not both")
