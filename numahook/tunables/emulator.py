"""The emulator narrowed to its own CPUs once QEMU has started.

While QEMU starts, the rendered ``<emulatorpin>`` also reaches a CPU the domain holds on
each memory node the emulator's own CPUs miss, so QEMU can preallocate every guest cell
from its node (core/prealloc.py says why libvirt needs that). Once QEMU runs, those
borrowed CPUs belong to vCPUs again: the ``started`` hook, and numahookd's reconcile pass
wherever it finds the emulator wider (the backstop), set every emulator thread's affinity
to ``<numahook:rendered emulator>``. The emulator threads are those in the main thread's
cgroup, never a vCPU or IO thread by name, so a host without cgroups is safe too.

Files and syscalls only, so the hook may call it (docs/architecture.md). Nothing to undo:
the threads end with QEMU. Host modules are imported where used, as numahook/tunables/
base.py asks of a tunable.
"""

from __future__ import annotations

from numahook import log as logmod
from numahook.records import record
from numahook.tunables.base import Tunable

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from typing import Any

    from numahook.config import Config
    from numahook.core.domainxml import DomainFacts
    from numahook.core.plan import Check, Plan
    from numahook.core.render import Parsed
    from numahook.tunables.base import Journal
    from numahook.tunables.view import View

log = logmod.get(__name__)

#: QEMU's names for threads that are not the emulator's (with libvirt's debug-threads=on)
_NOT_EMULATOR = ("CPU ", "IO iothread")


@record(frozen=True)
class EmulatorState:
    """What became of a started domain's emulator threads."""

    #: "narrowed" (just now), "in place", "not needed" (no wider start set), "failed"
    outcome: str
    #: the emulator's own CPUs, where it belongs once started
    want: frozenset[int] | None = None
    #: the main thread's CPUs after this call (None: unknown)
    cpus: frozenset[int] | None = None
    #: emulator threads moved by this call
    moved: int = 0
    detail: str = ""


def target(facts: DomainFacts) -> frozenset[int] | None:
    """The emulator's own CPUs when the rendered <emulatorpin> is wider, else None."""
    own = facts.emulator_own
    if own is None or facts.emulatorpin is None or own == facts.emulatorpin:
        return None
    return own


def emulator_threads(pid: int, proc_root: str = "/proc") -> list[int]:
    """QEMU ``pid``'s threads that share its main thread's cgroup, vCPUs and IO threads
    excluded by name as well."""
    from numahook.errors import HostError
    from numahook.host import procfs

    home = procfs.cgroup_of(pid, "cpuset", proc_root)
    out = []
    for tid in procfs.threads(pid, proc_root):
        comm = procfs.comm_of(tid, proc_root)
        if comm is None or comm.startswith(_NOT_EMULATOR):
            continue
        try:
            if procfs.cgroup_of(tid, "cpuset", proc_root) != home:
                continue
        except HostError:
            continue  # exited meanwhile
        out.append(tid)
    return out


def narrow(facts: DomainFacts, pid: int | None, proc_root: str = "/proc",
           backstop: bool = False) -> EmulatorState:
    """Put QEMU ``pid``'s emulator threads on their own CPUs; never raises.

    ``backstop``: numahookd's check, quiet while the emulator is in place.
    """
    from numahook.core import cpulist
    from numahook.errors import HostError
    from numahook.host import procfs

    want = target(facts)
    if want is None:
        return EmulatorState("not needed")
    if pid is None:
        return EmulatorState("failed", want, detail="QEMU's pid is not known yet")
    name = facts.name
    moved = 0
    try:
        before = procfs.affinity_of(pid)
        for tid in emulator_threads(pid, proc_root):
            try:
                if procfs.affinity_of(tid) != want:
                    procfs.set_affinity(tid, want)
                    moved += 1
            except HostError:
                if procfs.comm_of(tid, proc_root) is not None:
                    raise  # a thread that still exists refused: that is a failure
        after = procfs.affinity_of(pid)
    except HostError as exc:
        log.error("domain=%s emulator: narrowing it to CPUs %s failed: %s", name,
                  cpulist.format(want), exc)
        return EmulatorState("failed", want, detail=str(exc))
    if after != want:
        detail = (f"QEMU's main thread runs on CPUs {cpulist.format(after)} after it was set "
                  f"to {cpulist.format(want)}; check the emulator cgroup's cpuset.cpus")
        log.error("domain=%s emulator: %s", name, detail)
        return EmulatorState("failed", want, after, moved, detail)
    if not moved:
        return EmulatorState("in place", want, after)
    (log.warning if backstop else log.info)(
        "domain=%s action=emulator cpus=%s threads=%d (was %s)%s", name,
        cpulist.format(want), moved, cpulist.format(before),
        "; it was wider, so numahookd narrowed it" if backstop else "")
    return EmulatorState("narrowed", want, after, moved)


class Emulator(Tunable):
    name = "emulator"
    attributes = ("isolateEmulatorThread", "emulatorThreadPolicy")
    plan_fields = ("emulator", "emulator_start")

    def wanted(self, doc: Parsed | View) -> bool:
        return doc.request is not None and doc.request.dedicated

    def precondition(self, cfg: Config, doc: Parsed, plan: Plan) -> Check | None:
        return None

    def intent(self, doc: Parsed, plan: Plan) -> None:
        return None  # nothing journalled: the threads end with QEMU

    def apply(self, cfg: Config, journal: Journal,
              view: View | None) -> dict[str, object] | None:
        assert view is not None
        narrow(view.facts, view.pid, cfg.proc_root)
        return None  # narrow() logs its own line

    def verify(self, cfg: Config, view: View) -> str | None:
        from numahook.errors import HostError
        from numahook.host import procfs

        want = target(view.facts)
        if want is None or view.pid is None:
            return None
        try:
            if procfs.affinity_of(view.pid) == want:
                return None
        except HostError:
            return None  # QEMU exited
        return "the emulator is wider than its own CPUs"

    def undo(self, cfg: Config, journal: Journal) -> bool:
        return True  # nothing journalled: the threads end with QEMU

    def backstop(self, cfg: Config, view: View) -> str | None:
        """Narrow it quietly (no journal needed); narrow() warns when it was wider."""
        if target(view.facts) is not None:
            narrow(view.facts, view.pid, cfg.proc_root, backstop=True)
        return None

    def status(self, cfg: Config, view: View) -> dict[str, Any]:
        """Where QEMU's main (emulator) thread may run now: what ``check`` promised, or not."""
        from numahook.core import cpulist
        from numahook.errors import NumahookError
        from numahook.host import procfs

        if view.pid is None:
            return {"emulator_now": None}
        try:
            return {"emulator_now": cpulist.format(procfs.affinity_of(view.pid))}
        except NumahookError:
            return {"emulator_now": None}

    def held(self, entry: Any) -> dict[str, Any]:
        return {}

    def text(self, domain: dict[str, Any]) -> list[str]:
        return []  # the domain's first line says where the emulator runs (ops/status.py)

    def fast_checks(self, doc: Parsed, plan: Plan) -> dict[str, Any] | None:
        """Where it starts wider (core/prealloc.py), QEMU's main thread already on its own
        CPUs alone."""
        return {"affinity": list(plan.emulator)} if plan.emulator_start else {}

    def decode(self, data: Any) -> None:
        raise ValueError("the emulator journals nothing")


TUNABLE = Emulator()
