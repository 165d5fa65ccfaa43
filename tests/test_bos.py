"""Every tokenizer scans: rows start with BOS when the tokenizer has one, without it otherwise
(Qwen-style), and --bos/--no-bos override; scan and evaluate take the same decision."""
from __future__ import annotations

import pytest
import torch
from test_cli_scan import _fails
from test_loading import _tiny_folder
from test_scan import LANGS, OPTS, hook_counts, tiny_llama, write_corpus

from langneuron_ext.cli import main
from langneuron_ext.corpus import CorpusError, bos_token_id, iter_batches
from langneuron_ext.evaluate.texts import token_windows
from langneuron_ext.models.toy import byte_tokenizer
from langneuron_ext.scan import ScanError, scan
from langneuron_ext.stats import ActivationStats


def no_bos_tokenizer():
    tok = byte_tokenizer()
    tok.bos_token = None                  # like Qwen: no BOS token at all
    assert tok.bos_token_id is None
    return tok


def test_the_rule():
    with_bos, without = byte_tokenizer(), no_bos_tokenizer()
    assert bos_token_id(with_bos) == 1 and bos_token_id(without) is None
    assert bos_token_id(with_bos, False) is None and bos_token_id(with_bos, True) == 1
    assert bos_token_id(without, False) is None
    with pytest.raises(CorpusError, match="no BOS token"):
        bos_token_id(without, True)


@pytest.mark.parametrize("make, bos, first_is_bos", [
    (byte_tokenizer, None, True), (byte_tokenizer, False, False),
    (no_bos_tokenizer, None, False)])
def test_rows_start_as_decided(tmp_path, make, bos, first_is_bos):
    corpus = write_corpus(tmp_path)
    batches = list(iter_batches(corpus, make(), LANGS, bos=bos, **OPTS))
    starts = torch.cat([b.input_ids[:, 0] for b in batches])
    assert bool((starts == 1).all()) is first_is_bos
    assert bool((starts == 1).any()) is first_is_bos
    assert sum(b.tokens_per_language for b in batches).tolist() == [300, 300, 300]
    first_row_lang = batches[0].row_lang[0]
    assert (int(first_row_lang[0]) == -1) is first_is_bos


def test_scan_with_a_tokenizer_without_bos_counts_like_the_hooks(tmp_path):
    model, tok, corpus = tiny_llama(), no_bos_tokenizer(), write_corpus(tmp_path)
    stats = scan(model, tok, corpus, progress=False, impl="torch", **OPTS)
    counts, n_tokens = hook_counts(model, tok, corpus, LANGS, **OPTS)
    assert torch.equal(stats.counts, counts) and torch.equal(stats.n_tokens, n_tokens)
    with pytest.raises(ScanError, match="no BOS token"):
        scan(model, tok, corpus, progress=False, bos=True, **OPTS)


def test_evaluate_windows_follow_the_same_rule():
    text = ["Bonjour tout le monde, ceci est un texte."]
    assert token_windows(byte_tokenizer(), text, 10, max_length=8)[0][0] == 1
    assert token_windows(no_bos_tokenizer(), text, 10, max_length=8)[0][0] != 1


def test_cli_bos_flags(capsys, tmp_path):
    folder = _tiny_folder(tmp_path / "tiny")
    no_bos = _tiny_folder(tmp_path / "nobos")
    no_bos_tokenizer().save_pretrained(no_bos)
    write_corpus(tmp_path)
    texts = [a for lang in LANGS for a in ("--text", f"{lang}={tmp_path / f'{lang}.txt'}")]
    common = [*texts, "--tokens-per-language", "100", "--max-length", "32", "--no-progress"]
    capsys.readouterr()                  # the folders' saving bars
    _fails(capsys, ["scan", "--model", str(no_bos), *common, "--bos",
                    "--out", str(tmp_path / "x")], "no BOS token")
    assert main(["scan", "--model", str(no_bos), *common, "--out", str(tmp_path / "a")]) == 0
    assert main(["scan", "--model", str(folder), *common, "--no-bos",
                 "--out", str(tmp_path / "b")]) == 0
    assert main(["scan", "--model", str(folder), *common, "--out", str(tmp_path / "c")]) == 0
    b, c = (ActivationStats.load(tmp_path / n) for n in "bc")
    assert b.n_tokens.tolist() == c.n_tokens.tolist() == [100, 100, 100]
    assert not torch.equal(b.counts, c.counts), "--no-bos must change what the model sees"
