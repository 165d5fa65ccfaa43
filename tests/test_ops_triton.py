"""The Triton element-wise kernel against the torch reference.

Without a GPU these run under the Triton interpreter on CPU tensors (tests/conftest.py sets
TRITON_INTERPRET=1). The interpreter is slow, so shapes are small but deliberately not multiples
of the tile (the default interpreter tile is 32 x 64; some tests force 16 x 16): M = 70 spans
three row tiles, I = 100 two neuron tiles, both with ragged edges. Counts are compared bit for
bit, h and sums with the tolerance policy of `ops.testing`.
"""
import pytest
import torch

import langneuron_ext as ln
from langneuron_ext.ops import dispatch, testing
from langneuron_ext.ops.reference import act_stats_torch
from langneuron_ext.ops.triton_common import INTERPRET, triton_available

pytestmark = pytest.mark.skipif(not triton_available()[0], reason=triton_available()[1])

DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"
ACTS = ("silu", "gelu", "gelu_tanh", "relu")


def check(**kwargs):
    """make_inputs(**kwargs) on DEVICE, then the triton implementation vs the reference."""
    kwargs.setdefault("device", DEVICE)
    inputs = testing.make_inputs(**kwargs)
    return testing.assert_matches_reference("triton", **inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("act", ACTS)
def test_activations_with_all_statistics(act, dtype):
    check(M=70, I=100, K=3, dtype=dtype, act=act, sums_dtype=torch.float64,
          sumsq_dtype=torch.float32, negative_fraction=0.25, seed=1)


def test_bfloat16_loosely():
    check(M=33, I=70, K=2, dtype=torch.bfloat16, act="silu", sums_dtype=torch.float32, seed=2)


@pytest.mark.parametrize("layout,gated", [("gate_up", True), ("strided", True),
                                          ("strided", False), ("contiguous", False)])
def test_layouts_and_plain_mlps(layout, gated):
    check(M=45, I=77, K=2, act="gelu_tanh", gated=gated, layout=layout,
          sums_dtype=torch.float32, seed=3)


@pytest.mark.parametrize("K", [1, 2, 3, 4, 5])
def test_number_of_languages(K):
    check(M=70, I=40, K=K, act="silu", negative_fraction=0.3, seed=10 + K)


def test_default_language_slot():
    check(M=19, I=33, K=1, act="relu", default_lang=True, sums_dtype=torch.float64)


@pytest.mark.parametrize("default_group,negative_group_fraction", [(False, 0.3), (True, 0.0)])
def test_steering_modes(default_group, negative_group_fraction):
    inputs = testing.make_inputs(M=50, I=65, K=3, act="gelu", steer_groups=3,
                                 default_group=default_group, sums_dtype=torch.float64,
                                 negative_group_fraction=negative_group_fraction, seed=4,
                                 device=DEVICE)
    assert set(inputs["steer_mode"].unique().tolist()) == {0, 1, 2}   # every mode is exercised
    h = testing.assert_matches_reference("triton", **inputs)
    # Steering changed h but counts stay those of the unsteered activation (checked above).
    plain = dict(inputs, row_group=None, steer_mode=None, steer_value=None)
    assert not torch.equal(h, testing.run_impl("triton", plain)[0])


@pytest.mark.parametrize("act", ACTS)
def test_nan_and_inf_never_count_wrongly(act):
    check(M=40, I=50, K=2, act=act, special_fraction=0.15, sums_dtype=torch.float64,
          sumsq_dtype=torch.float64, seed=5)


def test_subnormal_and_zero_gates_count_like_the_reference():
    tiny = torch.tensor([0.0, -0.0, 1e-45, -1e-45, 3e-45, 1e-40, -1e-40, 1e-30],
                        dtype=torch.float32)
    gate = tiny.repeat(9, 4)[:, :29].contiguous().to(DEVICE)        # [9, 29]
    for act in ACTS:
        inputs = dict(gate=gate, up=None, act=act,
                      row_lang=torch.zeros(9, dtype=torch.int32, device=DEVICE),
                      counts=torch.zeros(1, 29, dtype=torch.int64, device=DEVICE))
        testing.assert_matches_reference("triton", **inputs)


@pytest.mark.parametrize("block_m,block_n", [(16, 16), (64, 32)])
def test_forced_tile_shapes(block_m, block_n):
    from langneuron_ext.ops.triton_elementwise import act_stats_triton
    inputs = testing.make_inputs(M=53, I=47, K=4, act="silu", sums_dtype=torch.float64,
                                 steer_groups=2, seed=6, device=DEVICE)
    args = testing.clone_inputs(inputs)
    ref = testing.clone_inputs(inputs)
    h = act_stats_triton(*(args[k] for k in testing.OP_ARGS), block_m=block_m, block_n=block_n)
    ref_h = act_stats_torch(*(ref[k] for k in testing.OP_ARGS))
    assert torch.equal(args["counts"], ref["counts"])
    torch.testing.assert_close(h, ref_h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(args["sums"], ref["sums"], rtol=1e-6, atol=1e-6)


def test_rows_of_one_language_per_tile_and_uncounted_tiles():
    # Tile 0 holds only language 2, tile 1 only uncounted rows, tile 2 a mix.
    row_lang = torch.tensor([2] * 32 + [-1] * 32 + [0, 1, -5, 2, 1, 0], dtype=torch.int32)
    inputs = testing.make_inputs(M=70, I=64, K=3, act="relu", sums_dtype=torch.float32,
                                 seed=7, device=DEVICE)
    inputs["row_lang"] = row_lang.to(DEVICE)
    testing.assert_matches_reference("triton", **inputs)


def test_counts_are_int64_accumulators():
    start = 2 ** 40 + 12345            # beyond int32: the atomics must be 64-bit
    inputs = testing.make_inputs(M=30, I=20, K=2, act="silu", seed=8, device=DEVICE)
    inputs["counts"] = torch.full((2, 20), start, dtype=torch.int64, device=DEVICE)
    testing.assert_matches_reference("triton", **inputs)
    _, bufs = testing.run_impl("triton", inputs)
    assert int(bufs["counts"].min()) >= start and int(bufs["counts"].max()) > start


def test_empty_batch_leaves_buffers_alone():
    counts = torch.arange(6, dtype=torch.int64, device=DEVICE).reshape(2, 3)
    sums = torch.ones(2, 3, dtype=torch.float64, device=DEVICE)
    gate = torch.empty(0, 3, device=DEVICE)
    h = ln.ops.act_stats(gate, gate.clone(), act="gelu",
                         row_lang=torch.empty(0, dtype=torch.int32, device=DEVICE),
                         counts=counts, sums=sums, impl="triton")
    assert h.shape == (0, 3) and h.dtype == gate.dtype
    assert torch.equal(counts, torch.arange(6, device=DEVICE).reshape(2, 3))
    assert torch.equal(sums, torch.ones(2, 3, dtype=torch.float64, device=DEVICE))


def test_public_op_with_leading_dimensions():
    gate = torch.randn(2, 9, 33, device=DEVICE)
    up = torch.randn(2, 9, 33, device=DEVICE)
    row_lang = torch.randint(-1, 2, (18,), dtype=torch.int32, device=DEVICE)
    c_triton = torch.zeros(2, 33, dtype=torch.int64, device=DEVICE)
    c_torch = c_triton.clone()
    h = ln.ops.act_stats(gate, up, act="silu", row_lang=row_lang, counts=c_triton,
                         impl="triton")
    h_ref = ln.ops.act_stats(gate, up, act="silu", row_lang=row_lang, counts=c_torch,
                             impl="torch")
    assert h.shape == gate.shape
    assert torch.equal(c_triton, c_torch)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-6)


def test_dispatch_never_auto_picks_the_interpreter_on_cpu():
    assert dispatch.select_impl("cpu", torch.float32) != "triton"
    if INTERPRET:
        assert dispatch.select_impl("cpu", torch.float16, requested="triton") == "triton"
        assert "triton" in dispatch.available_for("cpu", torch.float32)
    impl = dispatch.get("triton")
    assert impl.priority == 20 and impl.supports("cuda", torch.bfloat16)
    assert not impl.supports("cuda", torch.float64)


def test_opcheck_with_the_triton_backend():
    from langneuron_ext.ops.library import act_stats_op
    inputs = testing.make_inputs(M=9, I=20, K=2, act="gelu", sums_dtype=torch.float64,
                                 steer_groups=2, seed=12, device=DEVICE)
    args = tuple(inputs[k] for k in testing.OP_ARGS) + ("triton",)
    torch.library.opcheck(act_stats_op, args)
