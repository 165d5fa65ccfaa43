"""What "conforms to the reference" means, and the cases that check it.

Used at run time by the first-use self-check (`ops/selfcheck.py`: `first_mismatch`) and by the
tests (through `ops/testing.py`, which adds name lookup in the registry):

    from langneuron_ext.ops import conformance
    inputs = conformance.make_inputs(M=7, I=33, K=3, dtype=torch.float16, act="gelu")
    conformance.assert_matches_reference(my_fn, **inputs)

It imports only the reference and the argument objects (never the registry), so that every
module may use it without an import circle.

Tolerance policy (what "within dtype tolerance" means)
-----------------------------------------------------
The oracle is the `torch` reference evaluated in fp32 on the *same* (already rounded) input values:
`gate.float()`, `up.float()`. An implementation is correct when
* counts are bit-exact (`torch.equal`), always, for every dtype;
* every non-finite entry of `h`, `sums` and `sumsq` (NaN, +inf, -inf) is at the same position
  with the same value as in the fp32 oracle (after the cast of `h` to the input dtype);
* one fp32 activation value may differ from torch's by `e(x) = ACT_RTOL * |act(x)| +
  ACT_XTOL * |x|`: ACT_RTOL = 1e-5 (about 100 fp32 ulps) covers vectorised exp/erf/tanh
  approximations; the |x| term (16 fp32 eps) covers the cancellation in `1 + erf(x)` and
  `1 + tanh(...)` for negative x, where even torch's own GELU is only accurate to ~eps * |x|;
* finite entries of `h` satisfy `|h - h_fp32| <= atol + rtol * |h_fp32| + e(gate) * |up|` with
  (rtol, atol) from `H_TOLERANCE[dtype]`: for fp16/bf16 rtol is two units of the format's
  precision (2 eps): h is rounded twice (a' to the dtype before the product, as the model
  rounds act(gate), then the product), each a half-ulp from the fp32 oracle, and an activation
  that differs from torch's in the last fp32 bits may round a' to the neighbouring value; for
  fp32 rtol = 1e-5;
* finite entries of `sums` / `sumsq` satisfy `|s - s_fp32| <= atol + p * E + n * eps(buffer) * S`
  where E is the sum of e(gate) (times 2|act| for sumsq) over the counted rows, S the statistic
  accumulated from |act| (so cancellation cannot hide an error), n the number of rows counted for
  that language (the worst case of any summation order) and p = 1. docs/design.md fixes that
  statistics are taken on the fp32 activation, so this bound does not depend on the input dtype:
  a backend that accumulates a bf16 activation fails it, as it should.

The same policy holds on a GPU (what the GPU suite and `benchmarks/gpu_validate.py` apply):
* h, sums, sumsq: Triton's `tl.exp` is `ex2.approx.f32` and CUDA's expf / erff / tanhf are
  within 2 ulp; both are far inside ACT_RTOL (1e-5, about 84 fp32 ulps). No tolerance is
  widened for the GPU.
* counts stay bit-exact: for every activation act(x) > 0 exactly when the reference's is,
  because the sign is decided by x and by operations that are correctly rounded on the GPU
  too. The Triton kernels divide with `div_rn` (a GPU's plain `/` is `div.full`, 2 ulp, which
  can flush a subnormal quotient such as silu(1e-40) to 0 and lose its count); the
  approximate exp only moves a positive factor by ulps. tests/test_ops_triton_gemm.py checks
  the sm_90 PTX for `div.rn.f32`.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from .args import GatedArgs, StatArgs
from .reference import (
    ACTIVATIONS,
    STEER_SCALE,
    act_stats_torch,
    activation_fp32,
    default_hist_edges,
    hist_bin,
)

DTYPES = (torch.float32, torch.float16, torch.bfloat16)

# (rtol, atol) for h, by input dtype; see the module docstring.
H_TOLERANCE: Dict[torch.dtype, Tuple[float, float]] = {
    torch.float32: (1e-5, 1e-6),
    torch.float16: (2 * torch.finfo(torch.float16).eps, 1e-6),
    torch.bfloat16: (2 * torch.finfo(torch.bfloat16).eps, 1e-6),
}
# Error allowed on one fp32 activation value: ACT_RTOL * |act(x)| + ACT_XTOL * |x|.
ACT_RTOL = 1e-5
ACT_XTOL = 16 * torch.finfo(torch.float32).eps
STATS_ATOL = 1e-6

BUFFERS = ("counts", "sums", "sumsq", "hist", "amax")
OP_ARGS = ("gate", "up", "act", "row_lang", "counts", "sums", "sumsq", "row_group", "steer_mode",
           "steer_value", "hist", "hist_edges", "amax")


def make_inputs(M: int = 16, I: int = 64, K: int = 3, *, dtype: torch.dtype = torch.float32,
                act: str = "silu", gated: bool = True, layout: str = "contiguous",
                counts: bool = True, sums_dtype: Optional[torch.dtype] = None,
                sumsq_dtype: Optional[torch.dtype] = None, negative_fraction: float = 0.2,
                default_lang: bool = False, steer_groups: int = 0,
                negative_group_fraction: float = 0.0, default_group: bool = False,
                special_fraction: float = 0.0, special_up: bool = False, scale: float = 3.0,
                steer_modes: int = 3, hist_bins: int = 0, hist_edges: Optional[Tensor] = None,
                amax: bool = False, seed: int = 0,
                device: str | torch.device = "cpu") -> Dict[str, object]:
    """Random arguments for `act_stats_torch`-style calls (2-D inputs), as a dict.

    layout: "contiguous"; "gate_up" (gate and up are the two halves of one [M, 2I] tensor,
    Phi-3 style); "strided" (every other column of a wider tensor: non-unit column stride).
    default_lang: pass row_lang=None (every row counts for slot 0).
    steer_groups: number of steering groups G (0 = no steering); default_group: row_group=None;
    steer_modes: modes drawn from 0..steer_modes-1 (4 includes 3, scale).
    hist_bins: B > 0 adds hist [K, I, B] over `default_hist_edges(B)`, or over `hist_edges`
    when given (B = len + 1); amax: add an amax [K, I] buffer (random, with some -inf).
    special_fraction: share of gate entries replaced by NaN, +inf or -inf (also up's entries
    when special_up; beware that act(x) * inf is then NaN or inf depending on whether act(x)
    underflowed to 0, which differs between exact and vectorised activations).
    Buffers start with random contents so that "adds to" is tested, not "writes".
    """
    if act not in ACTIVATIONS:
        raise ValueError(f"unknown activation {act!r}")
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=gen) * scale

    n_inputs = 2 if gated else 1
    if layout == "contiguous":
        parts = [randn(M, I) for _ in range(n_inputs)]
    elif layout == "gate_up":
        fused = randn(M, n_inputs * I)
        parts = [fused[:, j * I:(j + 1) * I] for j in range(n_inputs)]
    elif layout == "strided":
        wide = randn(M, 2 * n_inputs * I)
        parts = [wide[:, j::2 * n_inputs] for j in range(n_inputs)]
    else:
        raise ValueError(f"unknown layout {layout!r}; use contiguous, gate_up or strided")
    if special_fraction > 0:
        for p in (parts if special_up else parts[:1]):
            where = torch.rand(p.shape, generator=gen) < special_fraction
            kind = torch.randint(0, 3, p.shape, generator=gen)
            special = torch.tensor([float("nan"), float("inf"), float("-inf")])[kind]
            p[where] = special[where]
    # Round to the input dtype in place so views keep their strides, then move the whole base
    # tensor to the target device so a gate_up / strided view stays a view there (the GPU
    # kernels must see the same strides as the CPU ones).
    parts = [_cast_view(p, dtype) for p in parts]
    parts = [_to_device_view(p, device) for p in parts]
    gate = parts[0]
    up = parts[1] if gated else None

    row_lang = None
    if not default_lang:
        row_lang = torch.randint(0, K, (M,), generator=gen, dtype=torch.int32)
        negative = torch.rand(M, generator=gen) < negative_fraction
        row_lang[negative] = -1 - torch.randint(0, 3, (int(negative.sum()),), generator=gen,
                                                dtype=torch.int32)
        row_lang = row_lang.to(device)

    def buffer(buf_dtype):
        if buf_dtype is None:
            return None
        if buf_dtype == torch.int64:
            return torch.randint(0, 1000, (K, I), generator=gen, dtype=torch.int64).to(device)
        return torch.rand(K, I, generator=gen, dtype=torch.float64).to(buf_dtype).to(device)

    row_group = steer_mode = steer_value = None
    if steer_groups > 0:
        steer_mode = torch.randint(0, steer_modes, (steer_groups, I), generator=gen)
        steer_mode = steer_mode.to(torch.int8)
        steer_value = torch.randn(steer_groups, I, generator=gen)
        steer_mode, steer_value = steer_mode.to(device), steer_value.to(device)
        if not default_group:
            row_group = torch.randint(0, steer_groups, (M,), generator=gen, dtype=torch.int32)
            row_group[torch.rand(M, generator=gen) < negative_group_fraction] = -1
            row_group = row_group.to(device)
    hist = None
    if hist_edges is None and hist_bins:
        hist_edges = default_hist_edges(hist_bins)
    if hist_edges is not None:
        hist_edges = hist_edges.to(device)
        B = hist_edges.numel() + 1
        hist = torch.randint(0, 1000, (K, I, B), generator=gen, dtype=torch.int64).to(device)
    amax_buf = None
    if amax:
        amax_buf = torch.randn(K, I, generator=gen)
        amax_buf[torch.rand(K, I, generator=gen) < 0.5] = float("-inf")
        amax_buf = amax_buf.to(device)
    return dict(gate=gate, up=up, act=act, row_lang=row_lang,
                counts=buffer(torch.int64) if counts else None, sums=buffer(sums_dtype),
                sumsq=buffer(sumsq_dtype), row_group=row_group, steer_mode=steer_mode,
                steer_value=steer_value, hist=hist, hist_edges=hist_edges, amax=amax_buf)


def _cast_view(view: Tensor, dtype: torch.dtype) -> Tensor:
    """`view` rounded to `dtype`, keeping its shape and strides (a view of a cast base)."""
    if view.dtype == dtype:
        return view
    base = view._base if view._base is not None else view
    cast_base = base.to(dtype)
    return cast_base.as_strided(view.shape, view.stride(), view.storage_offset())


def _to_device_view(view: Tensor, device) -> Tensor:
    """`view` on `device` with the same shape, strides and storage offset."""
    if torch.device(device) == view.device:
        return view
    base = view._base if view._base is not None else view
    moved = base.contiguous().to(device)
    if base.is_contiguous() and base.storage_offset() == 0:
        return moved.as_strided(view.shape, view.stride(), view.storage_offset())
    return view.to(device)


def clone_inputs(inputs: Dict[str, object]) -> Dict[str, object]:
    """Copy of `inputs` with fresh statistic buffers (the op mutates them); views are kept."""
    out = dict(inputs)
    for name in BUFFERS:
        if out.get(name) is not None:
            out[name] = out[name].clone()
    return out


def run_impl(fn: Callable, inputs: Dict[str, object]) -> Tuple[Tensor, Dict[str, object]]:
    """Call an implementation's function `fn` on a copy of `inputs`; return (h, buffers)."""
    args = clone_inputs(inputs)
    h = fn(*(args.get(k) for k in OP_ARGS))
    return h, {k: args.get(k) for k in BUFFERS}


def reference_fp32(inputs: Dict[str, object]) -> Tuple[Tensor, Dict[str, object]]:
    """The oracle: the torch reference on the inputs upcast to fp32 (buffers copied)."""
    args = clone_inputs(inputs)
    args["gate"] = args["gate"].float()
    if args.get("up") is not None:
        args["up"] = args["up"].float()
    h = act_stats_torch(*(args.get(k) for k in OP_ARGS))
    return h, {k: args.get(k) for k in BUFFERS}


def activation_error_bound(gate: Tensor, act: str) -> Tensor:
    """e(x): the error allowed on each fp32 activation value (float64, gate's shape)."""
    x = gate.double()
    a = activation_fp32(gate, act).double()
    return torch.nan_to_num(ACT_RTOL * a.abs() + ACT_XTOL * x.abs(), nan=0.0, posinf=0.0)


def h_error_bound(inputs: Dict[str, object], h_ref: Tensor) -> Tensor:
    """Allowed |h - h_fp32| per element for an implementation run on `inputs`."""
    gate, up = inputs["gate"], inputs.get("up")
    rtol, atol = H_TOLERANCE[gate.dtype]
    e = activation_error_bound(gate, inputs.get("act") or "silu")
    mode = inputs.get("steer_mode")
    if mode is not None:       # scale multiplies the activation's error by |value|
        group = inputs.get("row_group")
        if group is None:
            group = torch.zeros(gate.shape[0], dtype=torch.int32, device=gate.device)
        g = group.clamp(min=0).long()
        scaled = (mode.long()[g] == STEER_SCALE) & (group >= 0)[:, None]
        factor = torch.nan_to_num(inputs["steer_value"].double().abs()[g], posinf=0.0)
        e = torch.where(scaled, e * factor, e)
    if up is not None:
        e = e * torch.nan_to_num(up.double().abs(), posinf=0.0)
    return atol + rtol * torch.nan_to_num(h_ref.double().abs(), nan=0.0, posinf=0.0) + e


def stats_error_bounds(inputs: Dict[str, object]) -> Dict[str, Tensor]:
    """Allowed error per (language, neuron) of `sums` and `sumsq` (see the module docstring)."""
    bounds = {}
    gate, act = inputs["gate"], inputs.get("act") or "silu"
    a = torch.nan_to_num(activation_fp32(gate, act).double().abs(), nan=0.0, posinf=0.0)
    e = activation_error_bound(gate, act)
    row_lang = inputs.get("row_lang")
    if row_lang is None:
        row_lang = torch.zeros(a.shape[0], dtype=torch.int32, device=a.device)
    keep = row_lang >= 0
    lang = row_lang[keep].long()
    for name, value, error in (("sums", a, e), ("sumsq", a * a, 2 * a * e + e * e)):
        buf = inputs.get(name)
        if buf is None:
            continue
        K = buf.shape[0]
        scale = buf.double().abs().clone().index_add_(0, lang, value[keep])
        act_err = torch.zeros_like(scale).index_add_(0, lang, error[keep])
        rows = torch.bincount(lang, minlength=K).double()[:, None].to(a.device)
        eps = torch.finfo(buf.dtype).eps
        bounds[name] = STATS_ATOL + act_err + (rows + 1) * eps * scale
    return bounds


def assert_close_nonfinite(actual: Tensor, expected: Tensor, bound: Tensor, what: str) -> None:
    """Same non-finite entries (position and value) and |actual - expected| <= bound elsewhere."""
    actual, expected = actual.double(), expected.double()
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {list(actual.shape)} != {list(expected.shape)}")
    a_nan, e_nan = actual.isnan(), expected.isnan()
    if not torch.equal(a_nan, e_nan):
        idx = (a_nan != e_nan).nonzero()[0].tolist()
        raise AssertionError(f"{what}: NaN pattern differs first at {idx}: "
                             f"got {actual[tuple(idx)].item()}, "
                             f"expected {expected[tuple(idx)].item()}")
    a_inf, e_inf = actual.isinf(), expected.isinf()
    if not torch.equal(a_inf, e_inf) or not torch.equal(actual[a_inf], expected[e_inf]):
        idx = ((a_inf != e_inf) | (a_inf & (actual != expected))).nonzero()[0].tolist()
        raise AssertionError(f"{what}: inf pattern differs first at {idx}: "
                             f"got {actual[tuple(idx)].item()}, "
                             f"expected {expected[tuple(idx)].item()}")
    finite = ~(e_nan | e_inf)
    err = (actual - expected).abs()
    bad = finite & (err > bound)
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {int(finite.sum())} entries out of tolerance; first "
            f"at {idx}: got {actual[tuple(idx)].item()!r}, expected "
            f"{expected[tuple(idx)].item()!r}, allowed error {bound[tuple(idx)].item():.3g}")


def _same_bits(a: Tensor, b: Tensor) -> bool:
    """Bitwise equality (NaN == NaN), for checking that inputs were not modified."""
    int_dtype = {4: torch.int32, 2: torch.int16}[a.element_size()]
    return torch.equal(a.contiguous().view(int_dtype), b.contiguous().view(int_dtype))


def counted_rows(inputs: Dict[str, object]) -> Tuple[Tensor, Tensor, Tensor]:
    """(language ids, fp32 activations, activation error bounds) of the counted rows."""
    gate, act = inputs["gate"], inputs.get("act") or "silu"
    a = activation_fp32(gate, act)
    e = activation_error_bound(gate, act)
    row_lang = inputs.get("row_lang")
    if row_lang is None:
        row_lang = torch.zeros(a.shape[0], dtype=torch.int32, device=a.device)
    keep = row_lang >= 0
    return row_lang[keep].long(), a[keep], e[keep]


def _bin_counts(lang: Tensor, b: Tensor, K: int, I: int, B: int) -> Tensor:
    flat = (lang[:, None] * I + torch.arange(I, device=b.device)) * B + b
    flat = flat[b >= 0]
    return torch.bincount(flat, minlength=K * I * B).reshape(K, I, B)


def assert_hist_matches(actual: Tensor, before: Tensor, inputs: Dict[str, object], *,
                        exact: bool, what: str) -> None:
    """hist policy: every counted, non-NaN row adds exactly one count per neuron (the totals are
    exact). With `exact` (an implementation whose fp32 activations equal torch's bit for bit)
    the bins are too. Otherwise a row may land in any bin its activation reaches within the
    activation error e(x) (only rows within e(x) of an edge can move: rare), every other row in
    exactly the reference's bin."""
    edges = inputs["hist_edges"]
    K, I, B = actual.shape
    lang, a, e = counted_rows(inputs)
    added = actual - before
    lo = hist_bin(a.double() - e, edges.double())
    hi = hist_bin(a.double() + e, edges.double())
    b = hist_bin(a, edges)
    lo, hi = torch.where(b < 0, b, lo), torch.where(b < 0, b, hi)
    expected = _bin_counts(lang, b, K, I, B)
    totals = expected.sum(-1)
    if not torch.equal(added.sum(-1), totals):
        idx = (added.sum(-1) != totals).nonzero()[0].tolist()
        raise AssertionError(f"{what}: hist gained {int(added.sum(-1)[tuple(idx)])} counts at "
                             f"[lang, neuron] = {idx}, expected {int(totals[tuple(idx)])} (one "
                             f"per counted non-NaN row)")
    if exact or torch.equal(added, expected):
        if not torch.equal(added, expected):
            idx = (added != expected).nonzero()[0].tolist()
            raise AssertionError(f"{what}: hist differs from the reference first at [lang, "
                                 f"neuron, bin] = {idx}: added {int(added[tuple(idx)])}, "
                                 f"expected {int(expected[tuple(idx)])}")
        return
    sure = lo == hi
    floor = _bin_counts(lang, torch.where(sure, b, torch.full_like(b, -1)), K, I, B)
    reach = torch.zeros(K, I, B, dtype=torch.int64, device=actual.device)
    unsure = ~sure
    for bin_ in range(B):
        covers = unsure & (lo <= bin_) & (hi >= bin_)
        reach[:, :, bin_] = _bin_counts(lang, torch.where(covers, 0, -1), K, I, 1)[..., 0]
    bad = (added < floor) | (added > floor + reach)
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        raise AssertionError(f"{what}: hist at [lang, neuron, bin] = {idx} added "
                             f"{int(added[tuple(idx)])}, expected {int(floor[tuple(idx)])} plus "
                             f"at most {int(reach[tuple(idx)])} rows within e(x) of an edge")


def amax_error_bound(inputs: Dict[str, object], K: int, I: int) -> Tensor:
    """Allowed error of amax per (language, neuron): the largest e(x) over its counted rows."""
    lang, _, e = counted_rows(inputs)
    bound = torch.zeros(K, I, dtype=torch.float64, device=e.device)
    return bound.scatter_reduce_(0, lang[:, None].expand(-1, I), e, "amax") + STATS_ATOL


def assert_matches_reference(impl: Callable, *, hist_exact: bool = False,
                             **inputs) -> Tensor:
    """Run implementation function `impl` on `inputs` (the arguments of `act_stats_torch`) and
    check it against the fp32 reference with the tolerance policy of this module. Returns its `h`.
    hist_exact: demand bit-exact histogram bins (see `assert_hist_matches`).

    The caller's buffers are not touched (both sides work on copies); gate/up must be unchanged.
    """
    for key in OP_ARGS:
        inputs.setdefault(key, None)
    inputs.setdefault("act", "silu")
    gate, up = inputs["gate"], inputs["up"]
    gate_before = gate.clone()
    up_before = up.clone() if up is not None else None
    h, bufs = run_impl(impl, inputs)
    ref_h, ref_bufs = reference_fp32(inputs)
    name = getattr(impl, "__name__", "fn")
    tag = (f"impl={name} act={inputs['act']} dtype={gate.dtype} M={gate.shape[0]} "
           f"I={gate.shape[1]}")
    if not _same_bits(gate, gate_before) or (up is not None and not _same_bits(up, up_before)):
        raise AssertionError(f"{tag}: the implementation modified its inputs gate/up")
    if h.dtype != gate.dtype or h.shape != gate.shape or h.device != gate.device:
        raise AssertionError(f"{tag}: h is {h.dtype} {list(h.shape)} on {h.device}, expected "
                             f"{gate.dtype} {list(gate.shape)} on {gate.device}")
    if inputs["counts"] is not None and not torch.equal(bufs["counts"], ref_bufs["counts"]):
        diff = (bufs["counts"] != ref_bufs["counts"]).nonzero()[0].tolist()
        raise AssertionError(f"{tag}: counts differ from the reference first at "
                             f"[lang, neuron] = {diff}: got {bufs['counts'][tuple(diff)].item()}, "
                             f"expected {ref_bufs['counts'][tuple(diff)].item()}")
    # Non-finite positions are compared after the oracle's cast to the input dtype (overflow).
    expected_h = ref_h.to(gate.dtype).double()
    expected_h = torch.where(expected_h.isfinite(), ref_h.double(), expected_h)
    assert_close_nonfinite(h, expected_h, h_error_bound(inputs, ref_h), f"{tag}: h")
    bounds = stats_error_bounds(inputs)
    for name in ("sums", "sumsq"):
        if inputs[name] is not None:
            assert_close_nonfinite(bufs[name], ref_bufs[name], bounds[name], f"{tag}: {name}")
    if inputs["hist"] is not None:
        assert_hist_matches(bufs["hist"], inputs["hist"], inputs, exact=hist_exact,
                            what=f"{tag}: hist")
    if inputs["amax"] is not None:
        K, I = inputs["amax"].shape
        assert_close_nonfinite(bufs["amax"], ref_bufs["amax"], amax_error_bound(inputs, K, I),
                               f"{tag}: amax")
    return h


# ---- the conformance cases (the self-check runs them on every implementation) ----------------

def act_cases(device, dtype) -> List[Tuple[str, Dict[str, object]]]:
    """(name, make_inputs keyword arguments) covering every activation, language slots, padding
    rows, steering groups in all four modes, sums / sums of squares, histograms, maxima and
    `gate_up` views."""
    cases = []
    for i, act in enumerate(ACTIVATIONS):
        layout = ("contiguous", "gate_up")[i % 2]
        cases.append((f"act={act} layout={layout} K=3 padding rows, 3 steering groups",
                      dict(M=37, I=45, K=3, act=act, layout=layout, negative_fraction=0.25,
                           sums_dtype=torch.float64, sumsq_dtype=torch.float32,
                           steer_groups=3, negative_group_fraction=0.25, seed=100 + i)))
    cases.append(("plain MLP (no up), default language and steering group",
                  dict(M=21, I=33, K=1, act="gelu", gated=False, default_lang=True,
                       sums_dtype=torch.float32, steer_groups=1, default_group=True, seed=99)))
    cases.append(("histograms, maxima and scale steering",
                  dict(M=40, I=36, K=2, act="silu", hist_bins=16, amax=True, steer_groups=2,
                       steer_modes=4, negative_group_fraction=0.2, seed=98)))
    return [(n, dict(kw, dtype=dtype, device=device)) for n, kw in cases]


def exact_gated_operands(M: int, H: int, I: int, dtype, device, seed: int, fused: bool):
    """x [M, H] and weights [I, H] whose products and sums are exact in every dtype (small
    dyadic values), so every summation order of the GEMM gives the same gate and up."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randint(-4, 5, (M, H), generator=gen).float() / 4).to(dtype).to(device)
    w = (torch.randint(-4, 5, (2 * I, H), generator=gen).float() / 8).to(dtype).to(device)
    if fused:
        return x, w[:I], w[I:]
    return x, w[:I].clone(), w[I:].clone()


def gated_cases(device, dtype) -> List[Tuple[str, GatedArgs]]:
    """(name, validated GatedArgs): every activation, fused and separate weights, padding rows,
    two steering groups (all four modes), counts, sums, histograms and maxima."""
    out = []
    for i, act in enumerate(ACTIVATIONS):
        fused = i % 2 == 1
        x, w_gate, w_up = exact_gated_operands(29, 24, 40, dtype, device, 200 + i, fused)
        gen = torch.Generator().manual_seed(300 + i)
        row_lang = torch.randint(-1, 3, (29,), generator=gen, dtype=torch.int32).to(device)
        row_group = torch.randint(-1, 2, (29,), generator=gen, dtype=torch.int32).to(device)
        mode = torch.randint(0, 4, (2, 40), generator=gen).to(torch.int8).to(device)
        value = torch.randn(2, 40, generator=gen).to(device)
        counts = torch.randint(0, 9, (3, 40), generator=gen).to(device)
        sums = torch.rand(3, 40, generator=gen, dtype=torch.float64).to(device)
        extra = {}
        if i == 0:
            edges = default_hist_edges(16).to(device)
            extra = dict(hist=torch.zeros(3, 40, 16, dtype=torch.int64, device=device),
                         hist_edges=edges,
                         amax=torch.full((3, 40), float("-inf"), device=device))
        args = GatedArgs.validate(x, w_gate, w_up, act, row_lang=row_lang, counts=counts,
                                  sums=sums, row_group=row_group, steer_mode=mode,
                                  steer_value=value, **extra)
        out.append((f"gated act={act} {'fused gate_up weight' if fused else 'two weights'} K=3 "
                    f"padding rows, 2 steering groups{', hist, amax' if extra else ''}", args))
    return out


def gated_mismatch(fn: Callable, args: GatedArgs) -> str:
    """'' when fn(args)'s h and buffers match the reference applied to the same gate and up
    (computed exactly: the operands are dyadic), else what differs."""
    def fresh(stats: StatArgs) -> StatArgs:
        return dataclasses.replace(stats, **{k: _clone(getattr(stats, k)) for k in BUFFERS})

    mine = dataclasses.replace(args, stats=fresh(args.stats))
    h = fn(mine)
    ref = fresh(args.stats)
    gate = (args.x2d.float() @ args.w_gate.float().T).to(args.x.dtype)
    up = (args.x2d.float() @ args.w_up.float().T).to(args.x.dtype)
    inputs = dict(gate=gate, up=up, act=args.act, row_lang=ref.row_lang, counts=ref.counts,
                  sums=ref.sums, sumsq=ref.sumsq, row_group=ref.row_group,
                  steer_mode=ref.steer_mode, steer_value=ref.steer_value, hist=ref.hist,
                  hist_edges=ref.hist_edges, amax=ref.amax)
    h_ref = act_stats_torch(gate.float(), up.float(), args.act, *ref.op_args())
    h = h.reshape(-1, args.I)
    if h.shape != h_ref.shape or h.dtype != args.x.dtype:
        return f"h is {h.dtype} {list(h.shape)}, expected {args.x.dtype} {list(h_ref.shape)}"
    if ref.counts is not None and not torch.equal(mine.stats.counts, ref.counts):
        return "counts differ from the reference"
    try:
        expected = h_ref.to(h.dtype).double()
        expected = torch.where(expected.isfinite(), h_ref.double(), expected)
        assert_close_nonfinite(h, expected, h_error_bound(inputs, h_ref), "h")
        before = dict(inputs, counts=args.stats.counts, sums=args.stats.sums,
                      sumsq=args.stats.sumsq)
        for name, bound in stats_error_bounds(before).items():
            assert_close_nonfinite(getattr(mine.stats, name), getattr(ref, name), bound, name)
        if ref.hist is not None:
            assert_hist_matches(mine.stats.hist, args.stats.hist, inputs, exact=False,
                                what="hist")
        if ref.amax is not None:
            K, I = ref.amax.shape
            assert_close_nonfinite(mine.stats.amax, ref.amax, amax_error_bound(inputs, K, I),
                                   "amax")
    except AssertionError as exc:
        return first_line(exc)
    return ""


def first_mismatch(op: str, fn: Callable, device, dtype) -> Tuple[str, str]:
    """('', '') when `fn` (an implementation of `op`: "act_stats" or "gated_mlp_stats") passes
    every conformance case on (device, dtype), else (the first failing case, what differed).
    Exceptions other than mismatches propagate."""
    if op == "act_stats":
        for name, kwargs in act_cases(device, dtype):
            try:
                assert_matches_reference(fn, **make_inputs(**kwargs))
            except AssertionError as exc:
                return name, first_line(exc)
        return "", ""
    for name, args in gated_cases(device, dtype):
        mismatch = gated_mismatch(fn, args)
        if mismatch:
            return name, mismatch
    return "", ""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _clone(t):
    return t.clone() if t is not None else None
