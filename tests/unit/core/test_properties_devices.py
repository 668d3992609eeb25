"""Property tests of device locality and SMT policy: random hosts, devices and free CPUs.

* ``pciNumaAffinity='required'``: every vCPU of a plan is on a passthrough device's node,
  and a refusal happens only when the devices' nodes really cannot hold the vCPUs.
* ``threadPolicy='isolate'``: each vCPU has a core of its own, the core's other threads
  are held, and no other domain (allocated from what is left) ever gets one of them.
* PCINUMAAwareTopology: a device whose node holds a guest cell sits behind an expander
  bus of that cell and its root complex; the rendering is stable.

Counted independently of the allocator's helpers.
"""

from __future__ import annotations

from hypothesis import assume, event, given
from hypothesis import strategies as st

from numahook import NAMESPACE, config
from numahook.core import domainxml, hardware, render
from numahook.core.pci import HostPci
from numahook.core.plan import Inputs, Plan
from numahook.core.topology import Topology
from numahook.errors import Refusal
from numahook.xml import safe
from tests.fixtures.randomhosts import PAGE, SETTINGS, topologies


def xml(vcpus: int, attrs: str, *, devices: list[str] = (), passthrough: bool = False,  # type: ignore[assignment]
        name: str = "prop", uuid: str = "5e1b1a5e-0000-4000-8000-00000000beef") -> str:
    hostdevs = "".join(
        f"<hostdev mode='subsystem' type='pci'><source><address domain='0x0000' "
        f"bus='0x{b[5:7]}' slot='0x00' function='0x0'/></source></hostdev>" for b in devices)
    numa = ("<numahook:numa><numahook:guestMappingPassthrough/></numahook:numa>"
            if passthrough else "")
    backing = ("<memoryBacking><hugepages><page size='2048' unit='KiB'/></hugepages>"
               "</memoryBacking>" if passthrough else "")
    return f"""<domain type='kvm'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <metadata>
    <numahook:domain xmlns:numahook="{NAMESPACE}">
      <numahook:cpu dedicatedCpuPlacement="true"{attrs}>{numa}</numahook:cpu>
    </numahook:domain>
  </metadata>
  <memory unit='KiB'>{8 * PAGE}</memory>
  {backing}
  <vcpu placement='static'>{vcpus}</vcpu>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <cpu><topology sockets='1' dies='1' cores='{vcpus}' threads='1'/></cpu>
  <devices>{hostdevs}</devices>
</domain>"""


def plan_of(topo: Topology, available: frozenset[int], text: str,
            devices: dict[str, HostPci] | None = None) -> tuple[Plan | None, str | None]:
    doc = render.parse(text)
    assert doc.request is not None
    ev = hardware.evaluate(doc.facts, doc.request, Inputs(topology=topo, available=available,
                                                          config=config.Config(),
                                                          devices=devices or {}))
    bad = ev.failed
    assert bad is None or "\n" not in bad.reason
    return ev.plan, bad.name if bad is not None else None


@st.composite
def frees(draw: st.DrawFn, topo: Topology) -> frozenset[int]:
    ids = sorted(topo.cpus)
    return draw(st.one_of(st.just(frozenset(ids)), st.frozensets(st.sampled_from(ids),
                                                                  min_size=1)))


# --------------------------------------------------------------------------- required


@SETTINGS
@given(st.data())
def test_required_means_every_vcpu_is_local(data: st.DataObject) -> None:
    topo = data.draw(topologies())
    with_cpus = sorted(n for n, node in topo.nodes.items() if node.cpus)
    assume(len(with_cpus) > 1)
    available = data.draw(frees(topo))
    dev_nodes = data.draw(st.sets(st.sampled_from(with_cpus), min_size=1, max_size=2))
    devices = {f"0000:{0x10 + i:02x}:00.0": HostPci(f"0000:{0x10 + i:02x}:00.0", True, n,
                                                    f"pci0000:{0x10 + i:02x}")
               for i, n in enumerate(sorted(dev_nodes))}
    vcpus = data.draw(st.integers(1, max(1, len(available))))
    passthrough = data.draw(st.booleans())
    plan, failed = plan_of(topo, available, xml(vcpus, " pciNumaAffinity='required'",
                                                devices=list(devices), passthrough=passthrough),
                           devices)
    local = {c for c in available if topo.node_of(c) in dev_nodes
             and (not passthrough or topo.nodes[topo.node_of(c)].memory_kib > 0)}
    event(f"required: {failed or 'planned'}")
    if plan is not None:
        assert {topo.node_of(c) for c in plan.vcpu_pins} <= dev_nodes
        assert set(plan.vcpu_pins) <= local
    else:
        assert failed in ("pci-numa-affinity", "memory-page-per-cell")
        if failed == "pci-numa-affinity":
            assert len(local) < vcpus  # the devices' nodes truly cannot hold them


# --------------------------------------------------------------------------- isolate


def core_of(topo: Topology, cpu: int) -> tuple[int, int, int]:
    c = topo.cpus[cpu]
    return (c.package, c.die, c.core)


def whole_free_cores(topo: Topology, free: frozenset[int]) -> int:
    cores: dict[tuple[int, int, int], set[int]] = {}
    for c in topo.cpus:
        cores.setdefault(core_of(topo, c), set()).add(c)
    return sum(1 for cpus in cores.values() if cpus <= free)


@SETTINGS
@given(st.data())
def test_isolated_siblings_never_go_to_another_domain(data: st.DataObject) -> None:
    topo = data.draw(topologies())
    available = data.draw(frees(topo))
    vcpus = data.draw(st.integers(1, max(1, len(available) // 2 + 1)))
    emulator = data.draw(st.booleans())
    attrs = " threadPolicy='isolate'" + (" isolateEmulatorThread='true'" if emulator else "")
    plan, failed = plan_of(topo, available, xml(vcpus, attrs))
    event(f"isolate: {failed or 'planned'}, held {'some' if plan and plan.held else 'none'}")
    if plan is None:
        assert failed == "dedicated-cpus"
        assert whole_free_cores(topo, available) < vcpus + (1 if emulator else 0)
        return
    pins = plan.vcpu_pins
    cores = [core_of(topo, c) for c in pins]
    assert len(set(cores)) == len(pins), "two vCPUs share a core"
    siblings = {s for c in pins for s in topo.cpus[c].siblings}
    assert set(plan.held) == siblings - set(pins)
    assert plan.cpus <= available
    if emulator:
        emu_cores = {core_of(topo, c) for c in plan.emulator}
        assert not emu_cores & set(cores)
        for k in emu_cores:  # a whole core, every thread of it
            assert {c for c in topo.cpus if core_of(topo, c) == k} <= set(plan.emulator)
    # whatever another domain gets from what is left, none of it is on A's vCPU cores
    left = available - plan.cpus
    assume(left)
    other, _ = plan_of(topo, left, xml(len(left), "", name="other",
                                       uuid="5e1b1a5e-0000-4000-8000-00000000cafe"))
    assert other is not None
    assert not other.cpus & siblings


# --------------------------------------------------------------------------- guest topology


@SETTINGS
@given(st.data())
def test_placed_devices_sit_on_the_cell_of_their_host_node(data: st.DataObject) -> None:
    topo = data.draw(topologies())
    available = data.draw(frees(topo))
    nodes = sorted(topo.nodes)
    count = data.draw(st.integers(1, 6))
    devices = {}
    for i in range(count):
        bdf = f"0000:{0x20 + i:02x}:00.0"
        node = data.draw(st.sampled_from([*nodes, None]))
        rc = f"pci0000:{data.draw(st.sampled_from([0x10, 0x30, 0x50])):02x}"
        devices[bdf] = HostPci(bdf, True, node, rc)
    vcpus = data.draw(st.integers(1, max(1, len(available))))
    text = xml(vcpus, "", devices=list(devices), passthrough=True)
    inp = Inputs(topology=topo, available=available, config=config.Config(), devices=devices)
    try:
        first = render.render(text, inp)
    except Refusal:
        return
    plan = first.plan
    host_of_cell = {c.id: c.host_node for c in plan.cells}
    placed = {p.bdf: b for b in plan.buses for p in b.ports}
    for bdf, dev in devices.items():
        if dev.node is not None and dev.node in host_of_cell.values():
            bus = placed[bdf]
            assert host_of_cell[bus.cell] == dev.node and bus.root_complex == dev.root_complex
        else:
            assert bdf not in placed
    # one bus per (cell, root complex); indexes distinct, each port above its bus
    keys = [(b.cell, b.root_complex) for b in plan.buses]
    assert len(keys) == len(set(keys))
    indexes = [b.index for b in plan.buses] + [p.index for b in plan.buses for p in b.ports]
    assert len(indexes) == len(set(indexes)) and 0 not in indexes
    assert all(p.index > b.index for b in plan.buses for p in b.ports)
    # the XML says what the plan says, and rendering it again changes nothing
    facts = domainxml.read(safe.parse(first.xml))
    assert hardware.differences(facts, plan) == []
    assert render.render(first.xml, inp).xml == first.xml
