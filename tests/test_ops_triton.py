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


def triton_fn():
    """The triton implementation; on a GPU with one fixed tile instead of autotuning every flag
    combination, which keeps the GPU suite short (benchmarks/gpu_validate.py autotunes)."""
    from langneuron_ext.ops.impl_triton import act_stats_triton
    if DEVICE != "cuda":
        return "triton"

    def fixed_tile(*args):
        return act_stats_triton(*args, block_m=32, block_n=64)
    fixed_tile.__name__ = "triton"
    return fixed_tile


def check(**kwargs):
    """make_inputs(**kwargs) on DEVICE, then the triton implementation vs the reference."""
    kwargs.setdefault("device", DEVICE)
    inputs = testing.make_inputs(**kwargs)
    return testing.assert_matches_reference(triton_fn(), **inputs)


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
    from langneuron_ext.ops.impl_triton import act_stats_triton
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


# ---- GPU defects found in review, as far as a CPU can show them --------------------------------
def _out_of_range_case(impl_fn, **forced):
    """Ids >= K and >= G (a caller that skipped the range check) are ignored: the buffers are
    row slices of larger tensors whose guard rows must stay untouched, and the result equals
    the reference with those rows uncounted / unsteered."""
    K, G = 2, 2
    inputs = testing.make_inputs(M=45, I=40, K=K, act="silu", sums_dtype=torch.float64,
                                 steer_groups=G, seed=20, device=DEVICE)
    row_lang = inputs["row_lang"].clone()
    row_lang[::4] = K                # first id past the end
    row_lang[1::9] = K + 7
    row_group = inputs["row_group"].clone()
    row_group[::5] = G
    guarded = {}
    for name in ("counts", "sums"):
        big = torch.zeros(K + 8, 40, dtype=inputs[name].dtype, device=DEVICE)
        big[:K] = inputs[name]
        guarded[name] = big
    got = dict(inputs, row_lang=row_lang, row_group=row_group,
               counts=guarded["counts"][:K], sums=guarded["sums"][:K])
    h = impl_fn(*(got[k] for k in testing.OP_ARGS), **forced)
    assert not guarded["counts"][K:].any() and not guarded["sums"][K:].any(), \
        "an out-of-range id wrote past the buffers"
    expected = dict(inputs, row_lang=torch.where(row_lang >= K, -1, row_lang),
                    row_group=torch.where(row_group >= G, -1, row_group))
    ref_h, ref_bufs = testing.reference_fp32(expected)
    assert torch.equal(got["counts"], ref_bufs["counts"])
    torch.testing.assert_close(got["sums"], ref_bufs["sums"], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h, ref_h, rtol=1e-5, atol=1e-6)


def test_out_of_range_ids_never_write_out_of_bounds():
    from langneuron_ext.ops.impl_triton import act_stats_triton
    _out_of_range_case(act_stats_triton)
    _out_of_range_case(act_stats_triton, block_m=16, block_n=16, programs=1)


@pytest.mark.parametrize("programs", [1, 2, 5])
def test_language_runs_carried_across_row_tiles(programs):
    """Rows in language runs (how sequences arrive), several row tiles per program: partials
    are carried while the language stays, flushed when it changes, mixed tiles and
    uncounted tiles in between; counts exact, sums within the policy."""
    from langneuron_ext.ops.impl_triton import act_stats_triton
    runs = [(0, 40), (2, 24), (-1, 16), (1, 5), (2, 3), (1, 50), (0, 22)]
    row_lang = torch.cat([torch.full((n,), k, dtype=torch.int32) for k, n in runs])
    inputs = testing.make_inputs(M=len(row_lang), I=37, K=3, act="gelu",
                                 sums_dtype=torch.float64, sumsq_dtype=torch.float32, seed=21,
                                 device=DEVICE)
    inputs["row_lang"] = row_lang.to(DEVICE)

    def fn(*args):
        return act_stats_triton(*args, block_m=16, block_n=32, programs=programs)
    fn.__name__ = f"triton programs={programs}"
    testing.assert_matches_reference(fn, **inputs)


def test_launches_run_under_the_inputs_device_guard(monkeypatch):
    """Every Triton launch (element-wise and GEMM) enters launch_guard(device of the inputs);
    on CUDA that is torch.cuda.device(index), so cuda:1 tensors launch on cuda:1's stream."""
    from langneuron_ext.ops import impl_triton, impl_triton_gemm, triton_common
    guard = triton_common.launch_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    seen = []
    real = triton_common.launch_guard

    def spy(device):
        seen.append(device)
        return real(device)
    monkeypatch.setattr(impl_triton, "launch_guard", spy)
    monkeypatch.setattr(impl_triton_gemm, "launch_guard", spy)
    inputs = testing.make_inputs(M=5, I=8, K=1, device=DEVICE)
    testing.run_impl("triton", inputs)
    x = torch.ones(4, 8, device=DEVICE)
    impl_triton_gemm.gemm_act_stats(x, x[:3], x[:3], "silu", None, None, None, None, None, None,
                               None)
    assert seen == [torch.device(DEVICE)] * 2 or [d.type for d in seen] == [DEVICE] * 2


def test_make_inputs_keeps_views_on_the_target_device():
    """gate_up / strided layouts are built as views on the device itself (they were refused
    on CUDA before, so the patch's views were never tested on a GPU); `meta` stands in."""
    for layout, stride in (("gate_up", (48, 1)), ("strided", (96, 4))):
        cpu = testing.make_inputs(M=6, I=24, K=2, layout=layout, dtype=torch.float16)
        meta = testing.make_inputs(M=6, I=24, K=2, layout=layout, dtype=torch.float16,
                                   device="meta")
        for name in ("gate", "up"):
            assert meta[name].device.type == "meta" and meta[name].dtype == torch.float16
            assert meta[name].stride() == cpu[name].stride() == stride, (layout, name)
        assert meta["up"].storage_offset() == cpu["up"].storage_offset() != 0


def test_autotune_keys_every_compiled_flag_and_prunes_configs():
    """Every constexpr that changes the compiled kernel (except the tuned tile) is an
    autotune key; configs are pruned by M and by sm_90's shared memory."""
    import inspect

    from langneuron_ext.ops import impl_triton as te
    from langneuron_ext.ops import impl_triton_gemm as tg
    for kernel, key, tuned in ((te._act_stats_kernel, te.AUTOTUNE_KEY, {"BLOCK_M", "BLOCK_N"}),
                               (tg._gemm_act_stats_kernel, tg.AUTOTUNE_KEY,
                                {"BLOCK_M", "BLOCK_N", "BLOCK_K", "GROUP_M"})):
        source = inspect.getsource(kernel.fn)
        header = source[:source.index("):")]
        flags = {name.strip().split(":")[0] for name in header.split(",")
                 if "tl.constexpr" in name}
        flags = {f.split("(")[-1].strip() for f in flags}
        assert flags - tuned <= set(key), flags - tuned - set(key)
    small = te._prune(te._GPU_CONFIGS, {"M_BUCKET": 8})
    assert small and all(c.kwargs["BLOCK_M"] <= 16 for c in small)
    assert len(te._prune(te._GPU_CONFIGS, {"M_BUCKET": 4096})) == len(te._GPU_CONFIGS)
    x = torch.empty(1, dtype=torch.float32)
    kept = tg._prune(tg._GPU_CONFIGS, {"M_BUCKET": 65536, "x_ptr": x})
    assert kept and all(tg.shared_bytes(c, 4) <= tg.SM90_SHARED_BYTES for c in kept)
    assert len(kept) < len(tg._GPU_CONFIGS)        # fp32 128 x 128 x 64 x 3 does not fit
    assert all(c.kwargs["BLOCK_M"] <= 16 for c in tg._prune(tg._GPU_CONFIGS,
                                                            {"M_BUCKET": 4, "x_ptr": x}))


def test_tf32_follows_the_fp32_precision_api():
    from langneuron_ext.ops.triton_common import fp32_matmul_uses_tf32
    matmul = torch.backends.cuda.matmul
    before = matmul.fp32_precision
    try:
        matmul.fp32_precision = "tf32"
        assert fp32_matmul_uses_tf32()
        matmul.fp32_precision = "ieee"
        assert not fp32_matmul_uses_tf32()
    finally:
        matmul.fp32_precision = before


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("act", ACTS)
def test_hist_amax_and_scale_steering(act, dtype):
    """Histograms (default and custom edges), maxima and the four steering modes, in mixed-
    language tiles and in single-language runs carried across tiles."""
    check(M=70, I=100, K=3, dtype=dtype, act=act, hist_bins=32, amax=True, steer_groups=2,
          steer_modes=4, negative_group_fraction=0.2, special_fraction=0.05, seed=21)
    check(M=96, I=40, K=1, dtype=dtype, act=act, hist_edges=torch.tensor([-0.5, 0.0, 1.0]),
          amax=True, negative_fraction=0.0, seed=22)
