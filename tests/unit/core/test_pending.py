"""What a running domain's next start changes (numahook/core/pending.py): its live
definition against what its persistent definition renders to now (issue 31, item 6)."""

from __future__ import annotations

import pytest

from numahook import config
from numahook.core import cpulist, hardware, metadata, pending, render
from numahook.core.plan import Inputs, Plan
from numahook.core.topology import Topology
from numahook.host import sysfs
from tests.fixtures.hosts import HOSTS, build_sysfs
from tests.support.cli import RT, domain


@pytest.fixture(scope="module")
def quad(tmp_path_factory: pytest.TempPathFactory) -> Topology:
    return sysfs.read_topology(build_sysfs(tmp_path_factory.mktemp("quad"), HOSTS["quad-nosmt"]))


def inputs(topo: Topology, available: str = "0-31") -> Inputs:
    return Inputs(topology=topo, available=cpulist.parse(available),
                  config=config.parse("", "/etc/numahook/numahook.conf"))


def plan_of(xml: str, inp: Inputs) -> tuple[render.Parsed, Plan | None]:
    doc = render.parse(xml)
    assert doc.request is not None
    ev = hardware.evaluate(doc.facts, doc.request, inp)
    assert ev.failed is None, ev.failed
    return doc, ev.plan


def changes(live_xml: str, new_xml: str, inp: Inputs) -> list[str]:
    live = render.parse(live_xml)
    assert live.request is not None
    rt = cpulist.parse_mask(live.request.realtime_mask, live.facts.vcpus) \
        if live.request.realtime else frozenset()
    new, plan = plan_of(new_xml, inp)
    return pending.changes(live.facts, rt, live.request.realtime_priority,
                           metadata.held_cpus(live.root), new.facts, plan)


def running(xml: str, inp: Inputs) -> str:
    """The definition as it was rendered, and so as it runs."""
    return render.render_parsed(render.parse(xml), inp).xml


def test_the_same_definition_changes_nothing(quad: Topology) -> None:
    live = running(domain(realtime=RT), inputs(quad))
    assert changes(live, live, inputs(quad)) == []


def test_an_edited_realtime_mask_is_said_as_before_and_after(quad: Topology) -> None:
    """The issue's case: the mask of a running domain edited, its next start differs."""
    live = running(domain(realtime=RT), inputs(quad))
    edited = live.replace("mask='0-3,^1'", "mask='0-3'").replace('mask="0-3,^1"', 'mask="0-3"')
    assert edited != live
    # without an isolated emulator, it floats over the vCPUs that are not real-time
    assert changes(live, edited, inputs(quad)) == ["emulator: CPUs 1 -> 0-3",
                                                   "real-time vCPUs 0,2-3 -> 0-3"]
    higher = live.replace("<numahook:realtime ", "<numahook:realtime priority='5' ")
    assert changes(live, higher, inputs(quad)) == ["SCHED_FIFO priority 1 -> 5"]


def test_more_vcpus_and_memory_move_and_grow_the_cells(quad: Topology) -> None:
    live = running(domain(vcpus=2), inputs(quad))
    bigger = domain(vcpus=4, memory="<memory unit='MiB'>128</memory>")
    assert changes(live, bigger, inputs(quad)) == [
        "vCPUs 2 -> 4", "memory 64 MiB -> 128 MiB", "vCPU 2: CPU none -> 2",
        "vCPU 3: CPU none -> 3", "emulator: CPUs 0-1 -> 0-3",
        "guest cell 0: vCPUs 0-1, 64 MiB on host node 0 -> vCPUs 0-3, 128 MiB on host node 0"]


def test_a_host_that_changed_moves_the_vcpus_and_counts_past_four(quad: Topology) -> None:
    live = running(domain(vcpus=6), inputs(quad, "0-7"))
    moved = changes(live, live, inputs(quad, "8-15"))  # the cpuset moved to node 1
    assert moved[:4] == ["vCPU 0: CPU 0 -> 8", "vCPU 1: CPU 1 -> 9", "vCPU 2: CPU 2 -> 10",
                         "vCPU 3: CPU 3 -> 11"]
    assert moved[4:] == [
        "2 more vCPUs move", "emulator: CPUs 0-5 -> 8-13",
        "guest cell 0: vCPUs 0-5, 64 MiB on host node 0 -> vCPUs 0-5, 64 MiB on host node 1"]


def test_isolate_holds_siblings_and_a_bound_domain_its_node(tmp_path_factory:
                                                             pytest.TempPathFactory) -> None:
    intel = sysfs.read_topology(build_sysfs(tmp_path_factory.mktemp("intel"),
                                            HOSTS["intel-2s-ht"]))
    inp = inputs(intel, "0-79")
    live = running(domain(vcpus=2), inp)
    isolate = domain('dedicatedCpuPlacement="true" threadPolicy="isolate"', vcpus=2)
    assert "siblings held idle: none -> 40-41" in changes(live, isolate, inp)
    backing = ("<memoryBacking><hugepages><page size='2048' unit='KiB'/></hugepages>"
               "</memoryBacking>")
    bound = domain(numa=False, vcpus=2, backing=backing)
    out = changes(live, bound, inp)
    assert "guest NUMA cells 1 -> 0" in out
    assert "memory bound to host node none -> 0" in out


def test_dedicated_cpus_turned_off(quad: Topology) -> None:
    live = running(domain(numa=False, vcpus=2), inputs(quad))
    off = domain('dedicatedCpuPlacement="false"', numa=False, vcpus=2)
    assert changes(live, off, inputs(quad)) == [
        "dedicated CPUs -> none (dedicatedCpuPlacement is off)"]


def test_the_guest_topology_and_page_size(tmp_path_factory: pytest.TempPathFactory) -> None:
    intel = sysfs.read_topology(build_sysfs(tmp_path_factory.mktemp("intel"),
                                            HOSTS["intel-2s-ht"]))
    inp = inputs(intel, "0-79")
    two = "<cpu mode='host-passthrough'><topology sockets='1' dies='1' cores='2' threads='2'/>" \
          "</cpu>"
    live = running(domain(cpu=two), inp)
    flat = domain(cpu=two.replace("cores='2' threads='2'", "cores='4' threads='1'"))
    assert "guest topology (sockets x dies x cores x threads) 1x1x2x2 -> 1x1x4x1" in \
        changes(live, flat, inp)
    gig = domain(memory="<memory unit='GiB'>2</memory>", backing=(
        "<memoryBacking><hugepages><page size='1' unit='GiB'/></hugepages></memoryBacking>"))
    assert "hugepages 2 MiB -> 1 GiB" in changes(live, gig, inp)
