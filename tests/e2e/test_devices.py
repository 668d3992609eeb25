"""Device locality in the guest, on the lab's real libvirt and QEMU (issue 15).

No host PCI device is free on these machines, so the rendering is for a NIC that a
fixture sysfs tree puts on node 0 (the sysfs adapter reads it; everything else is this
host's), and the guest then gets an emulated virtio device at the address numahook gave
the NIC: behind the pcie-expander-bus of its cell. The probe (lab/initramfs/init) reports
each PCI function's numa_node as the guest kernel reads it, and lab/report.py parses it
without numahook: the device behind the expander bus is on its cell, a control device on
pcie.0 on none.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import libvirt

from lab import report
from numahook.config import Config
from numahook.core import hardware, render
from numahook.host import sysfs
from numahook.ops import hostinputs
from numahook.records import replace
from numahook.state.statedir import StateDir
from tests.e2e.helpers import metadata
from tests.fixtures.devices import hostdev
from tests.fixtures.hosts import CpuSpec, HostSpec, NodeSpec, PciSpec, build_sysfs

NIC = "0000:18:00.0"
RNG = "0x1af4:0x1044"  # virtio-rng (modern)


def render_with_a_nic(xml: str, tmp_path: Path) -> render.Result:
    """Render for this host, with the NIC's node and root complex read from a fixture."""
    spec = HostSpec("lab-nic", [CpuSpec(0, 0, 0, 0, 0)], [NodeSpec(0, [0], 1 << 20)], [[10]],
                    pci=(PciSpec(NIC, 0, "0000:17:00.0"),))
    fixture = build_sysfs(tmp_path / "sys", spec)
    doc = render.parse(xml)
    cfg = Config()
    inputs, _ = hostinputs.gather(cfg, doc.facts.partition, doc.facts.uuid or None,
                                  state=StateDir(cfg.state_dir))
    inputs = replace(inputs, devices=sysfs.read_pci(fixture, doc.facts.bdfs))
    return render.render_parsed(doc, inputs)


def swap_nic_for_virtio(xml: str) -> str:
    """The hostdev becomes a virtio-rng at the same guest address; a second virtio-rng,
    with no address, is the control libvirt puts on pcie.0."""
    root = ET.fromstring(xml)
    devices = root.find("devices")
    assert devices is not None
    nic = devices.find("hostdev")
    assert nic is not None
    address = nic.find("address")
    assert address is not None and address.get("bus") != "0x00"
    devices.remove(nic)
    rng = ET.SubElement(devices, "rng", model="virtio")
    ET.SubElement(rng, "backend", model="random").text = "/dev/urandom"
    rng.append(address)
    control = ET.SubElement(devices, "rng", model="virtio")
    ET.SubElement(control, "backend", model="random").text = "/dev/urandom"
    return ET.tostring(root, encoding="unicode")


def test_libvirt_keeps_the_rendering_and_rerendering_changes_nothing(
        domains: Any, tmp_path: Path) -> None:
    """Defined as rendered, libvirt adds its own details (models, chassis, the expander
    bus's slot, root ports of its own); rendering what libvirt stored gives it back."""
    xml = domains.probe_xml("pxbdef", vcpus=1, memory_mib=128, hugepage_kib=2048,
                            machine="q35", extra=metadata(), devices=hostdev(NIC))
    first = render_with_a_nic(xml, tmp_path)
    (bus,) = first.plan.buses
    assert (bus.cell, bus.host_node, bus.root_complex) == (0, 0, "pci0000:17")
    dom = domains.define(first.xml)
    stored = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    assert "<alias name='ua-numahook-pxb-c0-pci0000-17'/>" in stored
    assert "<model name='pxb-pcie'/>" in stored  # libvirt's addition
    again = render_with_a_nic(stored, tmp_path / "again")
    assert again.xml.strip() == stored.strip()
    assert again.plan.buses == first.plan.buses
    assert hardware.differences(render.parse(stored).facts, again.plan) == []


def test_a_device_behind_the_expander_bus_is_on_its_cell_in_the_guest(
        domains: Any, tmp_path: Path) -> None:
    xml = domains.probe_xml("pxb", vcpus=1, memory_mib=128, hugepage_kib=2048,
                            machine="q35", extra=metadata(), devices=hostdev(NIC))
    rendered = render_with_a_nic(xml, tmp_path)
    (bus,) = rendered.plan.buses
    guest = domains.boot(swap_nic_for_virtio(rendered.xml))  # the hook admits it (prepare)
    rngs = {p.root: p for p in guest.pci.values() if p.id == RNG}
    behind = rngs[f"pci0000:{bus.bus_nr:02x}"]  # the expander bus's own host bridge
    assert behind.numa_node == bus.cell == 0
    assert rngs["pci0000:00"].numa_node == -1  # the control, on pcie.0: no NUMA node
    assert report.compare(guest, report.rendered_cells(rendered.xml), 1) == []
