"""The op-v2 semantics: histograms, running maxima and steering mode 3 (scale) as defined in
`ops/reference.py`, the default edges, and the argument checks (one error naming the argument,
nothing written)."""
import math
import warnings

import pytest
import torch

from langneuron_ext import ops
from langneuron_ext.ops import testing
from langneuron_ext.ops.reference import STEER_SCALE, hist_bin

INF, NAN = math.inf, math.nan


def test_default_edges_are_one_definition_with_zero_and_log_spaced_positive_edges():
    edges = ops.default_hist_edges()
    assert edges.dtype == torch.float32 and edges.shape == (31,)
    assert bool((edges[1:] > edges[:-1]).all())
    zero = int((edges == 0).nonzero())
    assert 1 <= zero <= 5 and bool((edges[:zero] < 0).all())
    ratios = (edges[zero + 2:].double() / edges[zero + 1:-1].double())
    torch.testing.assert_close(ratios, torch.full_like(ratios, ratios[0].item()), rtol=1e-6,
                               atol=0)
    assert ops.default_hist_edges(8).shape == (7,)
    with pytest.raises(ValueError, match="bins must be an integer"):
        ops.default_hist_edges(3)


def test_binning_rule_edges_ties_signed_zero_subnormals_and_non_finite():
    edges = torch.tensor([-1.0, 0.0, 2.0])
    tiny = torch.finfo(torch.float32).smallest_normal / 4          # a subnormal
    a = torch.tensor([-INF, -1.5, -1.0, -tiny, -0.0, 0.0, tiny, 1.0, 2.0, 3.0, INF, NAN])
    assert hist_bin(a, edges).tolist() == [0, 0, 1, 1, 2, 2, 2, 2, 3, 3, 3, -1]


def test_reference_hist_amax_and_scale_on_a_hand_made_case():
    # relu: a = max(gate, 0); rows 0, 1 language 0; row 2 language 1; row 3 not counted.
    gate = torch.tensor([[1.0, -2.0], [3.0, NAN], [0.5, 4.0], [9.0, 9.0]])
    row_lang = torch.tensor([0, 0, 1, -1], dtype=torch.int32)
    edges = torch.tensor([0.0, 2.0])
    hist = torch.zeros(2, 2, 3, dtype=torch.int64)
    amax = torch.full((2, 2), -INF)
    mode = torch.tensor([[STEER_SCALE, 0]], dtype=torch.int8)
    value = torch.tensor([[2.5, 7.0]])
    h = ops.act_stats(gate, None, act="relu", row_lang=row_lang, hist=hist, hist_edges=edges,
                      amax=amax, steer_mode=mode, steer_value=value, impl="torch")
    assert hist.tolist() == [[[0, 1, 1], [0, 1, 0]], [[0, 1, 0], [0, 0, 1]]]
    assert amax.tolist() == [[3.0, 0.0], [0.5, 4.0]]
    assert h[:, 0].tolist() == [2.5, 7.5, 1.25, 22.5]           # every row scaled, stats not
    assert h[0, 1].item() == 0.0 and math.isnan(h[1, 1].item())


def test_hist_mass_at_and_above_zero_less_exact_zeros_equals_counts():
    inputs = testing.make_inputs(M=40, I=30, K=3, act="relu", hist_bins=32, seed=1)
    zero = int((inputs["hist_edges"] == 0).nonzero())
    hist0, counts0 = inputs["hist"].clone(), inputs["counts"].clone()
    ops.act_stats(**{k: inputs[k] for k in testing.OP_ARGS}, impl="torch")
    lang, a, _ = testing.counted_rows(inputs)
    zeros = torch.zeros_like(counts0).index_add_(0, lang, (a == 0).long())
    added = inputs["hist"] - hist0
    assert torch.equal(added[..., zero:].sum(-1) - zeros, inputs["counts"] - counts0)
    assert int(zeros.sum()) > 0


def _call(**overrides):
    inputs = testing.make_inputs(M=8, I=6, K=2, hist_bins=8, amax=True, steer_groups=1,
                                 steer_modes=4, seed=2)
    inputs.update(overrides)
    return inputs, {k: inputs[k] for k in testing.OP_ARGS}


BAD = {
    "edges not increasing": (dict(hist_edges=torch.tensor([0.0, 1.0, 1.0, 2.0, 3.0, 4.0,
                                                           5.0])), "hist_edges", ValueError),
    "edges with inf": (dict(hist_edges=torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, INF])),
                       "hist_edges must be finite", ValueError),
    "edges float64": (dict(hist_edges=ops.default_hist_edges(8).double()), "hist_edges",
                      ValueError),
    "hist wrong bins": (dict(hist=torch.zeros(2, 6, 7, dtype=torch.int64)), r"hist must have "
                        r"shape \[K, 6, 8\]", ValueError),
    "hist int32": (dict(hist=torch.zeros(2, 6, 8, dtype=torch.int32)), "hist must have dtype",
                   TypeError),
    "hist on meta": (dict(hist=torch.zeros(2, 6, 8, dtype=torch.int64, device="meta")),
                     "hist is on meta", ValueError),
    "hist without edges": (dict(hist_edges=None), "hist and hist_edges", ValueError),
    "hist other K": (dict(hist=torch.zeros(3, 6, 8, dtype=torch.int64)), "language slots",
                     ValueError),
    "amax float64": (dict(amax=torch.zeros(2, 6, dtype=torch.float64)), "amax must have dtype",
                     TypeError),
    "amax wrong shape": (dict(amax=torch.zeros(2, 5)), r"amax must have shape", ValueError),
    "NaN scale factor": (dict(steer_value=torch.full((1, 6), NAN)), "NaN scale factor",
                         ValueError),
    "unknown steer mode": (dict(steer_mode=torch.full((1, 6), 4, dtype=torch.int8)),
                           "steer_mode holds", ValueError),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_bad_arguments_raise_one_error_naming_the_argument_and_write_nothing(case):
    overrides, message, error = BAD[case]
    inputs, kwargs = _call(**overrides)
    if case == "NaN scale factor":
        kwargs["steer_mode"] = torch.full((1, 6), STEER_SCALE, dtype=torch.int8)
    before = {k: kwargs[k].clone() for k in testing.BUFFERS
              if kwargs[k] is not None and kwargs[k].device.type != "meta"}
    with pytest.raises(error, match=message):
        ops.act_stats(**kwargs)
    for name, value in before.items():
        assert torch.equal(kwargs[name], value), f"{name} was written"


def test_nan_set_and_add_values_stay_allowed_only_scale_is_refused():
    _, kwargs = _call(steer_value=torch.full((1, 6), NAN),
                      steer_mode=torch.full((1, 6), 1, dtype=torch.int8))
    h = ops.act_stats(**kwargs, impl="torch")
    assert bool(h.isnan().all())


@pytest.mark.parametrize("feature", ["hist", "amax", "scale"])
def test_an_implementation_lacking_a_feature_says_why_and_falls_back(feature, monkeypatch):
    """An implementation registered without a feature is never given a call that needs it:
    dispatch names the missing part and runs the next implementation that has it."""
    from langneuron_ext.ops import dispatch
    monkeypatch.setenv("LANGNEURON_SELFCHECK", "0")     # count only the calls made here
    calls = []

    def partial(*args):
        calls.append(args)
        return ops.act_stats_torch(*args)

    impl = dispatch.Implementation("partial_impl", -5, partial, lambda: (True, ""),
                                   lambda device, dtype: device == "cpu",
                                   features=tuple(f for f in ("hist", "amax", "scale")
                                                  if f != feature))
    with dispatch.registered(impl):
        inputs, kwargs = _call()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ops.act_stats(**kwargs, impl="partial_impl")
        assert not calls
        assert any("not implemented in partial_impl" in str(w.message) for w in caught)
        _, plain = _call(hist=None, hist_edges=None, amax=None, steer_mode=None,
                         steer_value=None, row_group=None)
        ops.act_stats(**plain, impl="partial_impl")
        assert len(calls) == 1
        reasons = impl.not_supported_reasons("cpu", torch.float32,
                                             ops.args.ActArgs.validate(**kwargs))
        assert any(feature in r or "scale" in r for r in reasons)
