"""The verbs fit together: the whole CLI pipeline on a tiny model, each verb reading the files
the verbs before it wrote, and the shared flags meaning the same in every verb."""
from __future__ import annotations

import json

import pytest
from test_loading import _tiny_folder  # tests/ is on sys.path (pytest rootdir insertion)
from test_scan import TEXTS

from langneuron_ext.cli import COMMANDS, build_parser, main
from langneuron_ext.identify import NeuronSet, method_names
from langneuron_ext.stats import ActivationStats


def _run(capsys, argv):
    """Run one verb with --json; its stdout must be exactly one JSON document."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, f"{argv[0]} failed: {captured.err}"
    return json.loads(captured.out)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(_tiny_folder(tmp_path_factory.mktemp("model") / "tiny", layers=4, neurons=64))


@pytest.fixture
def texts(tmp_path):
    args = []
    for lang, templates in TEXTS.items():
        path = tmp_path / f"{lang}.txt"
        path.write_text("\n".join(templates[i % 2].format(i=i) for i in range(40)),
                        encoding="utf-8")
        args += ["--text", f"{lang}={path}"]
    return args


def test_scan_identify_evaluate_report_compare_steer(capsys, tmp_path, model, texts):
    stats_path = tmp_path / "stats.safetensors"
    scan = _run(capsys, ["scan", "--model", model, *texts, "--tokens-per-language", "256",
                         "--max-length", "32", "--batch-size", "4", "--sums",
                         "--out", str(stats_path), "--no-progress", "--json"])
    assert scan["languages"] == list(TEXTS) and scan["n_tokens"] == {l: 256 for l in TEXTS}
    stats = ActivationStats.load(stats_path)

    sets = {}
    for method in method_names():                        # both methods, from the registry
        out = tmp_path / f"neurons_{method}.json"
        summary = _run(capsys, ["identify", str(stats_path), "--method", method,
                                "--top-rate", "0.05", "--out", str(out), "--json"])
        sets[method] = NeuronSet.load(out)
        assert summary["method"] == method and summary["out"] == str(out)
        assert sets[method].languages == list(TEXTS) and len(sets[method].phases) == 4
        assert sets[method].params["model"] == stats.model_name
    assert {"lape", "ternary"} <= set(sets)

    nll_path = tmp_path / "nll.json"
    result = _run(capsys, ["evaluate", "--model", model, "--neurons",
                           str(tmp_path / "neurons_lape.json"), *texts,
                           "--tokens-per-language", "48", "--max-length", "16",
                           "--random-sets", "1", "--control", "en:fr", "--stats",
                           str(stats_path), "--prompts", "2",
                           "--max-new-tokens", "3", "--out", str(nll_path), "--no-progress",
                           "--json"])
    written = json.loads(nll_path.read_text())
    assert written == result                              # --out and --json hold the same
    matrix = written["nll_matrix"]
    assert matrix["columns"] == list(TEXTS) and matrix["rows"][0] == "baseline"
    assert [c["source"] + ":" + c["target"] for c in written["language_control"]] == ["en:fr"]

    report_dir = tmp_path / "report"
    report = _run(capsys, ["report", str(tmp_path / "neurons_ternary.json"), "--stats",
                           str(stats_path), "--nll", str(nll_path), "--out-dir",
                           str(report_dir), "--json"])
    text = (report_dir / "report.md").read_text()
    assert report["report"] == str(report_dir / "report.md")
    assert sorted(p.rsplit("/", 1)[1] for p in report["files"]) == [
        "layers.png", "nll_delta.png", "overlap.png", "phases.png", "report.md"]
    assert "## NLL change against the baseline" in text
    assert "## Output-language control" in text and "(en -> fr)" in text
    assert f"langneuron report {tmp_path / 'neurons_ternary.json'} --stats" in text

    rows = _run(capsys, ["compare", str(tmp_path / "neurons_lape.json"),
                         str(tmp_path / "neurons_ternary.json"), "--json"])["rows"]
    assert [r["language"] for r in rows] == list(TEXTS)
    for r in rows:
        assert r["a"] == sets["lape"].count(r["language"])
        assert r["b"] == sets["ternary"].count(r["language"])

    steer = _run(capsys, ["steer", "--model", model, "--neurons",
                          str(tmp_path / "neurons_lape.json"), "--stats", str(stats_path),
                          "--deactivate", "en", "--activate", "fr", "--prompt", "The quick",
                          "--max-new-tokens", "3", "--json"])
    assert [r["prompt"] for r in steer["results"]] == ["The quick"]
    assert steer["neurons_changed"] == sets["lape"].count("en") + sets["lape"].count("fr")

    # alignment of a scan with itself: the JSON it prints is the one it writes, and the
    # report renders it (its numbers against a real change: tests/test_mutants_alignment.py)
    align = _run(capsys, ["alignment", str(stats_path), str(stats_path), "--trained", "en",
                          "--top-rate", "0.05", "--out", str(tmp_path / "align.json"), "--json"])
    assert json.loads((tmp_path / "align.json").read_text()) == align
    assert align["before"] == align["after"]
    assert all(j in (1.0, None) for j in align["overlap"].values())   # None: no neurons
    with_align = _run(capsys, ["report", str(tmp_path / "neurons_ternary.json"),
                               "--alignment", str(tmp_path / "align.json"), "--out-dir",
                               str(tmp_path / "report_align"), "--json"])
    assert len(with_align["files"]) > 4              # report.md, its plots and alignment's
    assert "lignment" in (tmp_path / "report_align" / "report.md").read_text()


def _subparsers(parser, prefix=()):
    """(command path, parser) for every verb and sub-verb."""
    import argparse
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,), sub
                yield from _subparsers(sub, prefix + (name,))


# Flags several verbs share must be spelled, typed and documented alike.
SHARED_FLAGS = ["--out", "--out-dir", "--json", "--model", "--gguf", "--dtype", "--device",
                "--impl", "--languages", "--neurons", "--stats", "--layers", "--no-progress",
                "--tokens-per-language", "--max-length", "--batch-size", "--text", "--jsonl",
                "--corpus", "--split", "--prompts", "--max-new-tokens", "--seed"]


def _signature(action):
    """What a user sees of a flag: whether it takes a value, and the value's name in --help."""
    kind = type(action).__name__
    return kind, None if action.nargs == 0 else action.metavar


def test_shared_flags_mean_the_same_in_every_verb():
    seen = {}
    for path, sub in _subparsers(build_parser()):
        for action in sub._actions:
            for flag in action.option_strings:
                if flag in SHARED_FLAGS:
                    seen.setdefault(flag, {}).setdefault(_signature(action), []).append(
                        " ".join(path))
    differing = {flag: sigs for flag, sigs in seen.items() if len(sigs) > 1}
    assert not differing, "flags defined differently across verbs (use cli/options.py): " + \
        json.dumps({f: {str(k): v for k, v in s.items()} for f, s in differing.items()},
                   indent=1)
    assert seen["--out"] and all(sig[1] == "FILE" for sig in seen["--out"])
    assert all(sig[1] == "DIR" for sig in seen["--out-dir"])
    # one spelling of dtypes everywhere (`float32`, not `fp32`); verbs may add `auto`
    for path, sub in _subparsers(build_parser()):
        for action in sub._actions:
            if "--dtype" in action.option_strings:
                assert {"float32", "bfloat16", "float16"} <= set(action.choices or ()), path


def test_every_verb_is_in_the_readme_table():
    """The README's command table lists every verb of cli/__init__.py:COMMANDS."""
    from conftest import REPO
    readme = (REPO / "README.md").read_text()
    missing = [verb for verb in COMMANDS if f"| `{verb}" not in readme]
    assert not missing, f"add a row to README.md's command table for: {', '.join(missing)}"
