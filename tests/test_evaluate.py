"""NLL matrix and output-language control on a tiny random model with a byte-level tokenizer,
checked against an independent computation (unpatched model + forward hooks)."""
import json

import pytest
import torch
from test_steer import LANGS, hook_reference, random_neurons, random_stats

from langneuron_ext.evaluate import NllMatrix, language_control, nll_matrix, token_windows
from langneuron_ext.evaluate.langcontrol import generate_texts, identify_language
from langneuron_ext.evaluate.texts import predicted_tokens
from langneuron_ext.models import get_handle
from langneuron_ext.models.toy import byte_tokenizer
from langneuron_ext.steer import SteeringError

# The kernels are compared with the reference in test_steer; here the reference keeps it fast
# (under TRITON_INTERPRET=1 the default on CPU would be the interpreted Triton kernel).
IMPL = "torch"

TEXTS = {
    "en": ["The quick brown fox jumps over the lazy dog.", "Debian is a free operating system.",
           "Packages are installed with apt."] * 3,
    "fr": ["Le renard brun saute par-dessus le chien paresseux.",
           "Debian est un système d'exploitation libre."] * 4,
    "de": ["Der schnelle braune Fuchs springt über den faulen Hund.",
           "Pakete werden mit apt installiert."] * 4,
}


def tiny_byte_model():
    import transformers
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=259, hidden_size=32, intermediate_size=48,
                                      num_hidden_layers=3, num_attention_heads=4,
                                      num_key_value_heads=2, max_position_embeddings=128,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return transformers.LlamaForCausalLM(config).eval()


@pytest.fixture(scope="module")
def setup():
    return tiny_byte_model(), byte_tokenizer(), random_neurons(), random_stats()


def test_token_windows_hold_exactly_the_budget():
    tok = byte_tokenizer()
    windows = token_windows(tok, TEXTS["fr"], max_tokens=100, max_length=32)
    assert predicted_tokens(windows) == 100
    assert all(len(w) <= 32 and w[0] == tok.bos_token_id for w in windows)
    short = token_windows(tok, ["abc"], max_tokens=100, max_length=32)
    assert predicted_tokens(short) == 4            # "abc\n": the text runs out first
    with pytest.raises(SteeringError, match="no text"):
        token_windows(tok, ["", "  "], max_tokens=10)
    with pytest.raises(SteeringError, match="at least 1"):
        token_windows(tok, TEXTS["fr"], max_tokens=0)


def manual_mean_nll(model, tok, texts, budget, max_length, edits=()):
    """Independent NLL: unpatched model, hooks for the edits, one window at a time."""
    hooks = hook_reference(model, list(edits))
    total, n = 0.0, 0
    try:
        for w in token_windows(tok, texts, budget, max_length):
            ids = torch.tensor([w])
            with torch.no_grad():
                logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            total += -logp.gather(1, ids[0, 1:, None]).sum().item()
            n += len(w) - 1
    finally:
        for h in hooks:
            h.remove()
    return total / n


def test_nll_matrix_matches_independent_computation(setup):
    model, tok, neurons, _ = setup
    m = nll_matrix(model, tok, neurons, TEXTS, ["en", "fr"], random_sets=2, seed=3,
                   max_tokens_per_language=120, max_length=40, progress=False, impl=IMPL)
    assert m.rows == ["baseline", "-en", "-fr", "-de", "random(en)#0", "random(fr)#0",
                      "random(de)#0", "random(en)#1", "random(fr)#1", "random(de)#1"]
    assert m.columns == ["en", "fr"] and m.tokens == [120, 120]
    assert m.sizes[1] == neurons.count("en") and m.sizes[4] == neurons.count("en")
    zero = torch.zeros(3, 48)
    for lang in ("en", "fr"):
        c = m.columns.index(lang)
        base = manual_mean_nll(model, tok, TEXTS[lang], 120, 40)
        assert m.nll[0, c].item() == pytest.approx(base, rel=1e-5)
        minus_de = manual_mean_nll(model, tok, TEXTS[lang], 120, 40,
                                   [(neurons.mask("de"), "set", zero)])
        assert m.nll[m.rows.index("-de"), c].item() == pytest.approx(minus_de, rel=1e-5)
    d = m.delta()
    assert torch.equal(d[0], torch.zeros(2, dtype=torch.float64))
    assert d[1:].nan_to_num().abs().sum() > 0
    assert get_handle(model) is None


def test_batched_equals_per_variant_and_chunking_does_not_matter(setup):
    model, tok, neurons, _ = setup
    kw = dict(random_sets=1, max_tokens_per_language=90, max_length=32, progress=False, impl=IMPL)
    one = nll_matrix(model, tok, neurons, TEXTS, LANGS, batched=False, **kw)
    together = nll_matrix(model, tok, neurons, TEXTS, LANGS, batched=True, **kw)
    # a tiny logits budget: one window and one group per pass, variants split into chunks
    chunked = nll_matrix(model, tok, neurons, TEXTS, LANGS, batched=True,
                         logits_budget_bytes=3 * 32 * 259 * 4, **kw)
    torch.testing.assert_close(together.nll, one.nll, rtol=1e-5, atol=1e-6, equal_nan=True)
    torch.testing.assert_close(chunked.nll, one.nll, rtol=1e-5, atol=1e-6, equal_nan=True)
    assert together.meta["batched"] and not one.meta["batched"]


def test_matrix_reports(setup):
    model, tok, neurons, _ = setup
    m = nll_matrix(model, tok, neurons, TEXTS, LANGS, random_sets=1,
                   max_tokens_per_language=60, max_length=32, progress=False, impl=IMPL)
    md = m.to_markdown()
    assert md.splitlines()[0] == "| variant | neurons | en | fr | de |"
    assert "| -fr |" in md and "baseline NLL" in md and "| random(de) x1 |" in md
    data = json.loads(m.to_json())
    assert data["delta"][0] == [0.0, 0.0, 0.0]
    back = NllMatrix.from_dict(data)
    torch.testing.assert_close(back.nll, m.nll, rtol=0, atol=0, equal_nan=True)
    assert back.rows == m.rows
    spec = m.specificity()
    assert set(spec) == set(LANGS)
    d = m.delta()
    assert spec["fr"]["own"] == d[m.rows.index("-fr"), 1].item()
    assert spec["fr"]["random_own"] == d[m.rows.index("random(fr)#0"), 1].item()
    assert spec["fr"]["others_mean"] == pytest.approx(
        (d[m.rows.index("-fr"), 0] + d[m.rows.index("-fr"), 2]).item() / 2)


def test_nll_matrix_bad_input(setup):
    model, tok, neurons, _ = setup
    with pytest.raises(SteeringError, match="no text for language 'it'"):
        nll_matrix(model, tok, neurons, TEXTS, ["it"], progress=False, impl=IMPL)
    with pytest.raises(SteeringError, match="random_sets"):
        nll_matrix(model, tok, neurons, TEXTS, ["en"], random_sets=-1, progress=False, impl=IMPL)
    with pytest.raises(SteeringError, match="cannot read texts"):
        nll_matrix(model, tok, neurons, 42, ["en"], progress=False, impl=IMPL)


def test_identify_language_is_a_real_identifier():
    assert identify_language("Le système d'exploitation est installé sur l'ordinateur.") == "fr"
    assert identify_language("Das Betriebssystem wird auf dem Rechner installiert.") == "de"
    assert identify_language("Das Betriebssystem wird installiert.", candidates=["en", "fr"]) \
        in ("en", "fr")
    assert identify_language("   ") == ""


def test_language_control_conditions_and_generation(setup):
    model, tok, neurons, stats = setup
    prompts = {"fr": ["Le chien", "Debian est", "Les paquets"]}
    res = language_control(model, tok, neurons, stats, prompts, "fr", "de", random_sets=2,
                           max_new_tokens=5, batch_size=2, progress=False, impl=IMPL)
    assert res.conditions == ["no steering", "-fr +de", "random#0", "random#1"]
    assert res.sizes["-fr +de"] == neurons.count("fr") + neurons.count("de")
    assert res.sizes["random#0"] == res.sizes["-fr +de"]
    for c in res.conditions:
        assert len(res.outputs[c]) == 3 and 0.0 <= res.target_share[c] <= 1.0
        share = sum(l == "de" for l in res.labels[c]) / 3
        assert res.target_share[c] == share
    # the steered generations are those of the hook reference: fr set to 0, then de to its mean
    mean_de = stats.mean_activation()[LANGS.index("de")].float()
    hooks = hook_reference(model, [(neurons.mask("fr"), "set", torch.zeros(3, 48)),
                                   (neurons.mask("de"), "set", mean_de)])
    try:
        expected = generate_texts(model, tok, prompts["fr"], max_new_tokens=5, batch_size=2)
    finally:
        for h in hooks:
            h.remove()
    assert res.outputs["-fr +de"] == expected
    assert res.outputs["no steering"] == generate_texts(model, tok, prompts["fr"], 5, 2)
    assert "| -fr +de |" in res.to_markdown()
    assert json.loads(res.to_json())["source"] == "fr"
    with pytest.raises(SteeringError, match="both"):
        language_control(model, tok, neurons, stats, prompts, "fr", "fr", progress=False, impl=IMPL)


# ---- CLI ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cli_files(tmp_path_factory, setup):
    """A tiny model folder, per-language text files, a neuron set and stats with sums."""
    model, tok, neurons, stats = setup
    root = tmp_path_factory.mktemp("cli")
    model.save_pretrained(root / "model")
    tok.save_pretrained(root / "model")
    neurons.save(root / "neurons.json")
    stats.save(root / "stats.safetensors")
    texts = []
    for lang in LANGS:
        path = root / f"{lang}.txt"
        path.write_text("\n".join(TEXTS[lang]) + "\n")
        texts += ["--text", f"{lang}={path}"]
    return root, texts


def run_cli(argv, capsys):
    from langneuron_ext.cli import main
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_evaluate_prints_matrix_and_writes_json(cli_files, capsys, setup):
    root, texts = cli_files
    model, tok, neurons, stats = setup
    argv = ["evaluate", "--model", str(root / "model"), "--neurons", str(root / "neurons.json"),
            *texts, "--tokens-per-language", "60", "--max-length", "32", "--impl", IMPL,
            "--random-sets", "5", "--control", "fr:de", "--stats", str(root / "stats.safetensors"),
            "--prompts", "2",
            "--max-new-tokens", "3", "--out", str(root / "nll.json"), "--no-progress"]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "| variant | neurons | en | fr | de |" in out and "| -fr +de |" in out
    data = json.loads((root / "nll.json").read_text())
    direct = nll_matrix(model, tok, neurons, TEXTS, LANGS, max_tokens_per_language=60,
                        max_length=32, random_sets=5, progress=False, impl=IMPL)
    assert data["nll_matrix"]["rows"] == direct.rows
    torch.testing.assert_close(NllMatrix.from_dict(data["nll_matrix"]).nll, direct.nll,
                               rtol=1e-5, atol=1e-6, equal_nan=True)
    assert data["language_control"][0]["target"] == "de"
    code, out, err = run_cli(argv[:-3] + ["--json", "--no-progress"], capsys)
    assert code == 0 and json.loads(out)["nll_matrix"]["columns"] == LANGS


@pytest.mark.parametrize("extra, message", [
    (["--control", "fr:de"], "give --stats"),
    (["--control", "fr"], "is not SRC:TGT"),
    (["--control", "fr:xx"], "'xx' is not found in the neuron set"),
    (["--rows", "xx"], "'xx' not found"),
    (["--tokens-per-language", "0"], "at least 1"),
    (["--random-sets", "-1"], "at least 0"),
    (["--split", "train"], "applies to --corpus debian-handbook only"),
    (["--device", "cuda"], "no CUDA GPU"),
    (["--impl", "cuda"], "--impl cuda"),
    (["--phase-rows", "fr"], "needs --phases"),
])
def test_cli_evaluate_bad_input(cli_files, capsys, extra, message):
    """Every check runs before the model is loaded (--model does not even exist here)."""
    root, texts = cli_files
    code, out, err = run_cli(["evaluate", "--model", str(root / "no-such-model"), "--neurons",
                              str(root / "neurons.json"), *texts, *extra], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "--value" not in err


def test_cli_evaluate_control_stats_without_sums_fails_first(cli_files, capsys, setup):
    root, texts = cli_files
    _, _, _, stats = setup
    from langneuron_ext.stats import ActivationStats
    ActivationStats(stats.counts, stats.n_tokens, stats.languages).save(root / "nosums.st")
    code, out, err = run_cli(["evaluate", "--model", str(root / "no-such-model"), "--neurons",
                              str(root / "neurons.json"), *texts, "--control", "fr:de",
                              "--stats", str(root / "nosums.st")], capsys)
    assert code == 2 and "has no activation sums" in err and "scan --sums" in err


def test_cli_evaluate_without_random_sets_writes_valid_json(cli_files, capsys):
    root, texts = cli_files
    out_file = root / "nll0.json"
    code, out, err = run_cli(["evaluate", "--model", str(root / "model"), "--neurons",
                              str(root / "neurons.json"), *texts, "--tokens-per-language", "30",
                              "--max-length", "16", "--impl", IMPL, "--random-sets", "0",
                              "--out", str(out_file), "--no-progress", "--json"], capsys)
    assert code == 0, err

    def no_nan(name):
        raise AssertionError(f"{name} in the JSON")
    data = json.loads(out_file.read_text(), parse_constant=no_nan)
    assert data["nll_matrix"]["specificity"]["fr"]["random_own"] is None
    assert json.loads(out, parse_constant=no_nan) == data     # --json: only the JSON on stdout


def test_cli_steer_prints_both_generations(cli_files, capsys, setup):
    root, _ = cli_files
    model, tok, neurons, stats = setup
    code, out, err = run_cli(["steer", "--model", str(root / "model"), "--neurons",
                              str(root / "neurons.json"), "--stats",
                              str(root / "stats.safetensors"), "--deactivate", "fr",
                              "--activate", "de", "--prompt", "Le chien", "--prompt", "Debian",
                              "--max-new-tokens", "4", "--impl", IMPL, "--json"], capsys)
    assert code == 0, err
    rows = json.loads(out)["results"]
    assert [r["prompt"] for r in rows] == ["Le chien", "Debian"]
    assert [r["unsteered"] for r in rows] == generate_texts(model, tok, ["Le chien", "Debian"], 4)
    mean_de = stats.mean_activation()[LANGS.index("de")].float()
    hooks = hook_reference(model, [(neurons.mask("fr"), "set", torch.zeros(3, 48)),
                                   (neurons.mask("de"), "set", mean_de)])
    try:
        expected = generate_texts(model, tok, ["Le chien", "Debian"], 4)
    finally:
        for h in hooks:
            h.remove()
    assert [r["steered"] for r in rows] == expected


@pytest.mark.parametrize("extra, message", [
    (["--activate", "de"], "needs --stats"),
    ([], "nothing to steer"),
    (["--deactivate", "xx"], "'xx' not found"),
    (["--add", "fr"], "--add needs --value"),
    (["--deactivate", "fr", "--layers", "a-b"], "is not a list of layers"),
    (["--deactivate", "fr", "--activate", "fr", "--value", "1"],
     "fr given to both --deactivate and --activate"),
    (["--deactivate", "de", "--add", "fr,de", "--value", "1"], "de given to both"),
    (["--deactivate", "fr", "--value", "2"], "drop --value"),
    (["--deactivate", "fr", "--prompt", " "], "--prompt is empty"),
    (["--deactivate", "fr", "--device", "cuda"], "no CUDA GPU"),
    (["--deactivate", "fr", "--impl", "cuda"], "--impl cuda"),
])
def test_cli_steer_bad_input(cli_files, capsys, extra, message):
    root, _ = cli_files
    code, out, err = run_cli(["steer", "--model", str(root / "no-such-model"), "--neurons",
                              str(root / "neurons.json"), "--prompt", "x", *extra], capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_cli_steer_counts_neurons_once_and_pluralises(cli_files, capsys, setup):
    root, _ = cli_files
    _, _, neurons, _ = setup
    code, out, err = run_cli(["steer", "--model", str(root / "model"), "--neurons",
                              str(root / "neurons.json"), "--deactivate", "fr,de",
                              "--prompt", "Le", "--max-new-tokens", "2", "--impl", IMPL], capsys)
    assert code == 0, err
    assert f"steering {(neurons.mask('fr') | neurons.mask('de')).sum()} neurons" in out \
        or f"steering {neurons.count('fr') + neurons.count('de')} neurons" in out


def test_prompts_from_texts():
    from langneuron_ext.evaluate.langcontrol import prompts_from_texts
    got = prompts_from_texts(["one two", "a b c d e f g h i j",
                              "自由的操作系统由全世界的志愿者共同开发和维护已经有二十多年"],
                             n=5, words=4, chars=10)
    assert got == ["a b c d", "自由的操作系统由全世"]
    with pytest.raises(SteeringError, match="long enough"):
        prompts_from_texts(["short"], n=2)


def test_language_control_intervals_pairs_share_unsteered_and_phases(setup, monkeypatch):
    from langneuron_ext.evaluate import langcontrol
    from langneuron_ext.evaluate.uncertainty import wilson_interval
    model, tok, neurons, stats = setup
    prompts = {"fr": ["Le chien", "Debian est", "Les paquets"], "en": ["The dog", "Debian is"]}
    calls = []
    real = langcontrol.generate_texts
    monkeypatch.setattr(langcontrol, "generate_texts",
                        lambda m, t, p, *a, **k: calls.append(list(p)) or real(m, t, p, *a, **k))
    kw = dict(max_new_tokens=4, random_sets=2, progress=False, impl=IMPL)
    results = langcontrol.language_controls(model, tok, neurons, stats, prompts,
                                            [("fr", "de"), ("fr", "en"), ("en", "de")], **kw)
    # unsteered generations: once per source language (fr shared by two pairs), not per pair
    assert len(calls) == 4 + 3 + 4 and [r.source for r in results] == ["fr", "fr", "en"]
    assert results[1].outputs["no steering"] == results[0].outputs["no steering"]
    res = results[0]
    hits = sum(l == "de" for l in res.labels["-fr +de"])
    data = json.loads(res.to_json())
    assert data["target_ci"]["-fr +de"] == list(wilson_interval(hits, 3))
    pooled = res.random_pooled()
    assert pooled["sets"] == 2 and pooled["generations"] == 6
    low = data["target_ci"]["-fr +de"][0]         # above the unsteered and the random intervals
    assert data["controlled"] is bool(low > data["target_ci"]["no steering"][1]
                                      and low > pooled["target_ci"][1])
    assert "2 sets pooled" in res.to_markdown()

    # per phase: deactivate fr only in layer 0, activate de only in layers 1-2 == hook reference
    phases = [{"name": "a", "start": 0, "stop": 1}, {"name": "b", "start": 1, "stop": 3}]
    rows = langcontrol.phase_control(model, tok, neurons, stats, prompts["fr"], "fr", "de",
                                     phases, combinations=[("a", "b")], max_new_tokens=4,
                                     progress=False, impl=IMPL)
    assert [(r["deactivate_phase"], r["activate_phase"]) for r in rows] == [("a", "b")]
    fr, de = neurons.mask("fr").clone(), neurons.mask("de").clone()
    fr[1:] = False
    de[:1] = False
    assert rows[0]["neurons"] == int(fr.sum() + de.sum())
    mean_de = stats.mean_activation()[LANGS.index("de")].float()
    hooks = hook_reference(model, [(fr, "set", torch.zeros(3, 48)), (de, "set", mean_de)])
    try:
        expected = real(model, tok, prompts["fr"], max_new_tokens=4)
    finally:
        for h in hooks:
            h.remove()
    found = [identify_language(t) for t in expected]
    assert rows[0]["target_share"] == sum(f == "de" for f in found) / 3
    with pytest.raises(SteeringError, match="unknown phase"):
        langcontrol.phase_control(model, tok, neurons, stats, prompts["fr"], "fr", "de", phases,
                                  combinations=[("x", "a")], progress=False, impl=IMPL)


def test_cli_evaluate_reads_a_parallel_tsv(cli_files, capsys):
    """Aligned evaluation: every language scored on translations of the same sentences."""
    root, _ = cli_files
    rows = list(zip(TEXTS["en"], TEXTS["fr"], TEXTS["de"]))
    (root / "par.tsv").write_text("en\tfr\tde\n" + "".join("\t".join(r) + "\n" for r in rows))
    code, out, err = run_cli(["evaluate", "--model", str(root / "model"), "--neurons",
                              str(root / "neurons.json"), "--parallel", str(root / "par.tsv"),
                              "--tokens-per-language", "30", "--max-length", "16",
                              "--random-sets", "1", "--impl", IMPL, "--no-progress", "--json"],
                             capsys)
    assert code == 0, err
    data = json.loads(out)["nll_matrix"]
    assert data["columns"] == LANGS and data["tokens"] == [30, 30, 30]
