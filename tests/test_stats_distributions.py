"""ActivationStats' histograms, running maximum and percentiles: fields, merge, select, minus,
save/load (older files without them too), and the percentile estimate against torch.quantile."""
import pytest
import torch
from safetensors import safe_open

from langneuron_ext import ActivationStats, StatsError

EDGES = torch.tensor([-0.5, -0.1, 0.0, 0.25, 0.5, 1.0, 2.0, 4.0])


def binned(acts: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """hist [..., B] of acts [..., n] by the op's rule: bin = number of edges <= a."""
    b = torch.bucketize(acts, edges, right=True)
    return torch.nn.functional.one_hot(b, edges.numel() + 1).sum(-2)


def stats_of(acts: torch.Tensor, languages, edges=EDGES, amax=True, model="m"):
    """Stats of activations acts [K, L, I, n] (n tokens per language)."""
    K, L, I, n = acts.shape
    hist = binned(acts, edges).long()
    return ActivationStats((acts > 0).sum(-1), torch.full((K,), n), list(languages),
                           acts.double().sum(-1), model_name=model, model_type="llama",
                           hist=hist, hist_edges=edges.clone(),
                           amax=acts.amax(-1).float() if amax else None)


def random_acts(K=2, L=3, I=4, n=200, seed=0):
    g = torch.Generator().manual_seed(seed)
    # SiLU of a normal: most mass around 0, a long positive tail, a floor near -0.28
    return torch.nn.functional.silu(2 * torch.randn(K, L, I, n, generator=g))


def test_hand_computed_percentiles():
    # bins (-inf, 0), [0, 1), [1, 2), [2, inf): values 0.5 | 1.5 1.5 1.7
    acts = torch.tensor([0.5, 1.5, 1.5, 1.7]).view(1, 1, 1, 4)
    s = stats_of(acts, ["en"], edges=torch.tensor([0.0, 1.0, 2.0]))
    assert s.hist.view(-1).tolist() == [0, 1, 3, 0]
    # median: rank 2.5 falls in [1, 2), the 1.5th of its 3 tokens: 1 + (2.5 - 1 - 0.5) / 3
    assert s.median().item() == pytest.approx(1 + 1 / 3)
    assert s.percentile(0).item() == pytest.approx(0.5)     # middle of [0, 1), one token
    assert s.percentile(100).item() == pytest.approx(1.7)   # the maximum
    s.amax = None
    assert s.percentile(100).item() == pytest.approx(1 + 2.5 / 3)


def test_open_end_bins_give_the_edge():
    below = stats_of(torch.full((1, 1, 1, 5), -3.0), ["en"], amax=False)
    assert below.median().item() == EDGES[0].item()         # true value lies below edges[0]
    above = stats_of(torch.full((1, 1, 1, 5), 9.0), ["en"], amax=False)
    assert above.median().item() == EDGES[-1].item()        # a lower bound without amax
    above_max = stats_of(torch.full((1, 1, 1, 5), 9.0), ["en"])
    assert above_max.median().item() == pytest.approx(9.0, abs=2.6)
    assert EDGES[-1].item() <= above_max.median().item() <= 9.0


def one_bin_bound(acts: torch.Tensor, q: float, edges: torch.Tensor):
    """(torch.quantile of acts [..., n] at q percent, the documented bound: the wider bin
    width of the two order statistics it interpolates between, and where both are closed)."""
    n = acts.shape[-1]
    ordered = acts.double().sort(-1).values
    r = 1 + (n - 1) * q / 100
    lo_j, hi_j = int(r // 1) - 1, min(int(-(-r // 1)), n) - 1          # 0-based floor / ceil
    width = torch.cat([torch.tensor([torch.inf]), edges[1:] - edges[:-1],
                       torch.tensor([torch.inf])]).double()
    bins = [torch.bucketize(ordered[..., j].float(), edges, right=True) for j in (lo_j, hi_j)]
    bound = torch.maximum(width[bins[0]], width[bins[1]])
    closed = torch.isfinite(bound)
    return torch.quantile(acts.double(), q / 100, dim=-1), bound, closed


@pytest.mark.parametrize("q", [0, 5, 25, 50, 75, 90, 99, 100])
def test_percentile_within_one_bin_of_torch_quantile(q):
    acts = random_acts()
    s = stats_of(acts, ["en", "fr"])
    est = s.percentile(q)
    true, bound, closed = one_bin_bound(acts, q, EDGES)
    if q == 100:                                   # the maximum, kept exactly
        assert torch.equal(est, acts.amax(-1).double())
    else:
        assert bool(closed.any())
    assert bool(((est - true).abs()[closed] <= bound[closed] + 1e-9).all())
    assert est.dtype == torch.float64 and est.shape == (2, 3, 4)


def test_percentile_between_two_far_apart_activations():
    """An even count split between two distant values: torch.quantile's median is their
    midpoint, in a bin no activation is in; the estimate interpolates the same way."""
    acts = torch.tensor([0.3] * 5 + [3.0] * 5).view(1, 1, 1, 10)
    s = stats_of(acts, ["en"])
    true, bound, closed = one_bin_bound(acts, 50, EDGES)
    assert abs(s.median().item() - true.item()) <= bound.item()
    assert 0.5 < s.median().item() < 2.0


def test_percentile_is_monotone_and_median_is_p50():
    s = stats_of(random_acts(seed=3), ["en", "fr"])
    qs = [s.percentile(q) for q in (1, 10, 50, 90, 99)]
    for a, b in zip(qs, qs[1:]):
        assert bool((a <= b).all())
    assert torch.equal(s.median(), s.percentile(50))


def test_language_without_tokens_gives_nan():
    s = stats_of(random_acts(K=2), ["en", "fr"])
    s.hist[1] = 0
    s.amax[1] = -torch.inf
    m = s.median()
    assert bool(torch.isnan(m[1]).all()) and not bool(torch.isnan(m[0]).any())


def test_percentile_errors():
    plain = ActivationStats(torch.zeros(1, 2, 3, dtype=torch.int64), torch.tensor([4]), ["en"])
    with pytest.raises(StatsError, match="--hist"):
        plain.median()
    s = stats_of(random_acts(K=1), ["en"])
    for bad in (-1, 101, float("nan"), "50", True):
        with pytest.raises(StatsError, match=r"\[0, 100\]"):
            s.percentile(bad)


def test_invalid_fields_are_refused():
    s = stats_of(random_acts(K=1), ["en"])
    base = dict(counts=s.counts, n_tokens=s.n_tokens, languages=["en"])
    with pytest.raises(StatsError, match="come together"):
        ActivationStats(**base, hist=s.hist)
    with pytest.raises(StatsError, match="strictly increasing"):
        ActivationStats(**base, hist=s.hist, hist_edges=EDGES.flip(0))
    with pytest.raises(StatsError, match="strictly increasing"):
        ActivationStats(**base, hist=s.hist, hist_edges=torch.tensor(
            [0.0, float("nan"), 1, 2, 3, 4, 5, 6]))
    with pytest.raises(StatsError, match="one more bin"):
        ActivationStats(**base, hist=s.hist[..., 1:], hist_edges=EDGES)
    with pytest.raises(StatsError, match="float32"):
        ActivationStats(**base, hist=s.hist, hist_edges=EDGES.double())
    with pytest.raises(StatsError, match="amax"):
        ActivationStats(**base, amax=s.amax[:, :1])


def test_merge_adds_histograms_and_takes_the_max():
    a = stats_of(random_acts(seed=1), ["en", "fr"])
    b = stats_of(random_acts(seed=2), ["fr", "de"])
    m = a.merge(b)
    assert m.languages == ["en", "fr", "de"]
    assert torch.equal(m.hist[0], a.hist[0]) and torch.equal(m.hist[2], b.hist[1])
    assert torch.equal(m.hist[1], a.hist[1] + b.hist[0])
    assert torch.equal(m.amax[1], torch.maximum(a.amax[1], b.amax[0]))
    assert torch.equal(m.amax[2], b.amax[1]) and torch.equal(m.hist_edges, EDGES)
    assert torch.equal(m.hist.sum(-1), m.n_tokens[:, None, None].expand(3, 3, 4))
    # a merged histogram is the histogram of the union of the activations
    both = torch.cat([random_acts(seed=1)[1], random_acts(seed=2)[0]], dim=-1)
    torch.testing.assert_close(m.median()[1], stats_of(both[None], ["fr"]).median()[0])


def test_merge_drops_what_one_side_lacks_and_refuses_other_edges():
    a = stats_of(random_acts(seed=1), ["en", "fr"])
    b = stats_of(random_acts(seed=2), ["en", "fr"], amax=False)
    m = a.merge(b)
    assert m.hist is not None and m.amax is None
    plain = ActivationStats(b.counts, b.n_tokens, b.languages, model_name="m")
    m = a.merge(plain)
    assert m.hist is None and m.hist_edges is None and m.amax is None
    other = stats_of(random_acts(seed=2), ["en", "fr"], edges=EDGES * 2)
    with pytest.raises(StatsError, match="different bin edges"):
        a.merge(other)


def test_select_and_minus():
    s = stats_of(random_acts(K=3), ["en", "fr", "de"])
    t = s.select(["de", "en"])
    assert torch.equal(t.hist[0], s.hist[2]) and torch.equal(t.amax[1], s.amax[0])
    t.hist_edges[0] = -9                                    # a copy, not a view
    assert s.hist_edges[0] == EDGES[0]
    r = s.minus(s.select(["en", "fr", "de"]))
    assert int(r.hist.abs().sum()) == 0 and r.amax is None


def test_save_load_roundtrip(tmp_path):
    s = stats_of(random_acts(), ["en", "fr"])
    path = s.save(tmp_path / "s.safetensors")
    with safe_open(str(path), framework="pt") as f:
        assert {"hist", "hist_edges", "amax"} <= set(f.keys())
        assert f.get_tensor("hist").dtype == torch.int64
    back = ActivationStats.load(path)
    assert torch.equal(back.hist, s.hist) and torch.equal(back.hist_edges, s.hist_edges)
    assert torch.equal(back.amax, s.amax) and torch.equal(back.median(), s.median())
    assert "9-bin histograms" in back.summary()


def test_files_without_histograms_still_load(tmp_path):
    """A file written before histograms existed: the tensors and metadata of format 1 only."""
    from safetensors.torch import save_file
    path = tmp_path / "old.safetensors"
    save_file({"counts": torch.ones(2, 3, 4, dtype=torch.int64),
               "n_tokens": torch.tensor([5, 6])},
              str(path), metadata={"languages": '["en", "fr"]', "format_version": "1",
                                   "model_name": "m", "num_layers": "3",
                                   "intermediate_size": "4"})
    s = ActivationStats.load(path)
    assert s.hist is None and s.hist_edges is None and s.amax is None and s.hist_bins == 0
    assert s.languages == ["en", "fr"]
    with pytest.raises(StatsError, match="rescan with --hist"):
        s.percentile(90)


def test_corrupt_histogram_in_a_file_is_a_clear_error(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "bad.safetensors"
    save_file({"counts": torch.ones(1, 2, 3, dtype=torch.int64), "n_tokens": torch.tensor([5]),
               "hist": torch.ones(1, 2, 3, 4, dtype=torch.int64),
               "hist_edges": torch.tensor([0.0, 1.0])},
              str(path), metadata={"languages": '["en"]'})
    with pytest.raises(StatsError, match="one more bin"):
        ActivationStats.load(path)
