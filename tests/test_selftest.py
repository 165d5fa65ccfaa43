"""First-use self-check (ops/selfcheck.py, cases in ops/conformance.py), tested with
deliberately wrong implementations: each is disabled for its (device, dtype, build) with ONE
warning that names the failing case, dispatch moves on to the next implementation, the result
is cached in memory and on disk, an explicit request says why it cannot run, and `langneuron
info --selftest` reports it."""
import contextlib
import json
import warnings

import pytest
import torch

from langneuron_ext.ops import dispatch, gated_mlp_stats, selfcheck
from langneuron_ext.ops.impl_torch import vendor_gated
from langneuron_ext.ops.reference import act_stats_torch


@pytest.fixture(autouse=True)
def fresh_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("LANGNEURON_CACHE", str(tmp_path))
    monkeypatch.delenv("LANGNEURON_IMPL", raising=False)
    monkeypatch.delenv("LANGNEURON_SELFCHECK", raising=False)
    dispatch.forget()
    yield
    dispatch.forget()


def wrong_on_gelu(gate, up, act, row_lang, counts, sums, sumsq, row_group, steer_mode,
                  steer_value, *hist_amax):
    """Right everywhere except one count per call when act == "gelu": a subtle bug."""
    h = act_stats_torch(gate, up, act, row_lang, counts, sums, sumsq, row_group, steer_mode,
                        steer_value, *hist_amax)
    if act == "gelu" and counts is not None:
        counts[0, 0] += 1
    return h


def steer_ignored(gate, up, act, row_lang, counts, sums, sumsq, row_group, steer_mode,
                  steer_value, *hist_amax):
    """Forgets steering altogether."""
    return act_stats_torch(gate, up, act, row_lang, counts, sums, sumsq, None, None, None,
                           *hist_amax)


@pytest.fixture
def register_wrong():
    """register_wrong(name, fn): a CPU implementation present until the test ends."""
    with contextlib.ExitStack() as stack:
        def register(name, fn, priority=99):
            return stack.enter_context(dispatch.registered(dispatch.Implementation(
                name, priority, fn, lambda: (True, ""),
                lambda device_type, dtype: device_type == "cpu")))
        yield register


def test_wrong_implementation_is_disabled_with_one_warning_naming_the_case(register_wrong):
    register_wrong("wrong", wrong_on_gelu)
    with pytest.warns(RuntimeWarning, match=r"'wrong' is disabled on cpu .*act=gelu"):
        assert dispatch.select_impl("cpu", torch.float32) == "cpu"     # the next one
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                 # no second warning
        assert dispatch.select_impl("cpu", torch.float32) == "cpu"
    stored = json.loads(selfcheck.cache_path().read_text())
    failed = [v for k, v in stored.items() if k.startswith("act_stats|wrong|")]
    assert len(failed) == 1 and not failed[0]["ok"] and "act=gelu" in failed[0]["case"]
    assert "counts differ" in failed[0]["message"]
    passed = [v for k, v in stored.items() if k.startswith("act_stats|cpu|")]
    assert passed and all(v["ok"] for v in passed)
    with pytest.raises(RuntimeError, match="failed its self-check on the case 'act=gelu"):
        dispatch.resolve("wrong", torch.device("cpu"), torch.float32)


def test_result_is_read_back_from_disk_without_rerunning(monkeypatch, register_wrong):
    register_wrong("wrong", steer_ignored)
    with pytest.warns(RuntimeWarning, match="steering groups"):
        dispatch.select_impl("cpu", torch.float16)
    dispatch.forget()                                       # a new process: memory forgotten
    monkeypatch.setattr(selfcheck, "_run_cases",
                        lambda *a: pytest.fail("the cached result was not used"))
    with pytest.warns(RuntimeWarning, match="disabled"):
        assert dispatch.select_impl("cpu", torch.float16) == "cpu"


def test_a_crash_counts_as_a_failure_and_other_dtypes_are_checked_separately(register_wrong):
    def crashes(gate, *args):
        if gate.dtype == torch.bfloat16:
            raise RuntimeError("illegal memory access")
        return act_stats_torch(gate, *args)
    register_wrong("crashy", crashes)
    assert dispatch.select_impl("cpu", torch.float32) == "crashy"     # fine in fp32
    with pytest.warns(RuntimeWarning, match="illegal memory access"):
        assert dispatch.select_impl("cpu", torch.bfloat16) == "cpu"


def test_wrong_gated_implementation_is_refused_with_the_case():
    def no_steering(args, act_impl=None):
        import dataclasses
        stats = dataclasses.replace(args.stats, row_group=None, steer_mode=None,
                                    steer_value=None, G=None)
        return vendor_gated(dataclasses.replace(args, stats=stats), act_impl)
    x = torch.randn(4, 8)
    w = torch.randn(6, 8)
    with dispatch.registered(dispatch.Implementation(
            "sloppy", 1, no_steering, lambda: (True, ""), lambda d, t: True,
            op=dispatch.GATED_MLP)), \
            pytest.warns(RuntimeWarning, match="'sloppy' is disabled"), \
            pytest.raises(RuntimeError, match="gated act=silu"):
        gated_mlp_stats(x, w[:3], w[3:], act="silu", gated_impl="sloppy")


def test_selfcheck_can_be_turned_off(monkeypatch, register_wrong):
    register_wrong("wrong", wrong_on_gelu)
    monkeypatch.setenv("LANGNEURON_SELFCHECK", "0")
    assert dispatch.select_impl("cpu", torch.float32) == "wrong"


def test_info_selftest_reports_pass_and_fail(monkeypatch, capsys, register_wrong):
    import argparse

    from langneuron_ext.cli import info
    register_wrong("wrong", wrong_on_gelu)
    real = dispatch.run_selfchecks
    # One dtype keeps this test short (every implementation, interpreter included, is rerun).
    monkeypatch.setattr(dispatch, "run_selfchecks",
                        lambda devices: real(devices, dtypes=(torch.float16,)))
    status = info.run(argparse.Namespace(json=True, selftest=True))
    report = json.loads(capsys.readouterr().out)
    rows = {(r["op"], r["impl"], r["dtype"]): r for r in report["selftest"]}
    assert rows[("act_stats", "cpu", "torch.float16")]["status"] == "pass"
    assert rows[("act_stats", "wrong", "torch.float16")]["status"] == "FAIL"
    assert "act=gelu" in rows[("act_stats", "wrong", "torch.float16")]["detail"]
    assert rows[("gated_mlp_stats", "vendor", "torch.float16")]["status"] == "pass"
    assert status == 1
    assert report["kernel_caches"]["selfcheck"] == str(selfcheck.cache_path())
    status = info.run(argparse.Namespace(json=False, selftest=False))
    text = capsys.readouterr().out
    assert "self-check results:" in text and "measured gated-MLP choice:" in text
