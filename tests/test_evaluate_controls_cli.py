"""`langneuron evaluate`'s controls: 20 random sets by default, frequency-matched random sets
(--random-match frequency), the own rise's empirical p-value and rank in the printed table, and
the capped number of --control random sets."""
import inspect
import json

import pytest
import torch
from test_evaluate import IMPL, LANGS, TEXTS, cli_files, run_cli, setup  # noqa: F401

from langneuron_ext.evaluate import nll_matrix
from langneuron_ext.evaluate.controls import pooled_frequency
from langneuron_ext.evaluate.nll import NllMatrix


def test_the_default_is_twenty_random_sets_in_the_cli_and_the_library():
    from langneuron_ext.cli import build_parser
    parser = build_parser()
    evaluate = parser._subparsers._group_actions[0].choices["evaluate"]
    defaults = {a.dest: a.default for a in evaluate._actions}
    assert defaults["random_sets"] == 20
    assert defaults["random_match"] == "none" and defaults["control_random_sets"] is None
    assert inspect.signature(nll_matrix).parameters["random_sets"].default == 20


def test_cli_random_match_frequency_equals_the_library(cli_files, capsys, setup):  # noqa: F811
    root, texts = cli_files
    model, tok, neurons, stats = setup
    out_file = root / "nll_freq.json"
    code, out, err = run_cli(["evaluate", "--model", str(root / "model"), "--neurons",
                              str(root / "neurons.json"), *texts, "--tokens-per-language", "40",
                              "--max-length", "24", "--impl", IMPL, "--random-sets", "3",
                              "--seed", "2", "--random-match", "frequency", "--stats",
                              str(root / "stats.safetensors"), "--out", str(out_file),
                              "--no-progress"], capsys)
    assert code == 0, err
    got = NllMatrix.from_dict(json.loads(out_file.read_text())["nll_matrix"])
    direct = nll_matrix(model, tok, neurons, TEXTS, LANGS, max_tokens_per_language=40,
                        max_length=24, random_sets=3, seed=2, random_match="frequency",
                        frequency=pooled_frequency(stats), progress=False, impl=IMPL)
    plain = nll_matrix(model, tok, neurons, TEXTS, LANGS, max_tokens_per_language=40,
                       max_length=24, random_sets=3, seed=2, progress=False, impl=IMPL)
    assert got.rows == direct.rows
    torch.testing.assert_close(got.nll, direct.nll, rtol=1e-5, atol=1e-6, equal_nan=True)
    # the matched sets are other neurons than the plain ones drawn from the same seed
    random_rows = [i for i, k in enumerate(direct.kinds) if k == "random"]
    assert not torch.equal(direct.nll[random_rows].nan_to_num(),
                           plain.nll[random_rows].nan_to_num())
    # the printed table gives the own rise's p-value and rank among the 3 sets
    spec = direct.specificity()
    assert "| p (rank) |" in out
    for lang in LANGS:
        s = spec[lang]
        assert f"{s['random_p']:.3f} ({s['random_rank']} of 4)" in out


@pytest.mark.parametrize("extra, message", [
    (["--random-match", "frequency"], "give --stats"),
    (["--random-match", "frequency", "--random-sets", "0", "--stats", "STATS"],
     "--random-sets is 0"),
    (["--control-random-sets", "-1"], "at least 0"),
])
def test_cli_random_match_bad_input(cli_files, capsys, extra, message):  # noqa: F811
    """Checked before the model loads (--model does not exist here)."""
    root, texts = cli_files
    extra = [str(root / "stats.safetensors") if e == "STATS" else e for e in extra]
    code, out, err = run_cli(["evaluate", "--model", str(root / "no-such-model"), "--neurons",
                              str(root / "neurons.json"), *texts, *extra], capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) <= 2


def test_cli_control_random_sets_are_capped_and_settable(cli_files, capsys):  # noqa: F811
    root, texts = cli_files
    base = ["evaluate", "--model", str(root / "model"), "--neurons", str(root / "neurons.json"),
            *texts, "--tokens-per-language", "20", "--max-length", "16", "--impl", IMPL,
            "--control", "fr:de", "--stats", str(root / "stats.safetensors"), "--prompts", "2",
            "--max-new-tokens", "2", "--bootstrap", "0", "--no-progress", "--json"]
    sets = {}
    for extra in ([], ["--random-sets", "2", "--control-random-sets", "1"]):
        code, out, err = run_cli(base + extra, capsys)
        assert code == 0, err
        data = json.loads(out)
        sets[tuple(extra)] = (data["nll_matrix"]["specificity"]["fr"]["random_sets"],
                              sum(c.startswith("random#")
                                  for c in data["language_control"][0]["conditions"]))
    assert sets[()] == (20, 5)                       # 20 matrix sets, control capped at 5
    assert sets[("--random-sets", "2", "--control-random-sets", "1")] == (2, 1)
