"""Write a :class:`~numahook.core.hardware.Plan` into domain XML.

XML only: every decision is in the plan.

Each function owns a set of elements and replaces exactly those, leaving everything
else (devices, comments, other metadata, unknown elements) byte-for-byte alone.
"""

from __future__ import annotations

from collections.abc import Iterable

from lxml import etree

from numahook.core import cpulist, pci
from numahook.core.pci import OWNED_ALIAS
from numahook.core.plan import Plan
from numahook.xml.edit import (
    CPU_ORDER,
    CPUTUNE_ORDER,
    DEVICE_ORDER,
    DOMAIN_ORDER,
    FEATURES_ORDER,
    MEMBACKING_ORDER,
    element,
    ensure,
    insert,
    remove,
)


def _fmt(cpus: Iterable[int]) -> str:
    return cpulist.format(cpus)


def set_cputune(root: etree._Element, plan: Plan) -> None:
    cputune = ensure(root, "cputune", DOMAIN_ORDER)
    owned = ["vcpupin", "emulatorpin", "iothreadpin"]
    if plan.realtime_extras:
        owned += ["vcpusched", "emulatorsched"]
    for tag in owned:
        for el in cputune.findall(tag):
            remove(el)
    for v in range(len(plan.vcpu_pins)):
        insert(cputune, element("vcpupin", {"vcpu": str(v), "cpuset": _fmt(plan.pin(v))}),
               CPUTUNE_ORDER)
    insert(cputune, element("emulatorpin", {"cpuset": _fmt(plan.emulator_pin)}), CPUTUNE_ORDER)
    for io, cpus in plan.iothread_pins:
        insert(cputune, element("iothreadpin", {"iothread": str(io), "cpuset": _fmt(cpus)}),
               CPUTUNE_ORDER)
    if plan.vcpusched:
        insert(cputune, element("vcpusched", {
            "vcpus": _fmt(plan.realtime_vcpus), "scheduler": "fifo",
            "priority": str(plan.priority)}), CPUTUNE_ORDER)
        if plan.emulator_realtime:
            insert(cputune, element("emulatorsched", {
                "scheduler": "fifo", "priority": str(plan.priority)}), CPUTUNE_ORDER)


def set_vcpu_placement(root: etree._Element) -> None:
    """vcpupin only works with static placement; 'auto' would hand CPUs to numad."""
    vcpu = root.find("vcpu")
    if vcpu is not None and vcpu.get("placement") == "auto":
        vcpu.set("placement", "static")


def set_topology(root: etree._Element, plan: Plan) -> None:
    cpu = ensure(root, "cpu", DOMAIN_ORDER)
    topo = cpu.find("topology")
    if topo is None:
        sockets, dies, cores, threads = plan.topology
        insert(cpu, element("topology", {"sockets": str(sockets), "dies": str(dies),
                                         "cores": str(cores), "threads": str(threads)}), CPU_ORDER)


def set_numa(root: etree._Element, plan: Plan) -> None:
    """Guest cells, strict numatune and per-cell hugepages: the passthrough trio."""
    cpu = ensure(root, "cpu", DOMAIN_ORDER)
    old = cpu.find("numa")
    if old is not None:
        remove(old)
    cells = []
    for c in plan.cells:
        cell = element("cell", {"id": str(c.id), "cpus": _fmt(c.vcpus),
                                "memory": str(c.memory_kib), "unit": "KiB"})
        if plan.distances:
            cell.append(element("distances", children=[
                element("sibling", {"id": str(b), "value": str(v)})
                for a, b, v in plan.distances if a == c.id]))
        cells.append(cell)
    insert(cpu, element("numa", children=cells), CPU_ORDER)

    set_memnodes(root, plan)

    backing = ensure(root, "memoryBacking", DOMAIN_ORDER)
    hp = backing.find("hugepages")
    if hp is not None:
        remove(hp)
    insert(backing, element("hugepages", children=[
        element("page", {"size": str(plan.page_kib), "unit": "KiB", "nodeset": str(c.id)})
        for c in plan.cells]), MEMBACKING_ORDER)


def set_memnodes(root: etree._Element, plan: Plan) -> None:
    """Strict binding of each guest cell to its host node (host side only), or of all
    memory to the plan's one node when there are no cells, where its pages wait."""
    old = root.find("numatune")
    if old is not None:
        remove(old)
    nodes = [c.host_node for c in plan.cells]
    if not nodes and plan.memory_node is not None:
        nodes = [plan.memory_node]
    insert(root, element("numatune", children=[
        element("memory", {"mode": "strict", "nodeset": _fmt(nodes)}),
        *(element("memnode", {"cellid": str(c.id), "mode": "strict",
                              "nodeset": str(c.host_node)}) for c in plan.cells),
    ]), DOMAIN_ORDER)


def set_realtime_extras(root: etree._Element, locked: bool = True) -> None:
    """pmu off, nosharepages, locked, no balloon: libvirt's kvm-realtime guide."""
    features = ensure(root, "features", DOMAIN_ORDER)
    ensure(features, "pmu", FEATURES_ORDER).set("state", "off")
    backing = ensure(root, "memoryBacking", DOMAIN_ORDER)
    ensure(backing, "nosharepages", MEMBACKING_ORDER)
    if locked:
        ensure(backing, "locked", MEMBACKING_ORDER)
    devices = ensure(root, "devices", DOMAIN_ORDER)
    balloon = devices.find("memballoon")
    if balloon is not None and balloon.get("model") != "none":
        remove(balloon)
        balloon = None
    if balloon is None:
        insert(devices, element("memballoon", {"model": "none"}), DEVICE_ORDER)


def _pci_address(el: etree._Element, bus: int, slot: int) -> None:
    """Point ``el``'s guest ``<address>`` at ``bus``/``slot`` (function 0), as libvirt writes."""
    addr = el.find("address")
    if addr is None:
        addr = insert(el, etree.Element("address"), ())  # libvirt keeps it last
    for key in list(addr.attrib):
        if key not in ("type", "domain", "bus", "slot", "function"):
            del addr.attrib[key]
    addr.set("type", "pci")
    addr.set("domain", "0x0000")
    addr.set("bus", f"0x{bus:02x}")
    addr.set("slot", f"0x{slot:02x}")
    addr.set("function", "0x0")


def _controller(devices: etree._Element, found: etree._Element | None, index: int,
                model: str, alias: str) -> etree._Element:
    """Our controller ``alias``: the one found, updated in place (libvirt's additions such
    as ``<model name>`` and ``<target chassis>`` stay), or a new one after the others."""
    el = found
    if el is None:
        el = insert(devices, element("controller", {"type": "pci"}, children=[
            element("alias", {"name": alias})]), DEVICE_ORDER)
    el.set("index", str(index))
    el.set("model", model)
    return el


def set_pci_topology(root: etree._Element, plan: Plan) -> None:
    """The plan's expander buses and root ports, and each placed device on its port.

    Controllers are ours by their alias (``ua-numahook-...``): those the plan no longer
    has are removed, and a device left on one loses its address, for libvirt to assign.
    """
    devices = root.find("devices")
    if devices is None:
        if not plan.buses:
            return
        devices = ensure(root, "devices", DOMAIN_ORDER)
    owned: dict[str, etree._Element] = {}
    for el in devices.findall("controller"):
        name = el.find("alias")
        if el.get("type") == "pci" and name is not None and \
                (name.get("name") or "").startswith(OWNED_ALIAS):
            owned[name.get("name") or ""] = el
    old_indexes = {c.index for c in pci.read_controllers(root) if c.owned}
    keep = {b.alias for b in plan.buses} | {p.alias for b in plan.buses for p in b.ports}
    for alias, el in owned.items():
        if alias not in keep:
            remove(el)
    for b in plan.buses:
        pxb = _controller(devices, owned.get(b.alias), b.index, "pcie-expander-bus", b.alias)
        target = pxb.find("target")
        if target is None:
            target = insert(pxb, element("target", children=[element("node")]),
                            ("model", "target", "alias", "address"))
        target.set("busNr", str(b.bus_nr))
        node = target.find("node")
        if node is None:
            node = insert(target, element("node"), ())
        node.text = str(b.cell)
        for p in b.ports:
            port = _controller(devices, owned.get(p.alias), p.index, "pcie-root-port", p.alias)
            _pci_address(port, b.index, p.slot)
    placed = {p.bdf: p.index for b in plan.buses for p in b.ports}
    for el, dev in pci.iter_passthrough(root):
        if dev.bdf in placed:
            _pci_address(el, placed[dev.bdf], 0)
        elif dev.guest is not None and dev.guest.bus in old_indexes:
            remove(el.find("address"))  # on a controller of ours that is gone or not its own


def apply_host_side(root: etree._Element, plan: Plan) -> None:
    """Migration/restore: pins and host nodes follow this host; the guest's view stays."""
    set_vcpu_placement(root)
    set_cputune(root, plan)
    if plan.cells or plan.memory_node is not None:
        set_memnodes(root, plan)


def apply(root: etree._Element, plan: Plan) -> None:
    set_vcpu_placement(root)
    set_cputune(root, plan)
    if plan.cells:
        set_topology(root, plan)
        set_numa(root, plan)
    elif plan.memory_node is not None:
        set_memnodes(root, plan)
    if plan.realtime_extras:
        set_realtime_extras(root, plan.locked)
    set_pci_topology(root, plan)
