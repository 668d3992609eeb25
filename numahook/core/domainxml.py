"""Facts read from libvirt domain XML: what the domain already says, so we never duplicate it.

XML only, no policy: this module reports what is written; :mod:`numahook.core.hardware`
decides what it means.
"""

from __future__ import annotations

from numahook.core import cpulist, metadata, pci
from numahook.core.units import clip, is_decimal, to_kib
from numahook.errors import InputError
from numahook.records import field, record

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from typing import Any

#: QEMU's own ceiling for -smp maxcpus on x86_64 q35 (KVM_MAX_VCPUS is 1024 on new kernels).
MAX_VCPUS = 4096


@record(frozen=True)
class DefinedCell:
    """A guest cell as the domain XML defines it (``<cpu><numa><cell>``)."""

    id: int
    cpus: frozenset[int]
    memory_kib: int


@record(frozen=True)
class DomainFacts:
    name: str
    uuid: str
    domain_type: str
    vcpus: int
    current_vcpus: int
    memory_kib: int
    hugepages: bool
    #: declared <page size>s (KiB); empty means "the host's default size"
    page_sizes: tuple[int, ...]
    #: (sockets, dies, cores, threads) or None when <cpu><topology> is absent
    topology: tuple[int, int, int, int] | None
    iothread_ids: tuple[int, ...]
    partition: str | None
    vcpupin: dict[int, frozenset[int]] = field(default_factory=dict)
    emulatorpin: frozenset[int] | None = None
    #: the emulator's own CPUs once started, ``<numahook:rendered emulator>``, where the
    #: rendered ``<emulatorpin>`` is wider while QEMU starts (core/prealloc.py)
    emulator_own: frozenset[int] | None = None
    iothreadpin: dict[int, frozenset[int]] = field(default_factory=dict)
    cells: tuple[DefinedCell, ...] = ()
    #: <numatune><memnode cellid nodeset>, by cell id
    memnodes: dict[int, frozenset[int]] = field(default_factory=dict)
    #: <numatune><memory>: (mode, host nodes), None when absent; libvirt's default is strict
    numatune_memory: tuple[str, frozenset[int]] | None = None
    #: <hugepages><page size nodeset>: (size KiB, guest cells) per page element
    page_nodesets: tuple[tuple[int, frozenset[int]], ...] = ()
    vcpusched: tuple[tuple[frozenset[int], str, int], ...] = ()
    #: <emulatorsched>: (scheduler, priority), None when absent
    emulatorsched: tuple[str, int] | None = None
    graphics: bool = False
    memballoon: str | None = None
    cpu_mode: str | None = None
    tsc_deadline_required: bool = False

    @property
    def emulator_cpus(self) -> frozenset[int] | None:
        """Where the emulator runs once the domain has started."""
        return self.emulator_own if self.emulator_own is not None else self.emulatorpin
    pmu_off: bool = False
    nosharepages: bool = False
    locked: bool = False
    #: ``<os><type machine>`` as written (None: libvirt's default)
    machine: str | None = None
    #: host PCI devices given to the guest, and the guest's PCI controllers
    passthrough: tuple[pci.Passthrough, ...] = ()
    controllers: tuple[pci.Controller, ...] = ()
    #: guest PCI buses other devices' addresses name (taken, controller or not)
    pci_buses: frozenset[int] = frozenset()

    @property
    def bdfs(self) -> tuple[str, ...]:
        """The host PCI devices it passes through, for the host adapters to look up."""
        return tuple(d.bdf for d in self.passthrough)


def _int(el: Any, attr: str | None, what: str, lo: int = 0, hi: int = 1 << 31) -> int:
    text = (el.get(attr) if attr else el.text) or ""
    text = text.strip()
    if not is_decimal(text) or len(text) > 10 or not lo <= int(text) <= hi:
        raise InputError(f"{what} {clip(text)} is not a whole number between {lo} and {hi}")
    return int(text)


#: CPUs all the sets of one document may expand to: a 4096-vCPU domain pinned 1:1 needs
#: ~4096; without a bound, 10 MiB of "<vcpupin cpuset='0-8191'/>" would cost gigabytes
MAX_EXPANDED = 1 << 20


class _Budget:
    """Counts the CPUs a document's cpusets expand to, so cost follows input size."""

    def __init__(self) -> None:
        self.left = MAX_EXPANDED

    def parse(self, text: str, what: str) -> frozenset[int]:
        cpus = cpulist.parse(text, what)
        self.left -= len(cpus)
        if self.left < 0:
            raise InputError(f"the domain's CPU sets expand to more than {MAX_EXPANDED} CPUs "
                             f"in all (at {what}); no real domain needs that many pins")
        return cpus


def _cpuset(el: Any, what: str, budget: _Budget) -> frozenset[int]:
    return budget.parse(el.get("cpuset") or "", what)


def read(root: Any) -> DomainFacts:
    """Read :class:`DomainFacts`; malformed values raise InputError naming the element."""
    if root.tag != "domain":
        raise InputError(f"expected a <domain> document, got <{root.tag}>")
    budget = _Budget()
    name = (root.findtext("name") or "").strip()
    if not name:
        raise InputError("the domain has no <name>")
    vcpu_el = root.find("vcpu")
    if vcpu_el is None:
        vcpus = current = 1
    else:
        vcpus = _int(vcpu_el, None, "<vcpu>", 1, MAX_VCPUS)
        current = _int(vcpu_el, "current", "<vcpu current>", 1, vcpus) if vcpu_el.get(
            "current") else vcpus
    mem_el = root.find("memory")
    if mem_el is None:
        raise InputError("the domain has no <memory>")
    memory = to_kib(mem_el.text, mem_el.get("unit"), "<memory>")

    hp = root.find("memoryBacking/hugepages")
    page_sizes: list[int] = []
    page_nodesets: list[tuple[int, frozenset[int]]] = []
    if hp is not None:
        for page in hp.findall("page"):
            size = to_kib(page.get("size"), page.get("unit"), "<page size>")
            page_sizes.append(size)
            page_nodesets.append((size, budget.parse(page.get("nodeset") or "",
                                                     "<page nodeset>")))
    memnodes = {
        _int(m, "cellid", "<memnode cellid>", 0, 1 << 16): budget.parse(
            m.get("nodeset") or "", "<memnode nodeset>")
        for m in root.findall("numatune/memnode")
    }

    tune_el = root.find("numatune/memory")
    numatune_memory = None
    if tune_el is not None:
        numatune_memory = (tune_el.get("mode") or "strict",
                           budget.parse(tune_el.get("nodeset") or "", "<numatune memory nodeset>"))

    topo_el = root.find("cpu/topology")
    topology: tuple[int, int, int, int] | None = None
    if topo_el is not None:
        sockets, dies, cores, threads = (
            _int(topo_el, a, f"<topology {a}>", 1, MAX_VCPUS) if topo_el.get(a) else 1
            for a in ("sockets", "dies", "cores", "threads")
        )
        topology = (sockets, dies, cores, threads)

    ids: list[int] = []
    idlist = root.findall("iothreadids/iothread")
    if idlist:
        ids = [_int(e, "id", "<iothread id>", 1, 1 << 16) for e in idlist]
    elif root.find("iothreads") is not None:
        ids = list(range(1, _int(root.find("iothreads"), None, "<iothreads>", 0, 1 << 10) + 1))

    cputune = root.find("cputune")
    vcpupin: dict[int, frozenset[int]] = {}
    iothreadpin: dict[int, frozenset[int]] = {}
    emulatorpin = None
    sched: list[tuple[frozenset[int], str, int]] = []
    emusched = None
    if cputune is not None:
        for pin in cputune.findall("vcpupin"):
            vcpu = _int(pin, "vcpu", "<vcpupin vcpu>", 0, MAX_VCPUS)
            vcpupin[vcpu] = _cpuset(pin, "<vcpupin>", budget)
        for pin in cputune.findall("iothreadpin"):
            iothreadpin[_int(pin, "iothread", "<iothreadpin iothread>", 0, 1 << 16)] = _cpuset(
                pin, "<iothreadpin>", budget)
        emu = cputune.find("emulatorpin")
        if emu is not None:
            emulatorpin = _cpuset(emu, "<emulatorpin>", budget)
        for s in cputune.findall("vcpusched"):
            prio = _int(s, "priority", "<vcpusched priority>", 0, 99) if s.get("priority") else 0
            sched.append((budget.parse(s.get("vcpus") or "", "<vcpusched vcpus>"),
                          s.get("scheduler") or "", prio))
        es = cputune.find("emulatorsched")
        if es is not None:
            prio = _int(es, "priority", "<emulatorsched priority>", 0, 99) if es.get(
                "priority") else 0
            emusched = (es.get("scheduler") or "", prio)

    cells: list[DefinedCell] = []
    for c in root.findall("cpu/numa/cell"):
        cells.append(DefinedCell(
            id=_int(c, "id", "<cell id>", 0, 1 << 16) if c.get("id") else len(cells),
            cpus=budget.parse(c.get("cpus") or "", "<cell cpus>"),
            memory_kib=to_kib(c.get("memory"), c.get("unit"), "<cell memory>"),
        ))

    cpu_el = root.find("cpu")
    tsc = any(
        f.get("name") == "tsc-deadline" and f.get("policy") in ("require", "force")
        for f in root.findall("cpu/feature")
    )
    balloon = root.find("devices/memballoon")
    os_type = root.find("os/type")
    return DomainFacts(
        name=name,
        uuid=(root.findtext("uuid") or "").strip(),
        domain_type=root.get("type") or "",
        vcpus=vcpus,
        current_vcpus=current,
        memory_kib=memory,
        hugepages=hp is not None,
        page_sizes=tuple(page_sizes),
        topology=topology,
        iothread_ids=tuple(ids),
        partition=(root.findtext("resource/partition") or "").strip() or None,
        vcpupin=vcpupin,
        emulatorpin=emulatorpin,
        emulator_own=metadata.emulator_cpus(root),
        iothreadpin=iothreadpin,
        cells=tuple(cells),
        memnodes=memnodes,
        numatune_memory=numatune_memory,
        page_nodesets=tuple(page_nodesets),
        vcpusched=tuple(sched),
        emulatorsched=emusched,
        graphics=root.find("devices/graphics") is not None,
        memballoon=balloon.get("model") if balloon is not None else None,
        cpu_mode=cpu_el.get("mode") if cpu_el is not None else None,
        tsc_deadline_required=tsc,
        pmu_off=root.find("features/pmu[@state='off']") is not None,
        nosharepages=root.find("memoryBacking/nosharepages") is not None,
        locked=root.find("memoryBacking/locked") is not None,
        machine=os_type.get("machine") if os_type is not None else None,
        passthrough=pci.read_passthrough(root),
        controllers=pci.read_controllers(root),
        pci_buses=pci.referenced_buses(root),
    )
