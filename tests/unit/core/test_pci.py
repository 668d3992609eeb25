"""Passthrough devices and PCI controllers as the domain XML writes them (numahook/core/pci.py)."""

from __future__ import annotations

import pytest

from numahook.core import domainxml, pci
from numahook.errors import InputError
from numahook.xml import safe
from tests.fixtures.devices import domain, hostdev, vf_interface

CONTROLLERS = """
<controller type='pci' index='0' model='pcie-root'/>
<controller type='pci' index='1' model='pcie-expander-bus'>
  <model name='pxb-pcie'/>
  <target busNr='254'><node>1</node></target>
  <alias name='ua-numahook-pxb-c1-pci0000-85'/>
  <address type='pci' domain='0x0000' bus='0x00' slot='0x05' function='0x0'/>
</controller>
<controller type='pci' index='2' model='pcie-root-port'>
  <target chassis='2' port='0x10'/>
  <address type='pci' domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>
</controller>
<controller type='usb' index='0' model='qemu-xhci'/>
"""


@pytest.mark.parametrize("readonly", [False, True], ids=["lxml", "stdlib"])
def test_devices_and_controllers(readonly: bool) -> None:
    xml = domain(hostdev("0000:18:00.0", guest="0000:02:00.0") + vf_interface("0000:18:02.0")
                 + "<hostdev mode='subsystem' type='usb'><source><vendor id='0x1'/></source>"
                 "</hostdev>", extra_devices=CONTROLLERS)
    root = safe.parse_readonly(xml) if readonly else safe.parse(xml)
    facts = domainxml.read(root)
    assert facts.passthrough == (
        pci.Passthrough("hostdev", "0000:18:00.0", pci.GuestAddress(0, 2, 0, 0)),
        pci.Passthrough("interface", "0000:18:02.0", None))
    assert facts.bdfs == ("0000:18:00.0", "0000:18:02.0")
    assert [(c.index, c.model, c.bus, c.bus_nr, c.node, c.owned) for c in facts.controllers] == [
        (0, "pcie-root", None, None, None, False),
        (1, "pcie-expander-bus", 0, 254, 1, True),
        (2, "pcie-root-port", 1, None, None, False)]
    assert facts.machine == "q35"


def test_decimal_and_hex_numbers_and_a_ccw_address() -> None:
    xml = domain("<hostdev mode='subsystem' type='pci'><source><address domain='0' bus='24' "
                 "slot='0' function='1'/></source><address type='ccw' cssid='0xfe' ssid='0x0' "
                 "devno='0x1'/></hostdev>")
    dev = domainxml.read(safe.parse(xml)).passthrough[0]
    assert (dev.bdf, dev.guest, dev.other_address) == ("0000:18:00.1", None, "ccw")


@pytest.mark.parametrize("source, words", [
    ("<address domain='0x0000' bus='0x1ff' slot='0x00' function='0x0'/>",
     "bus='0x1ff' is not a number from 0 to 0xff"),
    ("<address domain='0x0000' bus='0x18' slot='0x20' function='0x0'/>", "slot='0x20'"),
    ("<address domain='0x0000' bus='x' slot='0x00' function='0x0'/>", "bus='x'"),
    ("", "has no <source><address>"),
])
def test_bad_source_addresses(source: str, words: str) -> None:
    xml = domain(f"<hostdev mode='subsystem' type='pci'><source>{source}</source></hostdev>")
    with pytest.raises(InputError, match=words.replace("(", r"\(")):
        domainxml.read(safe.parse(xml))


@pytest.mark.parametrize("machine, kind", [("q35", "q35"), ("pc-q35-7.2", "q35"),
                                           ("pc", "i440fx"), ("pc-i440fx-7.2", "i440fx"),
                                           (None, "i440fx"), ("pc-1.3", "i440fx"),
                                           ("virt", "virt")])
def test_machine_kind(machine: str | None, kind: str) -> None:
    assert pci.machine_kind(machine) == kind


def test_host_device_descriptions() -> None:
    assert pci.HostPci("0000:18:00.0", True, 0, "pci0000:17").describe() == \
        "0000:18:00.0 (node 0, root complex pci0000:17)"
    assert pci.HostPci("0000:5e:00.0", True, None, "pci0000:5d").describe() == \
        "0000:5e:00.0 (no NUMA node, root complex pci0000:5d)"
    assert pci.HostPci("0000:99:00.0", False).describe() == "0000:99:00.0 (not on this host)"
