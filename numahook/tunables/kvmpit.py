"""The ``kvm-pit`` kernel thread of a KVM domain with dedicated CPUs, on vCPU 0's CPU.

KVM emulates the guest's PIT timer in a kernel thread, ``kvm-pit/<QEMU pid>``, which the
kernel lets run anywhere: on a host whose other CPUs are busy with housekeeping, the
PIT's interrupts wait behind that work. KubeVirt (its PR #9613) therefore gives it vCPU
0's affinity under dedicated placement, and so does numahook: at ``started`` (the hook)
and again whenever numahookd's reconcile pass finds it elsewhere (the backstop). Under
TCG there is no such thread (QEMU emulates the PIT itself), so there is nothing to do.

Files and syscalls only, so the hook may call it (docs/architecture.md). Nothing to undo:
the thread ends with QEMU. Host modules are imported where used, as numahook/tunables/
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
    from numahook.core import cpulist
    from numahook.errors import HostError
    from numahook.host import procfs

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


class KvmPit(Tunable):
    name = "kvm-pit"
    attributes = ("dedicatedCpuPlacement",)
    plan_fields = ("vcpu_pins",)

    def wanted(self, doc: Parsed | View) -> bool:
        return doc.request is not None and doc.request.dedicated

    def precondition(self, cfg: Config, doc: Parsed, plan: Plan) -> Check | None:
        return None

    def intent(self, doc: Parsed, plan: Plan) -> None:
        return None  # nothing journalled: the thread ends with QEMU

    def apply(self, cfg: Config, journal: Journal,
              view: View | None) -> dict[str, object] | None:
        assert view is not None
        pin(view.facts, view.pid, cfg.proc_root)
        return None  # pin() logs its own line

    def verify(self, cfg: Config, view: View) -> str | None:
        from numahook.errors import HostError
        from numahook.host import procfs

        want = target(view.facts)
        if want is None or view.pid is None:
            return None
        try:
            tid = procfs.kvm_pit_thread(view.pid, cfg.proc_root)
            if tid is None or procfs.affinity_of(tid) == want:
                return None
        except HostError:
            return None  # QEMU or the thread exited
        return "the kvm-pit thread is not on vCPU 0's CPUs"

    def undo(self, cfg: Config, journal: Journal) -> bool:
        return True  # nothing journalled: the thread ends with QEMU

    def backstop(self, cfg: Config, view: View) -> str | None:
        """Put it back quietly (no journal needed); pin() warns when it had moved."""
        if target(view.facts) is not None:
            pin(view.facts, view.pid, cfg.proc_root, backstop=True)
        return None

    def status(self, cfg: Config, view: View) -> dict[str, Any]:
        from numahook.core import cpulist
        from numahook.errors import NumahookError
        from numahook.host import procfs

        want = target(view.facts)
        if want is None or view.pid is None:
            return {"kvm_pit": None}
        try:
            tid = procfs.kvm_pit_thread(view.pid, cfg.proc_root)
            cpus = procfs.affinity_of(tid) if tid is not None else None
        except NumahookError:
            tid = cpus = None
        return {"kvm_pit": {"tid": tid, "cpus": cpulist.format(cpus) if cpus is not None
                            else None, "vcpu0_cpus": cpulist.format(want)}}

    def held(self, entry: Any) -> dict[str, Any]:
        return {}

    def text(self, domain: dict[str, Any]) -> list[str]:
        pit = domain.get("kvm_pit")
        if not pit:
            return []
        if pit["tid"]:
            return [f"  kvm-pit thread {pit['tid']}: CPUs {pit['cpus']} (vCPU 0's: "
                    f"{pit['vcpu0_cpus']})"]
        return ["  kvm-pit: no thread (the PIT is off or emulated in QEMU)"]

    def fast_checks(self, doc: Parsed, plan: Plan) -> dict[str, Any] | None:
        """Under KVM, the kvm-pit thread on vCPU 0's CPUs (or none at all)."""
        return {"kvm_pit": True} if doc.facts.domain_type == "kvm" else {}

    def decode(self, data: Any) -> None:
        raise ValueError("kvm-pit journals nothing")


TUNABLE = KvmPit()
