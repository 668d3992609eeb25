"""The plan: what numahook decided for one domain, and the inputs and checks it came from.

Plain records with no logic beyond their own digest: :mod:`numahook.core.hardware`
fills them, :mod:`numahook.core.designer` writes a plan into domain XML, and
:mod:`numahook.core.explain` shows an evaluation to the operator. The device records
(``Port``, ``Bus``, ``DeviceReport``) live here too, not in :mod:`numahook.core.placement`
which fills them: the plan holds them, so defining them there made the two modules import
each other (``tests/unit/test_layers.py`` fails on any import circle).
"""

from __future__ import annotations

from collections.abc import Mapping

from numahook import records
from numahook.config import Config
from numahook.core.pci import HostPci
from numahook.core.topology import Topology, sha256_hex
from numahook.errors import Refusal
from numahook.records import field, record

#: Bump when the same inputs would render differently, so daemons re-render definitions.
RENDER_VERSION = 1


@record(frozen=True)
class Check:
    name: str
    #: True passed, False failed, None not evaluated (an earlier check failed)
    ok: bool | None
    reason: str


@record(frozen=True)
class Cell:
    """One guest NUMA cell of the plan. Its name is part of the plan's digest (repr), so
    renaming it would re-render every domain."""

    id: int
    host_node: int
    vcpus: tuple[int, ...]
    memory_kib: int
    pages: int


@record(frozen=True)
class Port:
    """A ``pcie-root-port`` on an expander bus, holding one device."""

    index: int
    slot: int
    bdf: str
    alias: str


@record(frozen=True)
class Bus:
    """A ``pcie-expander-bus`` for one guest cell and one host root complex."""

    index: int
    bus_nr: int
    cell: int
    host_node: int
    root_complex: str
    alias: str
    ports: tuple[Port, ...]


@record(frozen=True)
class DeviceReport:
    """Where one passthrough device is on the host and where it goes in the guest."""

    kind: str
    bdf: str
    host_node: int | None
    root_complex: str | None
    present: bool
    #: "expander-bus", "pcie.0" (where libvirt puts it), or "kept" (the user's address)
    placement: str
    cell: int | None = None
    #: the expander bus and root port (controller indexes), and the bus's busNr
    bus: int | None = None
    bus_nr: int | None = None
    port: int | None = None
    #: the guest address as libvirt writes it (``0000:05:00.0``), when known
    address: str | None = None
    why: str = ""


#: Plan fields added later, with their defaults: each joins the digest only when it differs
#: from its default (see Plan.digest), so renderings made before it keep their digests.
#: A default, not truthiness, because memory_node 0 is a real node.
_LATER: dict[str, object] = {"emulator_realtime": False, "held": (), "buses": (),
                             "memory_node": None, "memory_pages": 0,
                             "emulator_start": (), "emulator_shared": False,
                             "floating": (), "float_cpus": ()}


@record(frozen=True)
class Plan:
    vcpu_pins: tuple[int, ...]
    emulator: tuple[int, ...]
    iothread_pins: tuple[tuple[int, tuple[int, ...]], ...]
    cells: tuple[Cell, ...]
    page_kib: int | None
    topology: tuple[int, int, int, int]
    realtime_vcpus: tuple[int, ...]
    priority: int
    vcpusched: bool
    realtime_extras: bool
    #: emit <memoryBacking><locked/> (real-time, where libvirtd may lift the memlock limit)
    locked: bool = False
    #: the isolated emulator thread of a real-time domain runs SCHED_FIFO at ``priority``
    #: on its own CPU: under TCG it delivers the guest's timer interrupts, under KVM it
    #: emulates devices, and host load on that CPU must not delay either
    emulator_realtime: bool = False
    #: guest distances: (cell a, cell b, value) for every ordered pair
    distances: tuple[tuple[int, int, int], ...] = ()
    kept_pinning: bool = field(default=False, compare=False)
    #: threadPolicy isolate: the other threads of the vCPUs' cores, held idle for them
    held: tuple[int, ...] = ()
    #: the pcie-expander-buses and root ports the passthrough devices go behind
    buses: tuple[Bus, ...] = ()
    #: hugepages without guestMappingPassthrough: the one host node of the dedicated CPUs,
    #: to which all memory is bound strict (Nova's implicit one-cell NUMA topology), so the
    #: pages reserved there are the ones QEMU maps
    memory_node: int | None = None
    #: how many pages of ``page_kib`` the domain takes on ``memory_node``
    memory_pages: int = 0
    #: the rendered <emulatorpin> while QEMU starts, when it must reach memory nodes that
    #: ``emulator`` does not (core/prealloc.py); ``()``: the same as ``emulator``
    emulator_start: tuple[int, ...] = ()
    #: emulatorThreadPolicy share: ``emulator`` is the host's shared set, which the domain
    #: uses but does not hold
    emulator_shared: bool = False
    #: dedicatedMask: the vCPUs outside it, which float on ``float_cpus`` (the host's
    #: shared set) instead of a CPU of their own; their ``vcpu_pins`` entry is the lowest
    #: of ``float_cpus``, so read a vCPU's CPUs through :meth:`pin`
    floating: tuple[int, ...] = ()
    float_cpus: tuple[int, ...] = ()

    def pin(self, vcpu: int) -> tuple[int, ...]:
        """The host CPUs ``vcpu`` is pinned to: its dedicated one, or the shared set."""
        return self.float_cpus if vcpu in self.floating else (self.vcpu_pins[vcpu],)

    @property
    def dedicated_pins(self) -> tuple[int, ...]:
        """The CPUs of the vCPUs that have one of their own."""
        return tuple(c for v, c in enumerate(self.vcpu_pins) if v not in self.floating)

    @property
    def emulator_pin(self) -> tuple[int, ...]:
        """What ``<emulatorpin>`` says: the start set, narrowed to ``emulator`` at started."""
        return self.emulator_start or self.emulator

    @property
    def cpus(self) -> frozenset[int]:
        """Every host CPU this domain holds exclusively: never a shared one, which a shared
        emulator or one floating with the floating vCPUs uses."""
        emulator = () if self.emulator_shared else tuple(
            c for c in self.emulator if c not in self.float_cpus)
        return (frozenset(self.dedicated_pins) | frozenset(emulator)
                | frozenset(self.held))

    @property
    def page_need(self) -> dict[tuple[int, int], int]:
        """Pages to reserve, by (host node, page size KiB): the cells', or the bound node's."""
        if self.page_kib is None:
            return {}
        if self.memory_node is not None:
            return {(self.memory_node, self.page_kib): self.memory_pages}
        return {(c.host_node, self.page_kib): c.pages for c in self.cells}

    def digest(self) -> str:
        # repr of plain tuples and ints is stable; asdict() deep-copies (bench/render.py).
        # Fields added later join only when set, so older renderings keep their digests.
        parts = [(name, getattr(self, name)) for name in records.field_names(self)
                 if name != "kept_pinning"
                 and (name not in _LATER or getattr(self, name) != _LATER[name])]
        raw = repr((RENDER_VERSION, parts)).encode()
        return "sha256:" + sha256_hex(raw)[:32]


@record
class Evaluation:
    checks: list[Check]
    plan: Plan | None
    advisories: list[str]
    #: each passthrough device: where it is on the host and where it goes in the guest
    devices: list[DeviceReport] = field(default_factory=list)

    @property
    def failed(self) -> Check | None:
        return next((c for c in self.checks if c.ok is False), None)

    def refusal(self) -> Refusal:
        bad = self.failed
        assert bad is not None
        return Refusal(bad.reason, bad.name)


@record(frozen=True)
class Inputs:
    """Everything the plan depends on besides the domain itself."""

    topology: Topology
    available: frozenset[int]
    config: Config
    #: libvirt's <vcpusched> works here (no RT group budget needed before the vCPUs run)
    emit_vcpusched: bool = True
    #: size libvirt uses for a bare <hugepages/> (``Hugepagesize`` in /proc/meminfo)
    default_page_kib: int | None = None
    #: libvirtd can lift QEMU's RLIMIT_MEMLOCK (CAP_SYS_RESOURCE), so <locked/> works
    can_lock_memory: bool = True
    #: where the domain's passthrough devices sit on this host, by BDF
    devices: Mapping[str, HostPci] = field(default_factory=dict)
    #: the cpuset of the domain's partition (None: not known, as with ``check --cpuset``)
    partition_cpus: frozenset[int] | None = None
    #: the CPUs other domains' claims hold exclusively (``available`` lacks them as well)
    claimed_cpus: frozenset[int] = frozenset()
    #: CPU of the partition's cpuset -> the other managed domain that holds it (running,
    #: or claimed by a start), so that a refusal for lack of CPUs names whom to stop;
    #: empty where unknown. Not part of any digest: who holds a CPU is not the plan's.
    holders: Mapping[int, str] = field(default_factory=dict)
