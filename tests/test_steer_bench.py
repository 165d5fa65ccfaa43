"""The steering benchmark on tiny random models: DiffMean, the metrics against direct
computations, the batched grid, `langneuron steer-bench` (bad input, --resume after SIGINT)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections import Counter

import pytest
import torch
from test_evaluate import tiny_byte_model
from test_scan import TEXTS
from test_steer import random_neurons, random_stats

from langneuron_ext.cli import main
from langneuron_ext.evaluate import steer_metrics as M
from langneuron_ext.evaluate.controls import frequency_matched_mask, pooled_frequency
from langneuron_ext.evaluate.steer_bench import (
    BenchError,
    PairItem,
    SteerBench,
    build_conditions,
    fluency_nll,
)
from langneuron_ext.models.toy import byte_tokenizer
from langneuron_ext.steering import diffmean_steering, diffmean_vectors

IMPL = "torch"


def _logits(model, ids, **kw):
    with torch.no_grad():
        return model(input_ids=ids, **kw).logits


def _stats_with_residual(hidden=32, layers=3, seed=5):
    stats = random_stats(L=layers)
    gen = torch.Generator().manual_seed(seed)
    stats.residual_sums = torch.randn(3, layers, hidden, generator=gen,
                                      dtype=torch.float64) * 50
    return stats


# ---- DiffMean ---------------------------------------------------------------------------------
def test_diffmean_vectors_are_target_minus_source_means():
    stats = _stats_with_residual()
    vec = diffmean_vectors(stats, "en", "fr", [1, -1])
    means = stats.residual_sums / stats.n_tokens.double()[:, None, None]
    assert sorted(vec) == [1, 2]
    assert torch.equal(vec[1], (means[1, 1] - means[0, 1]).float())
    assert torch.equal(vec[2], (means[1, 2] - means[0, 2]).float())


def test_diffmean_alpha_zero_is_a_no_op_and_hooks_are_removed():
    model = tiny_byte_model()
    ids = torch.randint(3, 259, (2, 9), generator=torch.Generator().manual_seed(0))
    base = _logits(model, ids)
    vec = diffmean_vectors(_stats_with_residual(), "en", "fr", [0, 1, 2])
    with diffmean_steering(model, vec, alpha=0.0):
        assert torch.equal(_logits(model, ids), base)
    with diffmean_steering(model, vec, alpha=2.0):
        assert not torch.equal(_logits(model, ids), base)
    assert torch.equal(_logits(model, ids), base), "hooks must be removed on exit"


def test_diffmean_adds_alpha_times_the_vector_to_the_layer_output():
    model = tiny_byte_model()
    ids = torch.randint(3, 259, (1, 7), generator=torch.Generator().manual_seed(1))
    vec = diffmean_vectors(_stats_with_residual(), "en", "fr", [1])
    seen = {}
    hook = model.model.layers[1].register_forward_hook(
        lambda m, i, o: seen.__setitem__(len(seen), (o[0] if isinstance(o, tuple) else o)))
    with torch.no_grad():
        model(input_ids=ids)
    base = seen[0]
    hook.remove()
    after = {}
    hook = model.model.layers[2].register_forward_pre_hook(
        lambda m, a, k: after.__setitem__("in", k.get("hidden_states", a[0] if a else None)),
        with_kwargs=True)
    with diffmean_steering(model, vec, alpha=3.0), torch.no_grad():
        model(input_ids=ids)
    hook.remove()
    assert torch.equal(after["in"], base + 3.0 * vec[1])


def test_per_row_vectors_in_one_batch_equal_separate_runs():
    model = tiny_byte_model()
    ids = torch.randint(3, 259, (3, 8), generator=torch.Generator().manual_seed(2))
    stats = _stats_with_residual()
    a = diffmean_vectors(stats, "en", "fr", [1])[1]
    b = diffmean_vectors(stats, "de", "en", [1])[1]
    rows = [a * 2.0, torch.zeros_like(a), b * -1.5]
    with diffmean_steering(model, {1: torch.stack(rows)}):
        batched = _logits(model, ids)
    for r, v in enumerate(rows):
        with diffmean_steering(model, {1: v}):
            alone = _logits(model, ids)
        assert torch.equal(batched[r], alone[r])


# ---- neuron interventions: scale and add ------------------------------------------------------
def test_scale_by_one_and_add_zero_leave_logits_bit_identical_and_scale_zero_deactivates():
    from langneuron_ext.ops.reference import STEER_ADD, STEER_SCALE, STEER_SET
    from langneuron_ext.steer import Intervention, steering
    model = tiny_byte_model()
    ids = torch.randint(3, 259, (2, 9), generator=torch.Generator().manual_seed(3))
    mask = random_neurons().mask("fr").bool()
    ones, zeros = torch.ones(mask.shape), torch.zeros(mask.shape)
    with steering(model, [], impl=IMPL):
        base = _logits(model, ids)
    with steering(model, [Intervention(mask, STEER_SCALE, ones)], impl=IMPL):
        assert torch.equal(_logits(model, ids), base)
    with steering(model, [Intervention(mask, STEER_ADD, zeros)], impl=IMPL):
        assert torch.equal(_logits(model, ids), base)
    with steering(model, [Intervention(mask, STEER_SET, zeros)], impl=IMPL):
        off = _logits(model, ids)
    with steering(model, [Intervention(mask, STEER_SCALE, zeros)], impl=IMPL):
        assert torch.equal(_logits(model, ids), off)
    assert not torch.equal(off, base)
    with steering(model, [Intervention(mask, STEER_SCALE, ones * 3)], impl=IMPL):
        assert not torch.equal(_logits(model, ids), base)


def test_the_grid_runs_scale_rows_on_the_native_cpu_kernel_as_torch_does():
    """The benchmark's steering groups (scale, add, mean and a random set, one group per row)
    on the native CPU kernel give the torch implementation's logits, and each row equals its
    condition installed alone."""
    from langneuron_ext.evaluate.steer_bench import _neuron_edits
    from langneuron_ext.models.patch import patched
    from langneuron_ext.ops import dispatch
    from langneuron_ext.steer import steering
    model, tok = tiny_byte_model(), byte_tokenizer()
    neurons, stats = random_neurons(), _stats_with_residual()
    bench = SteerBench(model, tok, neurons, stats, {("en", "fr"): ITEMS[("en", "fr")]},
                       ["scale", "add", "mean"], {"scale": [0.0, 3.0], "add": [2.0]},
                       random_sets=1, random_methods=["scale"], impl="cpu")
    ids = torch.randint(3, 259, (1, 9), generator=torch.Generator().manual_seed(4))
    got = {}
    for impl in ("torch", "cpu"):
        bench.impl = impl
        with patched(model, impl) as handle:
            groups = bench._tables(handle)
            order = sorted(groups)
            rows = torch.tensor([-1] + [groups[c] for c in order], dtype=torch.int32)
            handle.set_rows(None, rows[:, None].expand(len(rows), ids.shape[1]).contiguous())
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    got[impl] = _logits(model, ids.repeat(len(rows), 1))
            finally:
                handle.set_rows(None, None)
        # no fallback: the implementation itself ran the scale rows
        assert not [w for w in caught if "not implemented" in str(w.message)], impl
    assert "scale" in dispatch.get("cpu").features
    torch.testing.assert_close(got["cpu"], got["torch"], atol=1e-4, rtol=1e-4)
    labels = ["none"] + [bench.conditions[c].label for c in order]
    assert labels == ["none", "scale x0", "scale x3", "add x2", "mean", "scale x0 random#0",
                      "scale x3 random#0"]
    for r, c in enumerate(order, start=1):
        if bench.conditions[c].random is None:
            with steering(model, _neuron_edits(bench.conditions[c], neurons, stats),
                          impl="cpu"):
                alone = _logits(model, ids)[0]
            torch.testing.assert_close(got["cpu"][r], alone, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got["cpu"][2], got["cpu"][0], atol=1e-3)   # x3 steers
    assert not torch.allclose(got["cpu"][2], got["cpu"][1], atol=1e-3)


# ---- metrics ----------------------------------------------------------------------------------
def _chrf_by_hand(hyp: str, ref: str, n_max: int = 6, beta: float = 2.0) -> float:
    """chrF (Popovic 2015) as sacrebleu defines it: character n-grams 1..6 without spaces,
    precision and recall averaged over the orders, F-beta with beta 2, times 100."""
    hyp, ref = hyp.replace(" ", ""), ref.replace(" ", "")
    precs, recs = [], []
    for n in range(1, n_max + 1):
        h = Counter(hyp[i:i + n] for i in range(len(hyp) - n + 1))
        r = Counter(ref[i:i + n] for i in range(len(ref) - n + 1))
        match = sum((h & r).values())
        if sum(h.values()) and sum(r.values()):
            precs.append(match / sum(h.values()))
            recs.append(match / sum(r.values()))
        else:
            precs.append(0.0)
            recs.append(0.0)
    p, r = sum(precs) / n_max, sum(recs) / n_max
    if p + r == 0:
        return 0.0
    return 100 * (1 + beta ** 2) * p * r / (beta ** 2 * p + r)


@pytest.mark.parametrize("hyp,ref", [
    ("Le renard brun saute", "Le renard brun saute par-dessus le chien paresseux."),
    ("Debian est un système libre", "Debian est un système d'exploitation libre."),
    ("xyz", "Pakete werden mit apt installiert."),
])
def test_chrf_agrees_with_a_direct_computation(hyp, ref):
    assert M.chrf(hyp, ref) == pytest.approx(_chrf_by_hand(hyp, ref), abs=1e-9)


def test_fluency_nll_agrees_with_one_sequence_at_a_time():
    model, tok = tiny_byte_model(), byte_tokenizer()
    gens = [[70, 80, 90, 100, 110], [71, 72], [], [120] * 9]
    got = fluency_nll(model, tok, gens, batch_size=3)
    for g, (total, n) in zip(gens, got):
        ids = torch.tensor([[tok.bos_token_id] + g])
        assert n == len(g)
        if not g:
            assert total == 0.0
            continue
        logp = _logits(model, ids)[0, :-1].float().log_softmax(-1)
        direct = -logp.gather(1, ids[0, 1:, None]).double().sum().item()
        assert total == pytest.approx(direct, rel=1e-5)


def test_intervals_and_score():
    assert M.share([True, True, False, False]) == (0.5, *M.wilson_interval(2, 4))
    mean, lo, hi = M.bootstrap_mean([1.0, 2.0, 3.0, 4.0, float("nan")])
    assert mean == 2.5 and 1.0 <= lo < 2.5 < hi <= 4.0
    assert M.summary_score(1.0, 20.0, 40.0) == pytest.approx(2 * 0.5 / 1.5)
    assert M.summary_score(0.0, 0.0, 40.0) == 0.0
    assert M.summary_score(0.5, 80.0, 40.0) == pytest.approx(2 * 0.5 / 1.5)  # content capped
    assert M.empirical_p(0.9, [0.1, 0.95, 0.3]) == (0.5, 2)
    assert M.empirical_p(0.9, []) == (None, None)


def test_second_identifier_names_clear_languages():
    assert M.identify_lingua("Le renard brun saute par-dessus le chien paresseux.") == "fr"
    assert M.identify_lingua("Der schnelle braune Fuchs springt über den faulen Hund.") == "de"
    assert M.identify_lingua("") == ""


def test_frequency_matched_sets_keep_layer_sizes_and_frequency_bins():
    stats = random_stats()
    mask = random_neurons().mask("fr").bool()
    gen = torch.Generator().manual_seed(0)
    freq = pooled_frequency(stats)
    rnd = frequency_matched_mask(mask, freq, gen)
    assert torch.equal(rnd.sum(1), mask.sum(1))
    assert not bool((rnd & mask).any())
    for layer in range(mask.shape[0]):     # the matched set's frequencies are close to the own
        if mask[layer].any():
            own, got = freq[layer][mask[layer]].mean(), freq[layer][rnd[layer]].mean()
            assert abs(float(own - got)) < 0.25


# ---- the grid ---------------------------------------------------------------------------------
ITEMS = {("en", "fr"): [PairItem(f"The fox {i} jumps", "Le renard brun saute", "Le renard")
                        for i in range(3)],
         ("de", "fr"): [PairItem(f"Der Fuchs {i}", "Le renard brun saute", "Le renard")
                        for i in range(2)]}


def test_conditions_cover_every_method_strength_layer_choice_and_random_set():
    conds = build_conditions([("en", "fr")], ["deactivate", "add", "diffmean"],
                             {"add": [1, 2], "diffmean": [0.5]}, [[1], [0, 2]], 2)
    labels = [c.label for c in conds]
    assert labels == ["none", "deactivate", "add x1", "add x2", "diffmean[1] x0.5",
                      "diffmean[0,2] x0.5", "deactivate random#0", "add x1 random#0",
                      "add x2 random#0", "deactivate random#1", "add x1 random#1",
                      "add x2 random#1"]


def test_bench_shares_unsteered_generations_and_equals_its_parts():
    model, tok = tiny_byte_model(), byte_tokenizer()
    bench = SteerBench(model, tok, random_neurons(), _stats_with_residual(), ITEMS,
                       ["deactivate", "mean", "diffmean"], {"diffmean": [0.0, 1.0]}, [[1]],
                       random_sets=1, max_new_tokens=4, batch_size=5, impl=IMPL)
    jobs = bench._jobs()
    unsteered = [j for j in jobs if j[1] is None]
    # one unsteered generation per distinct prompt text (source and native openings)
    assert len(unsteered) == len({i.prompt for v in ITEMS.values() for i in v} | {"Le renard"})
    result = bench.run(progress=False)
    rows = {(r["pair"], r["condition"]): r for r in result["table"]}
    gens = result["generations"]
    # DiffMean with alpha 0 generates exactly the unsteered text
    assert gens["en:fr|diffmean[1] x0"] == gens["en:fr|none"]
    assert rows[("en:fr", "mean")]["neurons"] > rows[("en:fr", "deactivate")]["neurons"] > 0
    assert rows[("en:fr", "mean")]["random_sets"] == 1
    assert all(0 <= r["success_langid"] <= 1 for r in result["table"])
    json.dumps(result, allow_nan=False)


def test_bad_requests_fail_before_any_generation():
    model, tok = tiny_byte_model(), byte_tokenizer()
    stats = random_stats()
    with pytest.raises(BenchError, match="residual"):
        SteerBench(model, tok, random_neurons(), stats, ITEMS, ["diffmean"], {}, [[1]])
    with pytest.raises(BenchError, match="finite"):
        SteerBench(model, tok, random_neurons(), stats, ITEMS, ["add"], {"add": [1, float("nan")]})
    with pytest.raises(BenchError, match="not in the neuron set"):
        SteerBench(model, tok, random_neurons(), stats, {("en", "zh"): ITEMS[("en", "fr")]},
                   ["deactivate"])
    no_sums = random_stats()
    no_sums.sums = None
    with pytest.raises(BenchError, match="--sums"):
        SteerBench(model, tok, random_neurons(), no_sums, ITEMS, ["mean"])


# ---- the verb ---------------------------------------------------------------------------------
def _folder(path):
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=259, hidden_size=32, intermediate_size=48,
                         num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=128, bos_token_id=1, eos_token_id=2,
                         pad_token_id=0)
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.mlp.gate_proj.weight.mul_(20)
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    model = _folder(root / "tiny")
    texts = []
    for lang, templates in TEXTS.items():
        p = root / f"{lang}.txt"
        p.write_text("\n".join(templates[i % 2].format(i=i) for i in range(40)) + "\n",
                     encoding="utf-8")
        texts += ["--text", f"{lang}={p}"]
    common = ["--model", str(model), *texts, "--tokens-per-language", "300", "--max-length",
              "32", "--batch-size", "3", "--no-progress"]
    full, plain = root / "full.safetensors", root / "plain.safetensors"
    assert main(["scan", *common, "--sums", "--residual-means", "--hist", "8",
                 "--out", str(full)]) == 0
    assert main(["scan", *common, "--out", str(plain)]) == 0
    neurons = root / "neurons.json"
    assert main(["identify", "--method", "lape", "--top-rate", "0.1", "--out", str(neurons),
                 str(full)]) == 0
    prompts = root / "prompts.jsonl"
    lines = [{"pair": "en:fr", "prompt": f"Packages {i} are", "reference":
              "Debian est un système d'exploitation libre.", "native_prompt": "Debian est"}
             for i in range(4)]
    lines += [{"pair": "ru:en", "prompt": f"Пакеты {i}", "reference": "Packages are installed."}
              for i in range(3)]
    prompts.write_text("\n".join(json.dumps(l, ensure_ascii=False) for l in lines) + "\n",
                       encoding="utf-8")
    return dict(root=root, model=model, full=full, plain=plain, neurons=neurons,
                prompts=prompts)


def _args(f, out, *extra):
    return ["steer-bench", "--model", str(f["model"]), "--stats", str(f["full"]), "--neurons",
            str(f["neurons"]), "--pairs", "en:fr,ru:en", "--prompts-file", str(f["prompts"]),
            "--methods", "deactivate,mean,median,add,scale,diffmean", "--strengths", "add=1,2",
            "--strengths", "scale=0,3", "--random-methods", "mean,scale",
            "--strengths", "diffmean=1,4", "--diffmean-layers", "1;0,2", "--random-sets", "2",
            "--max-new-tokens", "6", "--batch-size", "4", "--impl", IMPL, "--out-dir",
            str(out), "--no-progress", *extra]


@pytest.mark.parametrize("change,message", [
    (["--pairs", "en:zh"], "not in the neuron set"),
    (["--methods", "diffmean", "--stats", "PLAIN"], "residual means"),
    (["--methods", "mean", "--stats", "PLAIN"], "--sums"),
    (["--strengths", "add=1,nan"], "finite"),
    (["--diffmean-layers", "1;7"], "out of range"),
])
def test_bad_input_is_one_line_before_the_model_and_overwrites_nothing(files, tmp_path, capsys,
                                                                       change, message):
    out = tmp_path / "out"
    out.mkdir()
    (out / "steer_bench.json").write_text("keep me")
    args = _args(files, out)
    if "--methods" in change:            # random sets only for methods that are run
        at = args.index("--random-methods")
        del args[at:at + 2]
    for i in range(0, len(change), 2):
        value = str(files["plain"]) if change[i + 1] == "PLAIN" else change[i + 1]
        args[args.index(change[i]) + 1] = value
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert (out / "steer_bench.json").read_text() == "keep me"
    assert sorted(p.name for p in out.iterdir()) == ["steer_bench.json"]


def _without_command(path):
    data = json.loads(path.read_text())
    data.pop("command")
    return data


def test_resume_after_sigint_gives_the_uninterrupted_json(files, tmp_path):
    whole = tmp_path / "whole"
    assert main(_args(files, whole)) == 0
    for name in ("steer_bench.json", "steer_bench.csv", "steer_bench.md", "steer_bench.png"):
        assert (whole / name).stat().st_size > 0
    assert not (whole / "steer_bench.partial.jsonl").exists()
    expected = _without_command(whole / "steer_bench.json")
    conditions = {r["condition"] for r in expected["table"]}
    assert {"none", "deactivate", "mean", "median", "add x1", "add x2", "scale x0", "scale x3",
            "diffmean[1] x1", "diffmean[0,2] x4", "mean random#1",
            "scale x3 random#1"} <= conditions
    assert not any(c.startswith("add") and "random" in c for c in conditions)

    part = tmp_path / "part"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "langneuron_ext", *_args(files, part)[0:]],
                            env=env, stderr=subprocess.PIPE, text=True)
    ckpt = part / "steer_bench.partial.jsonl"
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists() and len(ckpt.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode != 0 and "--resume" in err
    assert not (part / "steer_bench.json").exists()
    done = len(ckpt.read_text().splitlines()) - 1
    assert done >= 2
    # without --resume an unfinished run is not silently overwritten
    assert main(_args(files, part)) == 2
    assert main(_args(files, part, "--resume")) == 0
    assert _without_command(part / "steer_bench.json") == expected


def test_report_renders_a_steer_bench_file(files, tmp_path):
    out = tmp_path / "bench"
    assert main(_args(files, out, "--random-sets", "0", "--methods", "deactivate,diffmean",
                      "--random-methods", "deactivate")) == 0
    report = tmp_path / "report"
    assert main(["report", str(files["neurons"]), "--steer-bench",
                 str(out / "steer_bench.json"), "--out-dir", str(report)]) == 0
    text = (report / "report.md").read_text()
    assert "## Steering benchmark" in text and "diffmean[1] x4" in text
    assert (report / "steer_bench.png").stat().st_size > 0
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["report", str(files["neurons"]), "--steer-bench", str(bad), "--out-dir",
                 str(tmp_path / "r2")]) == 2
