"""PCI passthrough devices: what a domain's XML says about them, as plain records.

XML reading only, no policy and no I/O: ``read_passthrough`` and ``read_controllers``
take a parsed ``<domain>`` (lxml, or the hook's read-only ElementTree) and report what is
written. Where each device sits on the host (its NUMA node and root complex) is read by
:mod:`numahook.host.sysfs`; what that means for the CPUs and the guest is decided in
:mod:`numahook.core.locality` and :mod:`numahook.core.placement`.
"""

from __future__ import annotations

import re

from numahook.core.units import clip
from numahook.errors import InputError
from numahook.records import record

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from collections.abc import Iterator
    from typing import Any

#: libvirt's own prefix for user-chosen device aliases (kept in the persistent definition);
#: numahook names the controllers it renders with it, so a later rendering knows its own
OWNED_ALIAS = "ua-numahook-"
#: a host device's sysfs name, ``DDDD:BB:SS.F``, as the kernel writes it
_BDF = re.compile(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]")
_NUMBER = re.compile(r"(0x[0-9a-fA-F]{1,8}|[0-9]{1,10})")


@record(frozen=True)
class GuestAddress:
    """A guest PCI ``<address>``: its bus is the index of the controller it plugs into."""

    domain: int
    bus: int
    slot: int
    function: int

    def text(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"


@record(frozen=True)
class Passthrough:
    """One host PCI device given to the guest: a ``<hostdev type='pci'>`` or an
    ``<interface type='hostdev'>`` (an SR-IOV VF with its network settings)."""

    #: "hostdev" or "interface"
    kind: str
    #: the host device, as sysfs names it
    bdf: str
    #: its guest ``<address type='pci'>``, None when the XML gives none
    guest: GuestAddress | None = None
    #: the type of a guest address that is not PCI (``ccw``, ...), which numahook keeps
    other_address: str | None = None


@record(frozen=True)
class Controller:
    """A ``<controller type='pci'>``, with what placement needs of it."""

    index: int
    model: str
    alias: str = ""
    #: where it plugs in: the guest bus (a controller index) of its ``<address>``
    bus: int | None = None
    slot: int | None = None
    #: ``<target busNr>`` and ``<target><node>`` of an expander bus
    bus_nr: int | None = None
    node: int | None = None

    @property
    def owned(self) -> bool:
        """Rendered by numahook (its alias carries our prefix)."""
        return self.alias.startswith(OWNED_ALIAS)


@record(frozen=True)
class HostPci:
    """Where a host PCI device sits, read from sysfs."""

    bdf: str
    #: /sys/bus/pci/devices/<bdf> exists on this host
    present: bool
    #: its NUMA node; None when the kernel reports -1 (no affinity) or it is not present
    node: int | None = None
    #: the ``pciDDDD:BB`` host bridge above it in sysfs, e.g. ``pci0000:17``
    root_complex: str | None = None

    def describe(self) -> str:
        """``0000:18:00.0 (node 0, root complex pci0000:17)``, for messages."""
        if not self.present:
            return f"{self.bdf} (not on this host)"
        where = f"node {self.node}" if self.node is not None else "no NUMA node"
        rc = f", root complex {self.root_complex}" if self.root_complex else ""
        return f"{self.bdf} ({where}{rc})"


def is_bdf(text: str) -> bool:
    """Whether ``text`` is a host device name in the kernel's own spelling."""
    return _BDF.fullmatch(text) is not None


def _num(el: Any, attr: str, what: str, hi: int, default: int | None = None) -> int:
    raw = el.get(attr)
    if raw is None and default is not None:
        return default
    text = (raw or "").strip()
    value = int(text, 16 if text[:2] == "0x" else 10) if _NUMBER.fullmatch(text) else -1
    if not 0 <= value <= hi:
        raise InputError(f"{what} {attr}={clip(text)} is not a number from 0 to {hi:#x}; "
                         "write it as libvirt does, e.g. bus='0x05'")
    return value


def _address(el: Any, what: str) -> GuestAddress:
    return GuestAddress(domain=_num(el, "domain", what, 0xFFFF, 0),
                        bus=_num(el, "bus", what, 0xFF), slot=_num(el, "slot", what, 0x1F),
                        function=_num(el, "function", what, 7, 0))


def _bdf(el: Any, what: str) -> str:
    return _address(el, what).text()


def _guest(dev: Any, what: str) -> tuple[GuestAddress | None, str | None]:
    el = dev.find("address")
    if el is None:
        return None, None
    kind = el.get("type") or "pci"
    if kind != "pci":
        return None, kind
    return _address(el, f"{what} guest <address>"), None


def iter_passthrough(root: Any) -> Iterator[tuple[Any, Passthrough]]:
    """Each host PCI device of the domain with its element, in document order."""
    for dev in root.iterfind("devices/*"):
        tag = dev.tag
        if tag == "hostdev" and dev.get("mode", "subsystem") == "subsystem" \
                and dev.get("type") == "pci":
            what = "<hostdev> <source><address>"
            kind = "hostdev"
        elif tag == "interface" and dev.get("type") == "hostdev":
            what = "<interface type='hostdev'> <source><address>"
            kind = "interface"
        else:
            continue
        src = dev.find("source/address")
        if kind == "interface" and src is not None and (src.get("type") or "pci") != "pci":
            continue  # a USB or CCW device: not PCI, no NUMA locality to keep
        if src is None:
            raise InputError(f"a {kind} device has no <source><address>; name the host "
                             "device as <address domain='0x0000' bus='0x18' slot='0x00' "
                             "function='0x0'/>")
        bdf = _bdf(src, what)
        guest, other = _guest(dev, f"the {kind} of {bdf}")
        yield dev, Passthrough(kind, bdf, guest, other)


def read_passthrough(root: Any) -> tuple[Passthrough, ...]:
    """Every host PCI device of the domain, in document order."""
    return tuple(p for _, p in iter_passthrough(root))


def read_controllers(root: Any) -> tuple[Controller, ...]:
    """Every ``<controller type='pci'>``."""
    out: list[Controller] = []
    for el in root.iterfind("devices/controller"):
        if el.get("type") != "pci":
            continue
        what = "<controller type='pci'>"
        addr = el.find("address")
        bus = slot = None
        if addr is not None and (addr.get("type") or "pci") == "pci":
            a = _address(addr, f"{what} <address>")
            bus, slot = a.bus, a.slot
        target = el.find("target")
        bus_nr = node = None
        if target is not None:
            if target.get("busNr") is not None:
                bus_nr = _num(target, "busNr", f"{what} <target>", 0xFF)
            node_text = (target.findtext("node") or "").strip()
            if node_text:
                if not node_text.isascii() or not node_text.isdigit() or len(node_text) > 5:
                    raise InputError(f"{what} <target><node> {clip(node_text)} is not a "
                                     "guest NUMA cell number")
                node = int(node_text)
        alias = el.find("alias")
        out.append(Controller(
            index=_num(el, "index", what, 0xFF), model=el.get("model") or "",
            alias=(alias.get("name") or "") if alias is not None else "",
            bus=bus, slot=slot, bus_nr=bus_nr, node=node))
    return tuple(out)


def referenced_buses(root: Any) -> frozenset[int]:
    """Guest buses that devices other than passthrough ones plug into (their ``<address
    bus>``): libvirt adds a controller for each that has none, so the index is taken."""
    out: set[int] = set()
    for dev in root.iterfind("devices/*"):
        if dev.tag == "hostdev" or (dev.tag == "interface" and dev.get("type") == "hostdev"):
            continue
        addr = dev.find("address")
        if addr is not None and (addr.get("type") or "") == "pci" and addr.get("bus"):
            out.add(_num(addr, "bus", f"<{dev.tag}> <address>", 0xFF))
    return frozenset(out)


def machine_kind(machine: str | None) -> str:
    """``q35`` or ``i440fx`` for libvirt's x86 machine names; anything else as written.

    No machine means libvirt's default for x86_64, ``pc``: the i440fx.
    """
    name = (machine or "pc").strip()
    if name == "q35" or name.startswith("pc-q35"):
        return "q35"
    if name == "pc" or name.startswith("pc-i440fx") or re.fullmatch(r"pc-[0-9.]+", name):
        return "i440fx"
    return name
