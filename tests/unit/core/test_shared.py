"""The host's shared CPUs (numahook/core/shared.py) and emulatorThreadPolicy="share".

Refusals are in test_hardware_refusals.py; the renderings on fixture hosts are golden
cases (intel-share-realtime, quad-share-span-v2).
"""

from __future__ import annotations

import pytest

from numahook import NAMESPACE, config
from numahook.core import cpulist, render, shared
from numahook.core.plan import Inputs, Plan
from numahook.core.topology import Topology
from numahook.host import sysfs
from numahook.records import replace
from tests.fixtures.hosts import HOSTS, build_sysfs

NUMA = "<numahook:numa><numahook:guestMappingPassthrough/></numahook:numa>"


@pytest.fixture(scope="module")
def topos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Topology]:
    base = tmp_path_factory.mktemp("hosts")
    return {n: sysfs.read_topology(build_sysfs(base / n, HOSTS[n]))
            for n in ("quad-nosmt", "intel-2s-ht", "epyc-nps4")}


def dom(attrs: str, vcpus: int = 4, realtime: str = "", iothreads: int = 0,
        threads: int = 1) -> str:
    return f"""<domain type='kvm'>
  <name>vm</name>
  <metadata>
    <numahook:domain xmlns:numahook="{NAMESPACE}">
      <numahook:cpu dedicatedCpuPlacement="true" {attrs}>{NUMA}{realtime}</numahook:cpu>
    </numahook:domain>
  </metadata>
  <memory unit='MiB'>64</memory>
  <memoryBacking><hugepages><page size='2048' unit='KiB'/></hugepages></memoryBacking>
  <vcpu placement='static'>{vcpus}</vcpu>
  {f"<iothreads>{iothreads}</iothreads>" if iothreads else ""}
  <cpu mode='host-passthrough'><topology sockets='1' dies='1' cores='{vcpus // threads}'
    threads='{threads}'/></cpu>
</domain>"""


def inputs(topo: Topology, available: str, shared_cpus: str = "") -> Inputs:
    text = f"[cpus]\nshared = {shared_cpus}\n" if shared_cpus else ""
    return Inputs(topology=topo, available=cpulist.parse(available),
                  config=config.parse(text, "/etc/numahook/numahook.conf"))


def plan(xml: str, inp: Inputs) -> Plan:
    result = render.render(xml, inp)
    assert result.plan is not None
    return result.plan


def test_the_pool_is_the_available_cpus_less_the_shared_set(topos: dict[str, Topology]) -> None:
    assert shared.pool(inputs(topos["quad-nosmt"], "0-7", "0-1,30")) == frozenset(range(2, 8))
    assert shared.pool(inputs(topos["quad-nosmt"], "0-7")) == frozenset(range(8))


def test_share_puts_the_emulator_and_io_threads_on_the_shared_set(
        topos: dict[str, Topology]) -> None:
    got = plan(dom('emulatorThreadPolicy="share" ioThreadsPolicy="auto"', iothreads=3),
               inputs(topos["quad-nosmt"], "0-31", "0-1"))
    assert got.emulator == (0, 1) and got.emulator_shared
    assert got.iothread_pins == ((1, (0,)), (2, (1,)), (3, (0,)))
    assert not set(got.vcpu_pins) & {0, 1}
    # no dedicated CPU is spent on the emulator: the domain holds its vCPUs' CPUs only
    assert got.cpus == frozenset(got.vcpu_pins)


def test_share_spends_one_cpu_less_than_isolate(topos: dict[str, Topology]) -> None:
    inp = inputs(topos["quad-nosmt"], "0-31", "0")
    isolated = plan(dom('emulatorThreadPolicy="isolate"'), inp)
    shared_ = plan(dom('emulatorThreadPolicy="share"'), inp)
    assert len(isolated.cpus) == 5 and len(shared_.cpus) == 4


def test_share_under_thread_policy_isolate_spends_no_core(topos: dict[str, Topology]) -> None:
    """With threadPolicy isolate an isolated emulator takes a whole core; shared, none."""
    inp = inputs(topos["intel-2s-ht"], "0-79", "0,40")
    isolated = plan(dom('threadPolicy="isolate" emulatorThreadPolicy="isolate"'), inp)
    shared_ = plan(dom('threadPolicy="isolate" emulatorThreadPolicy="share"'), inp)
    assert len(isolated.cpus) == 10 and len(shared_.cpus) == 8
    assert shared_.emulator == (0, 40) and not shared_.cpus & {0, 40}


def test_a_real_time_domain_s_shared_emulator_stays_sched_other(
        topos: dict[str, Topology]) -> None:
    got = plan(dom('emulatorThreadPolicy="share"', realtime="<numahook:realtime/>"),
               inputs(topos["quad-nosmt"], "0-31", "0"))
    assert got.realtime_vcpus == (0, 1, 2, 3)
    assert not got.emulator_realtime
    xml = render.render(dom('emulatorThreadPolicy="share"', realtime="<numahook:realtime/>"),
                        inputs(topos["quad-nosmt"], "0-31", "0")).xml
    assert "<emulatorsched" not in xml and "<emulatorpin cpuset='0'/>" in xml


def test_the_alias_and_the_new_name_render_alike(topos: dict[str, Topology]) -> None:
    inp = inputs(topos["quad-nosmt"], "0-31", "0")
    old = plan(dom('isolateEmulatorThread="true"'), inp)
    assert plan(dom('emulatorThreadPolicy="isolate"'), inp) == old
    assert plan(dom('isolateEmulatorThread="true" emulatorThreadPolicy="isolate"'), inp) == old
    assert not old.emulator_shared and old.emulator[0] not in old.vcpu_pins


def test_a_shared_set_off_the_cells_nodes_borrows_a_vcpu_cpu_while_qemu_starts(
        topos: dict[str, Topology]) -> None:
    """core/prealloc: the emulator's start set must reach every cell's node; the shared
    set (node 0) misses node 1, so non-real-time vCPU 0's CPU there is lent."""
    got = plan(dom('emulatorThreadPolicy="share"', vcpus=3,
                   realtime="<numahook:realtime mask='1-2'/>"),
               inputs(topos["quad-nosmt"], "0-1,8-11", "0-1"))
    assert got.vcpu_pins == (8, 9, 10) and got.emulator == (0, 1)
    assert got.emulator_start == (0, 1, 8) and got.emulator_pin == (0, 1, 8)
    assert got.cpus == frozenset({8, 9, 10})


def test_a_shared_set_on_the_cells_node_needs_no_start_set(topos: dict[str, Topology]) -> None:
    got = plan(dom('emulatorThreadPolicy="share"'), inputs(topos["quad-nosmt"], "0-7", "0"))
    assert got.emulator_start == () and got.emulator_pin == (0,)


@pytest.mark.parametrize("host", ["quad-nosmt", "intel-2s-ht", "epyc-nps4"])
@pytest.mark.parametrize("policy", ["", 'emulatorThreadPolicy="isolate"',
                                    'emulatorThreadPolicy="share"'])
def test_no_dedicated_cpu_is_ever_in_the_shared_set(topos: dict[str, Topology], host: str,
                                                     policy: str) -> None:
    topo = topos[host]
    everything = cpulist.format(topo.cpus)
    for first in range(0, len(topo.cpus), 7):
        shared_cpus = cpulist.format(sorted(topo.cpus)[first:first + 3])
        threads = 1 if host == "quad-nosmt" else 2
        got = plan(dom(policy, vcpus=8, threads=threads), inputs(topo, everything, shared_cpus))
        assert not got.cpus & cpulist.parse(shared_cpus), (shared_cpus, got)
        assert len(got.cpus) == 8 + (policy.endswith('"isolate"'))


def test_inputs_without_a_partition_skip_the_partition_rule(topos: dict[str, Topology]) -> None:
    inp = inputs(topos["quad-nosmt"], "8-15", "0")
    assert shared.problem(inp, "vm", "share") == ""
    assert shared.problem(replace(inp, partition_cpus=frozenset(range(8, 16))), "vm",
                          "share").startswith("[cpus] shared in ")


# --------------------------------------------------------------------------- dedicatedMask


def test_mixed_pins_the_vcpus_outside_the_mask_to_the_shared_set(
        topos: dict[str, Topology]) -> None:
    got = plan(dom('dedicatedMask="2-3" emulatorThreadPolicy="share"',
                   realtime="<numahook:realtime mask='3'/>"),
               inputs(topos["quad-nosmt"], "0-31", "0-1"))
    assert got.floating == (0, 1) and got.float_cpus == (0, 1)
    assert got.pin(0) == got.pin(1) == (0, 1)
    assert len(got.dedicated_pins) == 2 and not set(got.dedicated_pins) & {0, 1}
    # the domain holds its dedicated vCPUs' CPUs, no more: a floating vCPU holds nothing
    assert got.cpus == frozenset(got.dedicated_pins)
    assert got.realtime_vcpus == (3,)
    xml = render.render(dom('dedicatedMask="2-3" emulatorThreadPolicy="share"',
                            realtime="<numahook:realtime mask='3'/>"),
                        inputs(topos["quad-nosmt"], "0-31", "0-1")).xml
    assert "<vcpupin vcpu='0' cpuset='0-1'/>" in xml
    assert "<vcpusched vcpus='3' scheduler='fifo' priority='1'/>" in xml


def test_a_mask_of_every_vcpu_is_as_no_mask(topos: dict[str, Topology]) -> None:
    inp = inputs(topos["quad-nosmt"], "0-31", "0")
    assert plan(dom('dedicatedMask="0-3"'), inp) == plan(dom(""), inp)


def test_floating_vcpus_join_the_cell_whose_node_holds_the_shared_cpus(
        topos: dict[str, Topology]) -> None:
    """Two cells (nodes 0 and 1); the shared CPU 8 is on node 1, the second cell."""
    got = plan(dom('dedicatedMask="1-4"', vcpus=5), inputs(topos["quad-nosmt"], "6-8,9-10",
                                                            "8"))
    assert [c.host_node for c in got.cells] == [0, 1]
    assert 0 in got.cells[1].vcpus and 0 not in got.cells[0].vcpus
    assert sorted(v for c in got.cells for v in c.vcpus) == [0, 1, 2, 3, 4]


def test_floating_vcpus_join_the_first_cell_when_no_cell_holds_the_shared_cpus(
        topos: dict[str, Topology]) -> None:
    got = plan(dom('dedicatedMask="1-2"', vcpus=3), inputs(topos["quad-nosmt"], "8-9,16",
                                                            "16"))
    assert [c.vcpus for c in got.cells] == [(0, 1, 2)]


def test_thread_policy_isolate_applies_to_the_dedicated_vcpus_only(
        topos: dict[str, Topology]) -> None:
    got = plan(dom('dedicatedMask="2-3" threadPolicy="isolate"'),
               inputs(topos["intel-2s-ht"], "0-79", "0,40"))
    assert len(got.dedicated_pins) == 2 and len(got.held) == 2
    assert got.cpus == frozenset(got.dedicated_pins) | frozenset(got.held)


def test_a_mixed_domain_keeps_its_pinning_when_rendered_again(
        topos: dict[str, Topology]) -> None:
    inp = inputs(topos["quad-nosmt"], "0-31", "0")
    first = render.render(dom('dedicatedMask="1-3"'), inp)
    again = render.render(first.xml, inp)
    assert again.xml == first.xml and again.plan is not None and again.plan.kept_pinning


@pytest.mark.parametrize("host", ["quad-nosmt", "intel-2s-ht", "epyc-nps4"])
@pytest.mark.parametrize("policy", ["", 'emulatorThreadPolicy="share"'])
def test_dedicated_cpus_held_equal_the_dedicated_vcpus(topos: dict[str, Topology],
                                                      host: str, policy: str) -> None:
    """The issue's property: a mixed domain holds one CPU per dedicated vCPU, none in the
    shared set, and no floating vCPU is real-time."""
    topo = topos[host]
    everything = cpulist.format(topo.cpus)
    for mask in ("0", "2-7", "^1", "1,3,5,7"):
        got = plan(dom(f'dedicatedMask="{mask}" {policy}', vcpus=8,
                       realtime=f"<numahook:realtime mask='{mask}'/>"),
                   inputs(topo, everything, "0-1"))
        dedicated = cpulist.parse_mask(mask, 8)
        assert len(got.cpus) == len(dedicated) and not got.cpus & {0, 1}
        assert set(got.realtime_vcpus) == dedicated
        assert not set(got.floating) & set(got.realtime_vcpus)
