"""emulatorThreadPolicy="share" on this machine's libvirt: the emulator on [cpus] shared.

This machine has 2 CPUs: with ``shared = 0``, a real-time domain of one vCPU gets CPU 1
for it and runs its emulator on CPU 0, SCHED_OTHER; isolated, it would need 2 dedicated
CPUs and is refused here (CPU 0 is out of the dedicated pool).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from lab import guest
from lab.session import hook_config
from numahook import config
from numahook.core import render
from numahook.errors import Refusal
from numahook.ops import hostinputs
from numahook.state.statedir import StateDir
from tests.e2e.helpers import HOLD, metadata

CONF = "[realtime]\nthrottled = delegate\n[cpus]\nshared = 0\n"


@pytest.fixture
def shared_config() -> Iterator[config.Config]:
    """The hook's numahook.conf with CPU 0 shared (and RT delegation: this machine throttles)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 CPUs: one shared, one dedicated")
    with hook_config(CONF):
        yield config.parse(CONF)


def render_with(cfg: config.Config, xml: str) -> str:
    """What numahook render gives on this host with ``cfg``."""
    doc = render.parse(xml)
    inputs, _ = hostinputs.gather(cfg, doc.facts.partition, doc.facts.uuid or None,
                                  state=StateDir(cfg.state_dir), devices=doc.facts.bdfs)
    return render.render_parsed(doc, inputs).xml


def fifo(tid: int) -> bool:
    return os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO


def test_a_shared_emulator_runs_on_the_shared_cpu_sched_other(
        domains: Any, shared_config: config.Config) -> None:
    share = metadata(mask="0").replace("dedicatedCpuPlacement='true'",
                                       "dedicatedCpuPlacement='true' "
                                       "emulatorThreadPolicy='share'")
    xml = render_with(shared_config, domains.probe_xml(
        "share", vcpus=1, memory_mib=128, hugepage_kib=2048, cmdline=HOLD, extra=share))
    assert "<vcpupin vcpu='0' cpuset='1'/>" in xml
    assert "<emulatorpin cpuset='0'/>" in xml and "<emulatorsched" not in xml
    dom = domains.define(xml)
    domains.start(dom)
    pid, tids = guest.vcpu_threads(dom.name())
    assert pid is not None
    assert fifo(tids[0]) and os.sched_getaffinity(tids[0]) == {1}
    # the emulator: on the shared CPU, not real-time
    assert os.sched_getaffinity(pid) == {0}
    assert not fifo(pid) and os.sched_getscheduler(pid) == os.SCHED_OTHER


def test_the_same_domain_isolated_needs_a_cpu_the_shared_set_keeps(
        domains: Any, shared_config: config.Config) -> None:
    isolated = metadata(mask="0", isolate=True)
    with pytest.raises(Refusal) as exc:
        render_with(shared_config, domains.probe_xml(
            "shareiso", vcpus=1, memory_mib=128, hugepage_kib=2048, cmdline=HOLD,
            extra=isolated))
    assert exc.value.check == "dedicated-cpus"
    assert "set isolateEmulatorThread=\"false\"" in str(exc.value)


def test_a_mixed_real_time_domain_floats_vcpu_0_with_its_emulator(
        domains: Any, shared_config: config.Config) -> None:
    """The issue's proof: 2 vCPUs, dedicatedMask="1" and mask="1", shared = 0: vCPU 1 runs
    FIFO on CPU 1; vCPU 0 and the emulator run on CPU 0, SCHED_OTHER."""
    mixed = metadata(mask="1").replace("dedicatedCpuPlacement='true'",
                                       "dedicatedCpuPlacement='true' dedicatedMask='1' "
                                       "emulatorThreadPolicy='share'")
    xml = render_with(shared_config, domains.probe_xml(
        "mixed", vcpus=2, memory_mib=128, hugepage_kib=2048, cmdline=HOLD, extra=mixed))
    assert "<vcpupin vcpu='0' cpuset='0'/>" in xml and "<vcpupin vcpu='1' cpuset='1'/>" in xml
    assert "<emulatorpin cpuset='0'/>" in xml
    dom = domains.define(xml)
    domains.start(dom)
    pid, tids = guest.vcpu_threads(dom.name())
    assert pid is not None
    assert fifo(tids[1]) and os.sched_getaffinity(tids[1]) == {1}
    for tid in (tids[0], pid):
        assert os.sched_getaffinity(tid) == {0}
        assert os.sched_getscheduler(tid) == os.SCHED_OTHER
