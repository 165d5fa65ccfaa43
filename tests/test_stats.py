"""ActivationStats: file format, merge, minus, select, errors."""
import json

import pytest
import torch
from safetensors import safe_open

from langneuron_ext import ActivationStats, StatsError


def random_stats(languages, L=3, I=5, sums=True, model="m"):
    K = len(languages)
    n = torch.randint(10, 100, (K,))
    counts = torch.stack([torch.randint(0, int(n[k]) + 1, (L, I)) for k in range(K)])
    s = torch.randn(K, L, I, dtype=torch.float64) if sums else None
    return ActivationStats(counts, n, list(languages), s, s.square() if sums else None,
                           model_name=model, model_type="llama", corpus="test")


def test_save_load_roundtrip_and_format(tmp_path):
    stats = random_stats(["en", "fr", "de"])
    path = stats.save(tmp_path / "s.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == {"counts", "n_tokens", "sums", "sumsq"}
        assert f.get_tensor("counts").dtype == torch.int64
        assert f.get_tensor("sums").dtype == torch.float64
    assert json.loads(meta["languages"]) == ["en", "fr", "de"]
    for key in ("format_version", "model_name", "model_type", "activation_site", "num_layers",
                "intermediate_size", "corpus", "package_version"):
        assert key in meta
    assert meta["num_layers"] == "3" and meta["intermediate_size"] == "5"
    back = ActivationStats.load(path)
    assert back.languages == stats.languages
    assert torch.equal(back.counts, stats.counts) and torch.equal(back.n_tokens, stats.n_tokens)
    assert torch.equal(back.sums, stats.sums) and back.model_name == "m"


def test_merge_sums_and_unites_languages():
    a, b = random_stats(["en", "fr"]), random_stats(["fr", "de"])
    m = a.merge(b)
    assert m.languages == ["en", "fr", "de"]
    assert torch.equal(m.counts[0], a.counts[0])
    assert torch.equal(m.counts[1], a.counts[1] + b.counts[0])
    assert torch.equal(m.counts[2], b.counts[1])
    assert m.n_tokens.tolist() == [int(a.n_tokens[0]), int(a.n_tokens[1] + b.n_tokens[0]),
                                   int(b.n_tokens[1])]
    torch.testing.assert_close(m.sums[1], a.sums[1] + b.sums[0])


def test_merge_rejects_other_model_and_shapes():
    a = random_stats(["en"], model="a")
    with pytest.raises(StatsError, match="different models"):
        a.merge(random_stats(["en"], model="b"))
    with pytest.raises(StatsError, match="layers x neurons"):
        a.merge(random_stats(["en"], I=6, model="a"))


def test_minus_clamps_at_zero():
    full = random_stats(["en", "fr"], sums=False)
    prefix = ActivationStats(full.counts + 1, full.n_tokens - 5, ["en", "fr"], model_name="m",
                             model_type="llama", corpus="test")
    r = full.minus(prefix)
    assert int(r.counts.max()) == 0 and r.n_tokens.tolist() == [5, 5]


def test_probabilities_error_on_empty_language():
    s = random_stats(["en", "fr"])
    s.n_tokens[1] = 0
    with pytest.raises(StatsError, match="fr"):
        s.probabilities()


def test_select_and_summary():
    s = random_stats(["en", "fr", "de"])
    t = s.select(["de", "en"])
    assert t.languages == ["de", "en"] and torch.equal(t.counts[0], s.counts[2])
    assert "de" in s.summary() and "tokens" in s.summary()
    assert "3 languages" in s.summary() and "1 language," not in s.summary()
    assert "1 language" in s.select(["fr"]).summary() and "1 languages" not in t.select(
        ["de"]).summary()
    with pytest.raises(StatsError, match="not in these stats"):
        s.select(["xx"])


def test_load_errors(tmp_path):
    with pytest.raises(StatsError, match="does not exist"):
        ActivationStats.load(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(StatsError, match="not a langneuron stats file"):
        ActivationStats.load(bad)


def test_save_is_atomic_and_keeps_old_file_on_error(tmp_path):
    path = tmp_path / "s.safetensors"
    random_stats(["en"]).save(path)
    before = path.read_bytes()
    broken = random_stats(["en"])
    broken.counts = broken.counts.float()  # wrong dtype sneaks in: safetensors still writes...
    broken.extra = {"x": 1}  # ...but non-string metadata fails, before the rename
    with pytest.raises(Exception):
        broken.save(path)
    assert path.read_bytes() == before


def test_write_failing_half_way_keeps_the_old_file_byte_for_byte(tmp_path, monkeypatch):
    """Full disk mid-write: the writer dies after half the bytes; the old file is untouched and
    no temporary file is left behind."""
    import errno

    from langneuron_ext import stats as stats_module
    path = tmp_path / "s.safetensors"
    random_stats(["en", "fr"]).save(path)
    before = path.read_bytes()
    real = stats_module._write_all
    written = []

    def half_then_full_disk(fd, data):
        real(fd, data[:len(data) // 2])
        written.append(len(data) // 2)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(stats_module, "_write_all", half_then_full_disk)
    with pytest.raises(OSError, match="No space left"):
        random_stats(["en", "fr", "de"]).save(path)
    assert written and written[0] > 0, "the writer must have written part of the new file"
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.safetensors"]
    monkeypatch.setattr(stats_module, "_write_all", real)
    assert ActivationStats.load(path).languages == ["en", "fr"]


def test_save_fsyncs_the_file_and_the_folder(tmp_path, monkeypatch):
    import os
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.fstat(fd).st_mode), real(fd)))
    random_stats(["en"]).save(tmp_path / "s.safetensors")
    import stat
    assert [stat.S_ISREG(m) for m in synced] == [True, False], "file first, then its folder"


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_stats_file_mode_follows_the_umask(tmp_path, umask, mode):
    import os
    old = os.umask(umask)
    try:
        path = random_stats(["en"]).save(tmp_path / "s.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode


@pytest.mark.parametrize("damage", ["truncated", "flipped header", "empty"])
def test_corrupt_or_truncated_file_is_a_clear_error(tmp_path, damage):
    path = random_stats(["en", "fr"]).save(tmp_path / "s.safetensors")
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:len(data) - 40])
    elif damage == "flipped header":
        path.write_bytes(data[:8] + b"#" + data[9:])
    else:
        path.write_bytes(b"")
    with pytest.raises(StatsError, match="not a langneuron stats file"):
        ActivationStats.load(path)


def test_equal_statistics_give_equal_files_in_any_process(tmp_path):
    """safetensors writes metadata in hash-map order (random per process); save sorts it."""
    import subprocess
    import sys
    code = ("import torch, sys; from langneuron_ext import ActivationStats as A; "
            "A(torch.arange(30).reshape(2, 3, 5), torch.tensor([40, 50]), ['en', 'fr'], "
            "model_name='m', model_type='llama', corpus='c', "
            "extra={k: k for k in 'abcdefghij'}).save(sys.argv[1])")
    files = [tmp_path / f"{i}.safetensors" for i in range(2)]
    for i, path in enumerate(files):
        subprocess.run([sys.executable, "-c", code, str(path)], check=True,
                       env={**__import__("os").environ, "PYTHONHASHSEED": str(i)})
    assert files[0].read_bytes() == files[1].read_bytes()
    back = ActivationStats.load(files[0])
    assert back.extra["c"] == "c" and back.languages == ["en", "fr"]
