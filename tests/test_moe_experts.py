"""Routed-conditional identification (`given="routed"`), language experts, their plots and the
`langneuron identify --given / --experts` flags, on a tiny random MoE model's scan."""
from __future__ import annotations

import json

import pytest
import torch
from test_moe_routing import byte_moe
from test_scan import OPTS, tiny_llama, write_corpus

from langneuron_ext.cli import main
from langneuron_ext.identify import IdentifyError, lape, ternary
from langneuron_ext.identify.experts import LanguageExperts, experts
from langneuron_ext.identify.lape import activation_probabilities
from langneuron_ext.models.toy import byte_tokenizer
from langneuron_ext.routing_stats import routed_denominators, routed_share
from langneuron_ext.scan import scan
from langneuron_ext.stats import ActivationStats, StatsError


@pytest.fixture(scope="module")
def moe_stats(tmp_path_factory):
    root = tmp_path_factory.mktemp("moe_stats")
    corpus = write_corpus(root)
    stats = scan(byte_moe("qwen2_moe"), byte_tokenizer(), corpus, progress=False, impl="torch",
                 **OPTS)
    return stats, stats.save(root / "moe.safetensors")


@pytest.fixture(scope="module")
def dense_stats(tmp_path_factory):
    root = tmp_path_factory.mktemp("dense_stats")
    stats = scan(tiny_llama(), byte_tokenizer(), write_corpus(root), progress=False,
                 impl="torch", **OPTS)
    return stats, stats.save(root / "dense.safetensors")


# ---- given="routed" ---------------------------------------------------------------------------
def test_routed_probabilities_are_counts_over_routed_tokens(moe_stats):
    stats, _ = moe_stats
    P = activation_probabilities(stats, "routed")                    # [L, I, K] float32
    direct = torch.zeros_like(P)
    E, W = 4, 16
    for k in range(stats.num_languages):
        for layer in range(stats.num_layers):
            for i in range(stats.intermediate_size):
                if layer == 1 and i < E * W:           # a routed expert's neuron
                    denominator = int(stats.routed[k, 1, i // W])
                else:                                  # dense layer 0, shared expert, padding
                    denominator = int(stats.n_tokens[k])
                c = torch.tensor(float(stats.counts[k, layer, i]), dtype=torch.float32)
                direct[layer, i, k] = c / max(denominator, 1)
    assert torch.equal(P, direct)
    assert torch.equal(activation_probabilities(stats), activation_probabilities(stats, "token"))
    assert not torch.equal(P, activation_probabilities(stats))
    assert torch.equal(routed_denominators(stats)[:, 0], stats.n_tokens.double()[:, None]
                       .expand(-1, stats.intermediate_size))


@pytest.mark.parametrize("method", [lape, ternary])
def test_default_is_unchanged_and_routed_differs(moe_stats, method):
    stats, _ = moe_stats
    default = method(stats, top_rate=0.1)
    token = method(stats, top_rate=0.1, given="token")
    routed = method(stats, top_rate=0.1, given="routed")
    assert default.to_dict() == token.to_dict()
    assert "given" not in default.params and routed.params["given"] == "routed"
    assert default.to_dict()["neurons"] != routed.to_dict()["neurons"]
    with pytest.raises(IdentifyError, match="given must be"):
        method(stats, given="expert")


@pytest.mark.parametrize("method", [lape, ternary])
def test_a_dense_model_given_routed_is_one_clear_error(dense_stats, method):
    stats, _ = dense_stats
    with pytest.raises(StatsError) as err:
        method(stats, given="routed")
    assert "no experts" in str(err.value) and "\n" not in str(err.value)


# ---- language experts -------------------------------------------------------------------------
def _direct_lape_over_experts(stats, top_rate, filter_rate, bar_ratio):
    """LAPE by hand over the routed experts of layer 1 (layer 0 is dense)."""
    P = (stats.routed[:, 1].T.float() / stats.n_tokens.float())              # [E, K]
    normed = P / P.sum(dim=1, keepdim=True)
    H = -(normed * torch.where(normed > 0, normed.log(), 0)).sum(dim=1)
    flat = P.flatten()
    q = flat.kthvalue(round(filter_rate * flat.numel())).values
    H[(P > q).sum(dim=1) == 0] = torch.inf
    chosen = H.topk(round(top_rate * P.shape[0]), largest=False).indices
    bar = flat.kthvalue(round(bar_ratio * flat.numel())).values
    mask = torch.zeros(P.shape[1], P.shape[0], dtype=torch.bool)
    for e in chosen.tolist():
        mask[:, e] = P[e] > bar
    return mask


def test_language_experts_are_lape_over_routing(moe_stats, tmp_path):
    stats, _ = moe_stats
    found = experts(stats, top_rate=0.5, filter_rate=0.5, activation_bar_ratio=0.5)
    assert found.mask.shape == (3, 2, 4)
    assert not found.mask[:, 0].any(), "layer 0 is dense: no experts"
    assert torch.equal(found.mask[:, 1], _direct_lape_over_experts(stats, 0.5, 0.5, 0.5))
    assert bool(found.mask.any())
    assert torch.isnan(found.entropy[0]).all() and torch.isnan(found.divergence[:, 0]).all()
    assert found.reference == "en"
    assert torch.equal(found.divergence[0, 1:], torch.zeros(1, dtype=torch.float64))
    assert torch.equal(found.probability, routed_share(stats))
    for lang in found.languages:
        assert sum(len(v) for v in found.experts(lang).values()) == found.count(lang)
    back = LanguageExperts.load(found.save(tmp_path / "experts.json"))
    assert torch.equal(back.mask, found.mask) and back.params == found.params
    torch.testing.assert_close(back.divergence, found.divergence, equal_nan=True)
    assert torch.equal(found.block_mask(["en", "fr"]),
                       found.mask[0] | found.mask[1])
    with pytest.raises(IdentifyError, match="'xx'"):
        found.experts("xx")


def test_language_experts_of_a_dense_model_is_one_clear_error(dense_stats):
    stats, _ = dense_stats
    with pytest.raises(IdentifyError) as err:
        experts(stats)
    assert "dense model" in str(err.value) and "\n" not in str(err.value)


def test_plots(moe_stats, tmp_path):
    from langneuron_ext.report.experts import (
        default_layers,
        plot_routed_share,
        plot_routing_divergence,
    )
    stats, _ = moe_stats
    found = experts(stats, top_rate=0.5, filter_rate=0.5, activation_bar_ratio=0.5)
    assert default_layers(found) == [1]
    for path in (plot_routing_divergence(found, tmp_path / "d.png"),
                 plot_routed_share(found, tmp_path / "s.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---- the CLI ----------------------------------------------------------------------------------
def test_cli_given_routed(moe_stats, tmp_path, capsys):
    _, path = moe_stats
    out = tmp_path / "n.json"
    assert main(["identify", str(path), "--method", "lape", "--top-rate", "0.1",
                 "--given", "routed", "--out", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["params"]["given"] == "routed"
    expected = lape(ActivationStats.load(path), top_rate=0.1, given="routed")
    assert json.loads(out.read_text())["neurons"] == expected.to_dict()["neurons"]
    assert main(["identify", str(path), "--method", "ternary", "--given", "nope",
                 "--out", str(out)]) == 2
    assert "--given must be 'token' or 'routed'" in capsys.readouterr().err


def test_cli_experts(moe_stats, tmp_path, capsys):
    _, path = moe_stats
    out = tmp_path / "experts.json"
    assert main(["identify", str(path), "--experts", "--top-rate", "0.5", "--filter-rate",
                 "0.5", "--bar-ratio", "0.5", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "language experts" in printed and "routing divergence from en" in printed
    found = LanguageExperts.load(out)
    expected = experts(ActivationStats.load(path), 0.5, 0.5, 0.5)
    assert torch.equal(found.mask, expected.mask)
    assert (tmp_path / "experts.divergence.png").exists()
    assert (tmp_path / "experts.routed-share.png").exists()
    for bad, message in (([" --lambda", "0.1"], "--lambda applies to --method only"),
                         (["--method", "lape"], "drop --method")):
        bad = [b.strip() for b in bad]
        assert main(["identify", str(path), "--experts", *bad, "--out", str(out)]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--experts"], ["--method", "lape", "--given", "routed"]])
def test_cli_dense_model_is_one_line(dense_stats, tmp_path, capsys, flags):
    _, path = dense_stats
    out = tmp_path / "x.json"
    assert main(["identify", str(path), *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "dense model" in err and err.startswith("langneuron identify:")
    assert not out.exists()


def test_cli_needs_method_or_experts(moe_stats, tmp_path, capsys):
    _, path = moe_stats
    assert main(["identify", str(path), "--out", str(tmp_path / "x.json")]) == 2
    assert "give --method" in capsys.readouterr().err
