"""Write a :class:`~numahook.core.hardware.Plan` into domain XML.

XML only: every decision is in the plan.

Each function owns a set of elements and replaces exactly those, leaving everything
else (devices, comments, other metadata, unknown elements) byte-for-byte alone.
"""

from __future__ import annotations

from collections.abc import Iterable

from lxml import etree

from numahook.core import cpulist
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
    for v, cpu in enumerate(plan.vcpu_pins):
        insert(cputune, element("vcpupin", {"vcpu": str(v), "cpuset": str(cpu)}), CPUTUNE_ORDER)
    insert(cputune, element("emulatorpin", {"cpuset": _fmt(plan.emulator)}), CPUTUNE_ORDER)
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
    """Strict binding of each guest cell to its host node (host side only)."""
    old = root.find("numatune")
    if old is not None:
        remove(old)
    nodes = [c.host_node for c in plan.cells]
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


def apply_host_side(root: etree._Element, plan: Plan) -> None:
    """Migration/restore: pins and host nodes follow this host; the guest's view stays."""
    set_vcpu_placement(root)
    set_cputune(root, plan)
    if plan.cells:
        set_memnodes(root, plan)


def apply(root: etree._Element, plan: Plan) -> None:
    set_vcpu_placement(root)
    set_cputune(root, plan)
    if plan.cells:
        set_topology(root, plan)
        set_numa(root, plan)
    if plan.realtime_extras:
        set_realtime_extras(root, plan.locked)
