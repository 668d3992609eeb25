"""Parse what the guest probe prints, and compare it with the cells a domain was rendered with.

Pure functions over text: no libvirt, no files. The probe (lab/initramfs/init) prints

    NUMAHOOK-REPORT-BEGIN
    version=1
    node0.cpulist=0
    node0.memtotal_kib=61234
    ...
    NUMAHOOK-REPORT-END count=15

and, when asked for, a ``NUMAHOOK-LATENCY`` block of the same shape. ``count`` is the number
of lines inside the block: a console log cut short, or a kernel message in the middle of a
block, makes :func:`parse` raise :class:`ReportError` instead of returning half a view.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field

from lab import LabError

REPORT = "NUMAHOOK-REPORT"
LATENCY = "NUMAHOOK-LATENCY"
#: Memory the guest firmware keeps below 1 MiB (and a page or two elsewhere) shows up as
#: missing from the first node's present pages; allow this much before calling it a mismatch.
PRESENT_SLACK_KIB = 2048

_UNITS = {
    "b": 1, "bytes": 1,
    "kb": 1000, "k": 1024, "kib": 1024,
    "mb": 1000**2, "m": 1024**2, "mib": 1024**2,
    "gb": 1000**3, "g": 1024**3, "gib": 1024**3,
    "tb": 1000**4, "t": 1024**4, "tib": 1024**4,
}  # fmt: skip


class ReportError(LabError):
    """The console text holds no complete, well-formed report."""


def parse_cpulist(text: str) -> frozenset[int]:
    """Kernel cpulist text (``0-3,8``); empty means none. Kept apart from numahook's own."""
    out: set[int] = set()
    for item in text.strip().split(","):
        item = item.strip()
        if not item:
            continue
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item)
        if not m:
            raise ReportError(f"{text!r} is not a CPU list")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo or hi > 8191:
            raise ReportError(f"{text!r} is not a CPU list")
        out.update(range(lo, hi + 1))
    return frozenset(out)


def format_cpulist(cpus: frozenset[int] | set[int]) -> str:
    """Shortest cpulist text for ``cpus`` (``0-3,8``)."""
    ids = sorted(cpus)
    parts: list[str] = []
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)


@dataclass(frozen=True)
class GuestNode:
    """One NUMA node as the guest kernel sees it."""

    id: int
    cpus: frozenset[int]
    memtotal_kib: int
    memfree_kib: int | None = None
    present_kib: int | None = None
    distances: tuple[int, ...] = ()


@dataclass(frozen=True)
class Latency:
    """cyclictest's result: one value per measurement thread (thread N ran on vCPU N)."""

    duration_s: int
    exit_code: int
    cpus: frozenset[int]
    min_us: tuple[int, ...] = ()
    avg_us: tuple[int, ...] = ()
    max_us: tuple[int, ...] = ()
    overflows: tuple[int, ...] = ()
    total: tuple[int, ...] = ()
    #: latency in us -> samples per thread; only rows with a sample
    histogram: dict[int, tuple[int, ...]] = field(default_factory=dict)
    stderr: tuple[str, ...] = ()
    #: the histogram's width (cyclictest -h): samples at or beyond it are only counted
    hist_us: int = 2000


@dataclass(frozen=True)
class GuestPci:
    """One PCI function as the guest kernel sees it."""

    bdf: str
    #: ``vendor:device`` as sysfs writes them (``0x1af4:0x1044``)
    id: str
    pci_class: str
    #: -1: no NUMA node (no _PXM on the host bridge above it)
    numa_node: int
    #: the host bridge it hangs off, ``pciDDDD:BB``
    root: str


@dataclass(frozen=True)
class GuestReport:
    """The guest's own view of its NUMA topology (and latency, when measured)."""

    kernel: str
    nodes: dict[int, GuestNode]
    cpus_online: frozenset[int]
    cpus_present: frozenset[int]
    memtotal_kib: int
    latency: Latency | None = None
    raw: str = ""
    #: every PCI function, by guest BDF (empty from a probe that predates the PCI lines)
    pci: dict[str, GuestPci] = field(default_factory=dict)


def _block(lines: list[str], name: str, required: bool) -> list[str] | None:
    """The lines of the last complete ``name`` block, checked against its count."""
    begin = None
    for i, line in enumerate(lines):
        if line.endswith(f"{name}-BEGIN"):
            begin = i
    if begin is None:
        if required:
            raise ReportError(f"the console shows no {name}-BEGIN: the guest did not report")
        return None
    for j in range(begin + 1, len(lines)):
        m = re.search(rf"{name}-END count=(\d+)$", lines[j])
        if m:
            body = lines[begin + 1 : j]
            if len(body) != int(m.group(1)):
                raise ReportError(
                    f"the {name} block has {len(body)} lines but the guest wrote "
                    f"{m.group(1)}: the console interleaved or lost lines"
                )
            return body
        if lines[j].endswith(f"{name}-BEGIN"):
            break
    raise ReportError(f"the {name} block is truncated: no {name}-END after its BEGIN")


def _pairs(body: list[str], name: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in body:
        key, sep, value = line.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.]+", key):
            raise ReportError(f"{name} line {line!r} is not key=value")
        out[key] = value.strip()
    return out


def _int(pairs: dict[str, str], key: str, required: bool = True) -> int | None:
    value = pairs.get(key)
    if value is None or value == "":
        if required:
            raise ReportError(f"the report has no {key}")
        return None
    try:
        return int(value)
    except ValueError:
        raise ReportError(f"the report's {key}={value!r} is not a number") from None


def _ints(value: str | None) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        return tuple(int(v) for v in value.split())
    except ValueError:
        raise ReportError(f"{value!r} is not a list of numbers") from None


def _latency(body: list[str]) -> Latency:
    pairs: dict[str, str] = {}
    stderr: list[str] = []
    hist: dict[int, tuple[int, ...]] = {}
    for line in body:
        key, sep, value = line.partition("=")
        if not sep:
            raise ReportError(f"latency line {line!r} is not key=value")
        if key == "latency.stderr":
            stderr.append(value)
        elif key.startswith("latency.hist."):
            try:
                hist[int(key.rsplit(".", 1)[1])] = _ints(value)
            except ValueError:
                raise ReportError(f"latency line {line!r} has no bucket number") from None
        else:
            pairs[key] = value.strip()
    return Latency(
        duration_s=_int(pairs, "latency.duration_s") or 0,
        exit_code=_int(pairs, "latency.exit") or 0,
        cpus=parse_cpulist(pairs.get("latency.cpus", "")),
        min_us=_ints(pairs.get("latency.min_us")),
        avg_us=_ints(pairs.get("latency.avg_us")),
        max_us=_ints(pairs.get("latency.max_us")),
        overflows=_ints(pairs.get("latency.overflows")),
        total=_ints(pairs.get("latency.total")),
        histogram=hist,
        stderr=tuple(stderr),
        hist_us=_int(pairs, "latency.hist_us", required=False) or 2000,
    )


def _pci(pairs: dict[str, str]) -> dict[str, GuestPci]:
    count = _int(pairs, "pci.count", required=False)
    out: dict[str, GuestPci] = {}
    for i in range(count or 0):
        keys = [f"pci{i}.{k}" for k in ("bdf", "id", "class", "numa_node", "root")]
        missing = [k for k in keys if k not in pairs]
        if missing:
            raise ReportError(f"the report counts {count} PCI functions but has no {missing[0]}")
        node = _int(pairs, keys[3])
        assert node is not None
        out[pairs[keys[0]]] = GuestPci(pairs[keys[0]], pairs[keys[1]], pairs[keys[2]], node,
                                       pairs[keys[4]])
    return out


def parse(text: str) -> GuestReport:
    """Parse a guest console log; raise :class:`ReportError` unless a full report is in it."""
    lines = [ln.rstrip("\r\n").replace("\r", "").strip() for ln in text.splitlines()]
    body = _block(lines, REPORT, required=True)
    assert body is not None
    pairs = _pairs(body, REPORT)
    version = _int(pairs, "version")
    if version != 1:
        raise ReportError(f"report version {version} is not understood by this lab (wants 1)")
    if "nodes" not in pairs:
        raise ReportError("the report has no nodes")
    ids = [int(n) for n in pairs["nodes"].split(",") if n.strip().isdigit()]
    if len(ids) != len([n for n in pairs["nodes"].split(",") if n.strip()]):
        raise ReportError(f"the report's nodes={pairs['nodes']!r} is not a list of node ids")
    nodes: dict[int, GuestNode] = {}
    for n in ids:
        if f"node{n}.cpulist" not in pairs:
            raise ReportError(f"the report lists node {n} but has no node{n}.cpulist")
        nodes[n] = GuestNode(
            id=n,
            cpus=parse_cpulist(pairs[f"node{n}.cpulist"]),
            memtotal_kib=_int(pairs, f"node{n}.memtotal_kib") or 0,
            memfree_kib=_int(pairs, f"node{n}.memfree_kib", required=False),
            present_kib=_int(pairs, f"node{n}.present_kib", required=False),
            distances=_ints(pairs.get(f"node{n}.distance")),
        )
    if "cpus.online" not in pairs:
        raise ReportError("the report has no cpus.online")
    lat_body = _block(lines, LATENCY, required=False)
    return GuestReport(
        pci=_pci(pairs),
        kernel=pairs.get("kernel", ""),
        nodes=nodes,
        cpus_online=parse_cpulist(pairs["cpus.online"]),
        cpus_present=parse_cpulist(pairs.get("cpus.present", pairs["cpus.online"])),
        memtotal_kib=_int(pairs, "memtotal_kib") or 0,
        latency=_latency(lat_body) if lat_body is not None else None,
        raw="\n".join(body),
    )


@dataclass(frozen=True)
class Cell:
    """A guest NUMA cell as the domain XML defines it (``<cpu><numa><cell>``)."""

    id: int
    cpus: frozenset[int]
    memory_kib: int
    #: host nodes of its strict ``<numatune><memnode>``, as written (None: not bound)
    host_nodes: str | None = None
    #: hugepage sizes (KiB) whose ``<page nodeset>`` covers this cell
    hugepage_kib: tuple[int, ...] = ()


def to_kib(value: str, unit: str | None) -> int:
    """libvirt's scaled integer (``memory='64' unit='MiB'``) in KiB."""
    factor = _UNITS.get((unit or "KiB").lower())
    if factor is None:
        raise ReportError(f"unknown memory unit {unit!r}")
    return int(value) * factor // 1024


def rendered_cells(domain_xml: str) -> list[Cell]:
    """The guest cells a domain XML asks for (empty when it defines none)."""
    root = ET.fromstring(domain_xml)
    memnodes = {
        int(m.get("cellid", "-1")): m.get("nodeset")
        for m in root.findall("./numatune/memnode")
    }
    pages: list[tuple[int, frozenset[int] | None]] = []
    for page in root.findall("./memoryBacking/hugepages/page"):
        nodeset = page.get("nodeset")
        pages.append(
            (
                to_kib(page.get("size", "0"), page.get("unit")),
                parse_cpulist(nodeset) if nodeset else None,
            )
        )
    cells = []
    for el in root.findall("./cpu/numa/cell"):
        cid = int(el.get("id", str(len(cells))))
        cells.append(
            Cell(
                id=cid,
                cpus=parse_cpulist(el.get("cpus", "")),
                memory_kib=to_kib(el.get("memory", "0"), el.get("unit")),
                host_nodes=memnodes.get(cid),
                hugepage_kib=tuple(s for s, ns in pages if ns is None or cid in ns),
            )
        )
    return sorted(cells, key=lambda c: c.id)


def compare(report: GuestReport, cells: list[Cell], vcpus: int) -> list[str]:
    """Differences between the guest's view and the rendered cells; empty when they match.

    CPUs must match exactly. Memory: the pages present on a guest node must be the cell's
    size (less the firmware's few hundred KiB), and MemTotal can only be smaller than that:
    the guest kernel keeps its own image and page tables out of MemTotal, on whichever node
    it was loaded into.
    """
    problems: list[str] = []
    if not cells:
        cells = [Cell(0, frozenset(range(vcpus)), report.memtotal_kib)]
        if len(report.nodes) != 1:
            problems.append(f"the domain defines no cells but the guest sees {len(report.nodes)}")
        return problems
    if sorted(report.nodes) != [c.id for c in cells]:
        problems.append(
            f"the guest sees nodes {sorted(report.nodes)}, the rendering has cells "
            f"{[c.id for c in cells]}"
        )
    for cell in cells:
        node = report.nodes.get(cell.id)
        if node is None:
            continue
        if node.cpus != cell.cpus:
            problems.append(
                f"guest node {cell.id} has CPUs {format_cpulist(node.cpus) or 'none'}, "
                f"the rendered cell {format_cpulist(cell.cpus) or 'none'}"
            )
        if node.memtotal_kib > cell.memory_kib or node.memtotal_kib <= 0:
            problems.append(
                f"guest node {cell.id} has MemTotal {node.memtotal_kib} KiB, more than the "
                f"rendered cell's {cell.memory_kib} KiB"
                if node.memtotal_kib > 0
                else f"guest node {cell.id} has no memory"
            )
        if node.present_kib is not None and not (
            cell.memory_kib - PRESENT_SLACK_KIB <= node.present_kib <= cell.memory_kib
        ):
            problems.append(
                f"guest node {cell.id} has {node.present_kib} KiB present, the rendered cell "
                f"{cell.memory_kib} KiB"
            )
    online = report.cpus_online
    want = frozenset().union(*(c.cpus for c in cells))
    if online != want:
        problems.append(
            f"the guest has CPUs {format_cpulist(online)} online, the cells hold "
            f"{format_cpulist(want)}"
        )
    return problems
