"""Property-based tests: every available implementation of the fused op against the fp32
reference on random and odd inputs (tolerance policy: `langneuron_ext.ops.testing`).

Hypothesis draws the *shape* of a case (sizes, dtype, activation, layout, features, special
values) and a seed; the tensors come from the seeded generator, which keeps examples cheap.
Each backend gets its own example budget: the Triton interpreter is slow.
"""
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from langneuron_ext.ops import testing
from langneuron_ext.ops.reference import ACTIVATIONS

IMPLEMENTATIONS = testing.implementations_under_test("cpu")
# Examples per backend; under the Triton interpreter one example costs ~0.3-1 s.
MAX_EXAMPLES = {"torch": 40, "cpu": 80, "triton": 12}
DEFAULT_EXAMPLES = 30

SIZES = st.one_of(st.integers(1, 300),                       # anything
                  st.sampled_from([1, 2, 3, 7, 31, 33, 63, 65, 127, 129, 255, 257, 300]))
ROWS = st.one_of(st.just(0), st.integers(1, 70))


@st.composite
def cases(draw, impl):
    """Keyword arguments for `testing.make_inputs`, one random case."""
    dtypes = testing.dtypes_for(impl, "cpu")
    steer_groups = draw(st.sampled_from([0, 0, 1, 3]))
    return dict(
        M=draw(ROWS), I=draw(SIZES), K=draw(st.integers(1, 16)),
        dtype=draw(st.sampled_from(dtypes)), act=draw(st.sampled_from(ACTIVATIONS)),
        gated=draw(st.booleans()), layout=draw(st.sampled_from(["contiguous", "gate_up",
                                                                "strided"])),
        counts=draw(st.sampled_from([True, True, False])),
        sums_dtype=draw(st.sampled_from([None, torch.float32, torch.float64])),
        sumsq_dtype=draw(st.sampled_from([None, torch.float32, torch.float64])),
        negative_fraction=draw(st.sampled_from([0.0, 0.3, 1.0])),
        default_lang=draw(st.booleans()) and draw(st.booleans()),
        steer_groups=steer_groups,
        negative_group_fraction=draw(st.sampled_from([0.0, 0.4])) if steer_groups else 0.0,
        default_group=steer_groups > 0 and draw(st.booleans()),
        special_fraction=draw(st.sampled_from([0.0, 0.0, 0.05, 0.5])),
        scale=draw(st.sampled_from([0.01, 1.0, 3.0, 30.0])),
        seed=draw(st.integers(0, 2 ** 31 - 1)),
    )


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_matches_reference_on_random_inputs(impl):
    @settings(max_examples=MAX_EXAMPLES.get(impl, DEFAULT_EXAMPLES), deadline=None,
              suppress_health_check=[HealthCheck.too_slow], derandomize=True)
    @given(case=cases(impl))
    def check(case):
        inputs = testing.make_inputs(**case)
        testing.assert_matches_reference(impl, **inputs)

    check()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_nan_never_counts_and_inf_like_reference(impl, act):
    """Every row NaN/inf-heavy: NaN rows add nothing to counts, inf follows the reference."""
    for dtype in testing.dtypes_for(impl, "cpu"):
        inputs = testing.make_inputs(M=9, I=70, K=3, dtype=dtype, act=act, special_fraction=0.7,
                                     sums_dtype=torch.float64, steer_groups=2, seed=11)
        gate = inputs["gate"]
        gate[0] = float("nan")
        inputs["row_lang"][0] = 0
        testing.assert_matches_reference(impl, **inputs)
        _, out = testing.run_impl(impl, inputs)
        added = out["counts"] - inputs["counts"]
        counted = inputs["row_lang"] >= 0
        expected = ((gate > 0) & counted[:, None]).sum(0)    # NaN > 0 is False
        assert int(added.sum()) == int(expected.sum())


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_empty_batch_changes_nothing(impl):
    for dtype in testing.dtypes_for(impl, "cpu"):
        inputs = testing.make_inputs(M=0, I=129, K=4, dtype=dtype, sums_dtype=torch.float32,
                                     sumsq_dtype=torch.float64, steer_groups=2, seed=12)
        h, out = testing.run_impl(impl, inputs)
        assert h.shape == (0, 129) and h.dtype == dtype
        for name in testing.BUFFERS:
            assert torch.equal(out[name], inputs[name])


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_counts_accumulate_over_calls(impl):
    """Two calls on halves of a batch count the same as the reference on the whole batch."""
    inputs = testing.make_inputs(M=40, I=97, K=5, sums_dtype=torch.float64, seed=13)
    first = dict(inputs, gate=inputs["gate"][:17], up=inputs["up"][:17],
                 row_lang=inputs["row_lang"][:17])
    _, after_first = testing.run_impl(impl, first)
    second = dict(inputs, gate=inputs["gate"][17:], up=inputs["up"][17:],
                  row_lang=inputs["row_lang"][17:], counts=after_first["counts"],
                  sums=after_first["sums"])
    _, after_both = testing.run_impl(impl, second)
    _, whole = testing.reference_fp32(inputs)
    assert torch.equal(after_both["counts"], whole["counts"])
    torch.testing.assert_close(after_both["sums"], whole["sums"], rtol=1e-6, atol=1e-6)
