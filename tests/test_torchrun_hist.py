"""`langneuron scan --hist` under torchrun, two gloo processes on the CPU: the histograms are
all-reduced by sum and the maxima by max, so the file equals the one-process file byte for
byte (the batch layout does not depend on the number of processes)."""
from __future__ import annotations

from test_loading import _tiny_folder
from test_torchrun import _texts, _torchrun

from langneuron_ext.cli import main
from langneuron_ext.stats import ActivationStats


def test_two_ranks_with_histograms_write_the_one_process_file(tmp_path):
    model = _tiny_folder(tmp_path / "tiny", layers=2, neurons=32)
    common = ["scan", "--model", str(model), *_texts(tmp_path), "--tokens-per-language", "600",
              "--max-length", "32", "--batch-size", "4", "--docs-per-block", "4",
              "--no-progress", "--hist", "16"]
    one = tmp_path / "one.safetensors"
    assert main([*common, "--out", str(one)]) == 0
    two = tmp_path / "two.safetensors"
    done = _torchrun([*common, "--out", str(two)], "-m", "langneuron_ext")
    assert done.returncode == 0, done.stderr[-3000:]
    assert two.read_bytes() == one.read_bytes()
    stats = ActivationStats.load(two)
    assert stats.hist is not None and stats.amax is not None
    assert int(stats.hist.sum()) == int(stats.n_tokens.sum()) * 2 * 32
