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
def edge_sets(draw):
    """hist_edges: the defaults, or a random strictly increasing fp32 set that may include
    0.0, subnormals, huge values and edges one ulp apart (ties and bins narrower than the
    exponent-bit buckets of the cpu kernel)."""
    kind = draw(st.sampled_from(["default", "random", "tight"]))
    if kind == "default":
        return ("default", draw(st.sampled_from([8, 16, 32])))
    pool = st.one_of(st.floats(-50, 50, width=32), st.sampled_from(
        [0.0, -0.0, 1e-40, -1e-40, 1e-45, 1e30, -1e30, 0.5, 1.0, 2.0]))
    values = draw(st.lists(pool, min_size=1, max_size=20))
    if kind == "tight":
        base = torch.tensor(draw(st.floats(-2, 2, width=32)))
        values = values + [base.item(), torch.nextafter(base, torch.tensor(9.0)).item(),
                           torch.nextafter(torch.nextafter(base, torch.tensor(9.0)),
                                           torch.tensor(9.0)).item()]
    edges = torch.tensor(values, dtype=torch.float32)
    edges = torch.where(edges == 0, torch.zeros_like(edges), edges)      # -0.0 and 0.0 tie
    return ("custom", torch.unique(edges))


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
        steer_modes=draw(st.sampled_from([3, 4])),
        amax=draw(st.booleans()),
        seed=draw(st.integers(0, 2 ** 31 - 1)),
    ) | _hist_kwargs(draw(st.one_of(st.none(), edge_sets())))


def _hist_kwargs(edges):
    if edges is None:
        return {}
    kind, value = edges
    return {"hist_bins": value} if kind == "default" else {"hist_edges": value}


# Implementations whose fp32 activations are torch's own bit for bit: their histogram bins must
# be exact; the others' may move a row within e(x) of an edge (ops/testing.py).
EXACT_ACTIVATIONS = ("torch", "cpu")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_matches_reference_on_random_inputs(impl):
    @settings(max_examples=MAX_EXAMPLES.get(impl, DEFAULT_EXAMPLES), deadline=None,
              suppress_health_check=[HealthCheck.too_slow], derandomize=True)
    @given(case=cases(impl))
    def check(case):
        inputs = testing.make_inputs(**case)
        testing.assert_matches_reference(impl, hist_exact=impl in EXACT_ACTIVATIONS, **inputs)

    check()


SPECIAL = [0.0, -0.0, 1e-45, -1e-45, 1e-40, -1e-40, 1.1754942e-38, float("inf"),
           float("-inf"), float("nan"), 0.5, 1.0, 2.0, -1.0, 3e38]


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_hist_and_amax_on_edges_ties_signed_zeros_subnormals_and_non_finite(impl):
    """relu(x) = x for x >= 0, so gate values equal to the edges (and one ulp either side) put
    activations exactly on the edges: every implementation bins ties the same (bin above)."""
    edges = torch.tensor([-1.0, 0.0, 1e-40, 0.5, 1.0, 2.0])
    on = torch.cat([edges, torch.nextafter(edges, torch.tensor(-9.0)),
                    torch.nextafter(edges, torch.tensor(9.0)), torch.tensor(SPECIAL)])
    M = on.numel()
    for dtype in testing.dtypes_for(impl, "cpu"):
        if impl == "triton" and dtype == torch.bfloat16:
            continue    # the CPU interpreter converts bf16 subnormals to 0 (a GPU does not)
        gate = on.repeat(3, 1).T.contiguous().to(dtype)            # [M, 3]
        inputs = dict(gate=gate, up=None, act="relu",
                      row_lang=torch.arange(M, dtype=torch.int32) % 2,
                      counts=torch.zeros(2, 3, dtype=torch.int64), sums=None, sumsq=None,
                      row_group=None, steer_mode=None, steer_value=None,
                      hist=torch.zeros(2, 3, 7, dtype=torch.int64), hist_edges=edges,
                      amax=torch.full((2, 3), float("-inf")))
        testing.assert_matches_reference(impl, hist_exact=True, **inputs)


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
                                     sumsq_dtype=torch.float64, steer_groups=2, hist_bins=8,
                                     amax=True, seed=12)
        h, out = testing.run_impl(impl, inputs)
        assert h.shape == (0, 129) and h.dtype == dtype
        for name in testing.BUFFERS:
            if inputs[name] is not None:
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
