"""The torch reference of the fused op against an independent per-row Python loop, and the
validation of the public `ln.ops.act_stats` entry point."""
import math

import pytest
import torch

import langneuron_ext as ln
from langneuron_ext.ops import testing
from langneuron_ext.ops.reference import ACTIVATIONS, act_stats_torch, activation_fp32

INF, NAN = float("inf"), float("nan")


# ---------------------------------------------------------------- the obviously-correct loop
def scalar_act(x: float, act: str) -> float:
    """The activation of one Python float, from the textbook formulas."""
    if act == "silu":
        return x * 0.5 * (1.0 + math.tanh(x / 2.0))          # x * sigmoid(x)
    if act == "gelu":
        return 0.5 * x * (1.0 + math.erf(x / math.sqrt(2.0)))
    if act == "gelu_tanh":
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3) if math.isfinite(x) else x
        return 0.5 * x * (1.0 + math.tanh(inner))
    if act == "relu":
        return x if (x > 0 or x != x) else 0.0
    raise ValueError(act)


def loop_act_stats(gate, up, act, row_lang, counts, sums, sumsq, row_group, steer_mode,
                   steer_value, hist=None, hist_edges=None, amax=None):
    """Row by row, neuron by neuron, exactly as docs/design.md words it. Returns h as float64.
    The histogram bin is the number of edges <= the fp32 activation (the same fp32 value the
    reference bins, so the rule and the indexing are what is tested, not the rounding)."""
    M, I = gate.shape
    h = torch.empty(M, I, dtype=torch.float64)
    a32 = activation_fp32(gate, act).tolist()
    edges = hist_edges.tolist() if hist_edges is not None else []
    for m in range(M):
        lang = 0 if row_lang is None else int(row_lang[m])
        group = 0 if row_group is None else int(row_group[m])
        for i in range(I):
            a = scalar_act(float(gate[m, i]), act)
            if lang >= 0:
                if counts is not None and a > 0:
                    counts[lang, i] += 1
                if sums is not None:
                    sums[lang, i] += a
                if sumsq is not None:
                    sumsq[lang, i] += a * a
                v = a32[m][i]
                if hist is not None and v == v:
                    hist[lang, i, sum(1 for e in edges if e <= v)] += 1
                if amax is not None and v > amax[lang, i]:
                    amax[lang, i] = v
            if steer_mode is not None and group >= 0:
                mode = int(steer_mode[group, i])
                if mode == 1:
                    a = float(steer_value[group, i])
                elif mode == 2:
                    a = a + float(steer_value[group, i])
                elif mode == 3:
                    a = a * float(steer_value[group, i])
            h[m, i] = a * float(up[m, i]) if up is not None else a
    return h


def check_against_loop(**inputs):
    """Reference (through the public API, impl="torch") vs the loop on the same inputs."""
    loop_bufs = testing.clone_inputs(inputs)
    for name in ("sums", "sumsq"):
        if loop_bufs[name] is not None:
            loop_bufs[name] = loop_bufs[name].double()
    expected_h = loop_act_stats(**loop_bufs)
    args = testing.clone_inputs(inputs)
    h = ln.ops.act_stats(args["gate"], args["up"], act=args["act"], row_lang=args["row_lang"],
                         counts=args["counts"], sums=args["sums"], sumsq=args["sumsq"],
                         row_group=args["row_group"], steer_mode=args["steer_mode"],
                         steer_value=args["steer_value"], hist=args["hist"],
                         hist_edges=args["hist_edges"], amax=args["amax"], impl="torch")
    assert h.dtype == inputs["gate"].dtype and h.shape == inputs["gate"].shape
    for name in ("counts", "hist", "amax"):
        if inputs[name] is not None:
            assert torch.equal(args[name], loop_bufs[name]), name
    # The loop is exact (float64), so the reference must be within the documented policy of it.
    expected = torch.where(expected_h.to(h.dtype).isfinite(), expected_h,
                           expected_h.to(h.dtype).double())
    testing.assert_close_nonfinite(h, expected, testing.h_error_bound(inputs, expected_h), "h")
    bounds = testing.stats_error_bounds(inputs)
    for name in ("sums", "sumsq"):
        if inputs[name] is not None:
            testing.assert_close_nonfinite(args[name], loop_bufs[name], bounds[name], name)
    return h, args


# ---------------------------------------------------------------- features
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
def test_counts_sums_per_language(act, gated):
    inputs = testing.make_inputs(M=11, I=9, K=4, act=act, gated=gated, negative_fraction=0.3,
                                 sums_dtype=torch.float64, sumsq_dtype=torch.float32, seed=1,
                                 hist_bins=12, amax=True)
    assert (inputs["row_lang"] < 0).any() and (inputs["row_lang"] >= 0).any()
    check_against_loop(**inputs)


def test_negative_rows_are_not_counted_at_all():
    inputs = testing.make_inputs(M=6, I=5, K=2, sums_dtype=torch.float64, seed=2)
    inputs["row_lang"][:] = -1
    h, out = check_against_loop(**inputs)
    assert torch.equal(out["counts"], inputs["counts"])
    assert torch.equal(out["sums"], inputs["sums"])


def test_default_language_is_slot_zero():
    inputs = testing.make_inputs(M=7, I=6, K=2, default_lang=True, seed=3)
    _, out = check_against_loop(**inputs)
    assert torch.equal(out["counts"][1], inputs["counts"][1])
    added = out["counts"][0] - inputs["counts"][0]
    assert torch.equal(added, (inputs["gate"] > 0).sum(0))


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_steering_keep_set_add_scale_per_group_counts_unsteered(act):
    inputs = testing.make_inputs(M=12, I=8, K=3, act=act, steer_groups=3, steer_modes=4,
                                 negative_group_fraction=0.25, sums_dtype=torch.float64, seed=4,
                                 hist_bins=10, amax=True)
    assert set(inputs["steer_mode"].unique().tolist()) == {0, 1, 2, 3}
    assert (inputs["row_group"] < 0).any()
    h, out = check_against_loop(**inputs)
    unsteered = testing.clone_inputs(inputs)
    unsteered.update(row_group=None, steer_mode=None, steer_value=None)
    _, plain = testing.run_impl("torch", unsteered)
    assert torch.equal(out["counts"], plain["counts"])     # counting ignores steering
    assert torch.equal(out["sums"], plain["sums"])


def test_deactivation_zeroes_exactly_the_masked_neurons():
    inputs = testing.make_inputs(M=5, I=6, K=1, steer_groups=1, default_group=True, seed=5)
    inputs["steer_mode"].zero_()
    inputs["steer_mode"][0, [1, 4]] = 1
    inputs["steer_value"].zero_()
    h, _ = check_against_loop(**inputs)
    assert (h[:, [1, 4]] == 0).all()
    assert (h[:, [0, 2, 3, 5]] != 0).all()


@pytest.mark.parametrize("layout", ["gate_up", "strided"])
def test_strided_views_equal_contiguous_copies(layout):
    inputs = testing.make_inputs(M=6, I=7, K=2, layout=layout, sums_dtype=torch.float32, seed=6)
    assert not inputs["gate"].is_contiguous()
    h, out = check_against_loop(**inputs)
    copies = dict(inputs, gate=inputs["gate"].contiguous(), up=inputs["up"].contiguous())
    h2, out2 = testing.run_impl("torch", copies)
    assert torch.equal(out["counts"], out2["counts"])
    torch.testing.assert_close(h, h2)   # vectorised vs strided loops may differ in the last ulp


def test_empty_batch_returns_empty_and_changes_nothing():
    inputs = testing.make_inputs(M=0, I=5, K=2, sums_dtype=torch.float64, steer_groups=1, seed=7)
    h, out = check_against_loop(**inputs)
    assert h.shape == (0, 5)
    assert torch.equal(out["counts"], inputs["counts"])
    assert torch.equal(out["sums"], inputs["sums"])


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_nan_never_counts_and_inf_follows_the_formulas(act):
    gate = torch.tensor([[NAN, INF, -INF, 1.0, -1.0, 0.0]])
    up = torch.tensor([[1.0, 1.0, 1.0, NAN, INF, 2.0]])
    counts = torch.zeros(1, 6, dtype=torch.int64)
    inputs = dict(gate=gate, up=up, act=act, row_lang=torch.zeros(1, dtype=torch.int32),
                  counts=counts, sums=torch.zeros(1, 6, dtype=torch.float64), sumsq=None,
                  row_group=None, steer_mode=None, steer_value=None,
                  hist=torch.zeros(1, 6, 3, dtype=torch.int64),
                  hist_edges=torch.tensor([0.0, 1.0]), amax=torch.full((1, 6), -INF))
    h, out = check_against_loop(**inputs)
    assert out["counts"].tolist() == [[0, 1, 0, 1, 0, 0]]
    a = activation_fp32(gate, act)
    assert torch.equal(out["hist"].sum(-1), (~a.isnan()).long())      # NaN nowhere
    assert out["hist"][0, 1, 2] == 1                                  # +inf in the last bin
    assert out["amax"][0, 1] == INF and out["amax"][0, 0] == -INF     # NaN ignored
    assert h[0, 1] == INF and h[0, 0].isnan() and h[0, 3].isnan()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_give_output_in_their_dtype(dtype):
    inputs = testing.make_inputs(M=5, I=9, K=2, dtype=dtype, sums_dtype=torch.float32, seed=8)
    h, _ = check_against_loop(**inputs)
    assert h.dtype == dtype


def test_leading_dimensions_are_flattened_to_rows():
    gate, up = torch.randn(2, 3, 5), torch.randn(2, 3, 5)
    row_lang = torch.tensor([[0, 1, -1], [1, 1, 0]], dtype=torch.int32)
    counts = torch.zeros(2, 5, dtype=torch.int64)
    h = ln.ops.act_stats(gate, up, row_lang=row_lang, counts=counts, impl="torch")
    assert h.shape == (2, 3, 5)
    expected_counts = torch.zeros(2, 5, dtype=torch.int64)
    expected_h = act_stats_torch(gate.reshape(6, 5), up.reshape(6, 5), "silu",
                                 row_lang.reshape(6), expected_counts, None, None, None, None,
                                 None)
    assert torch.equal(counts, expected_counts)
    assert torch.equal(h.reshape(6, 5), expected_h)


# ---------------------------------------------------------------- validation
def _good_args():
    return dict(gate=torch.randn(4, 6), up=torch.randn(4, 6),
                row_lang=torch.tensor([0, 1, -1, 1], dtype=torch.int32),
                counts=torch.zeros(2, 6, dtype=torch.int64),
                sums=torch.zeros(2, 6, dtype=torch.float64),
                row_group=torch.tensor([0, 0, 1, -1], dtype=torch.int32),
                steer_mode=torch.zeros(2, 6, dtype=torch.int8),
                steer_value=torch.zeros(2, 6))


BAD_INPUTS = {
    "unknown activation": (dict(act="swish"), ValueError, "unknown activation"),
    "integer gate": (dict(gate=torch.ones(4, 6, dtype=torch.int32)), TypeError, "float32"),
    "up shape": (dict(up=torch.randn(4, 5)), ValueError, "up has shape"),
    "up dtype": (dict(up=torch.randn(4, 6, dtype=torch.float64)), TypeError, "same dtype"),
    "counts shape": (dict(counts=torch.zeros(2, 5, dtype=torch.int64)), ValueError,
                     "counts must have shape"),
    "counts dtype": (dict(counts=torch.zeros(2, 6, dtype=torch.int32)), TypeError,
                     "counts must have dtype"),
    "sums dtype": (dict(sums=torch.zeros(2, 6, dtype=torch.float16)), TypeError,
                   "sums must have dtype"),
    "K mismatch": (dict(sums=torch.zeros(3, 6, dtype=torch.float64)), ValueError,
                   "language slots"),
    "counts not contiguous": (dict(counts=torch.zeros(6, 2, dtype=torch.int64).t()),
                              ValueError, "contiguous"),
    "row_lang id >= K": (dict(row_lang=torch.tensor([0, 2, 0, 0], dtype=torch.int32)),
                         ValueError, "only 2 slots"),
    "row_lang length": (dict(row_lang=torch.zeros(3, dtype=torch.int32)), ValueError,
                        "row_lang has 3 entries"),
    "row_lang dtype": (dict(row_lang=torch.zeros(4, dtype=torch.int64)), TypeError,
                       "row_lang must be int32"),
    "steer_mode without value": (dict(steer_value=None), ValueError, "together"),
    "steer_value without mode": (dict(steer_mode=None), ValueError, "together"),
    "steer_mode dtype": (dict(steer_mode=torch.zeros(2, 6, dtype=torch.int32)), ValueError,
                         "steer_mode must be int8"),
    "steer_value shape": (dict(steer_value=torch.zeros(1, 6)), ValueError, "steer_value"),
    "row_group >= G": (dict(row_group=torch.tensor([0, 2, 0, 0], dtype=torch.int32)),
                       ValueError, "only 2 groups"),
    "row_group without steering": (dict(steer_mode=None, steer_value=None), ValueError,
                                   "row_group given without"),
    "unknown impl": (dict(impl="fortran"), ValueError, "unknown implementation"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS), ids=list(BAD_INPUTS))
def test_bad_input_raises_clearly_and_mutates_nothing(case):
    change, error, fragment = BAD_INPUTS[case]
    args = _good_args()
    ln.ops.act_stats(**testing.clone_inputs(args), impl="torch")   # the good call works
    args.update(change)
    before = {k: v.clone() for k, v in args.items() if isinstance(v, torch.Tensor)}
    args.setdefault("impl", "torch")
    with pytest.raises(error, match=fragment):
        ln.ops.act_stats(**args)
    for name, value in before.items():
        assert torch.equal(args[name], value), f"{name} was modified by a failing call"
