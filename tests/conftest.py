"""Shared test setup.

Without a GPU the Triton kernels run under the Triton interpreter on CPU tensors; the variable
must be set before triton is first imported, hence here at the top.
"""
import os
import pathlib

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# --dtype auto is float32 on a CPU for the suite (bfloat16 on CPUs with native bf16 otherwise),
# so tests expecting float32 results pass on any runner; tests/test_dtype_auto.py covers both.
os.environ.setdefault("LANGNEURON_CPU_BF16", "0")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = SHARED / "fixtures"
HANDBOOK = pathlib.Path("/usr/share/doc/debian-handbook/html")


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"the shared fixtures are missing: expected {FIXTURES} beside the repository")
    return FIXTURES


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
