"""The host as a map: per NUMA node its cores and threads, and for each CPU who holds it
and as what. ``numahook status`` draws it, ``--json`` gives it to scripts, and ``numahook
node`` lists each node's free dedicated CPUs from it.

Operators know ``lstopo`` and ``numactl -H``, which show the machine but not which domain
holds a CPU; the claims and the live definitions know that, and nothing drew it. Pure:
``ops/holders.py`` reads the host and the status document this is built from.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from numahook.core import cpulist
from numahook.core.topology import Topology
from numahook.core.units import counted
from numahook.records import record, replace

#: what a CPU is doing, in drawing order of the key
STATES = ("vcpu", "emulator", "held", "claimed", "free", "shared", "host", "offline")
#: the one-character role after a domain's key (a vCPU shows its number instead)
_ROLE = {"emulator": "e", "held": "h", "claimed": "c"}
#: CPUs no domain holds: a shared one ([cpus] shared) is used by many, so held by none
_BARE = {"free": ".", "shared": "~", "host": "-", "offline": "x"}
#: after a vCPU's number: SCHED_FIFO read back, or real-time wanted but not in place
FIFO, NOT_FIFO = "*", "!"


@record(frozen=True)
class Slot:
    """One CPU on the map."""

    cpu: int
    state: str
    #: the holding domain's key on the map ("A"), None for free, host and offline CPUs
    key: str | None = None
    vcpu: int | None = None
    #: the domain's realtime mask names this vCPU
    realtime: bool = False
    #: its thread runs SCHED_FIFO; None: no thread was read (not plugged, or not a vCPU)
    fifo: bool | None = None
    #: where it sits (None for an offline CPU: the kernel drops its topology/)
    package: int | None = None
    die: int | None = None
    core: int | None = None
    #: its place among its core's online threads
    thread: int | None = None
    #: room for the CPU's isolation state (isolcpus, nohz_full) once numahook sets it:
    #: drawn after the role, and null in the JSON until then
    isolation: str | None = None

    def code(self) -> str:
        """What the map prints for it: ``A0*``, ``Ae``, ``.``, ..."""
        if self.state in _BARE:
            text = _BARE[self.state]
        elif self.state == "vcpu":
            mark = FIFO if self.fifo else NOT_FIFO if self.realtime and self.fifo is False else ""
            text = f"{self.key}{self.vcpu}{mark}"
        else:
            text = f"{self.key}{_ROLE[self.state]}"
        return text + (self.isolation or "")


@record(frozen=True)
class Holder:
    """A domain on the map: running (its live definition) or a claim without one."""

    key: str
    name: str
    #: "running", "paused", ... for a running domain; "claim" for a claim alone
    kind: str
    #: what to add after its kind: the claim's phase, "changes at its next start"
    note: str = ""


@record(frozen=True)
class NodeMap:
    id: int
    memory_kib: int
    #: one column per core (its online threads in order), and one per offline CPU
    columns: tuple[tuple[Slot, ...], ...]

    @property
    def slots(self) -> list[Slot]:
        return [s for col in self.columns for s in col]


@record(frozen=True)
class HostMap:
    #: the partition whose cpuset dedicated CPUs come from, and that cpuset (None: unread)
    partition: str
    partition_cpus: frozenset[int] | None
    nodes: tuple[NodeMap, ...]
    holders: tuple[Holder, ...]
    #: offline CPUs whose node sysfs does not give (drawn nowhere else)
    offline_elsewhere: frozenset[int] = frozenset()
    #: ``[cpus] shared``: out of the dedicated pool, where floating threads run
    shared: frozenset[int] = frozenset()


def _key(i: int) -> str:
    """A, B, ... Z, AA, AB, ...: short, so that a column stays narrow."""
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        out = chr(ord("A") + r) + out
    return out


def _cpus(text: str | None) -> frozenset[int]:
    return cpulist.parse(text or "")


def roles(doc: Mapping[str, Any],
          next_start: Mapping[str, str] | None = None) -> tuple[dict[int, Slot], list[Holder]]:
    """Each held CPU's slot (without its place yet), and the holders in key order.

    ``doc`` is ``status.collect``'s document: running domains by name, then the claims
    with no running domain. A CPU two domains claim (never rendered so; a hand edit) goes
    to the first. ``next_start``: name -> a note for the domains whose next start differs.
    """
    slots: dict[int, Slot] = {}
    holders: list[Holder] = []

    def take(cpus: Iterable[int], slot: Slot) -> None:
        for c in sorted(cpus):
            slots.setdefault(c, replace(slot, cpu=c))

    running = sorted(doc.get("running", ()), key=lambda d: (d["name"], d["uuid"]))
    claims = sorted(doc.get("orphan_claims", ()), key=lambda c: (c.get("name") or "", c["uuid"]))
    for i, d in enumerate(running):
        key = _key(i)
        holders.append(Holder(key, d["name"], d["state"], (next_start or {}).get(d["name"], "")))
        for v in d.get("vcpus", ()):
            pin = _cpus(v["cpus"])
            if len(pin) == 1:  # a vCPU floating over several CPUs holds none of them alone
                fifo = None if v["policy"] is None else v["policy"] == "fifo"
                take(pin, Slot(0, "vcpu", key, v["vcpu"], v["realtime"], fifo))
        take(_cpus(d.get("emulator")), Slot(0, "emulator", key))
        take(_cpus(d.get("cpus")) | _cpus((d.get("claim") or {}).get("cpus")),
             Slot(0, "held", key))
    for j, c in enumerate(claims, len(running)):
        key = _key(j)
        holders.append(Holder(key, c.get("name") or c["uuid"], "claim", c["phase"]))
        take(_cpus(c.get("cpus")), Slot(0, "claimed", key))
    return slots, holders


def build(topo: Topology, offline: Mapping[int, int | None], slots: Mapping[int, Slot],
          holders: Sequence[Holder], partition: str,
          partition_cpus: frozenset[int] | None,
          shared: frozenset[int] = frozenset()) -> HostMap:
    """Place every CPU: online ones in their core's column, held or free or the host's
    (outside the partition's cpuset), and offline ones in a column of their own.

    A CPU of ``shared`` is drawn shared whoever pins to it: a shared emulator, the floating
    vCPUs of a dedicatedMask, several domains at once, none of them holding it."""
    nodes = []
    for n in sorted(topo.nodes):
        cores: dict[tuple[int, int, int], list[int]] = {}
        for c in sorted(topo.nodes[n].cpus):
            cores.setdefault(topo.core_key(c), []).append(c)
        columns = []
        for key, cpus in cores.items():
            col = []
            for t, c in enumerate(cpus):
                slot = (Slot(c, "shared") if c in shared else slots.get(c)
                        or Slot(c, "free" if partition_cpus is None
                                or c in partition_cpus else "host"))
                col.append(replace(slot, package=key[0], die=key[1], core=key[2], thread=t))
            columns.append(tuple(col))
        columns += [(Slot(c, "offline"),) for c, node in offline.items() if node == n]
        columns.sort(key=lambda col: col[0].cpu)
        nodes.append(NodeMap(n, topo.nodes[n].memory_kib, tuple(columns)))
    elsewhere = frozenset(c for c, node in offline.items() if node not in topo.nodes)
    return HostMap(partition, partition_cpus, tuple(nodes), tuple(holders), elsewhere,
                   frozenset(shared))


def to_json(m: HostMap) -> dict[str, Any]:
    """``status --json``'s ``host`` (docs/json.md): every CPU, and the holders' keys."""
    names = {h.key: h.name for h in m.holders}
    return {
        "partition": m.partition,
        "partition_cpus": None if m.partition_cpus is None else cpulist.format(m.partition_cpus),
        "holders": [{"key": h.key, "name": h.name, "kind": h.kind, "note": h.note}
                    for h in m.holders],
        "nodes": [{"id": n.id, "memory_kib": n.memory_kib,
                   "free": cpulist.format(s.cpu for s in n.slots if s.state == "free"),
                   "cpus": [{"cpu": s.cpu, "state": s.state,
                             "domain": names.get(s.key or ""), "key": s.key, "vcpu": s.vcpu,
                             "realtime": s.realtime, "fifo": s.fifo, "package": s.package,
                             "die": s.die, "core": s.core, "thread": s.thread,
                             "isolation": s.isolation} for s in n.slots]}
                  for n in m.nodes],
        "offline_elsewhere": cpulist.format(m.offline_elsewhere),
        "shared": cpulist.format(m.shared),
    }


def dedicated(m: HostMap) -> list[tuple[int, frozenset[int], frozenset[int],
                                        dict[str, frozenset[int]]]]:
    """Per node: the partition's CPUs there, the free ones, and who holds the others
    (``numahook node``: what a new dedicated domain can still get, and from whom)."""
    names = {h.key: h.name for h in m.holders}
    out = []
    for n in m.nodes:
        mine = frozenset(s.cpu for s in n.slots if s.state not in ("offline", "shared") and (
            m.partition_cpus is None or s.cpu in m.partition_cpus))
        free = frozenset(s.cpu for s in n.slots if s.state == "free")
        held: dict[str, set[int]] = {}
        for s in n.slots:
            if s.key is not None and s.cpu in mine:
                held.setdefault(names[s.key], set()).add(s.cpu)
        out.append((n.id, mine, free, {k: frozenset(v) for k, v in sorted(held.items())}))
    return out


# --------------------------------------------------------------------------- drawing

#: ANSI colours for the holders in turn (green is the free CPUs')
_PALETTE = ("36", "35", "33", "34", "31", "96", "95", "93", "94", "91")
_STYLE = {"free": "32", "shared": "2;32", "host": "2", "offline": "2"}


def _paint(text: str, slot: Slot, order: Mapping[str, int]) -> str:
    if slot.key is None:
        style = _STYLE[slot.state]
    else:
        style = _PALETTE[order[slot.key] % len(_PALETTE)]
        if slot.fifo:
            style += ";1"
        elif slot.realtime and slot.fifo is False:
            style += ";7"  # reverse video: a real-time vCPU that lost SCHED_FIFO
    return f"\033[{style}m{text}\033[0m"


def _shape(node: NodeMap) -> str:
    cores = [col for col in node.columns if col[0].state != "offline"]
    offline = len(node.columns) - len(cores)
    if not cores:
        text = "no CPUs" if not offline else "no CPU online"
    else:
        widths = {len(col) for col in cores}
        text = (f"{counted(len(cores), 'core')} x {counted(widths.pop(), 'thread')}"
                if len(widths) == 1 else
                f"{counted(len(cores), 'core')}, {counted(sum(map(len, cores)), 'thread')}")
    text += f", {offline} offline" if offline else ""
    cpus = [s.cpu for s in node.slots if s.state != "offline"]
    if cpus:
        free = sum(s.state == "free" for s in node.slots)
        text += f", CPUs {cpulist.format(cpus)}, {free} free"
    return text


def _memory(kib: int) -> str:
    if not kib:
        return "no memory"
    return f"{kib / (1 << 20):.3g} GiB" if kib >= 1 << 20 else f"{kib // 1024} MiB"


def text(m: HostMap, colour: bool = False, width: int = 80) -> list[str]:
    """The map in lines: per node a header, then for each band of cores that fits in
    ``width`` a pair of rows per thread, the CPU numbers and what holds each; then the
    holders and the key. ``colour``: ANSI colours, for a terminal only."""
    order = {h.key: i for i, h in enumerate(m.holders)}
    cells = [s for n in m.nodes for s in n.slots]
    cell = max([len(s.code()) for s in cells] + [len(str(s.cpu)) for s in cells] + [2]) + 1
    label = 7
    fits = max(1, (width - label) // cell)
    lines = []
    for node in m.nodes:
        lines += _wrap(f"node {node.id} ({_memory(node.memory_kib)}): {_shape(node)}", width)
        bands = -(-len(node.columns) // fits)
        per_band = -(-len(node.columns) // bands) if bands else 1  # even bands: 10+10, not 18+2
        for b in range(0, len(node.columns), per_band):
            band = node.columns[b:b + per_band]
            for t in range(max(len(col) for col in band)):
                row = [col[t] if t < len(col) else None for col in band]
                lines.append(f"{'  cpu':<{label}}" + "".join(
                    f"{'' if s is None else s.cpu:>{cell}}" for s in row).rstrip())
                codes = ["" if s is None else _paint(f"{s.code():>{cell}}", s, order)
                         if colour else f"{s.code():>{cell}}" for s in row]
                lines.append(f"{'':<{label}}" + "".join(c or " " * cell for c in codes)
                             .rstrip())
    if m.offline_elsewhere:
        lines += _wrap(f"offline, on no node sysfs names: {cpulist.format(m.offline_elsewhere)}",
                       width)
    for h in m.holders:
        kind = h.kind + (f", {h.note}" if h.note else "")
        lines += _wrap(f"  {h.key:<3}{h.name} ({kind})", width, "       ")
    where = f"{m.partition}'s cpuset" if m.partition_cpus is not None else "the cpuset"
    items = ["A0 vCPU 0 of domain A", f"{FIFO} SCHED_FIFO", f"{NOT_FIFO} real-time without "
             "SCHED_FIFO", "Ae emulator", "Ah held idle", "Ac claimed by a start", ". free",
             *(["~ shared ([cpus] shared)"] if m.shared else []), f"- not in {where}",
             "x offline"]
    # an item is not broken across lines: "*" above "SCHED_FIFO" would read as two items
    key = ", ".join(i.replace(" ", "\u00a0") for i in items)
    lines += [line.replace("\u00a0", " ") for line in _wrap("key: " + key, width)]
    return lines


def _wrap(text: str, width: int, indent: str = "     ") -> list[str]:
    """Words to ``width`` columns; a domain name longer than that is not broken."""
    import textwrap

    return textwrap.wrap(text, width, subsequent_indent=indent, break_long_words=False,
                         break_on_hyphens=False)
