"""Test helpers: `ops/conformance.py` (the tolerance policy and the inputs) plus lookup of
implementations by their registered name. For tests only: no module of the package imports it
(tests/test_ops_imports.py checks that).

    from langneuron_ext.ops import testing
    inputs = testing.make_inputs(M=7, I=33, K=3, dtype=torch.float16, act="gelu")
    testing.assert_matches_reference("cpu", **inputs)
"""
from __future__ import annotations

from typing import Callable, Dict, List, Tuple, Union

import torch
from torch import Tensor

from . import conformance, dispatch, settings
from .conformance import (  # noqa: F401  (re-exported for tests)
    ACT_RTOL,
    ACT_XTOL,
    BUFFERS,
    DTYPES,
    H_TOLERANCE,
    OP_ARGS,
    STATS_ATOL,
    activation_error_bound,
    amax_error_bound,
    assert_close_nonfinite,
    assert_hist_matches,
    clone_inputs,
    counted_rows,
    exact_gated_operands,
    h_error_bound,
    make_inputs,
    reference_fp32,
    stats_error_bounds,
)
from .reference import act_stats_torch  # noqa: F401  (re-exported for tests)

Impl = Union[str, Callable]


def _fn(impl: Impl) -> Callable:
    if not isinstance(impl, str):
        return impl
    fn = dispatch.get(impl).fn

    def call(*args, **kwargs):
        return fn(*args, **kwargs)
    call.__name__ = impl
    return call


def run_impl(impl: Impl, inputs: Dict[str, object]) -> Tuple[Tensor, Dict[str, object]]:
    """Call implementation `impl` (a registered name, or its function) directly on a copy of
    `inputs`; return (h, buffers)."""
    return conformance.run_impl(_fn(impl), inputs)


def assert_matches_reference(impl: Impl, *, hist_exact: bool = False, **inputs) -> Tensor:
    """`conformance.assert_matches_reference` for a registered name or a function."""
    return conformance.assert_matches_reference(_fn(impl), hist_exact=hist_exact, **inputs)


def interpreting_triton() -> bool:
    """True when Triton kernels run on CPU tensors through the interpreter."""
    return settings.TRITON_INTERPRET


def implementations_under_test(device_type: str = "cpu") -> List[str]:
    """Names of the registered act_stats implementations that can run on `device_type` here
    (triton on CPU when the interpreter is on: it must then be called explicitly)."""
    return dispatch.under_test(device_type)


def dtypes_for(impl_name: str, device_type: str = "cpu") -> List[torch.dtype]:
    """The input dtypes `impl_name` claims to support on `device_type`."""
    impl = dispatch.get(impl_name)
    return [d for d in DTYPES if impl.supports(device_type, d)]
