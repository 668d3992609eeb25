"""Device locality in the guest: KubeVirt's PCINUMAAwareTopology (VEP 115), and more.

A guest that sees all its devices under one host bridge cannot tell which NUMA cell a
NIC or GPU belongs to. On q35, each passthrough device whose host node is one of the
guest cells' nodes goes behind a ``pcie-expander-bus`` whose ``<target><node>`` is that
cell, on a ``pcie-root-port`` of its own, so the guest kernel reads the device's
``numa_node`` from the expander's ACPI ``_PXM``. There is one expander bus per pair of
guest cell and host root complex, so devices that sit on different root complexes on
the host stay apart in the guest too (KubeVirt's open issue #19103).

What stays where it is:

* a device whose guest ``<address>`` is the user's choice. libvirt writes an address for
  every device into the definition when it defines it, so an address on a plain
  ``pcie-root-port`` of pcie.0 (where libvirt puts every device it is not told about) is
  taken as libvirt's, not the user's; any other address (on pcie.0 itself, a switch, a
  bridge, an expander bus of the user's) is kept;
* a device without a host node (``numa_node`` -1, or not on this host), on pcie.0;
* a device on a host node where the domain has no vCPUs (so no guest cell), on pcie.0,
  with an advisory.

Controllers numahook renders carry a libvirt user alias (``ua-numahook-...``), which
libvirt keeps: a later rendering finds its own, keeps their indexes (guest ABI), and
removes those no device needs any more. Indexes are the lowest free ones, as libvirt
fills any gap below the highest index with spare root ports. Expander bus numbers
(``busNr``) are taken from 255 down, below any expander bus of the user's.

Pure: :mod:`numahook.core.designer` writes the result into the XML. The records it
returns (``Bus``, ``Port``, ``DeviceReport``) are the plan's, in :mod:`numahook.core.plan`.
"""

from __future__ import annotations

from numahook import records
from numahook.core.pci import OWNED_ALIAS, Controller, HostPci, Passthrough, machine_kind
from numahook.core.plan import Bus, Cell, DeviceReport, Port

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from numahook.core.domainxml import DomainFacts

CHECK = "pci-numa-topology"
#: slots of a pcie-expander-bus, each taking one pcie-root-port
MAX_PORTS = 32


def _alias(text: str) -> str:
    return OWNED_ALIAS + text.replace(":", "-").replace(".", "-")


def bus_alias(cell: int, root_complex: str) -> str:
    return _alias(f"pxb-c{cell}-{root_complex}")


def port_alias(bdf: str) -> str:
    return _alias(f"rp-{bdf}")


def _libvirts(dev: Passthrough, by_index: Mapping[int, Controller], kind: str) -> bool:
    """Whether the device's guest address is libvirt's default one, or none at all."""
    if dev.other_address:
        return False
    if dev.guest is None:
        return True
    parent = by_index.get(dev.guest.bus)
    if parent is not None and parent.owned:
        return True
    if kind == "q35":
        return parent is not None and parent.model == "pcie-root-port" and parent.bus in (0, None)
    return dev.guest.bus == 0  # i440fx: libvirt's slots on pci.0


def _report(dev: Passthrough, h: HostPci, placement: str, why: str = "") -> DeviceReport:
    return DeviceReport(dev.kind, dev.bdf, h.node, h.root_complex, h.present, placement,
                        address=dev.guest.text() if dev.guest else None, why=why)


def plan(facts: DomainFacts, cells: Sequence[Cell], host: Mapping[str, HostPci],
         *, enabled: bool, reason: str = "", config_path: str = ""
         ) -> tuple[tuple[Bus, ...], list[DeviceReport], list[str], str | None]:
    """(buses, a report per device, advisories, a refusal or None).

    ``enabled``: PCINUMAAwareTopology applies (gate on, passthrough, pciNumaAffinity not
    none); otherwise every device is reported where it is, with ``reason``.
    """
    by_index = {c.index: c for c in facts.controllers}
    kind = machine_kind(facts.machine)
    cell_of = {c.host_node: c.id for c in cells}
    reports: list[DeviceReport] = []
    advice: list[str] = []
    wanted: dict[tuple[int, str], list[str]] = {}
    for dev in facts.passthrough:
        h = host.get(dev.bdf) or HostPci(dev.bdf, present=False)
        if not _libvirts(dev, by_index, kind):
            reports.append(_report(dev, h, "kept", "its guest <address> is kept as written"))
        elif not enabled:
            reports.append(_report(dev, h, "pcie.0", reason))
        elif h.node is None or h.root_complex is None:
            reports.append(_report(dev, h, "pcie.0", "it has no host NUMA node"))
        elif h.node not in cell_of:
            reports.append(_report(dev, h, "pcie.0",
                                   f"no guest cell is on its host node {h.node}"))
            advice.append(f"{h.describe()} stays on pcie.0, where the guest sees no NUMA node "
                          f"for it: none of the domain's vCPUs are on host node {h.node}, so "
                          "the guest has no cell there; run vCPUs on that node "
                          "(pciNumaAffinity='required') or pass through a device on theirs")
        else:
            bdfs = wanted.setdefault((cell_of[h.node], h.root_complex), [])
            if dev.bdf not in bdfs:  # libvirt refuses a device given twice anyway
                bdfs.append(dev.bdf)
            reports.append(_report(dev, h, "expander-bus"))
    if not wanted:
        return (), reports, advice, None
    if kind != "q35":
        (cell, _), bdfs = min(wanted.items())
        return (), reports, advice, (
            f"{host[bdfs[0]].describe()} belongs behind a pcie-expander-bus on guest cell "
            f"{cell}, which needs a q35 machine, but <os><type machine='{facts.machine or 'pc'}'>"
            f" is {kind}; set machine='q35', or set PCINUMAAwareTopology = false under "
            f"[features] in {config_path} to leave the devices where libvirt puts them")
    full = [k for k, bdfs in wanted.items() if len(bdfs) > MAX_PORTS]
    if full:
        cell, rc = full[0]
        return (), reports, advice, (
            f"{len(wanted[full[0]])} passthrough devices of root complex {rc} belong on guest "
            f"cell {cell}, more than the {MAX_PORTS} root ports a pcie-expander-bus has; pass "
            f"through at most {MAX_PORTS} per root complex and cell")
    kept_bdfs = {r.bdf for r in reports if r.placement == "kept"}
    kept = {d.guest.bus for d in facts.passthrough if d.guest and d.bdf in kept_bdfs}
    buses = _layout(facts.controllers, wanted, {c.id: c.host_node for c in cells},
                    facts.pci_buses | kept)
    placed = {p.bdf: (b, p) for b in buses for p in b.ports}
    for i, r in enumerate(reports):
        if r.bdf in placed and r.placement == "expander-bus":
            b, p = placed[r.bdf]
            reports[i] = records.replace(r, cell=b.cell, bus=b.index, bus_nr=b.bus_nr,
                                         port=p.index, address=f"0000:{p.index:02x}:00.0")
    return buses, reports, advice, None


def _layout(controllers: Sequence[Controller], wanted: Mapping[tuple[int, str], list[str]],
            nodes: Mapping[int, int], used: frozenset[int] | set[int]) -> tuple[Bus, ...]:
    """Indexes and bus numbers for the wanted buses: reuse ours, take the lowest free.

    ``used``: buses that other devices' addresses name, taken as well.
    """
    ours = {c.alias: c for c in controllers if c.owned}
    taken = {c.index for c in controllers if not c.owned} | set(used)
    keys = sorted(wanted)
    aliases = {bus_alias(*k) for k in keys} | {port_alias(b) for bdfs in wanted.values()
                                               for b in bdfs}
    taken |= {c.index for a, c in ours.items() if a in aliases}

    def index(alias: str, above: int) -> int:
        old = ours.get(alias)
        if old is not None and old.index > above:
            return old.index
        if old is not None:
            taken.discard(old.index)
        i = above + 1
        while i in taken:
            i += 1
        taken.add(i)
        return i

    top = min((c.bus_nr for c in controllers if c.bus_nr is not None and not c.owned),
              default=256)
    buses = []
    for cell, rc in keys:
        bdfs = sorted(wanted[cell, rc])
        alias = bus_alias(cell, rc)
        bus_index = index(alias, 0)
        top -= 1 + len(bdfs)
        ports = tuple(Port(index(port_alias(b), bus_index), slot, b, port_alias(b))
                      for slot, b in enumerate(bdfs))
        buses.append(Bus(bus_index, top, cell, nodes[cell], rc, alias, ports))
    return tuple(buses)


def differences(facts: DomainFacts, buses: Sequence[Bus]) -> list[str]:
    """How the definition's device placement differs from ``buses``, one phrase each."""
    by_index = {c.index: c for c in facts.controllers}
    by_alias = {c.alias: c for c in facts.controllers if c.owned}
    want = {p.bdf: (b, p) for b in buses for p in b.ports}
    out = []
    for dev in facts.passthrough:
        parent = by_index.get(dev.guest.bus) if dev.guest else None
        if dev.bdf in want:
            b, p = want[dev.bdf]
            pxb = by_alias.get(b.alias)
            if parent is None or parent.alias != p.alias or pxb is None \
                    or parent.bus != pxb.index or pxb.node != b.cell:
                out.append(f"passthrough device {dev.bdf} is not behind the pcie-expander-bus "
                           f"of guest cell {b.cell} (host node {b.host_node}, root complex "
                           f"{b.root_complex})")
        elif parent is not None and parent.owned:
            out.append(f"passthrough device {dev.bdf} sits behind an expander bus numahook "
                       "rendered, but belongs elsewhere now")
    return out


def where(facts: DomainFacts, host: Mapping[str, HostPci]) -> list[DeviceReport]:
    """Where each device of a (running) definition is: for ``numahook status``."""
    by_index = {c.index: c for c in facts.controllers}
    kind = machine_kind(facts.machine)
    out = []
    for dev in facts.passthrough:
        h = host.get(dev.bdf) or HostPci(dev.bdf, present=False)
        port = by_index.get(dev.guest.bus) if dev.guest else None
        pxb = by_index.get(port.bus) if port is not None and port.bus is not None else None
        if port is not None and pxb is not None and pxb.model == "pcie-expander-bus":
            out.append(DeviceReport(dev.kind, dev.bdf, h.node, h.root_complex, h.present,
                                    "expander-bus", pxb.node, pxb.index, pxb.bus_nr,
                                    port.index, dev.guest.text() if dev.guest else None))
        else:
            out.append(_report(dev, h, "pcie.0" if _libvirts(dev, by_index, kind) else "kept"))
    return out
