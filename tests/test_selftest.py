"""First-use self-check (ops/selfcheck.py), tested with deliberately wrong implementations:
each is disabled for its (device, dtype, build) with ONE warning that names the failing case,
dispatch moves on to the next implementation, the result is cached in memory and on disk, an
explicit request says why it cannot run, and `langneuron info --selftest` reports it."""
import json
import warnings

import pytest
import torch

from langneuron_ext.ops import dispatch, gated, selfcheck
from langneuron_ext.ops.reference import act_stats_torch


@pytest.fixture(autouse=True)
def fresh_caches(tmp_path, monkeypatch):
    monkeypatch.setenv("LANGNEURON_CACHE", str(tmp_path))
    monkeypatch.delenv("LANGNEURON_IMPL", raising=False)
    monkeypatch.delenv("LANGNEURON_SELFCHECK", raising=False)
    monkeypatch.setattr(selfcheck, "_MEMORY", {})
    monkeypatch.setattr(selfcheck, "_DISK", None)
    monkeypatch.setattr(selfcheck, "_WARNED", set())
    monkeypatch.setattr(dispatch, "_RESOLVED", {})
    monkeypatch.setattr(gated, "_RESOLVED", {})
    monkeypatch.setattr(gated, "_CHOICES", None)


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


def register_wrong(monkeypatch, name, fn, priority=99):
    impl = dispatch.Implementation(name, priority, fn, lambda: (True, ""),
                                   lambda device_type, dtype: device_type == "cpu")
    monkeypatch.setitem(dispatch._REGISTRY, name, impl)
    return impl


def test_wrong_implementation_is_disabled_with_one_warning_naming_the_case(monkeypatch):
    register_wrong(monkeypatch, "wrong", wrong_on_gelu)
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


def test_result_is_read_back_from_disk_without_rerunning(monkeypatch):
    register_wrong(monkeypatch, "wrong", steer_ignored)
    with pytest.warns(RuntimeWarning, match="steering groups"):
        dispatch.select_impl("cpu", torch.float16)
    monkeypatch.setattr(selfcheck, "_MEMORY", {})          # a new process: memory forgotten
    monkeypatch.setattr(selfcheck, "_DISK", None)
    monkeypatch.setattr(selfcheck, "_WARNED", set())
    monkeypatch.setattr(selfcheck, "_run_cases",
                        lambda *a: pytest.fail("the cached result was not used"))
    with pytest.warns(RuntimeWarning, match="disabled"):
        assert dispatch.select_impl("cpu", torch.float16) == "cpu"


def test_a_crash_counts_as_a_failure_and_other_dtypes_are_checked_separately(monkeypatch):
    def crashes(gate, *args):
        if gate.dtype == torch.bfloat16:
            raise RuntimeError("illegal memory access")
        return act_stats_torch(gate, *args)
    register_wrong(monkeypatch, "crashy", crashes)
    assert dispatch.select_impl("cpu", torch.float32) == "crashy"     # fine in fp32
    with pytest.warns(RuntimeWarning, match="illegal memory access"):
        assert dispatch.select_impl("cpu", torch.bfloat16) == "cpu"


def test_wrong_gated_implementation_is_refused_with_the_case(monkeypatch):
    def no_steering(args, act_impl=None):
        import dataclasses
        stats = dataclasses.replace(args.stats, row_group=None, steer_mode=None,
                                    steer_value=None, G=None)
        return gated.vendor_gated(dataclasses.replace(args, stats=stats), act_impl)
    monkeypatch.setitem(dispatch._GATED_REGISTRY, "sloppy", dispatch.Implementation(
        "sloppy", 1, no_steering, lambda: (True, ""), lambda d, t: True,
        op=dispatch.GATED_MLP))
    x = torch.randn(4, 8)
    w = torch.randn(6, 8)
    with pytest.warns(RuntimeWarning, match="'sloppy' is disabled"), \
            pytest.raises(RuntimeError, match="gated act=silu"):
        gated.gated_mlp_stats(x, w[:3], w[3:], act="silu", gated_impl="sloppy")


def test_selfcheck_can_be_turned_off(monkeypatch):
    register_wrong(monkeypatch, "wrong", wrong_on_gelu)
    monkeypatch.setenv("LANGNEURON_SELFCHECK", "0")
    assert dispatch.select_impl("cpu", torch.float32) == "wrong"


def test_info_selftest_reports_pass_and_fail(monkeypatch, capsys):
    import argparse

    from langneuron_ext.cli import info
    register_wrong(monkeypatch, "wrong", wrong_on_gelu)
    real = selfcheck.run_all
    # One dtype keeps this test short (every implementation, interpreter included, is rerun).
    monkeypatch.setattr(selfcheck, "run_all",
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
