"""The Triton GEMM-epilogue kernel against the torch reference applied to x @ W^T.

Why exact-arithmetic inputs: the kernel sums the H products in its own order, cuBLAS / MKL in
another, so for random inputs a gate within a few ulps of 0 can change sign and a count can
differ by one without either being wrong. With integer x and weights that are multiples of 1/4
every partial sum is exactly representable (|gate| << 2**11, so even fp16 holds it), every
summation order gives the same gate, and counts must match bit for bit, exact zeros included.
Random inputs are checked too, with counts allowed to differ only at near-zero gates.
Runs under the Triton interpreter on CPU tensors when there is no GPU.
"""
import os

import pytest
import torch

from langneuron_ext.ops import testing
from langneuron_ext.ops.impl_triton_gemm import applies, gemm_act_stats
from langneuron_ext.ops.triton_common import INTERPRET, triton_available

pytestmark = pytest.mark.skipif(not triton_available()[0], reason=triton_available()[1])

DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"
ACTS = ("silu", "gelu", "gelu_tanh", "relu")


def exact_operands(M, H, I, dtype, seed=0):
    """Integer x in [-2, 2] and weights in {-1, -3/4, ..., 1}: every dot product is exact."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randint(-2, 3, (M, H), generator=gen).to(dtype)
    w_gate = (torch.randint(-4, 5, (I, H), generator=gen) / 4).to(dtype)
    w_up = (torch.randint(-4, 5, (I, H), generator=gen) / 4).to(dtype)
    return x.to(DEVICE), w_gate.to(DEVICE), w_up.to(DEVICE)


def op_inputs(x, w_gate, w_up, K, seed, *, sums_dtype=None, steer_groups=0, **more):
    """Statistic buffers, languages and steering (from ops.testing) for a GEMM call."""
    M, I = x.shape[0], w_gate.shape[0]
    extra = testing.make_inputs(M=M, I=I, K=K, act="silu", sums_dtype=sums_dtype,
                                sumsq_dtype=sums_dtype, steer_groups=steer_groups,
                                negative_group_fraction=0.2, seed=seed, device=DEVICE, **more)
    return {k: extra[k] for k in ("row_lang", "counts", "sums", "sumsq", "row_group",
                                  "steer_mode", "steer_value", "hist", "hist_edges", "amax")}


def run_gemm(x, w_gate, w_up, act, extra, **blocks):
    bufs = testing.clone_inputs(extra)
    h = gemm_act_stats(x, w_gate, w_up, act, bufs["row_lang"], bufs["counts"], bufs["sums"],
                       bufs["sumsq"], bufs["row_group"], bufs["steer_mode"],
                       bufs["steer_value"], bufs.get("hist"), bufs.get("hist_edges"),
                       bufs.get("amax"), **blocks)
    return h, bufs


def check_against_reference(x, w_gate, w_up, act, extra, **blocks):
    """Kernel vs the fp32 reference on gate = x @ W_gate^T, up = x @ W_up^T (rounded to x's
    dtype like nn.Linear's output), with the tolerance policy of ops.testing."""
    dtype = x.dtype
    gate = (x.double() @ w_gate.double().T).to(dtype)
    up = (x.double() @ w_up.double().T).to(dtype)
    h, bufs = run_gemm(x, w_gate, w_up, act, extra, **blocks)
    inputs = dict(extra, gate=gate, up=up, act=act)
    ref_h, ref_bufs = testing.reference_fp32(inputs)
    assert h.dtype == dtype and h.shape == gate.shape
    if extra["counts"] is not None:
        assert torch.equal(bufs["counts"], ref_bufs["counts"]), "counts differ"
    expected = ref_h.to(dtype).double()
    expected = torch.where(expected.isfinite(), ref_h.double(), expected)
    testing.assert_close_nonfinite(h, expected, testing.h_error_bound(inputs, ref_h), "h")
    for name, bound in testing.stats_error_bounds(inputs).items():
        testing.assert_close_nonfinite(bufs[name], ref_bufs[name], bound, name)
    if extra.get("hist") is not None:
        testing.assert_hist_matches(bufs["hist"], extra["hist"], inputs, exact=False,
                                    what="hist")
    if extra.get("amax") is not None:
        testing.assert_close_nonfinite(bufs["amax"], ref_bufs["amax"],
                                       testing.amax_error_bound(inputs, *extra["amax"].shape),
                                       "amax")
    return gate, h


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("act", ACTS)
def test_hist_amax_and_scale_in_the_epilogue(act, dtype):
    x, w_gate, w_up = exact_operands(M=37, H=40, I=45, dtype=dtype, seed=11)
    extra = op_inputs(x, w_gate, w_up, K=3, seed=12, steer_groups=2, steer_modes=4,
                      hist_bins=16, amax=True)
    check_against_reference(x, w_gate, w_up, act, extra)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("act", ACTS)
def test_exact_inputs_match_reference_bit_for_bit(act, dtype):
    x, w_gate, w_up = exact_operands(M=37, H=40, I=45, dtype=dtype, seed=1)
    extra = op_inputs(x, w_gate, w_up, K=3, seed=2, sums_dtype=torch.float64)
    gate, _ = check_against_reference(x, w_gate, w_up, act, extra)
    assert (gate == 0).any() and (gate > 0).any()   # exact zeros must not count


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
def test_steering_in_the_epilogue(dtype):
    x, w_gate, w_up = exact_operands(M=29, H=24, I=50, dtype=dtype, seed=3)
    extra = op_inputs(x, w_gate, w_up, K=2, seed=4, sums_dtype=torch.float32, steer_groups=3)
    check_against_reference(x, w_gate, w_up, "gelu", extra)


def test_bfloat16_loosely():
    x, w_gate, w_up = exact_operands(M=20, H=33, I=40, dtype=torch.bfloat16, seed=5)
    extra = op_inputs(x, w_gate, w_up, K=2, seed=6)
    check_against_reference(x, w_gate, w_up, "silu", extra)


def test_strided_operands_and_forced_tiles():
    # x is a column slice of a wider activation; the weights are the two halves of one fused
    # [2I, H] gate_up weight, the up half stored transposed (column-major).
    x_wide, w_gate, _ = exact_operands(M=41, H=2 * 36, I=30, dtype=torch.float32, seed=7)
    x = x_wide[:, 5:41]
    fused = torch.cat([w_gate[:, :36], exact_operands(1, 36, 30, torch.float32, 8)[1]])
    w_gate_view, w_up_view = fused[:30], fused[30:].T.contiguous().T
    assert not x.is_contiguous() and w_up_view.stride() == (1, 30)
    extra = op_inputs(x, w_gate_view, w_up_view, K=4, seed=9, sums_dtype=torch.float64)
    check_against_reference(x, w_gate_view, w_up_view, "relu", extra)
    check_against_reference(x, w_gate_view, w_up_view, "silu", extra,
                            block_m=32, block_n=16, block_k=16)


def test_random_inputs_differ_only_at_near_zero_gates():
    gen = torch.Generator().manual_seed(10)
    x = torch.randn(33, 64, generator=gen).to(DEVICE)
    w_gate = (torch.randn(47, 64, generator=gen) / 8).to(DEVICE)
    w_up = (torch.randn(47, 64, generator=gen) / 8).to(DEVICE)
    extra = op_inputs(x, w_gate, w_up, K=2, seed=11)
    h, bufs = run_gemm(x, w_gate, w_up, "silu", extra)
    gate, up = x @ w_gate.T, x @ w_up.T
    ref = testing.clone_inputs(extra)
    ref_h = testing.act_stats_torch(gate, up, "silu", ref["row_lang"], ref["counts"], None,
                                    None, None, None, None)
    torch.testing.assert_close(h, ref_h, rtol=1e-4, atol=1e-5)
    # A count may move by at most the number of counted rows whose gate is within 1e-4 of 0.
    near_zero = (gate.abs() < 1e-4).long()
    lang = extra["row_lang"]
    slack = torch.zeros_like(ref["counts"]).index_add_(0, lang[lang >= 0].long(),
                                                       near_zero[lang >= 0])
    assert ((bufs["counts"] - ref["counts"]).abs() <= slack).all()


def test_empty_batch_and_no_statistics():
    x, w_gate, w_up = exact_operands(M=0, H=8, I=5, dtype=torch.float32)
    counts = torch.ones(2, 5, dtype=torch.int64, device=DEVICE)
    h = gemm_act_stats(x, w_gate, w_up, "silu", torch.empty(0, dtype=torch.int32,
                                                            device=DEVICE),
                       counts, None, None, None, None, None)
    assert h.shape == (0, 5) and torch.equal(counts, torch.ones_like(counts))
    x, w_gate, w_up = exact_operands(M=9, H=8, I=5, dtype=torch.float16)
    h = gemm_act_stats(x, w_gate, w_up, "gelu_tanh", None, None, None, None, None, None, None)
    ref = torch.nn.functional.gelu((x.float() @ w_gate.float().T).half().float(),
                                   approximate="tanh") * (x.float() @ w_up.float().T)
    torch.testing.assert_close(h.float(), ref, rtol=2e-3, atol=1e-5)


def test_applies_is_conservative_and_errors_are_clear():
    x, w_gate, w_up = exact_operands(M=4, H=8, I=6, dtype=torch.float32)
    assert applies(x, w_gate, w_up) == (DEVICE == "cuda" or INTERPRET)
    assert not applies(x, w_gate, w_up[:, :4])                 # shapes do not chain
    assert not applies(x.half(), w_gate, w_up)                 # mixed dtypes
    assert not applies(x.double(), w_gate.double(), w_up.double())
    assert not applies(x[None], w_gate, w_up)                  # 3-D x: flatten it first
    with pytest.raises(ValueError, match="shapes do not chain"):
        gemm_act_stats(x, w_gate, w_up[:5], "silu", None, None, None, None, None, None, None)
    with pytest.raises(ValueError, match="row_lang"):
        gemm_act_stats(x, w_gate, w_up, "silu", torch.zeros(3, dtype=torch.int32,
                                                             device=DEVICE),
                       torch.zeros(1, 6, dtype=torch.int64, device=DEVICE),
                       None, None, None, None, None)
    with pytest.raises(ValueError, match="unknown activation"):
        gemm_act_stats(x, w_gate, w_up, "tanh", None, None, None, None, None, None, None)


AOT_SCRIPT = r'''
import os, sys
os.environ.pop("TRITON_INTERPRET", None)     # compile real kernels, not interpreted ones
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from langneuron_ext.ops import impl_triton as te, impl_triton_gemm as tg

def compile_ptx(fn, types, consts):
    sig = {n: "constexpr" if n in consts else types[n] for n in fn.arg_names}
    kernel = triton.compile(ASTSource(fn, sig, constexprs=consts),
                            target=GPUTarget("cuda", 90, 32), options=dict(num_warps=4))
    return kernel.asm["ptx"]

common = dict(row_lang_ptr="*i32", counts_ptr="*i64", sums_ptr="*fp64", sumsq_ptr="*fp32",
              row_group_ptr="*i32", mode_ptr="*i8", value_ptr="*fp32", M="i32", I="i32",
              K="i32", G="i32", M_BUCKET="i32", h_ptr="*bf16", hist_ptr="*i64",
              edges_ptr="*fp32", amax_ptr="*fp32", NE="i32")
flags = dict(HAS_LANG=True, HAS_COUNTS=True, HAS_SUMS=True, HAS_SUMSQ=True, HAS_STEER=True,
             HAS_GROUP=True, HAS_HIST=True, HAS_AMAX=True)
ew = dict(common, gate_ptr="*bf16", up_ptr="*bf16", stride_gm="i64", stride_gi="i32",
          stride_um="i64", stride_ui="i32")
for act in range(4):
    ptx = compile_ptx(te._act_stats_kernel, ew,
                      dict(flags, ACT=act, HAS_UP=True, BLOCK_M=32, BLOCK_N=128))
    assert "atom.global" in ptx, "no atomics in the element-wise kernel"
    assert act == 3 or "div.rn.f32" in ptx, f"act {act}: a division is not correctly rounded"
gm = dict(common, x_ptr="*bf16", wg_ptr="*bf16", wu_ptr="*bf16", H="i32", stride_xm="i32",
          stride_xh="i32", stride_gi="i32", stride_gh="i32", stride_ui="i32", stride_uh="i32")
ptx = compile_ptx(tg._gemm_act_stats_kernel, gm,
                  dict(flags, ACT=1, DOT_FP32=False, INPUT_PRECISION=None, BLOCK_M=64,
                       BLOCK_N=64, BLOCK_K=32, GROUP_M=8))
assert "wgmma" in ptx, "the GEMM kernel does not use Hopper tensor cores"
print("compiled")
'''


@pytest.mark.slow
def test_kernels_compile_for_hopper_without_a_gpu(tmp_path):
    """The interpreter never compiles anything: compile both kernels to sm_90 PTX/cubin (bf16,
    every feature on) with Triton's bundled ptxas, so GPU-only compile errors show up here."""
    import pathlib
    import subprocess
    import sys

    import triton
    if not (pathlib.Path(triton.__file__).parent / "backends" / "nvidia" / "bin" /
            "ptxas").exists():
        reason = "this Triton has no bundled NVIDIA toolchain (ptxas)"
        if os.environ.get("CI"):           # CI's torch 2.14.1 wheel brings it: never skip there
            pytest.fail(reason)
        pytest.skip(reason)
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path))
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, "-c", AOT_SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0 and "compiled" in proc.stdout, proc.stderr[-3000:]
