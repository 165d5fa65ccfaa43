"""cli/options.py: the parsers and option groups every verb shares."""
import argparse
import json
import os

import pytest
import torch

from langneuron_ext.cli import CliError, build_parser, options


def test_parse_languages_and_lists():
    assert options.parse_languages(" en, fr ,de,") == ["en", "fr", "de"]
    assert options.parse_languages(None) is None
    with pytest.raises(CliError, match="--rows is empty"):
        options.parse_languages(" , ", "--rows")
    with pytest.raises(CliError, match="--languages repeats fr; give each once"):
        options.parse_languages("fr,en,fr")
    with pytest.raises(CliError, match="needs at least 2 languages"):
        options.parse_languages("en", at_least=2)
    with pytest.raises(CliError, match=r"'de' not found in n\.json; it has en, fr"):
        options.parse_languages("en,de", known=["en", "fr"], known_from="n.json")
    with pytest.raises(CliError, match="--languages is required"):
        options.parse_languages(None, required=True)


def test_parse_layers_pair_and_plural():
    assert options.parse_layers("0-3,15, 2") == [0, 1, 2, 3, 15]
    assert options.parse_layers(None) is None
    for bad in ("a", "3-1", "-2", ","):
        with pytest.raises(CliError, match="--layers"):
            options.parse_layers(bad)
    assert options.parse_pair("en:fr", "--control", ["en", "fr"]) == ("en", "fr")
    for bad in ("en", "en:en", ":fr"):
        with pytest.raises(CliError, match="is not SRC:TGT"):
            options.parse_pair(bad, "--control")
    with pytest.raises(CliError, match="'de' is not found"):
        options.parse_pair("en:de", "--control", ["en", "fr"])
    assert options.plural(1, "language") == "1 language"
    assert options.plural(0, "language") == "0 languages"


def _ns(**kw):
    base = dict(device=None, impl=None, dtype="float32")
    base.update(kw)
    return argparse.Namespace(**base)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the messages without a GPU")
@pytest.mark.parametrize("kw, match", [
    (dict(device="cuda"), "--device cuda: no CUDA GPU is visible here"),
    (dict(device="gpu"), "--device gpu: no CUDA GPU is visible here"),
    (dict(device="tpu"), "--device 'tpu' is not a device"),
    (dict(impl="cuda"), "--impl cuda on cpu: .*cuda"),
])
def test_resolve_device_and_impl_errors_without_gpu(kw, match):
    with pytest.raises(CliError, match=match) as info:
        options.resolve_device_and_impl(_ns(**kw))
    assert "\n" not in str(info.value)


def test_resolve_device_and_impl_accepts_what_is_here(monkeypatch):
    args = _ns(device="CPU", impl="torch")
    assert options.resolve_device_and_impl(args) == ("cpu", "torch")
    assert (args.device, args.impl) == ("cpu", "torch")
    assert options.resolve_device_and_impl(_ns(device="auto")) == (None, None)
    assert options.resolve_device_and_impl(_ns(device="cpu", impl="cpu", dtype="auto")) == (
        "cpu", "cpu")
    monkeypatch.setenv("LANGNEURON_IMPL", "nonsense")
    with pytest.raises(CliError, match="LANGNEURON_IMPL nonsense"):
        options.resolve_device_and_impl(_ns())


def test_impl_names_come_from_the_dispatch_table():
    """--impl takes any registered name (a new ops/impl_*.py needs no CLI edit); an unknown
    one is one error listing the registered names."""
    from langneuron_ext.ops import dispatch
    assert set(options.IMPLS) <= {i.name for i in dispatch.implementations()}
    with pytest.raises(CliError, match="--impl nonsense on cpu: unknown implementation "
                                       "'nonsense' of act_stats; known: .*cpu"):
        options.resolve_device_and_impl(_ns(device="cpu", impl="nonsense"))
    with dispatch.registered(dispatch.Implementation(
            "extra", -1, dispatch.get("torch").fn, lambda: (True, ""), lambda d, t: True)):
        assert options.resolve_device_and_impl(_ns(device="cpu", impl="extra")) == (
            "cpu", "extra")


def test_write_json_is_atomic_readable_and_refuses_nan(tmp_path):
    path = options.write_json(tmp_path / "sub" / "r.json", {"a": [1, 2], "é": "ü"})
    assert json.loads(path.read_text()) == {"a": [1, 2], "é": "ü"}
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask     # like stats files
    with pytest.raises(ValueError):
        options.write_json(tmp_path / "nan.json", {"x": float("nan")})
    assert not (tmp_path / "nan.json").exists()


def test_out_checks(tmp_path):
    with pytest.raises(CliError, match="is a folder; give a file name such as"):
        options.check_out_file(str(tmp_path))
    (tmp_path / "f").write_text("")
    with pytest.raises(CliError, match="--out-dir .* is a file"):
        options.check_out_dir(str(tmp_path / "f"))
    assert options.check_out_dir(str(tmp_path / "new" / "d")).is_dir()


def test_produced_by_keeps_the_verb():
    parser = build_parser()
    args = parser.parse_args(["report", "n j.json", "--out-dir", "r"])
    args.argv = ["report", "n j.json", "--out-dir", "r"]
    assert options.produced_by(args) == "langneuron report 'n j.json' --out-dir r"


def test_corpus_split_applies_to_the_handbook_only(tmp_path):
    parser = argparse.ArgumentParser()
    options.add_corpus_options(parser, split_default="heldout")
    (tmp_path / "en.txt").write_text("hello world\n")
    args = parser.parse_args(["--text", f"en={tmp_path / 'en.txt'}", "--split", "train"])
    with pytest.raises(CliError, match="--split train applies to --corpus debian-handbook only"):
        options.corpus_from_args(args)
    args = parser.parse_args(["--text", f"en={tmp_path / 'en.txt'}"])
    corpus, languages = options.corpus_from_args(args)
    assert languages == ["en"] and args.split_default == "heldout"
