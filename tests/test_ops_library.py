"""The torch.library registration of the fused op: `opcheck` for every CPU implementation, and
`torch.compile` of a small gated MLP whose forward calls `ln.ops.act_stats`."""
import shutil
import subprocess

import pytest
import torch

import langneuron_ext as ln
from langneuron_ext.ops import dispatch, testing

OP = torch.ops.langneuron.act_stats.default
IMPLEMENTATIONS = testing.implementations_under_test("cpu")

# Argument combinations: (name, make_inputs keyword arguments).
COMBINATIONS = {
    "h only": dict(counts=False),
    "counts": dict(),
    "counts+sums+sumsq": dict(sums_dtype=torch.float32, sumsq_dtype=torch.float64),
    "plain mlp": dict(gated=False, sums_dtype=torch.float64),
    "steering": dict(steer_groups=2, negative_group_fraction=0.3),
    "steering default group, no stats": dict(counts=False, steer_groups=1, default_group=True),
    "fused gate_up view": dict(layout="gate_up", sums_dtype=torch.float32),
    "default language": dict(default_lang=True),
    "hist+amax": dict(hist_bins=16, amax=True),
    "hist only, custom edges": dict(counts=False, hist_edges=torch.tensor([-1.0, 0.0, 0.5])),
    "scale steering": dict(steer_groups=2, steer_modes=4, negative_group_fraction=0.3),
}


def _op_args(inputs, impl):
    return [inputs[k] for k in testing.OP_ARGS] + [impl]


def _needs(combination):
    kw = COMBINATIONS[combination]
    return {f for f, used in (("hist", "hist_bins" in kw or "hist_edges" in kw),
                              ("amax", kw.get("amax")), ("scale", kw.get("steer_modes") == 4))
            if used}


# Every implementation with every combination whose optional parts (hist, amax, scale) it has.
CASES = [(impl, c) for impl in IMPLEMENTATIONS for c in COMBINATIONS
         if _needs(c) <= set(dispatch.get(impl).features)]


@pytest.mark.parametrize("impl,combination", CASES, ids=[f"{i}-{c}" for i, c in CASES])
def test_opcheck(impl, combination):
    inputs = testing.make_inputs(M=6, I=20, K=3, seed=3, **COMBINATIONS[combination])
    results = torch.library.opcheck(OP, _op_args(inputs, impl))
    assert set(results.values()) == {"SUCCESS"}, results


def _compile_backend() -> str:
    """"inductor" when a C++ compiler works here (it generates and builds C++), else
    "aot_eager" (which still traces the op through its fake kernel)."""
    compiler = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
    if compiler is None:
        return "aot_eager"
    probe = subprocess.run([compiler, "-x", "c++", "-", "-fsyntax-only"], input=b"int x;",
                           capture_output=True)
    return "inductor" if probe.returncode == 0 else "aot_eager"


class TinyGatedMLP(torch.nn.Module):
    """A Llama-style MLP whose activation step is the fused op, with its own counters."""

    def __init__(self, hidden=16, intermediate=40, languages=3, impl=None):
        super().__init__()
        self.gate_proj = torch.nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = torch.nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = torch.nn.Linear(intermediate, hidden, bias=False)
        self.impl = impl
        self.register_buffer("counts", torch.zeros(languages, intermediate, dtype=torch.int64))
        self.register_buffer("sums", torch.zeros(languages, intermediate, dtype=torch.float64))

    def forward(self, x, row_lang):
        h = ln.ops.act_stats(self.gate_proj(x), self.up_proj(x), act="silu", row_lang=row_lang,
                             counts=self.counts, sums=self.sums, impl=self.impl)
        return self.down_proj(h)


def test_compiled_mlp_matches_eager_outputs_and_counts():
    torch._dynamo.reset()
    eager = TinyGatedMLP()
    compiled_module = TinyGatedMLP()
    compiled_module.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_module, backend=_compile_backend())
    batches = [(torch.randn(2, 5, 16), torch.randint(-1, 3, (2, 5), dtype=torch.int32))
               for _ in range(2)]
    with torch.no_grad():           # scanning and steering run without autograd
        for x, row_lang in batches:
            torch.testing.assert_close(compiled(x, row_lang), eager(x, row_lang))
    assert eager.counts.sum() > 0
    assert torch.equal(compiled_module.counts, eager.counts)     # both calls counted once
    torch.testing.assert_close(compiled_module.sums, eager.sums)


def test_op_compiles_without_graph_breaks():
    """The registered op itself (2-D, validated inputs) traces into one graph."""
    torch._dynamo.reset()

    def step(gate, up, row_lang, counts):
        h = OP(gate, up, "gelu_tanh", row_lang, counts, None, None, None, None, None, None,
               None, None, "torch")
        return h * 2

    compiled = torch.compile(step, backend=_compile_backend(), fullgraph=True)
    inputs = testing.make_inputs(M=8, I=24, K=2, act="gelu_tanh", seed=5)
    counts_eager, counts_compiled = inputs["counts"].clone(), inputs["counts"].clone()
    expected = step(inputs["gate"], inputs["up"], inputs["row_lang"], counts_eager)
    got = compiled(inputs["gate"], inputs["up"], inputs["row_lang"], counts_compiled)
    torch.testing.assert_close(got, expected)
    assert torch.equal(counts_compiled, counts_eager)
    assert not torch.equal(counts_eager, inputs["counts"])


# ---- the gated op: langneuron::gated_mlp_stats -------------------------------------------------
GATED_OP = torch.ops.langneuron.gated_mlp_stats.default
GATED_IMPLEMENTATIONS = dispatch.under_test("cpu", dispatch.GATED_MLP)


def _gated_args(fused, seed=7, hist=True):
    from langneuron_ext.ops import conformance
    x, w_gate, w_up = conformance.exact_gated_operands(12, 16, 24, torch.float32, "cpu", seed,
                                                       fused)
    inputs = testing.make_inputs(M=12, I=24, K=3, sums_dtype=torch.float64, steer_groups=2,
                                 steer_modes=4, hist_bins=16 if hist else 0, amax=hist,
                                 seed=seed)
    stats = [inputs[k] for k in testing.OP_ARGS[3:]]
    return x, w_gate, w_up, stats


@pytest.mark.parametrize("fused", [False, True], ids=["two weights", "fused gate_up"])
@pytest.mark.parametrize("impl", GATED_IMPLEMENTATIONS)
def test_gated_opcheck(impl, fused):
    assert "vendor" in GATED_IMPLEMENTATIONS
    x, w_gate, w_up, stats = _gated_args(fused)
    act_impl = "torch" if impl == "vendor" else None
    results = torch.library.opcheck(GATED_OP, [x, w_gate, w_up, "gelu", *stats, impl,
                                               act_impl])
    assert set(results.values()) == {"SUCCESS"}, results


def test_gated_op_has_a_fake_kernel_with_the_output_shape():
    from torch._subclasses.fake_tensor import FakeTensorMode
    with FakeTensorMode():
        x = torch.empty(2, 5, 16)
        w = torch.empty(48, 16)
        counts = torch.empty(3, 24, dtype=torch.int64)
        h = GATED_OP(x, w[:24], w[24:], "silu", None, counts, None, None, None, None, None,
                     None, None, None, "vendor", "torch")
    assert tuple(h.shape) == (2, 5, 24) and h.dtype == torch.float32


class TinyFusedMLP(torch.nn.Module):
    """A Llama-style MLP whose projections and activation are the gated op."""

    def __init__(self, hidden=16, intermediate=40, languages=3):
        super().__init__()
        self.gate_proj = torch.nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = torch.nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = torch.nn.Linear(intermediate, hidden, bias=False)
        self.register_buffer("counts", torch.zeros(languages, intermediate, dtype=torch.int64))
        self.register_buffer("amax", torch.full((languages, intermediate), float("-inf")))

    def forward(self, x, row_lang):
        h = ln.ops.gated_mlp_stats(x, self.gate_proj.weight, self.up_proj.weight, act="silu",
                                   row_lang=row_lang, counts=self.counts, amax=self.amax,
                                   impl="torch")
        return self.down_proj(h)


def test_compiled_gated_mlp_matches_eager_outputs_and_counts():
    torch._dynamo.reset()
    eager = TinyFusedMLP()
    compiled_module = TinyFusedMLP()
    compiled_module.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_module, backend=_compile_backend())
    batches = [(torch.randn(2, 5, 16), torch.randint(-1, 3, (2, 5), dtype=torch.int32))
               for _ in range(2)]
    with torch.no_grad():
        for x, row_lang in batches:
            torch.testing.assert_close(compiled(x, row_lang), eager(x, row_lang))
    assert eager.counts.sum() > 0
    assert torch.equal(compiled_module.counts, eager.counts)
    assert torch.equal(compiled_module.amax, eager.amax)
