"""Steering to a language's median or percentile (stats with histograms) and the scale mode,
through `ln.steer` and `langneuron steer`, against a forward-hook reference."""
import pytest
import torch
from test_steer import IDS, LANGS, logits, random_neurons, reference_logits, tiny_model

from langneuron_ext.cli import main
from langneuron_ext.ops.reference import STEER_ADD, STEER_SCALE, STEER_SET
from langneuron_ext.stats import ActivationStats
from langneuron_ext.steer import (
    Intervention,
    SteeringError,
    interventions,
    parse_value,
    steer,
    steering_groups,
)

EDGES = torch.linspace(-0.25, 2.0, 19)


def hist_stats(L=3, I=48, seed=5) -> ActivationStats:
    """Stats with histograms of random SiLU-like activations, 200 tokens per language."""
    g = torch.Generator().manual_seed(seed)
    acts = torch.nn.functional.silu(torch.randn(len(LANGS), L, I, 200, generator=g)
                                    + torch.arange(len(LANGS))[:, None, None, None] * 0.5)
    hist = torch.nn.functional.one_hot(torch.bucketize(acts, EDGES, right=True),
                                       EDGES.numel() + 1).sum(-2).long()
    return ActivationStats((acts > 0).sum(-1), torch.full((len(LANGS),), 200), LANGS,
                           acts.double().sum(-1), hist=hist, hist_edges=EDGES,
                           amax=acts.amax(-1))


def scaled_reference(model, ids, mask, factor):
    hooks = []
    for layer, block in enumerate(model.model.layers):
        def hook(module, inputs, output, layer=layer):
            out = output.clone()
            m = mask[layer]
            out[..., m] = out[..., m] * factor
            return out
        hooks.append(block.mlp.act_fn.register_forward_hook(hook))
    try:
        return logits(model, ids)
    finally:
        for h in hooks:
            h.remove()


@pytest.mark.parametrize("text, want", [("mean", "mean"), ("median", "median"),
                                        ("p90", "p90"), ("P99.5", "p99.5"), ("p0", "p0"),
                                        ("p100", "p100"), ("0.25", 0.25), (2, 2.0)])
def test_parse_value(text, want):
    assert parse_value(text) == want


@pytest.mark.parametrize("bad", ["p101", "q50", "p", "p-1", "nan", "inf", float("nan"), True,
                                 "medium"])
def test_parse_value_refuses(bad):
    with pytest.raises(SteeringError, match="value must be mean, median, pQ"):
        parse_value(bad)


def test_median_and_percentile_values_come_from_the_histograms():
    neurons, stats = random_neurons(), hist_stats()
    (edit,) = interventions(neurons, "de", mode="activate", value="median", stats=stats)
    assert edit.op == STEER_SET
    assert torch.equal(edit.value, stats.median()[2].float())
    (edit,) = interventions(neurons, "fr", mode="activate", value="p90", stats=stats)
    assert torch.equal(edit.value, stats.percentile(90)[1].float())
    (edit,) = interventions(neurons, "fr", mode="add", value="p10", stats=stats)
    assert edit.op == STEER_ADD and torch.equal(edit.value, stats.percentile(10)[1].float())
    assert bool((stats.percentile(90) >= stats.median()).all())


def test_statistic_errors_say_what_to_do():
    neurons, stats = random_neurons(), hist_stats()
    with pytest.raises(SteeringError, match="--hist"):
        interventions(neurons, "de", mode="activate", value="median", stats=None)
    plain = ActivationStats(stats.counts, stats.n_tokens, LANGS, stats.sums)
    with pytest.raises(SteeringError, match="no histograms.*--hist"):
        interventions(neurons, "de", mode="activate", value="p90", stats=plain)
    empty = hist_stats()
    empty.n_tokens[2] = 0
    empty.hist[2] = 0
    with pytest.raises(SteeringError, match="'de' has no counted tokens"):
        interventions(neurons, "de", mode="activate", value="median", stats=empty)
    no_sums = ActivationStats(stats.counts, stats.n_tokens, LANGS, hist=stats.hist,
                              hist_edges=EDGES)
    with pytest.raises(SteeringError, match="--sums"):
        interventions(neurons, "de", mode="activate", value="mean", stats=no_sums)


@pytest.mark.parametrize("impl", ["torch", "cpu"])
def test_activate_median_equals_hook_reference(impl):
    model, neurons, stats = tiny_model(), random_neurons(), hist_stats()
    median_de = stats.median()[2].float()
    expected = reference_logits(model, IDS, [(neurons.mask("de"), "set", median_de)])
    with steer(model, neurons, "de", mode="activate", value="median", stats=stats, impl=impl):
        got = logits(model, IDS)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("impl", ["torch", "cpu"])
def test_scale_one_is_bit_identical_and_zero_is_deactivation(impl):
    model, neurons = tiny_model(), random_neurons()
    plain = logits(model, IDS)
    with steer(model, neurons, ["fr", "de"], mode="scale", factor=1.0, impl=impl):
        one = logits(model, IDS)
    assert torch.equal(one, plain)
    with steer(model, neurons, ["fr", "de"], impl=impl):
        off = logits(model, IDS)
    with steer(model, neurons, ["fr", "de"], mode="scale", factor=0.0, impl=impl):
        zero = logits(model, IDS)
    assert torch.equal(zero, off) and not torch.equal(zero, plain)


@pytest.mark.parametrize("impl", ["torch", "cpu"])
@pytest.mark.parametrize("factor", [2.0, 0.5, -1.0])
def test_scale_equals_hook_reference(impl, factor):
    model, neurons = tiny_model(), random_neurons()
    expected = scaled_reference(model, IDS, neurons.mask("en"), factor)
    with steer(model, neurons, "en", mode="scale", factor=factor, impl=impl):
        got = logits(model, IDS)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(got, logits(model, IDS), atol=1e-5)


@pytest.mark.parametrize("factor, match", [(None, "needs factor"), (float("nan"), "finite"),
                                           (float("inf"), "finite"), ("2", "finite")])
def test_scale_factor_errors(factor, match):
    with pytest.raises(SteeringError, match=match):
        interventions(random_neurons(), "en", mode="scale", factor=factor)
    with pytest.raises(SteeringError, match="factor is for mode 'scale'"):
        interventions(random_neurons(), "en", mode="activate", value=1.0, factor=2.0)


def test_scale_composes_with_set_and_scale_and_refuses_add():
    L, I = 3, 48
    mask = torch.zeros(L, I, dtype=torch.bool)
    mask[1, :4] = True
    full = lambda v: torch.full((L, I), v)  # noqa: E731
    set3, add1 = Intervention(mask, STEER_SET, full(3.0)), Intervention(mask, STEER_ADD, full(1.0))
    x2, x5 = Intervention(mask, STEER_SCALE, full(2.0)), Intervention(mask, STEER_SCALE, full(5.0))
    (table,) = [t for t in steering_groups([[set3, x2], [x2, x5]], L, I) if t is not None]
    mode, value = table
    assert mode[:, 0].tolist() == [STEER_SET, STEER_SCALE]
    assert value[:, 0].tolist() == [6.0, 10.0]
    with pytest.raises(SteeringError, match="cannot add to neurons already scaled"):
        steering_groups([[x2, add1]], L, I)
    with pytest.raises(SteeringError, match="cannot scale neurons already shifted"):
        steering_groups([[add1, x2]], L, I)


def test_handle_accepts_scale_mode():
    model = tiny_model()
    with steer(model, random_neurons(), "en", mode="scale", factor=3.0) as handle:
        mode, value = handle.get_steering(0)
        assert int(mode.max()) == STEER_SCALE and float(value.max()) == 3.0
        with pytest.raises(ValueError, match="3 \\(scale\\)"):
            handle.set_steering(0, torch.full((1, 48), 4, dtype=torch.int8), torch.ones(1, 48))


# ---- the CLI ------------------------------------------------------------------------------
@pytest.fixture
def files(tmp_path):
    neurons = random_neurons()
    neurons.save(tmp_path / "n.json")
    hist_stats().save(tmp_path / "h.safetensors")
    s = hist_stats()
    ActivationStats(s.counts, s.n_tokens, LANGS, s.sums).save(tmp_path / "plain.safetensors")
    return tmp_path


def _fails(capsys, args, match):
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and match in err, err
    return err


@pytest.mark.parametrize("extra, match", [
    (["--scale", "de"], "is not LANG=α"),
    (["--scale", "de=nan"], "is not LANG=α"),
    (["--scale", "de=x"], "is not LANG=α"),
    (["--scale", "xx=2"], "'xx' is not found"),
    (["--scale", "de=2,de=3"], "names de twice"),
    (["--scale", "de=2", "--deactivate", "de"], "given to both --deactivate and --scale"),
    (["--activate", "de", "--value", "p200"], "--value must be mean, median, pQ"),
    (["--activate", "de", "--value", "median"], "--value median needs --stats"),
    (["--activate", "de", "--value", "p90", "--stats", "plain.safetensors"],
     "rescan with --hist"),
])
def test_cli_errors_before_loading(files, capsys, monkeypatch, extra, match):
    from langneuron_ext.models import loading
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    monkeypatch.chdir(files)
    _fails(capsys, ["steer", "--model", "m", "--neurons", "n.json", "--prompt", "Hello",
                    *extra], match)


def test_cli_scale_and_median(tmp_path, capsys, monkeypatch):
    import json

    from test_scan import tiny_llama

    from langneuron_ext.models import loading
    from langneuron_ext.models.toy import byte_tokenizer
    model = tiny_llama()                                  # 2 layers x 48, byte vocabulary
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: (model, byte_tokenizer()))
    neurons = random_neurons(L=2)
    neurons.save(tmp_path / "n.json")
    hist_stats(L=2).save(tmp_path / "h.safetensors")
    args = ["steer", "--model", "m", "--neurons", str(tmp_path / "n.json"), "--prompt", "a",
            "--max-new-tokens", "2", "--json"]
    assert main([*args, "--scale", "de=2,fr=0.5"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["neurons_changed"] == neurons.count("de") + neurons.count("fr")
    assert main([*args, "--activate", "de", "--value", "median", "--stats",
                 str(tmp_path / "h.safetensors")]) == 0
    assert json.loads(capsys.readouterr().out)["neurons_changed"] == neurons.count("de")
