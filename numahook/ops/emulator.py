"""The emulator narrowed to its own CPUs once QEMU has started.

While QEMU starts, the rendered ``<emulatorpin>`` also reaches a CPU the domain holds on
each memory node the emulator's own CPUs miss, so QEMU can preallocate every guest cell
from its node (core/prealloc.py says why libvirt needs that). Once QEMU runs, those
borrowed CPUs belong to vCPUs again: the ``started`` hook, and numahookd's reconcile pass
wherever it finds the emulator wider (the backstop), set every emulator thread's affinity
to ``<numahook:rendered emulator>``. The emulator threads are those in the main thread's
cgroup, never a vCPU or IO thread by name, so a host without cgroups is safe too.

Files and syscalls only, so the hook may call it (docs/architecture.md).
"""

from __future__ import annotations

from numahook import log as logmod
from numahook.core import cpulist
from numahook.core.domainxml import DomainFacts
from numahook.errors import HostError
from numahook.host import procfs
from numahook.records import record

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
