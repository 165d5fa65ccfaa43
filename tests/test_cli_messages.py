"""Messages that say the right thing: one-line choice errors, --resume without a checkpoint,
--no-progress in every verb that shows bars, a progress bar that never overshoots, the help's
"95%", and an unreachable Hugging Face id failing fast."""
import json

import pytest
from test_loading import _tiny_folder  # tests/ is on sys.path (pytest rootdir insertion)

from langneuron_ext.cli import COMMANDS, build_parser, main

VERBS_WITH_BARS = ("scan", "evaluate", "steer", "demo", "examples", "steer-bench")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(_tiny_folder(tmp_path_factory.mktemp("model") / "tiny", layers=2, neurons=32))


@pytest.fixture
def texts(tmp_path):
    args = []
    for lang, line in {"en": "The system {i} is running.", "fr": "Le système {i} marche."}.items():
        path = tmp_path / f"{lang}.txt"
        path.write_text("\n".join(line.format(i=i) for i in range(20)), encoding="utf-8")
        args += ["--text", f"{lang}={path}"]
    return args


def _subparsers(parser):
    action = next(a for a in parser._actions if a.dest == "command")
    return action.choices


@pytest.mark.parametrize("verb", ["scan", "identify", "report", "bench"])
def test_a_choice_error_is_one_line_pointing_to_help(verb, capsys):
    argv = {"scan": ["scan", "--impl", "nope"], "identify": ["identify", "x", "--method", "?"],
            "report": ["report"], "bench": ["bench", "kernels", "--act", "tanh"]}[verb]
    with pytest.raises(SystemExit) as info:
        main(argv)
    err = capsys.readouterr().err
    assert info.value.code == 2
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"langneuron {verb}") and err.strip().endswith("--help"), err
    assert "usage:" not in err


def test_every_verb_that_shows_bars_has_no_progress():
    verbs = _subparsers(build_parser())
    for verb in VERBS_WITH_BARS:
        assert "--no-progress" in verbs[verb].format_help(), verb
    # a verb whose code passes progress=<anything but False> shows bars: it needs the flag
    import importlib
    import inspect
    import re
    showing = {verb for verb in COMMANDS if re.search(r"progress=(?!False\b)", inspect.getsource(
        importlib.import_module(f"langneuron_ext.cli.{verb.replace('-', '_')}")))}
    assert showing >= set(VERBS_WITH_BARS) and showing - set(VERBS_WITH_BARS) == {"bench"}
    bench = _subparsers_of(verbs["bench"])
    assert all("--no-progress" in bench[name].format_help() for name in ("kernels", "scan"))
    assert set(VERBS_WITH_BARS) <= set(COMMANDS)


def _subparsers_of(parser):
    action = next(a for a in parser._actions if a.dest == "bench_command")
    return action.choices


def test_no_progress_silences_scan_and_steer(model, texts, tmp_path, capsys):
    out = tmp_path / "s.safetensors"
    assert main(["scan", "--model", model, *texts, "--tokens-per-language", "32",
                 "--max-length", "16", "--sums", "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert "%|" not in err and "it/s" not in err, err
    assert main(["identify", str(out), "--method", "lape", "--top-rate", "0.1", "--out",
                 str(tmp_path / "n.json")]) == 0
    capsys.readouterr()
    code = main(["steer", "--model", model, "--neurons", str(tmp_path / "n.json"),
                 "--deactivate", "en", "--prompt", "The system", "--max-new-tokens", "2",
                 "--no-progress", "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "%|" not in captured.err and "it/s" not in captured.err, captured.err
    assert json.loads(captured.out)["results"][0]["prompt"] == "The system"


def test_resume_without_a_checkpoint_says_it_starts_afresh(model, texts, tmp_path, capsys):
    out = tmp_path / "s.safetensors"
    assert main(["scan", "--model", model, *texts, "--tokens-per-language", "16",
                 "--max-length", "16", "--out", str(out), "--no-progress", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "no checkpoint" in err and "starting afresh" in err, err


@pytest.mark.parametrize("verb", ["examples", "steer-bench"])
def test_every_resume_without_a_checkpoint_says_it_starts_afresh(verb, tmp_path, capsys,
                                                                 monkeypatch):
    """The note comes before the model loads (here: loading stops the run)."""
    import test_bad_inputs as bad

    from langneuron_ext.cli import CliError
    from langneuron_ext.identify import lape
    from langneuron_ext.models import loading

    def stop(*args, **kwargs):
        raise CliError("stopped where the model would load")

    monkeypatch.setattr(loading, "load_model", stop)
    monkeypatch.chdir(tmp_path)
    stats = bad.tiny_stats()
    stats.save("stats.safetensors")
    lape(stats, top_rate=0.05).save("neurons.json")
    for lang, text in bad.TEXT.items():
        (tmp_path / f"{lang}.txt").write_text(text, encoding="utf-8")
    argv = ([*bad.EXAMPLES, "--out", "ex.safetensors"] if verb == "examples" else
            [*bad.BENCH, "--methods", "deactivate", "--prompts-file", "prompts.jsonl",
             "--out-dir", "bench"])
    (tmp_path / "prompts.jsonl").write_text(json.dumps(
        {"pair": "en:fr", "prompt": "The system", "reference": "Le système"}) + "\n")
    assert main([*argv, "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].endswith("stopped where the model would load"), err
    assert any("no checkpoint" in line and "starting afresh" in line for line in err), err


def test_the_progress_bar_never_overshoots():
    import io

    from tqdm import tqdm

    from langneuron_ext.scan import advance
    bar = tqdm(total=100, file=io.StringIO())
    for tokens in (40, 40, 40, 40):            # rank 0's tokens x world: an estimate
        advance(bar, tokens)
        assert bar.n <= bar.total
    assert bar.n == 100
    bar.n = 90
    advance(bar, -5)
    assert bar.n == 90


def test_evaluate_help_shows_95_percent(capsys):
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "95% intervals" in text and "95%%" not in text


@pytest.mark.parametrize("verb", COMMANDS)
def test_no_help_shows_a_doubled_percent_sign(verb, capsys):
    """argparse %-formats option help but not a description without %(prog)s: a `%%` written
    there is printed as is."""
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    text = capsys.readouterr().out
    assert text.strip() and "%%" not in text


@pytest.mark.parametrize("how", ["unreachable", "offline"])
def test_an_unreachable_hub_id_fails_in_one_line_without_retries(how, tmp_path, capsys,
                                                                 monkeypatch):
    from langneuron_ext.models import loading
    if how == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:                                    # a port nobody listens on: refused at once
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    assert loading.hub_reachable(timeout=2.0) is False
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))          # an empty cache
    with pytest.raises(loading.ModelLoadError, match="cannot be reached") as info:
        loading.load_model("someone/not-a-cached-model", device="cpu", progress=False)
    assert "\n" not in str(info.value) and "built-in name" in str(info.value)
