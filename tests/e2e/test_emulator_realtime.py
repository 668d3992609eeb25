"""The isolated emulator thread of a real-time domain runs SCHED_FIFO (found by
bench/latency.py: under TCG it delivers the guest's timer interrupts)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from lab import guest
from numahook.host import rtsched
from tests.e2e.helpers import HOLD, delegate_config, metadata, render_here

__all__ = ["delegate_config"]  # a fixture, used by name


def fifo(tid: int) -> bool:
    """SCHED_FIFO, with or without SCHED_RESET_ON_FORK (which numahook sets)."""
    return os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO


def test_isolated_emulator_is_fifo_with_delegation(domains: Any, delegate_config: None) -> None:
    if not rtsched.needs_group_budget():
        pytest.skip("this kernel needs no RT group budget; the delegation path is not taken")
    xml = render_here(domains.probe_xml("emurt", vcpus=1, memory_mib=128, hugepage_kib=2048,
                                        cmdline=HOLD, extra=metadata(mask="0", isolate=True)))
    assert "emulatorpin cpuset='1'" in xml and "<emulatorsched" not in xml
    dom = domains.define(xml)
    domains.start(dom)
    pid, tids = guest.vcpu_threads(dom.name())
    assert pid is not None
    for tid in (tids[0], pid):
        assert fifo(tid)
        assert os.sched_getparam(tid).sched_priority == 1
    assert os.sched_getaffinity(pid) == {1}


def test_isolated_emulator_is_fifo_via_emulatorsched_on_a_capable_node(domains: Any) -> None:
    from lab import env

    if rtsched.cpu_controller() is None:
        pytest.skip("no cgroup v1 cpu controller")
    sysctl = "/proc/sys/kernel/sched_rt_runtime_us"
    original = open(sysctl).read().strip()
    try:
        env.set_value("kernel.sched_rt_runtime_us", "-1")
        xml = render_here(domains.probe_xml("emusched", vcpus=1, memory_mib=128,
                                            hugepage_kib=2048, cmdline=HOLD,
                                            extra=metadata(mask="0", isolate=True)))
        assert "<emulatorsched scheduler='fifo' priority='1'/>" in xml
        dom = domains.define(xml)
        domains.start(dom)
        pid, tids = guest.vcpu_threads(dom.name())
        assert pid is not None
        assert fifo(pid) and fifo(tids[0])
        domains.stop(dom)  # no FIFO thread may sit in a zero-budget group once throttled
    finally:
        with open(sysctl, "w") as fh:
            fh.write(original)
