"""The cpu kernel's activations are torch's own, bit for bit, in every dtype: h of a plain MLP
(h = act(gate) in gate's dtype) equals torch's activation of the same tensor, and h of a gated
one equals act(gate) * up as the unpatched model computes it in fp32. The kernel calls torch's
CPU kernels on padded fp32 tiles, so every element takes torch's vectorised path; torch's own
result differs from that only in the last (numel mod 2 x vector width) elements of a call (its
scalar tail), which is why the tensors here have a multiple of 64 elements.

One known exception: torch's float16 erf-GELU kernel is not its float32 one rounded to float16
(about 6% of outputs differ in the last bit on this CPU); the kernel computes the float32
activation of the float16 input (what the statistics are defined on), so plain float16 GELU
outputs may differ from `F.gelu(x_fp16)` in the last bit.
"""
import pytest
import torch
import torch.nn.functional as F

import langneuron_ext as ln
from langneuron_ext.ops import native

TORCH_ACT = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": torch.relu,
}
DTYPES = (torch.float32, torch.bfloat16, torch.float16)
BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


@pytest.fixture(scope="module", autouse=True)
def _require_native_cpu():
    ok, reason = native.cpu_available()
    if not ok:
        pytest.fail(f"the C++ CPU kernel is not built: {reason}")


def _gate(dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(96, 1024, generator=gen) * 4
    # tails of the distribution, subnormals, signed zeros and the saturation ranges too
    x[0, :8] = torch.tensor([0.0, -0.0, 1e-40, -1e-40, 30.0, -30.0, 90.0, -90.0])
    return x.to(dtype)


def _same_bits(a, b):
    return torch.equal(a.view(BITS[a.dtype]), b.view(BITS[b.dtype]))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("act", list(TORCH_ACT))
def test_plain_h_equals_torch_activation_bit_for_bit(act, dtype):
    gate = _gate(dtype, 1)
    h = ln.ops.act_stats(gate, None, act=act, impl="cpu")
    expected = TORCH_ACT[act](gate)
    if dtype == torch.float16 and act == "gelu":    # the documented exception (module doc)
        expected = TORCH_ACT[act](gate.float()).to(dtype)
    assert _same_bits(h, expected), f"{int((h != expected).sum())} elements differ"


@pytest.mark.parametrize("act", list(TORCH_ACT))
def test_gated_fp32_h_equals_the_unpatched_mlp_bit_for_bit(act):
    gate, up = _gate(torch.float32, 2), _gate(torch.float32, 3)
    h = ln.ops.act_stats(gate, up, act=act, impl="cpu")
    assert _same_bits(h, TORCH_ACT[act](gate) * up)


@pytest.mark.parametrize("act", list(TORCH_ACT))
def test_strided_gate_up_view_equals_torch(act):
    """A view into a fused gate_up [M, 2I] (Phi-3) is read in place and matches torch's
    vectorised path. (torch's own erf-GELU of such a strided view is not its GELU of the same
    values laid out contiguously: it takes another loop there; the kernel does not depend on
    the layout.)"""
    fused = _gate(torch.float32, 4).reshape(48, 2048)
    gate, up = fused[:, :1024], fused[:, 1024:]
    h = ln.ops.act_stats(gate, up, act=act, impl="cpu")
    assert _same_bits(h, TORCH_ACT[act](gate.contiguous()) * up)
    if act != "gelu":
        assert _same_bits(h, TORCH_ACT[act](gate) * up)
