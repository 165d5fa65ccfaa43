"""The shared output check (`cli/outputs.py`): outputs never destroy inputs, unwritable places
fail before any work, and a failed final write keeps the result."""
import json
import os

import pytest

from langneuron_ext.cli import CliError
from langneuron_ext.cli.outputs import check_outputs, keep_json, keep_result, rescue_places


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "stats.safetensors"
    path.write_bytes(b"input")
    return path


def _refused(match, **kwargs):
    with pytest.raises(CliError, match=match) as info:
        check_outputs(**kwargs)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_an_output_equal_to_an_input_is_refused(data):
    message = _refused("is the input", inputs=[data], files=[("--out", str(data))])
    assert "--out" in message
    assert data.read_bytes() == b"input"


def test_a_relative_spelling_of_the_input_is_refused(data, monkeypatch):
    monkeypatch.chdir(data.parent)
    _refused("is the input", inputs=[str(data)], files=[("--out", f"./x/../{data.name}")])


def test_an_output_symlinked_to_an_input_is_refused(data, tmp_path):
    link = tmp_path / "link.safetensors"
    link.symlink_to(data)
    _refused("is the input", inputs=[data], files=[("--out", link)])
    # and the other way round: the input given through a link, the output as the file itself
    _refused("is the input", inputs=[link], files=[("--out", data)])


def test_an_output_hard_linked_to_an_input_is_refused(data, tmp_path):
    hard = tmp_path / "hard.safetensors"
    os.link(data, hard)
    _refused("is the input", inputs=[data], files=[("--out", hard)])


def test_none_inputs_and_outputs_are_ignored(tmp_path):
    check_outputs(inputs=[None], files=[("--out", None)], dirs=[("--out-dir", None)])
    assert list(tmp_path.iterdir()) == []


def test_a_fine_output_passes_and_leaves_no_test_file(data, tmp_path):
    out = tmp_path / "new" / "deeper" / "out.json"
    check_outputs(inputs=[data], files=[("--out", out)])
    assert out.parent.is_dir()                         # the folder is created ...
    assert list(out.parent.iterdir()) == []            # ... and the test file removed
    assert not out.exists()


def test_an_existing_output_file_that_is_no_input_passes(data, tmp_path):
    out = tmp_path / "old.json"
    out.write_text("{}")
    check_outputs(inputs=[data], files=[("--out", out)])
    assert out.read_text() == "{}"


def test_an_output_file_that_is_a_folder_is_refused(tmp_path):
    _refused("is a folder", files=[("--out", tmp_path)])


def test_an_output_under_a_file_is_refused(data):
    message = _refused("is a file, not a folder", files=[("--out", data / "out.json")])
    assert str(data) in message
    _refused("is a file, not a folder", files=[("--out", data / "a" / "b" / "out.json")])
    _refused("is a file", dirs=[("--out-dir", data / "report")])


def test_an_output_folder_that_is_a_file_is_refused(data):
    _refused("--out-dir .* is a file", dirs=[("--out-dir", data)])


def test_a_device_is_not_an_output_file():
    _refused("not a regular file", files=[("--out", "/dev/null")])


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc")
def test_proc_is_refused_even_for_root():
    # os.access says /proc is writable for root; creating a file there fails for everyone
    _refused("cannot (write|create)", files=[("--out", "/proc/langneuron-out.json")])
    _refused("cannot (write|create)", dirs=[("--out-dir", "/proc/langneuron-report")])


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        _refused("cannot write in", files=[("--out", folder / "x.json")])
    finally:
        folder.chmod(0o700)


def test_an_output_folder_holding_an_input_under_a_written_name_is_refused(tmp_path):
    neurons = tmp_path / "report.md"
    neurons.write_text("mine")
    _refused("holds the input", inputs=[neurons],
             dirs=[("--out-dir", tmp_path, ("report.md", "layers.png"))])
    # a folder that only holds the inputs under other names is fine
    check_outputs(inputs=[neurons], dirs=[("--out-dir", tmp_path, ("layers.png",))])
    assert neurons.read_text() == "mine"


def test_an_output_folder_that_is_an_input_is_refused(tmp_path):
    _refused("is the input", inputs=[tmp_path], dirs=[("--out-dir", tmp_path)])


def test_two_outputs_on_one_file_are_refused(tmp_path):
    out = tmp_path / "a.json"
    _refused("are both", files=[("--out", out), ("--scores", out)])
    _refused("also writes", files=[("--out", tmp_path / "alignment.json")],
             dirs=[("--out-dir", tmp_path, ("alignment.json",))])


def test_a_missing_output_folder_is_created(tmp_path):
    check_outputs(dirs=[("--out-dir", tmp_path / "a" / "b")])
    assert (tmp_path / "a" / "b").is_dir()
    assert list((tmp_path / "a" / "b").iterdir()) == []


# ---- keep_result ------------------------------------------------------------------------------
def test_keep_json_writes_the_file(tmp_path):
    out = tmp_path / "r.json"
    assert keep_json(out, {"x": 1}) == out
    assert json.loads(out.read_text()) == {"x": 1}


def test_a_failed_final_write_keeps_the_result_beside(tmp_path):
    out = tmp_path / "r.json"
    calls = []

    def save(path):
        calls.append(path)
        if path == out:
            raise OSError(28, "No space left on device")
        path.write_text("result")

    with pytest.raises(CliError) as info:
        keep_result(out, save, "--out", "NLL matrix")
    message = str(info.value)
    kept = rescue_places(out)[0]
    assert calls == [out, kept]
    assert kept.read_text() == "result"
    assert "No space left on device" in message and str(kept) in message
    assert "NLL matrix" in message and "\n" not in message


def test_a_failed_write_falls_back_to_the_current_folder(tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    out = tmp_path / "gone" / "r.json"          # its folder does not exist: save fails there

    def save(path):
        path.write_text("result")               # no mkdir: fails beside the missing folder

    with pytest.raises(CliError, match="safe in") as info:
        keep_result(out, save)
    kept = [p for p in work.iterdir()]
    assert len(kept) == 1 and kept[0].read_text() == "result"
    assert str(kept[0]) in str(info.value)


def test_nothing_writable_says_so(tmp_path):
    def save(path):
        raise OSError(30, "Read-only file system")

    with pytest.raises(CliError, match="nor a copy"):
        keep_result(tmp_path / "r.json", save)
