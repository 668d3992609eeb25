"""The isolated emulator thread of a real-time domain is real-time too; libvirt's split
``<vcpusched>`` elements are not a stale definition.

Found by bench/latency.py: under TCG the emulator thread (QEMU's main loop) delivers the
guest's timer interrupts, so a SCHED_OTHER emulator behind a CPU hog delayed a FIFO vCPU's
timers by milliseconds; and libvirt stores ``<vcpusched vcpus='0-1'>`` as one element per
vCPU, which the hook took for a changed definition on real-time capable nodes.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from numahook import NAMESPACE, config, records
from numahook.core import domainxml, hardware, render
from numahook.core.plan import RENDER_VERSION, Inputs
from numahook.core.topology import Topology
from numahook.host import rtsched, sysfs
from numahook.host.rtsched import RUNTIME
from numahook.xml import safe
from tests.fixtures.hosts import HOSTS, build_sysfs


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Topology:
    return sysfs.read_topology(build_sysfs(tmp_path_factory.mktemp("h") / "q", HOSTS["quad-nosmt"]))


def inputs(topo: Topology, vcpusched: bool = True) -> Inputs:
    return Inputs(topology=topo, available=frozenset(topo.cpus), config=config.Config(),
                  emit_vcpusched=vcpusched)


def domain(isolate: bool, realtime: str = "<numahook:realtime priority='5'/>",
           vcpus: int = 2, cputune: str = "") -> str:
    iso = " isolateEmulatorThread='true'" if isolate else ""
    return f"""<domain type='kvm'>
  <name>vm</name>
  <uuid>5e1b1a5e-0000-4000-8000-0000000000ee</uuid>
  <metadata>
    <numahook:domain xmlns:numahook='{NAMESPACE}'>
      <numahook:cpu dedicatedCpuPlacement='true'{iso}><numahook:numa>
        <numahook:guestMappingPassthrough/></numahook:numa>{realtime}</numahook:cpu>
    </numahook:domain>
  </metadata>
  <memory unit='MiB'>64</memory>
  <memoryBacking><hugepages><page size='2048' unit='KiB'/></hugepages></memoryBacking>
  <vcpu placement='static'>{vcpus}</vcpu>
  {cputune}
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices><serial type='pty'/></devices>
</domain>
"""


def facts(xml: str) -> domainxml.DomainFacts:
    return domainxml.read(safe.parse(xml))


def test_isolated_emulator_of_a_realtime_domain_gets_emulatorsched(topo: Topology) -> None:
    res = render.render(domain(isolate=True), inputs(topo))
    assert res.plan.emulator_realtime
    assert "<emulatorsched scheduler='fifo' priority='5'/>" in res.xml
    assert facts(res.xml).emulatorsched == ("fifo", 5)
    assert not hardware.differences(facts(res.xml), res.plan)


def test_no_emulatorsched_without_isolation_or_realtime(topo: Topology) -> None:
    shared = render.render(domain(isolate=False), inputs(topo))
    assert not shared.plan.emulator_realtime  # it floats over vCPU CPUs: never FIFO there
    assert "emulatorsched" not in shared.xml
    plain = render.render(domain(isolate=True, realtime=""), inputs(topo))
    assert not plain.plan.emulator_realtime
    assert "emulatorsched" not in plain.xml


def test_throttled_node_drops_emulatorsched_and_the_hook_applies_it(topo: Topology) -> None:
    capable = render.render(domain(isolate=True), inputs(topo, vcpusched=True))
    moved = render.render(capable.xml, inputs(topo, vcpusched=False))
    assert moved.plan.emulator_realtime  # still real-time: applied at started
    assert "emulatorsched" not in moved.xml and "vcpusched" not in moved.xml
    stale = hardware.differences(facts(capable.xml), moved.plan)
    assert any("<emulatorsched>" in s for s in stale)


def test_definition_without_emulatorsched_is_tolerated_where_it_could_be(
        topo: Topology) -> None:
    throttled = render.render(domain(isolate=True), inputs(topo, vcpusched=False))
    plan = render.render(throttled.xml, inputs(topo, vcpusched=True)).plan
    assert not hardware.differences(facts(throttled.xml), plan)


def test_plans_without_emulator_realtime_keep_their_digest(topo: Topology) -> None:
    """Fields added later (the real-time emulator, held siblings, expander buses, the one
    memory node of a hugepage domain without passthrough) join the digest only when set:
    a plan without them digests as before they existed."""
    plan = render.render(domain(isolate=False), inputs(topo)).plan
    fields = [(f, getattr(plan, f)) for f in records.field_names(plan)
              if f not in ("kept_pinning", "emulator_realtime", "held", "buses",
                            "memory_node", "memory_pages", "emulator_start",
                            "emulator_shared", "floating", "float_cpus")]
    import hashlib

    raw = repr((RENDER_VERSION, fields)).encode()
    assert plan.digest() == "sha256:" + hashlib.sha256(raw).hexdigest()[:32]


def test_vcpusched_split_per_vcpu_by_libvirt_is_not_stale(topo: Topology) -> None:
    """libvirt stores <vcpusched vcpus='0-1'> as one element per vCPU."""
    res = render.render(domain(isolate=False, realtime="<numahook:realtime/>"), inputs(topo))
    assert "<vcpusched vcpus='0-1' scheduler='fifo' priority='1'/>" in res.xml
    as_libvirt_stores_it = res.xml.replace(
        "<vcpusched vcpus='0-1' scheduler='fifo' priority='1'/>",
        "<vcpusched vcpus='0' scheduler='fifo' priority='1'/>"
        "<vcpusched vcpus='1' scheduler='fifo' priority='1'/>")
    assert not hardware.differences(facts(as_libvirt_stores_it), res.plan)
    other_prio = as_libvirt_stores_it.replace("vcpus='1' scheduler='fifo' priority='1'",
                                              "vcpus='1' scheduler='fifo' priority='2'")
    assert hardware.differences(facts(other_prio), res.plan)


# ---------------------------------------------------------------- the real kernel

_FOUND = rtsched.cpu_controller()
CPU = Path(_FOUND) if _FOUND is not None else None


@pytest.fixture
def dom_groups() -> Iterator[SimpleNamespace]:
    """numahook-test-emu-<pid>/dom/{vcpu0,emulator}, a sleeping process in each."""
    if os.geteuid() != 0 or CPU is None or not (CPU / RUNTIME).is_file():
        pytest.skip("needs root and the cgroup v1 cpu controller with RT group scheduling")
    if rtsched.rt_sysctl()[0] < 0:
        pytest.skip("RT throttling is off on this host (kernel.sched_rt_runtime_us is -1)")
    base = CPU / f"numahook-test-emu-{os.getpid()}"
    groups = [base, base / "dom", base / "dom" / "vcpu0", base / "dom" / "emulator"]
    made: list[Path] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for g in groups:
            g.mkdir()
            made.append(g)
        for g in groups[2:]:
            p = subprocess.Popen(["sleep", "300"])
            procs.append(p)
            (g / "tasks").write_text(str(p.pid))
        yield SimpleNamespace(groups=groups, vcpu=procs[0].pid, emulator=procs[1].pid)
    finally:
        for p in procs:
            try:
                os.sched_setscheduler(p.pid, os.SCHED_OTHER, os.sched_param(0))
                (CPU / "tasks").write_text(str(p.pid))
            except OSError:
                pass
            p.kill()
            p.wait()
        for g in reversed(made):
            try:
                (g / RUNTIME).write_text("0")
            except OSError:
                pass
        for g in reversed(made):
            if g.is_dir():
                g.rmdir()


def test_real_emulator_thread_gets_budget_and_fifo(dom_groups: SimpleNamespace) -> None:
    """Each leaf gets the cap, or an even share of what the root has left when other groups
    (a running domain's machine slice) hold budget: the host's own state, not a constant."""
    base = dom_groups.groups[0]
    held = sum(int((d / RUNTIME).read_text()) for d in CPU.iterdir()
               if d.is_dir() and d != base and (d / RUNTIME).is_file())
    share = min(100000, (int((CPU / RUNTIME).read_text()) - held) // 2)
    records: list[rtsched.BudgetRecord] = []
    res = rtsched.apply({0: dom_groups.vcpu}, {0}, 3, allow_delegation=True, cap_us=100000,
                        emulator_tid=dom_groups.emulator,
                        journal=lambda r: records.__setitem__(slice(None), r))
    try:
        assert res.path == "budget" and "emulator" in res.message
        for tid in (dom_groups.vcpu, dom_groups.emulator):
            assert (os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK) == os.SCHED_FIFO
            assert os.sched_getparam(tid).sched_priority == 3
        vcpu0, emulator = dom_groups.groups[2:]
        assert int((vcpu0 / RUNTIME).read_text()) == share
        assert int((emulator / RUNTIME).read_text()) == share
        assert int((dom_groups.groups[1] / RUNTIME).read_text()) >= 2 * share
    finally:
        for tid in (dom_groups.vcpu, dom_groups.emulator):
            os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
        rtsched.undelegate(res.records)
