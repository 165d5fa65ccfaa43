"""The second op, `gated_mlp_stats`: its contract (vendor path bit for bit equal to the unpatched
projections + act_stats, fused gate_up weights in ONE F.linear), the triton_gemm implementation
in the same registry, selection (keyword, LANGNEURON_GATED_IMPL, measured choice cached on disk,
vendor by default) and the reasons an implementation gives when it cannot run."""
import functools
import json

import pytest
import torch

from langneuron_ext.ops import act_stats, conformance, dispatch, gated_mlp_stats
from langneuron_ext.ops.args import GatedArgs, fused_weight
from langneuron_ext.ops.triton_common import INTERPRET, triton_available

DEVICE = "cuda" if torch.cuda.is_available() and not INTERPRET else "cpu"


@pytest.fixture(autouse=True)
def fresh_caches(tmp_path, monkeypatch):
    """Kernel caches in a temporary folder, nothing remembered from other tests."""
    monkeypatch.setenv("LANGNEURON_CACHE", str(tmp_path))
    monkeypatch.delenv("LANGNEURON_GATED_IMPL", raising=False)
    dispatch.forget()
    yield
    dispatch.forget()


def stat_args(M, I, K=3, G=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return dict(row_lang=torch.randint(-1, K, (M,), generator=gen, dtype=torch.int32),
                counts=torch.randint(0, 5, (K, I), generator=gen),
                sums=torch.rand(K, I, generator=gen, dtype=torch.float64),
                row_group=torch.randint(-1, G, (M,), generator=gen, dtype=torch.int32),
                steer_mode=torch.randint(0, 3, (G, I), generator=gen).to(torch.int8),
                steer_value=torch.randn(G, I, generator=gen))


def clone(d):
    return {k: v.clone() for k, v in d.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_vendor_fused_weight_is_one_linear_bit_for_bit(dtype):
    """Phi-3 layout: the two row halves of gate_up_proj.weight give exactly
    act_stats(gate_up(x)[..., :I], gate_up(x)[..., I:]) (same values, same counts)."""
    torch.manual_seed(0)
    gate_up = torch.nn.Linear(24, 2 * 40, bias=False).to(dtype)
    x = torch.randn(2, 7, 24).to(dtype)
    kw = stat_args(14, 40)
    ref_kw, got_kw = clone(kw), clone(kw)
    with torch.no_grad():
        out = gate_up(x)
        expected = act_stats(out[..., :40], out[..., 40:], act="gelu_tanh", **ref_kw)
        w = gate_up.weight
        assert fused_weight(w[:40], w[40:]) is w          # the Parameter itself, not a copy
        h = gated_mlp_stats(x, w[:40], w[40:], act="gelu_tanh", **got_kw)
    assert h.shape == (2, 7, 40) and h.dtype == dtype
    assert torch.equal(h, expected)
    for name in ("counts", "sums"):
        assert torch.equal(got_kw[name], ref_kw[name]), name


def test_vendor_two_weights_equal_two_projections():
    torch.manual_seed(1)
    gate_proj = torch.nn.Linear(16, 30, bias=False)
    up_proj = torch.nn.Linear(16, 30, bias=False)
    x = torch.randn(5, 16)
    kw = stat_args(5, 30, seed=1)
    ref_kw, got_kw = clone(kw), clone(kw)
    with torch.no_grad():
        expected = act_stats(gate_proj(x), up_proj(x), act="silu", impl="torch", **ref_kw)
        h = gated_mlp_stats(x, gate_proj.weight, up_proj.weight, act="silu", impl="torch",
                            **got_kw)
    assert fused_weight(gate_proj.weight, up_proj.weight) is None
    assert torch.equal(h, expected) and torch.equal(got_kw["counts"], ref_kw["counts"])


@pytest.mark.skipif(not triton_available()[0], reason=triton_available()[1])
def test_triton_gemm_through_the_registry_matches_reference():
    x, w_gate, w_up = conformance.exact_gated_operands(23, 24, 40, torch.float32, DEVICE, 5,
                                                     fused=True)
    kw = {k: v.to(DEVICE) for k, v in stat_args(23, 40, seed=2).items()}
    ref_kw, got_kw = clone(kw), clone(kw)
    expected = act_stats(x @ w_gate.T, x @ w_up.T, act="relu", impl="torch", **ref_kw)
    h = gated_mlp_stats(x, w_gate, w_up, act="relu", gated_impl="triton_gemm", **got_kw)
    assert torch.equal(got_kw["counts"], ref_kw["counts"])
    torch.testing.assert_close(h, expected, rtol=1e-6, atol=1e-6)


def test_selection_default_keyword_env_and_errors(monkeypatch):
    x = torch.randn(3, 8)
    w = torch.randn(10, 8)
    args = GatedArgs.validate(x, w[:5], w[5:], "silu")
    assert dispatch.select_gated(args) == "vendor"            # CPU: nothing else is automatic
    monkeypatch.setenv("LANGNEURON_GATED_IMPL", "vendor")
    assert dispatch.select_gated(args) == "vendor"
    with pytest.raises(ValueError, match="unknown implementation 'cublas'"):
        dispatch.select_gated(args, "cublas")
    if not INTERPRET:
        with pytest.raises(RuntimeError, match="triton_gemm.*cannot run here"):
            dispatch.select_gated(args, "triton_gemm")


def test_measured_choice_is_cached_on_disk(monkeypatch, tmp_path):
    """A contender allowed on this device is timed once against vendor; the faster one is
    stored per (device, dtype, H, I, M bucket) and used from then on, also by a new process
    (simulated by forgetting the in-memory caches)."""
    from langneuron_ext.ops.impl_torch import vendor_gated
    calls = []

    def fast(args, act_impl=None):
        calls.append(args.M)
        return vendor_gated(args, act_impl)

    timings = {"vendor": 2.0, "fast": 1.0}
    monkeypatch.setattr(dispatch, "measure", functools.partial(
        dispatch.measure, timer=lambda name, fn, reps: timings[name]))
    x = torch.randn(20, 8)
    w = torch.randn(12, 8)
    with dispatch.registered(dispatch.Implementation(
            "fast", 5, fast, lambda: (True, ""), lambda d, t: True, op=dispatch.GATED_MLP)):
        h = gated_mlp_stats(x, w[:6], w[6:], act="silu")
        assert h.shape == (20, 6)
        stored = json.loads(dispatch.choice_cache_path().read_text())
        assert list(stored.values()) == ["fast"] and "M<=32" in next(iter(stored))
        assert str(tmp_path) in str(dispatch.choice_cache_path())
        dispatch.forget()
        monkeypatch.setattr(dispatch, "measure", lambda *a, **k: pytest.fail("measured twice"))
        calls.clear()
        gated_mlp_stats(x[:17], w[:6], w[6:], act="silu")      # same M bucket: read from disk
        assert calls == [17]


def test_reasons_not_booleans():
    x = torch.randn(3, 8, dtype=torch.float64)
    cuda = dispatch.get("cuda")
    reasons = cuda.not_supported_reasons("cpu", torch.float32)
    assert reasons and any("cpu" in r for r in reasons)
    text = dispatch.describe_reasons(dispatch.ACT_STATS, "cpu", torch.float32)
    assert "cuda:" in text and "torch: ok" in text
    with pytest.raises(TypeError, match="float32 / float16 / bfloat16"):
        gated_mlp_stats(x, x[:2], x[:2], act="silu")
    with pytest.raises(RuntimeError, match="Every implementation: .*torch"):
        act_stats(torch.randn(2, 3), torch.randn(2, 3), impl="cuda")
