"""The `cpu` implementation (C++ kernel, csrc/cpu) against the pure-PyTorch reference.

Counts are compared bit for bit; h, sums and sumsq within the tolerance policy of
`langneuron_ext.ops.testing` (fp32 oracle on the same rounded inputs).
"""
import itertools
import os
import subprocess
import sys

import pytest
import torch

import langneuron_ext as ln
from langneuron_ext.ops import dispatch, native, testing
from langneuron_ext.ops.reference import ACTIVATIONS, act_stats_torch

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@pytest.fixture(scope="module", autouse=True)
def _require_native_cpu():
    ok, reason = native.cpu_available()
    if not ok:  # the build is part of `make test`'s install: a missing one is a failure
        pytest.fail(f"the C++ CPU kernel is not built: {reason}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("gated", [True, False], ids=["gated", "plain"])
@pytest.mark.parametrize("layout", ["contiguous", "gate_up", "strided"])
def test_matches_reference(dtype, act, gated, layout):
    inputs = testing.make_inputs(M=37, I=301, K=3, dtype=dtype, act=act, gated=gated,
                                 layout=layout, sums_dtype=torch.float64,
                                 sumsq_dtype=torch.float32, negative_fraction=0.3,
                                 hist_bins=32, amax=True, special_fraction=0.02,
                                 seed=hash((str(dtype), act, gated, layout)) % 1000)
    testing.assert_matches_reference("cpu", hist_exact=True, **inputs)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("steer", ["groups", "default_group", "negative_groups"])
def test_steering_matches_reference(dtype, act, steer):
    inputs = testing.make_inputs(
        M=29, I=133, K=2, dtype=dtype, act=act, sums_dtype=torch.float32,
        steer_groups=1 if steer == "default_group" else 3,
        default_group=steer == "default_group",
        negative_group_fraction=0.4 if steer == "negative_groups" else 0.0, seed=7,
        steer_modes=4, hist_bins=16, amax=True)
    testing.assert_matches_reference("cpu", hist_exact=True, **inputs)


@pytest.mark.parametrize("M,I", [(0, 64), (1, 1), (3, 7), (5, 63), (17, 65), (2, 1025)])
def test_odd_and_empty_shapes(M, I):
    for dtype, act in itertools.product(DTYPES, ("silu", "gelu")):
        inputs = testing.make_inputs(M=M, I=I, K=2, dtype=dtype, act=act,
                                     sums_dtype=torch.float64, steer_groups=2, steer_modes=4,
                                     hist_bins=8, amax=True, seed=M * 31 + I)
        testing.assert_matches_reference("cpu", hist_exact=True, **inputs)


@pytest.mark.parametrize("M,I,K,threads", [
    (1000, 37, 4, None),    # one column block: rows split into chunks with per-chunk partials
    (64, 4096, 1, None),    # whole-row blocks
    (50, 4096, 64, None),   # many languages: narrower blocks (buffers > 1 MiB), direct adds
    (90, 4096, 64, 3),      # blocks not a multiple of the threads: partials across blocks
    (200, 40, 3, 2),        # narrow: per-chunk partial histograms and maxima
    (64, 1000, 2, 3),       # histograms: column blocks made a multiple of the threads
])
def test_work_split_regimes(M, I, K, threads):
    """Each way the kernel splits the work gives the reference's counts and sums."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        inputs = testing.make_inputs(M=M, I=I, K=K, dtype=torch.float32, act="silu",
                                     sums_dtype=torch.float64, sumsq_dtype=torch.float64,
                                     hist_bins=32, amax=True, seed=K)
        testing.assert_matches_reference("cpu", hist_exact=True, **inputs)
    finally:
        torch.set_num_threads(previous)


def test_nan_inf_and_special_values():
    """NaN never counts; inf / -inf / NaN land in h where the reference puts them."""
    for dtype, act in itertools.product(DTYPES, ACTIVATIONS):
        inputs = testing.make_inputs(M=40, I=97, K=3, dtype=dtype, act=act,
                                     special_fraction=0.1, sums_dtype=torch.float64, seed=3)
        testing.assert_matches_reference("cpu", **inputs)


def test_tiny_and_huge_values_count_like_the_reference():
    """Denormals, signed zeros and values near the fp32 range: counts bit-exact, h finite or
    not exactly where torch's activations are."""
    smallest = torch.tensor([1, 2, 3, 0x7FFFFF], dtype=torch.int32).view(torch.float32)
    special = torch.tensor([0.0, -0.0, 1e-38, -1e-38, 1e-30, -1e-30, 1.6e38, 1.8e38, 3e38,
                            -3e38, 88.5, -88.5, 89.0, -89.0, 100.0, -100.0])
    row = torch.cat([smallest, -smallest, special])
    gate = row.repeat(6, 1)
    row_lang = torch.tensor([0, 1, -1, 0, 1, 0], dtype=torch.int32)
    for act in ACTIVATIONS:
        counts_ref = torch.zeros(2, row.numel(), dtype=torch.int64)
        counts_cpu = counts_ref.clone()
        h_ref = act_stats_torch(gate, None, act, row_lang, counts_ref, None, None, None, None, None)
        h_cpu = ln.ops.act_stats(gate, act=act, row_lang=row_lang, counts=counts_cpu, impl="cpu")
        assert torch.equal(counts_cpu, counts_ref), act
        assert torch.equal(h_cpu.isfinite(), h_ref.isfinite()), act
        assert torch.allclose(h_cpu[h_ref.isfinite()], h_ref[h_ref.isfinite()], rtol=1e-5,
                              atol=1e-30), act


def test_large_output_uses_the_huge_page_path_and_is_correct():
    """Outputs of >= 4 MiB come from the kernel's own (huge-page) allocation: h must behave as
    a normal tensor (free, reshape, in-place ops) and be correct."""
    inputs = testing.make_inputs(M=256, I=4096, K=2, dtype=torch.float32, act="gelu_tanh",
                                 seed=11)
    h = testing.assert_matches_reference("cpu", **inputs)
    assert h.is_contiguous() and h.dtype == torch.float32
    h.mul_(2).add_(1)
    assert torch.isfinite(h.reshape(-1, 64)).all()
    del h


def test_public_api_dispatches_to_cpu_with_leading_dims():
    assert dispatch.select_impl("cpu", torch.float32) == "cpu"
    gate = torch.randn(2, 5, 33)
    up = torch.randn(2, 5, 33)
    row_lang = torch.tensor([0, 1, -1, 1, 0, 0, 1, 1, -2, 0], dtype=torch.int32)
    counts = torch.zeros(2, 33, dtype=torch.int64)
    counts_ref = counts.clone()
    h = ln.ops.act_stats(gate, up, act="silu", row_lang=row_lang, counts=counts)
    h_ref = ln.ops.act_stats(gate, up, act="silu", row_lang=row_lang, counts=counts_ref,
                             impl="torch")
    assert h.shape == gate.shape
    assert torch.equal(counts, counts_ref)
    torch.testing.assert_close(h, h_ref, rtol=1e-5, atol=1e-6)


def test_inputs_unchanged_and_buffers_accumulate():
    """The op adds into existing counts (never overwrites) and leaves gate/up untouched."""
    gate, up = torch.randn(8, 20), torch.randn(8, 20)
    gate_copy, up_copy = gate.clone(), up.clone()
    counts = torch.full((1, 20), 5, dtype=torch.int64)
    ln.ops.act_stats(gate, up, counts=counts, impl="cpu")
    ln.ops.act_stats(gate, up, counts=counts, impl="cpu")
    assert torch.equal(counts[0], 5 + 2 * (gate > 0).sum(0))
    assert torch.equal(gate, gate_copy) and torch.equal(up, up_copy)


def test_native_op_rejects_bad_arguments_clearly():
    op = torch.ops.langneuron_native.act_stats
    gate = torch.randn(4, 8)
    counts = torch.zeros(2, 8, dtype=torch.int64)
    with pytest.raises(RuntimeError, match="row_lang holds language id 5"):
        op(gate, None, "silu", torch.tensor([0, 1, 5, 0], dtype=torch.int32), counts,
           None, None, None, None, None)
    with pytest.raises(RuntimeError, match="unknown activation 'swish'"):
        op(gate, None, "swish", None, counts, None, None, None, None, None)
    with pytest.raises(RuntimeError, match="counts must be int64"):
        op(gate, None, "silu", None, counts.int(), None, None, None, None, None)
    with pytest.raises(RuntimeError, match="must be float32, bfloat16 or float16"):
        op(gate.double(), None, "silu", None, None, None, None, None, None, None)
    with pytest.raises(RuntimeError, match="row_group holds group 3"):
        op(gate, None, "silu", None, None, None, None,
           torch.tensor([0, 3, 0, 0], dtype=torch.int32), torch.zeros(2, 8, dtype=torch.int8),
           torch.zeros(2, 8))
    assert torch.equal(counts, torch.zeros(2, 8, dtype=torch.int64))  # nothing written on error


def test_build_info_reports_the_build():
    info = native.build_info()
    assert info["cpu"]["loaded"] is True
    assert info["cpu"]["torch_version"].split("+")[0] == torch.__version__.split("+")[0]
    assert info["cpu"]["compiler"]
    assert info["num_threads"] == torch.get_num_threads()
    assert "loaded" in info["cuda"]


def test_missing_native_build_falls_back_with_one_warning():
    """Without the native modules import still works, one RuntimeWarning names what failed,
    and CPU tensors go to the torch reference."""
    code = (
        "import warnings, torch\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import langneuron_ext as ln\n"
        "    from langneuron_ext.ops import dispatch\n"
        "    name = dispatch.select_impl('cpu', torch.float32)\n"
        "    dispatch.select_impl('cpu', torch.float32)\n"
        "    h = ln.ops.act_stats(torch.randn(3, 4))\n"
        "msgs = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)\n"
        "        and 'C++ CPU kernel' in str(w.message)]\n"
        "print(name, len(msgs), msgs[0] if msgs else '')\n")
    env = dict(os.environ, LANGNEURON_NO_NATIVE="1")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    name, count, message = out.stdout.split(" ", 2)
    assert name == "torch"
    assert count == "1"
    assert "disabled by LANGNEURON_NO_NATIVE" in message and "reference" in message
