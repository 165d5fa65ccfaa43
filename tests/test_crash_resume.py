"""Crash safety with real signals: a `langneuron scan` process killed with SIGKILL after a
checkpoint exists resumes to the uninterrupted result byte for byte; Ctrl-C (SIGINT) finishes
the batch in progress and saves a checkpoint that holds exactly the batches counted."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from test_loading import _tiny_folder
from test_scan import LANGS, OPTS, tiny_llama, write_corpus

from langneuron_ext.cli import main
from langneuron_ext.corpus import iter_batches
from langneuron_ext.models.toy import byte_tokenizer
from langneuron_ext.scan import scan
from langneuron_ext.stats import ActivationStats

LANGNEURON = Path(sys.executable).parent / "langneuron"


def test_sigkill_then_resume_equals_uninterrupted_byte_for_byte(tmp_path):
    model = _tiny_folder(tmp_path / "tiny", layers=2, neurons=32)
    write_corpus(tmp_path, lines_per_language=40)
    texts = [a for lang in LANGS for a in ("--text", f"{lang}={tmp_path / f'{lang}.txt'}")]
    common = ["scan", "--model", str(model), *texts, "--tokens-per-language", "600",
              "--max-length", "32", "--batch-size", "2", "--docs-per-block", "8",
              "--checkpoint-every", "2", "--no-progress"]
    whole = tmp_path / "whole.safetensors"
    assert main([*common, "--out", str(whole)]) == 0

    out = tmp_path / "killed.safetensors"
    partial = out.with_name(out.name + ".partial")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([str(LANGNEURON), *common, "--out", str(out)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not partial.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert partial.exists(), "no checkpoint appeared: " + (proc.stderr.read().decode()
                                                               if proc.poll() is not None else "")
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(30)
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists()
    saved = ActivationStats.load(partial)         # whatever moment it died, the file is whole
    total = ActivationStats.load(whole)
    assert int(saved.n_tokens.sum()) < int(total.n_tokens.sum()), "killed after the end"

    assert main([*common, "--out", str(out)]) == 2, "a leftover checkpoint needs --resume"
    assert main([*common, "--out", str(out), "--resume"]) == 0
    assert out.read_bytes() == whole.read_bytes()
    assert not partial.exists()
    # a temporary file the kill may have left is taken over by the next save of that file
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".killed")] == []


@pytest.fixture
def setup(tmp_path):
    return tiny_llama(), byte_tokenizer(), write_corpus(tmp_path, lines_per_language=60)


def _sigint_at(model, n_calls: int, signum: int = signal.SIGINT):
    """A real signal to this process during the (n_calls)-th forward pass."""
    calls = []

    def hook(module, args, kwargs):
        calls.append(1)
        if len(calls) == n_calls:
            os.kill(os.getpid(), signum)
    return model.model.register_forward_pre_hook(hook, with_kwargs=True), calls


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_finishes_the_batch_saves_and_resumes_exactly(setup, tmp_path, signum):
    model, tok, corpus = setup
    opts = dict(OPTS, docs_per_block=8, track_sums=True)
    one_shot = scan(model, tok, corpus, progress=False, **opts)
    batches = list(iter_batches(corpus, tok, LANGS, **{k: opts[k] for k in (
        "tokens_per_language", "max_length", "batch_size", "docs_per_block")}))
    ckpt = tmp_path / "scan.partial"
    hook, calls = _sigint_at(model, 5, signum)
    with pytest.raises(KeyboardInterrupt):
        scan(model, tok, corpus, progress=False, checkpoint=ckpt, checkpoint_every=100, **opts)
    hook.remove()
    assert len(calls) == 5, "the scan must stop right after the interrupted batch"
    saved = ActivationStats.load(ckpt)
    assert saved.n_tokens.tolist() == sum(b.tokens_per_language for b in batches[:5]).tolist()
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler, "handler restored"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL

    hook, calls = _sigint_at(model, 10**9)
    resumed = scan(model, tok, corpus, progress=False, checkpoint=ckpt, **opts)
    hook.remove()
    assert len(calls) == len(batches) - 5, "counted batches must not run through the model again"
    assert torch.equal(resumed.counts, one_shot.counts)
    assert torch.equal(resumed.n_tokens, one_shot.n_tokens)
    torch.testing.assert_close(resumed.sums, one_shot.sums, rtol=1e-12, atol=1e-9)


def test_checkpoint_every_seconds(setup, tmp_path, monkeypatch):
    """--checkpoint-seconds: a save as soon as S seconds passed, however few batches."""
    scan_module = sys.modules["langneuron_ext.scan"]   # ln.scan is the function
    model, tok, corpus = setup
    saves = []
    real = scan_module._save_checkpoint
    monkeypatch.setattr(scan_module, "_save_checkpoint",
                        lambda *a, **k: (saves.append(k.get("complete", a[-1])), real(*a, **k)))
    clock = iter(range(0, 10**6, 7))          # every time.monotonic() call: 7 s later
    monkeypatch.setattr(scan_module.time, "monotonic", lambda: next(clock))
    scan(model, tok, corpus, progress=False, checkpoint=tmp_path / "c", checkpoint_every=1000,
         checkpoint_seconds=10, **OPTS)
    n = sum(1 for _ in iter_batches(corpus, tok, LANGS, **OPTS))
    assert saves[-1] is True and saves.count(False) >= n // 2 - 1
