"""PCINUMAAwareTopology: passthrough devices behind a pcie-expander-bus on their guest cell.

Rendered as the CLI would on intel-2s-io (NIC ports and a VF on pci0000:17 and a GPU on
pci0000:3a of node 0, a NIC on pci0000:85 and a GPU on pci0000:ae of node 1, a card with
numa_node -1). The golden cases (tests/golden) hold whole rendered definitions; here the
rules one by one.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from numahook.config import parse as parse_config
from numahook.core import domainxml, hardware, pci, placement, render
from numahook.core.pci import HostPci
from numahook.core.plan import DeviceReport, Evaluation
from numahook.errors import Refusal
from numahook.records import replace
from numahook.xml import safe
from tests.fixtures.devices import (
    domain,
    evaluate,
    host_config,
    hostdev,
    inputs_for,
    render_xml,
    vf_interface,
)

WIDE = dict(vcpus=48, threads=2, memory_mib=128)  # both sockets: two guest cells
NIC0, VF0, GPU0, NIC1, GPU1, NONODE = ("0000:18:00.0", "0000:18:02.0", "0000:3b:00.0",
                                       "0000:86:00.0", "0000:af:00.0", "0000:5e:00.0")


@pytest.fixture
def intel(tmp_path: Path):  # type: ignore[no-untyped-def]
    return host_config(tmp_path, "intel-2s-io")


def report(ev: Evaluation, bdf: str) -> DeviceReport:
    return next(r for r in ev.devices if r.bdf == bdf)


def facts(xml: str) -> domainxml.DomainFacts:
    return domainxml.read(safe.parse(xml))


def test_one_bus_per_cell_and_root_complex(intel) -> None:  # type: ignore[no-untyped-def]
    result = render_xml(intel, domain(hostdev(NIC0) + vf_interface(VF0) + hostdev(GPU0)
                                      + hostdev(NIC1) + hostdev(GPU1), **WIDE))
    buses = result.plan.buses
    assert [(b.cell, b.host_node, b.root_complex, [p.bdf for p in b.ports]) for b in buses] == [
        (0, 0, "pci0000:17", [NIC0, VF0]), (0, 0, "pci0000:3a", [GPU0]),
        (1, 1, "pci0000:85", [NIC1]), (1, 1, "pci0000:ae", [GPU1])]
    # bus numbers from 255 down, each bus with room for its root ports
    assert [b.bus_nr for b in buses] == [253, 251, 249, 247]
    # what the XML says: each device's address on its port, each port on its bus
    f = facts(result.xml)
    by_index = {c.index: c for c in f.controllers}
    for dev in f.passthrough:
        port = by_index[dev.guest.bus]  # type: ignore[union-attr]
        pxb = by_index[port.bus]  # type: ignore[index]
        want = report(result.evaluation, dev.bdf)
        assert (port.model, pxb.model, pxb.node) == ("pcie-root-port", "pcie-expander-bus",
                                                     want.cell)
        assert port.index < 255 and pxb.index < port.index  # libvirt: index above the bus
    assert hardware.differences(f, result.plan) == []


def test_a_device_without_a_node_or_a_cell_stays_on_pcie0(intel) -> None:  # type: ignore[no-untyped-def]
    """4 vCPUs fit on node 0: the node-1 GPU has no guest cell; the -1 card no node."""
    ev = evaluate(intel, domain(hostdev(NIC0) + hostdev(GPU1) + hostdev(NONODE)))
    assert report(ev, NIC0).placement == "expander-bus"
    assert (report(ev, GPU1).placement, report(ev, GPU1).why) == (
        "pcie.0", "no guest cell is on its host node 1")
    assert report(ev, NONODE).placement == "pcie.0"
    assert any(a.startswith("0000:af:00.0 (node 1, root complex pci0000:ae) stays on pcie.0, "
                            "where the guest sees no NUMA node for it") for a in ev.advisories)


def test_explicit_addresses_are_kept(intel) -> None:  # type: ignore[no-untyped-def]
    own_pxb = ("<controller type='pci' index='7' model='pcie-expander-bus'><target busNr='200'>"
               "<node>0</node></target></controller><controller type='pci' index='8' "
               "model='pcie-root-port'><address type='pci' domain='0x0000' bus='0x07' "
               "slot='0x00' function='0x0'/></controller>")
    xml = domain(hostdev(NIC0, guest="0000:00:10.0") + hostdev(GPU0, guest="0000:08:00.0")
                 + hostdev(VF0), extra_devices=own_pxb)
    result = render_xml(intel, xml)
    assert [r.placement for r in result.evaluation.devices] == ["kept", "kept", "expander-bus"]
    f = facts(result.xml)
    assert [d.guest.text() for d in f.passthrough[:2]] == ["0000:00:10.0", "0000:08:00.0"]  # type: ignore[union-attr]
    bus = result.plan.buses[0]
    assert bus.bus_nr < 200  # below the user's own expander bus
    assert bus.index not in (7, 8)


def test_an_address_on_libvirts_root_port_moves(intel) -> None:  # type: ignore[no-untyped-def]
    libvirt = ("<controller type='pci' index='0' model='pcie-root'/><controller type='pci' "
               "index='1' model='pcie-root-port'><model name='pcie-root-port'/><target "
               "chassis='1' port='0x10'/><address type='pci' domain='0x0000' bus='0x00' "
               "slot='0x02' function='0x0' multifunction='on'/></controller>")
    result = render_xml(intel, domain(hostdev(NIC0, guest="0000:01:00.0"),
                                      extra_devices=libvirt))
    assert report(result.evaluation, NIC0).placement == "expander-bus"
    bus = result.plan.buses[0]
    assert (bus.index, bus.ports[0].index) == (2, 3)  # the lowest free indexes
    assert facts(result.xml).passthrough[0].guest == pci.GuestAddress(0, 3, 0, 0)


def test_rerendering_after_libvirt_formatted_it_changes_nothing(intel) -> None:  # type: ignore[no-untyped-def]
    """libvirt adds <model name>, <target chassis port> and addresses to the controllers we
    render, and root ports of its own for other devices; the next rendering keeps ours."""
    first = render_xml(intel, domain(hostdev(NIC0) + hostdev(GPU0)))
    pxb_idx = first.plan.buses[0].index
    text = first.xml.replace(
        "      <target busNr=", "      <model name='pxb-pcie'/>\n      <target busNr=")
    text = text.replace(
        f"<alias name='{placement.bus_alias(0, 'pci0000:17')}'/>",
        f"<alias name='{placement.bus_alias(0, 'pci0000:17')}'/>\n      <address type='pci' "
        "domain='0x0000' bus='0x00' slot='0x01' function='0x0'/>")
    text = text.replace("    <hostdev", "    <controller type='pci' index='9' model='pcie-root-"
                        "port'/>\n    <controller type='pci' index='0' model='pcie-root'/>\n"
                        "    <hostdev", 1)
    assert text.count("<model name='pxb-pcie'/>") == 2 and "index='9'" in text
    assert "bus='0x00' slot='0x01'" in text
    second = render_xml(intel, text)
    assert second.xml == text
    assert second.plan.buses[0].index == pxb_idx and second.plan.kept_pinning


def test_a_device_added_later_keeps_the_others_in_place(intel) -> None:  # type: ignore[no-untyped-def]
    first = render_xml(intel, domain(hostdev(NIC0) + hostdev(GPU0)))
    added = first.xml.replace("</devices>", hostdev(VF0) + "</devices>")
    second = render_xml(intel, added)
    old = {(p.alias, p.index) for b in first.plan.buses for p in b.ports}
    new = {(p.alias, p.index) for b in second.plan.buses for p in b.ports}
    assert old < new
    assert {b.alias: b.index for b in first.plan.buses}.items() <= \
        {b.alias: b.index for b in second.plan.buses}.items()


def test_a_removed_device_takes_its_controllers_with_it(intel) -> None:  # type: ignore[no-untyped-def]
    first = render_xml(intel, domain(hostdev(NIC0) + hostdev(GPU0)))
    start = first.xml.index("<hostdev", first.xml.index("bus='0x3b'") - 120)
    gone = first.xml[:start] + first.xml[first.xml.index("</hostdev>", start) + 10:]
    second = render_xml(intel, gone)
    assert "pci0000-3a" not in second.xml and "0000-3b-00-0" not in second.xml
    assert [b.root_complex for b in second.plan.buses] == ["pci0000:17"]


@pytest.mark.parametrize("conf, attr, why", [
    ("[features]\nPCINUMAAwareTopology = false\n", "", "PCINUMAAwareTopology is off"),
    ("", " pciNumaAffinity='none'", "pciNumaAffinity is 'none'"),
])
def test_turned_off_the_devices_go_back_to_libvirt(intel, conf: str, attr: str,  # type: ignore[no-untyped-def]
                                                   why: str) -> None:
    first = render_xml(intel, domain(hostdev(NIC0)))
    cfg = replace(intel, **{k: getattr(parse_config(conf), k) for k in ("pci_numa_topology",)})
    second = render_xml(cfg, first.xml.replace('dedicatedCpuPlacement="true"',
                                               f'dedicatedCpuPlacement="true"{attr}'))
    assert second.plan.buses == ()
    assert "ua-numahook" not in second.xml
    assert facts(second.xml).passthrough[0].guest is None  # libvirt assigns one again
    assert (report(second.evaluation, NIC0).placement, report(second.evaluation, NIC0).why) == (
        "pcie.0", why)


def test_without_passthrough_nothing_moves(intel) -> None:  # type: ignore[no-untyped-def]
    ev = evaluate(intel, domain(hostdev(NIC0), passthrough=False))
    assert ev.plan is not None and ev.plan.buses == ()
    assert report(ev, NIC0).why == "the guest has no NUMA cells (no guestMappingPassthrough)"


@pytest.mark.parametrize("machine", ["pc", "pc-i440fx-7.2"])
def test_i440fx_is_refused_with_the_fix(intel, machine: str) -> None:  # type: ignore[no-untyped-def]
    ev = evaluate(intel, domain(hostdev(NIC1), machine=machine))
    bad = ev.failed
    assert bad is not None and bad.name == "pci-numa-topology" and ev.plan is None
    assert bad.reason == (
        f"0000:86:00.0 (node 1, root complex pci0000:85) belongs behind a pcie-expander-bus on "
        f"guest cell 0, which needs a q35 machine, but <os><type machine='{machine}'> is "
        "i440fx; set machine='q35', or set PCINUMAAwareTopology = false under [features] in "
        "/etc/numahook/numahook.conf to leave the devices where libvirt puts them")
    with pytest.raises(Refusal) as exc:
        render_xml(intel, domain(hostdev(NIC1), machine=machine))
    assert exc.value.check == "pci-numa-topology"


def test_i440fx_without_a_device_to_place_is_fine(intel) -> None:  # type: ignore[no-untyped-def]
    ev = evaluate(intel, domain(hostdev(NONODE), machine="pc"))
    assert ev.failed is None


def test_more_devices_than_an_expander_bus_has_ports_is_refused(intel) -> None:  # type: ignore[no-untyped-def]
    bdfs = [f"0000:18:{s:02x}.{f}" for s in range(5) for f in range(8)][:33]
    doc, inp = inputs_for(intel, domain("".join(hostdev(b) for b in bdfs)))
    inp = replace(inp, devices={b: HostPci(b, True, 0, "pci0000:17") for b in bdfs})
    bad = render.evaluate(doc, inp).failed
    assert bad is not None and bad.name == "pci-numa-topology"
    assert bad.reason.startswith("33 passthrough devices of root complex pci0000:17 belong on "
                                 "guest cell 0, more than the 32 root ports")
    assert bad.reason.endswith("pass through at most 32 per root complex and cell")


def test_an_unrendered_definition_is_stale_for_the_hook(intel) -> None:  # type: ignore[no-untyped-def]
    """prepare compares the definition with this host's plan: a device left on pcie.0 is a
    difference, as is one left on our bus once it belongs elsewhere."""
    xml = domain(hostdev(NIC0))
    plan = render_xml(intel, xml).plan
    assert placement.differences(facts(xml), plan.buses) == [
        "passthrough device 0000:18:00.0 is not behind the pcie-expander-bus of guest cell 0 "
        "(host node 0, root complex pci0000:17)"]
    rendered = render_xml(intel, xml).xml
    assert placement.differences(facts(rendered), ()) == [
        "passthrough device 0000:18:00.0 sits behind an expander bus numahook rendered, but "
        "belongs elsewhere now"]


def test_where_reads_a_running_definition(intel) -> None:  # type: ignore[no-untyped-def]
    result = render_xml(intel, domain(hostdev(NIC0) + hostdev(NONODE)
                                      + hostdev(GPU0, guest="0000:00:11.0")))
    host = {r.bdf: HostPci(r.bdf, r.present, r.host_node, r.root_complex)
            for r in result.evaluation.devices}
    got = placement.where(facts(result.xml), host)
    assert [(r.placement, r.cell) for r in got] == [("expander-bus", 0), ("pcie.0", None),
                                                    ("kept", None)]
    assert got[0].bus_nr == 254 and got[0].address == "0000:02:00.0"
