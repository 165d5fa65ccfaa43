"""`langneuron demo` on a tiny model over handbook text: --json prints only JSON, --steps keeps
the earlier results in demo.json, report.md records the full command and has the intervals and
the per-phase steering section; bad options are one line before any work."""
from __future__ import annotations

import json

import pytest
from test_loading import _tiny_folder  # tests/ is on sys.path (pytest rootdir insertion)

from langneuron_ext.cli import main


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from langneuron_ext.corpus import handbook_available
    if not handbook_available():
        pytest.fail("the debian-handbook package is missing: apt-get install debian-handbook")
    root = tmp_path_factory.mktemp("demo")
    folder = _tiny_folder(root / "tiny", layers=4, neurons=128)
    out_dir = root / "out"
    argv = ["demo", "--model", str(folder), "--languages", "en,fr,de", "--tokens-per-language",
            "64", "--max-length", "32", "--out-dir", str(out_dir), "--no-progress",
            "--eval-tokens", "48", "--prompts", "2", "--random-sets", "2",
            "--control", "en:fr,fr:de", "--max-new-tokens", "4", "--json"]
    return folder, out_dir, argv


def test_demo_json_is_the_only_stdout_and_report_has_everything(demo_run, capsys):
    folder, out_dir, argv = demo_run
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    results = json.loads(captured.out)               # the whole of stdout is one JSON document
    assert "| variant | neurons |" in captured.err   # the tables went to stderr
    assert not [n for n, r in results.items() if isinstance(r, dict) and "skipped" in r]
    assert set(results["control"]) == {"en:fr", "fr:de"}
    nll = json.loads((out_dir / "nll_lape.json").read_text())
    assert nll["delta_ci"] is not None and nll["meta"]["random_sets"] == 2
    assert "phase" in nll["kinds"]                   # per-phase rows of the control targets
    phases = json.loads((out_dir / "phases_lape.json").read_text())
    assert len(phases["control"]) == 4 and phases["nll"]
    report = (out_dir / "report.md").read_text()
    produced = report.split("```")[1]
    for option in ("demo", "--max-length 32", "--prompts 2", f"--out-dir {out_dir}",
                   "--control en:fr,fr:de", "--random-sets 2", "--eval-tokens 48"):
        assert option in produced, (option, produced)
    assert "[95% CI]" in report and "## Per-phase steering" in report
    assert (out_dir / "phase_steering.png").stat().st_size > 1000
    assert (out_dir / "nll_delta.png").exists()
    assert (out_dir / "browser" / "index.html").exists()           # the neuron browser
    assert results["browse"]["out"] == str(out_dir / "browser" / "index.html")
    steps = results["step_seconds"]                   # where the time goes, step by step
    assert list(steps) == ["load", "scan", "identify", "evaluate", "control", "phases",
                           "report", "browse"]
    assert all(t >= 0 for t in steps.values()) and steps["scan"] > 0
    assert sum(steps.values()) <= results["total_seconds"] + 0.1 * len(steps)
    assert list(results["step_cpu_seconds"]) == list(steps)
    assert results["step_cpu_seconds"]["scan"] > 0


def test_demo_steps_keep_earlier_results(demo_run, capsys):
    folder, out_dir, argv = demo_run
    if not (out_dir / "demo.json").exists():
        main(argv)
    before = json.loads((out_dir / "demo.json").read_text())
    code = main([*argv[:-1], "--steps", "report"])
    capsys.readouterr()
    assert code == 0
    after = json.loads((out_dir / "demo.json").read_text())
    assert after["scan"] == before["scan"] and after["identify"] == before["identify"]
    assert after["report"]["out"].endswith("report.md")
    assert set(after["step_seconds"]) == set(before["step_seconds"])   # earlier steps' times kept
    assert after["step_seconds"]["scan"] == before["step_seconds"]["scan"]


@pytest.mark.parametrize("extra, message", [
    (["--device", "cuda"], "no CUDA GPU"),
    (["--control", "en:xx"], "'xx' is not found"),
    (["--random-sets", "-1"], "at least 0"),
    (["--languages", "en"], "at least 2 languages"),
])
def test_demo_bad_options_are_one_line(capsys, tmp_path, extra, message):
    code = main(["demo", "--out-dir", str(tmp_path), *extra])
    err = capsys.readouterr().err
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
