"""The ``kvm-pit`` kernel thread of a KVM domain with dedicated CPUs, on vCPU 0's CPU.

KVM emulates the guest's PIT timer in a kernel thread, ``kvm-pit/<QEMU pid>``, which the
kernel lets run anywhere: on a host whose other CPUs are busy with housekeeping, the
PIT's interrupts wait behind that work. KubeVirt (its PR #9613) therefore gives it vCPU
0's affinity under dedicated placement, and so does numahook: at ``started`` (the hook)
and again whenever numahookd's reconcile pass finds it elsewhere (the backstop). Under
TCG there is no such thread (QEMU emulates the PIT itself), so there is nothing to do.

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


@record(frozen=True)
class PitState:
    """What became of a domain's kvm-pit thread."""

    #: "pinned" (just now), "in place", "tcg", "no thread", "failed", "not dedicated"
    outcome: str
    tid: int | None = None
    #: the CPUs it runs on now (None: unknown)
    cpus: frozenset[int] | None = None
    #: vCPU 0's CPUs, where it belongs
    want: frozenset[int] | None = None


def target(facts: DomainFacts) -> frozenset[int] | None:
    """vCPU 0's pinned CPUs when the kvm-pit thread belongs there, else None."""
    if facts.domain_type != "kvm":
        return None
    return facts.vcpupin.get(0) or None


def pin(facts: DomainFacts, pid: int | None, proc_root: str = "/proc",
        backstop: bool = False) -> PitState:
    """Put the kvm-pit thread of QEMU ``pid`` on vCPU 0's CPUs; never raises.

    ``backstop``: numahookd's check, which is quiet while the thread is in place.
    """
    name = facts.name
    if facts.domain_type != "kvm":
        if not backstop:
            log.info("domain=%s kvm-pit: runs under TCG (type=%r), which has no kvm-pit "
                     "thread; nothing to pin", name, facts.domain_type)
        return PitState("tcg")
    want = target(facts)
    if want is None or pid is None:
        return PitState("not dedicated")
    try:
        tid = procfs.kvm_pit_thread(pid, proc_root)
        if tid is None:
            if not backstop:
                log.warning("domain=%s kvm-pit: QEMU %d has no kvm-pit/%d thread (the PIT is "
                            "off, <timer name='pit' present='no'/>, or QEMU emulates it)",
                            name, pid, pid)
            return PitState("no thread", want=want)
        now = procfs.affinity_of(tid)
        if now == want:
            return PitState("in place", tid, now, want)
        procfs.set_affinity(tid, want)
        after = procfs.affinity_of(tid)
    except HostError as exc:
        log.error("domain=%s kvm-pit: %s", name, exc)
        return PitState("failed", want=want)
    (log.warning if backstop else log.info)(
        "domain=%s action=kvm-pit tid=%d cpus=%s (was %s)%s", name, tid, cpulist.format(after),
        cpulist.format(now), "; it had moved, so numahookd put it back" if backstop else "")
    return PitState("pinned", tid, after, want)
