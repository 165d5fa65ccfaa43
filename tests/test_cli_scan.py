"""`langneuron scan` and `langneuron demo`: bad input gets one line and exit 2, and an existing
--out file is never damaged; a good scan writes a loadable file and removes its checkpoint."""
from __future__ import annotations

import json

import pytest
from test_loading import _tiny_folder  # tests/ is on sys.path (pytest rootdir insertion)
from test_scan import TEXTS

from langneuron_ext.cli import main
from langneuron_ext.identify import NeuronSet
from langneuron_ext.stats import ActivationStats

SENTINEL = b"an earlier result that must survive"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return _tiny_folder(tmp_path_factory.mktemp("model") / "tiny")


@pytest.fixture
def texts(tmp_path):
    args = []
    for lang, templates in TEXTS.items():
        path = tmp_path / f"{lang}.txt"
        path.write_text("\n".join(templates[i % 2].format(i=i) for i in range(30)),
                        encoding="utf-8")
        args += ["--text", f"{lang}={path}"]
    return args


@pytest.fixture
def out(tmp_path):
    path = tmp_path / "stats.safetensors"
    path.write_bytes(SENTINEL)
    return path


def _fails(capsys, argv, match):
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("langneuron ") and "error:" in err and match in err, err
    assert len(err.strip().splitlines()) == 1, f"expected one line, got:\n{err}"
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("n", ["0", "-3"])
def test_zero_tokens_per_language(capsys, tiny, texts, out, n):
    _fails(capsys, ["scan", "--model", str(tiny), *texts, "--tokens-per-language", n,
                    "--out", str(out)], "--tokens-per-language")
    assert out.read_bytes() == SENTINEL


def test_missing_text_file(capsys, tiny, tmp_path, out):
    _fails(capsys, ["scan", "--model", str(tiny), "--text", f"en={tmp_path / 'nope.txt'}",
                    "--out", str(out)], "not found")
    assert out.read_bytes() == SENTINEL


def test_empty_text_file(capsys, tiny, tmp_path, out):
    (tmp_path / "empty.txt").write_text("")
    _fails(capsys, ["scan", "--model", str(tiny), "--text", f"en={tmp_path / 'empty.txt'}",
                    "--out", str(out)], "empty")
    assert out.read_bytes() == SENTINEL


def test_bad_text_option(capsys, tiny, out):
    _fails(capsys, ["scan", "--model", str(tiny), "--text", "en.txt", "--out", str(out)],
           "LANG=PATH")


def test_no_corpus(capsys, tiny, out):
    _fails(capsys, ["scan", "--model", str(tiny), "--out", str(out)], "no corpus")


def test_language_without_text(capsys, tiny, texts, out):
    _fails(capsys, ["scan", "--model", str(tiny), *texts, "--languages", "en,xx",
                    "--out", str(out)], "'xx'")
    assert out.read_bytes() == SENTINEL


def test_invalid_jsonl(capsys, tiny, tmp_path, out):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"lang": "en", "text": "fine"}\n[1, 2]\n')
    _fails(capsys, ["scan", "--model", str(tiny), "--jsonl", str(path), "--out", str(out)],
           "object")
    assert out.read_bytes() == SENTINEL


def test_missing_model_folder(capsys, texts, tmp_path, out):
    _fails(capsys, ["scan", "--model", str(tmp_path / "no-model"), *texts, "--out", str(out)],
           "does not exist")
    assert out.read_bytes() == SENTINEL


def test_scan_writes_stats_and_json(capsys, tiny, texts, tmp_path):
    out = tmp_path / "sub" / "stats.safetensors"
    code = main(["scan", "--model", str(tiny), *texts, "--languages", "fr,en",
                 "--tokens-per-language", "200", "--max-length", "32", "--batch-size", "4",
                 "--sums", "--out", str(out), "--json", "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    result = json.loads(captured.out)
    stats = ActivationStats.load(out)
    assert stats.languages == ["fr", "en"] == result["languages"]
    assert stats.sums is not None and stats.num_layers == 1
    assert result["n_tokens"] == dict(zip(stats.languages, stats.n_tokens.tolist()))
    assert all(0 < n <= 200 for n in stats.n_tokens.tolist())
    assert not out.with_name(out.name + ".partial").exists()


def test_leftover_checkpoint_needs_resume(capsys, tiny, texts, out):
    partial = out.with_name(out.name + ".partial")
    partial.write_bytes(b"partial")
    _fails(capsys, ["scan", "--model", str(tiny), *texts, "--out", str(out)], "--resume")
    assert out.read_bytes() == SENTINEL and partial.read_bytes() == b"partial"


def test_resume_flag_continues_and_matches(capsys, tiny, texts, tmp_path):
    common = ["scan", "--model", str(tiny), *texts, "--tokens-per-language", "150",
              "--max-length", "32", "--batch-size", "2", "--no-progress", "--checkpoint-every",
              "1"]
    one = tmp_path / "one.safetensors"
    assert main([*common, "--out", str(one)]) == 0
    # a finished checkpoint next to --out: --resume uses it and gives the same counts
    two = tmp_path / "two.safetensors"
    assert main([*common, "--out", str(two)]) == 0
    partial = two.with_name(two.name + ".partial")
    ActivationStats.load(one).save(partial)      # a stats file without checkpoint fields
    _fails(capsys, [*common, "--out", str(two), "--resume"], "not a scan checkpoint")
    partial.unlink()
    assert main([*common, "--out", str(two), "--resume"]) == 0
    a, b = ActivationStats.load(one), ActivationStats.load(two)
    assert (a.counts == b.counts).all() and (a.n_tokens == b.n_tokens).all()


def test_demo_rejects_unknown_step(capsys, tmp_path):
    _fails(capsys, ["demo", "--steps", "load,teleport", "--out-dir", str(tmp_path)], "teleport")


def test_demo_rejects_zero_budget(capsys, tmp_path):
    _fails(capsys, ["demo", "--tokens-per-language", "0", "--out-dir", str(tmp_path)],
           "--tokens-per-language")


def test_demo_steps_are_extensible():
    from langneuron_ext.cli import demo
    saved = list(demo.STEPS)
    try:
        demo.add_step("extra", lambda ctx: None, after="scan")
        names = [n for n, _ in demo.STEPS]
        assert names.index("extra") == names.index("scan") + 1
        demo.add_step("extra", lambda ctx: None)
        assert [n for n, _ in demo.STEPS].count("extra") == 1
        assert demo.STEPS[-1][0] == "extra"
    finally:
        demo.STEPS[:] = saved


def test_demo_runs_its_steps_on_a_tiny_model(capsys, tmp_path):
    """The demo's whole flow (load, scan, identify, evaluate, control, report) on a tiny model."""
    from langneuron_ext.corpus import handbook_available
    if not handbook_available():
        pytest.fail("the debian-handbook package is missing: apt-get install debian-handbook")
    folder = _tiny_folder(tmp_path / "tiny", layers=4, neurons=128)
    out_dir = tmp_path / "demo"
    code = main(["demo", "--model", str(folder), "--languages", "en,fr", "--tokens-per-language",
                 "64", "--max-length", "32", "--out-dir", str(out_dir), "--no-progress",
                 "--eval-tokens", "32", "--prompts", "2", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = json.loads(captured.out[captured.out.index("{\n"):])
    assert results["scan"]["tokens"] == 128
    stats = ActivationStats.load(out_dir / "stats.safetensors")
    assert stats.languages == ["en", "fr"] and stats.sums is not None
    assert json.loads((out_dir / "demo.json").read_text())["scan"]["tokens"] == 128
    assert not [name for name, r in results.items() if isinstance(r, dict) and "skipped" in r]
    for method in ("lape", "ternary"):
        assert set(results["identify"][method]["neurons"]) == {"en", "fr"}
        assert len(NeuronSet.load(out_dir / f"neurons_{method}.json").phases) == 4
    nll = json.loads((out_dir / "nll_lape.json").read_text())
    assert nll["columns"] == ["en", "fr"] and nll["rows"][0] == "baseline"
    assert nll["tokens"] == [32, 32]
    control = json.loads((out_dir / "control_en_fr.json").read_text())
    assert control["source"] == "en" and control["meta"]["prompts"] == 2
    report = (out_dir / "report.md").read_text()
    assert "## NLL change against the baseline" in report and "share fr" in report



def test_text_running_out_is_a_clean_note(capsys, tiny, texts, tmp_path, recwarn):
    """A budget larger than the text: one `note:` line on stderr, no raw UserWarning."""
    out = tmp_path / "stats.safetensors"
    code = main(["scan", "--model", str(tiny), *texts, "--languages", "fr",
                 "--tokens-per-language", "1000000", "--max-length", "32", "--batch-size", "4",
                 "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 0, err
    assert "note: the corpus ran out of text before 1,000,000 tokens for: fr" in err
    assert "UserWarning" not in err and not [w for w in recwarn if "ran out" in str(w.message)]
    assert ActivationStats.load(out).languages == ["fr"]
