"""`--dtype auto`: bfloat16 on GPUs and on CPUs with native bf16 (AVX-512 BF16 or AMX), float32
on other CPUs; torch's CPU capability mocked both ways."""
import pytest
import torch

from langneuron_ext.cli import options
from langneuron_ext.models import dtype_auto
from langneuron_ext.models.loading import resolve_dtype, resolve_dtype_for

BASE = {"avx2": True, "avx512_f": True, "amx_tile": False, "cpu_name": "test"}


def _capability(monkeypatch, **flags):
    monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", lambda: dict(BASE, **flags))


@pytest.fixture
def detect(monkeypatch):
    """Detection from the (mocked) capability, not the suite's LANGNEURON_CPU_BF16=0."""
    monkeypatch.delenv(dtype_auto.ENV_OVERRIDE, raising=False)


@pytest.mark.parametrize("flags, native", [
    (dict(avx512_bf16=True, amx_bf16=False), True),
    (dict(avx512_bf16=False, amx_bf16=True), True),
    (dict(avx512_bf16=False, amx_bf16=False), False),
    ({}, False),                                   # a torch that does not report the flags
])
def test_cpu_with_and_without_native_bf16(monkeypatch, detect, flags, native):
    _capability(monkeypatch, **flags)
    assert dtype_auto.cpu_has_native_bf16() is native
    want = "bfloat16" if native else "float32"
    assert dtype_auto.auto_dtype_name("cpu") == want
    assert resolve_dtype_for("auto", "cpu") == want
    assert resolve_dtype_for(None, "cpu") == want
    assert resolve_dtype_for("auto", None, {"model": "cpu"}) == want
    assert resolve_dtype(resolve_dtype_for("auto", "cpu")) == getattr(torch, want)
    # an explicit dtype and a GPU do not depend on the CPU
    assert resolve_dtype_for("float32", "cpu") == "float32"
    assert resolve_dtype_for("bf16", "cpu") == "bfloat16"
    assert resolve_dtype_for("auto", "cuda") == "bfloat16"
    assert dtype_auto.auto_dtype_name("mps") == "float32"


def test_capability_unavailable_means_float32(monkeypatch, detect):
    def broken():
        raise RuntimeError("no cpuinfo")
    monkeypatch.setattr(torch._C._cpu, "_get_cpu_capability", broken)
    assert dtype_auto.cpu_bf16_features() == {"avx512_bf16": False, "amx_bf16": False}
    assert resolve_dtype_for("auto", "cpu") == "float32"


def test_environment_overrides_detection(monkeypatch):
    _capability(monkeypatch, avx512_bf16=True)
    monkeypatch.setenv(dtype_auto.ENV_OVERRIDE, "0")
    assert resolve_dtype_for("auto", "cpu") == "float32"
    _capability(monkeypatch, avx512_bf16=False, amx_bf16=False)
    monkeypatch.setenv(dtype_auto.ENV_OVERRIDE, "1")
    assert resolve_dtype_for("auto", "cpu") == "bfloat16"
    monkeypatch.setenv(dtype_auto.ENV_OVERRIDE, "yes")
    with pytest.raises(ValueError, match="LANGNEURON_CPU_BF16='yes'"):
        resolve_dtype_for("auto", "cpu")


@pytest.mark.parametrize("native", [True, False])
def test_cli_impl_check_resolves_auto_like_loading(monkeypatch, detect, native):
    """The --impl check reads --dtype auto as the load will: with the reference
    implementation forced, the dtype it is checked for follows the CPU."""
    _capability(monkeypatch, avx512_bf16=native, amx_bf16=False)
    seen = []
    from langneuron_ext.ops import dispatch
    monkeypatch.setattr(dispatch, "select_impl",
                        lambda device, dtype, requested=None: seen.append(dtype) or requested)
    args = type("Args", (), dict(device="cpu", impl="torch", dtype="auto"))()
    options.resolve_device_and_impl(args)
    assert seen == [torch.bfloat16 if native else torch.float32]


@pytest.mark.parametrize("verb", ["scan", "evaluate", "steer", "demo"])
def test_verbs_default_to_auto(verb):
    from langneuron_ext.cli import build_parser
    parser = build_parser()
    action = next(a for a in parser._subparsers._group_actions[0].choices[verb]._actions
                  if a.dest == "dtype")
    assert action.default == "auto" and "auto" in action.choices
