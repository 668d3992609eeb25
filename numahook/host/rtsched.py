"""Real-time scheduling of vCPU threads: the one implementation the hook and the daemon call.

On a kernel with CONFIG_RT_GROUP_SCHED, the cgroup v1 cpu controller and RT throttling
on (``kernel.sched_rt_runtime_us`` >= 0), a thread can only become SCHED_FIFO when every
cgroup on its path has ``cpu.rt_runtime_us`` > 0, and libvirt leaves them at 0. There,
budget is handed down the path parents first, within the kernel's rule that children's
bandwidth never exceeds their parent's, and SCHED_FIFO is set afterwards. Everywhere
else libvirt's ``<vcpusched>`` already did the work and this module only verifies it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet

from numahook import log as logmod
from numahook.config import Config
from numahook.core.plan import Check
from numahook.core.rtbudget import BudgetRecord, Journal
from numahook.core.units import counted, plural
from numahook.errors import HostError, InputError, NumahookError, Refusal
from numahook.host import procfs
from numahook.host.rtgroups import (
    PERIOD,
    REALTIME_POLICIES,
    RUNTIME,
    cpu_controller,
    delegate,
    needs_group_budget,
    plan_budget,
    rt_runtime_us,
    rt_sysctl,
    unbudgeted_rt_threads,
    undelegate,
)
from numahook.records import NamedTuple

log = logmod.get(__name__)


class RtResult(NamedTuple):
    path: str  # "vcpusched" or "budget"
    message: str
    per_vcpu_us: int | None = None
    period_us: int | None = None
    records: tuple[BudgetRecord, ...] = ()


def realtime_gate(cfg: Config) -> Check:
    """Whether this node can run a real-time domain under the configured policy."""
    runtime, period = rt_sysctl(cfg.proc_root)
    if not needs_group_budget(cfg.cgroup_root, cfg.proc_root):
        if runtime < 0:
            return Check("realtime-node", True, (
                "real-time capable: RT throttling is off (kernel.sched_rt_runtime_us = -1)"))
        # "capable" is KubeVirt's word for -1 only: say what this node gives instead
        return Check("realtime-node", True, (
            f"RT throttling is on (kernel.sched_rt_runtime_us = {runtime}), but there is no RT "
            "group scheduling to budget, so libvirt's <vcpusched> sets SCHED_FIFO; real-time "
            f"threads get at most {runtime} us of each {period} us period"))
    if cfg.rt_throttled == "delegate":
        return Check("realtime-node", True, (
            f"RT throttling is on (kernel.sched_rt_runtime_us = {runtime}); numahook will "
            "delegate RT group budget, split between the real-time vCPUs"))
    return Check("realtime-node", False, (
        f"this node is not real-time capable: kernel.sched_rt_runtime_us is {runtime}, so RT "
        "group scheduling gives libvirt's vCPU cgroups no budget; run `sysctl -w "
        "kernel.sched_rt_runtime_us=-1`, or set throttled = delegate under [realtime] in "
        f"{cfg.path}"))


def _set_policies(vcpu_tids: Mapping[int, int], rt_vcpus: AbstractSet[int], priority: int,
                  emulator_tid: int | None = None) -> None:
    """Set FIFO on the masked vCPUs (and the emulator thread, if given) and OTHER on
    real-time others, then verify."""
    for vcpu, tid in sorted(vcpu_tids.items()):
        if vcpu in rt_vcpus:
            procfs.set_fifo(tid, priority)
        elif procfs.sched_of(tid)[0] in REALTIME_POLICIES:
            procfs.set_other(tid)
    if emulator_tid is not None:
        procfs.set_fifo(emulator_tid, priority)
    for vcpu, tid in sorted(vcpu_tids.items()):
        want = ("fifo", priority) if vcpu in rt_vcpus else None
        got = procfs.sched_of(tid)
        if (want is not None and got != want) or (want is None and got[0] in REALTIME_POLICIES):
            expected = f"fifo priority {priority}" if want else "not real-time"
            raise HostError(
                f"vCPU {vcpu} (thread {tid}) is {got[0]} priority {got[1]} after setting it "
                f"{expected}; check for another tool changing scheduling policies"
            )
    if emulator_tid is not None:
        got = procfs.sched_of(emulator_tid)
        if got != ("fifo", priority):
            raise HostError(
                f"the emulator thread {emulator_tid} is {got[0]} priority {got[1]} after "
                f"setting it fifo priority {priority}; check for another tool changing "
                "scheduling policies"
            )


def apply(
    vcpu_tids: Mapping[int, int],
    rt_vcpus: AbstractSet[int],
    priority: int,
    *,
    allow_delegation: bool = False,
    cap_us: int | None = None,
    cgroup_root: str = "/sys/fs/cgroup",
    proc_root: str = "/proc",
    journal: Journal | None = None,
    emulator_tid: int | None = None,
) -> RtResult:
    """Make exactly the ``rt_vcpus`` SCHED_FIFO at ``priority``, verify, or undo and raise.

    ``emulator_tid`` (QEMU's main thread, on its own isolated CPU) is made SCHED_FIFO at
    the same priority too, its cgroup counted as one more real-time leaf. Where the host
    needs group budget and ``allow_delegation`` is off, nothing is touched and a Refusal
    says how to enable real-time.
    """
    missing = sorted(set(rt_vcpus) - set(vcpu_tids))
    if missing:
        raise InputError(
            f"real-time {plural(len(missing), 'vCPU')} {', '.join(map(str, missing))} "
            f"{plural(len(missing), 'has', 'have')} no thread in the running domain; check the "
            "realtime mask against the vCPU count"
        )
    if not 1 <= priority <= 99:
        raise InputError(f"real-time priority {priority} is outside 1-99; pick one in that range")
    records: list[BudgetRecord] = []
    result = RtResult("vcpusched", "libvirt vcpusched, no budget needed")
    if rt_vcpus and needs_group_budget(cgroup_root, proc_root):
        if not allow_delegation:
            runtime = rt_sysctl(proc_root)[0]
            raise Refusal(
                f"real-time needs a cgroup budget here (kernel.sched_rt_runtime_us is {runtime} "
                "with RT group scheduling); set kernel.sched_rt_runtime_us to -1 or enable "
                "budget delegation in /etc/numahook/numahook.conf",
                check="realtime-budget",
            )
        leaves = [procfs.cgroup_of(vcpu_tids[v], "cpu", proc_root) for v in sorted(rt_vcpus)]
        if emulator_tid is not None:
            leaves.append(procfs.cgroup_of(emulator_tid, "cpu", proc_root))
        plan = plan_budget(leaves, cgroup_root, proc_root, cap_us)
        records = delegate(plan, journal)
        seconds = plan.period_us / 1_000_000
        result = RtResult(
            "budget",
            f"budget delegated: {plan.per_vcpu_us} us per vCPU"
            + (" and for the emulator" if emulator_tid is not None else "")
            + f" per {seconds:g} s period",
            plan.per_vcpu_us,
            plan.period_us,
            tuple(records),
        )
    try:
        _set_policies(vcpu_tids, rt_vcpus, priority, emulator_tid)
    except NumahookError:
        undo = [vcpu_tids[v] for v in rt_vcpus] + ([emulator_tid] if emulator_tid else [])
        for tid in sorted(undo):
            try:
                procfs.set_other(tid)
            except HostError as exc:
                log.error("undoing SCHED_FIFO on thread %d failed: %s", tid, exc)
        try:
            undelegate(records, journal)
        except NumahookError as exc:
            log.error("returning real-time budget failed: %s", exc)
        raise
    threads = len(rt_vcpus) + (emulator_tid is not None)
    log.info(
        "%s %s%s %s SCHED_FIFO priority %d (%s)",
        plural(len(rt_vcpus), "vCPU"),
        ",".join(map(str, sorted(rt_vcpus))) or "none",
        " and the emulator thread" if emulator_tid is not None else "",
        plural(threads, "is", "are"),
        priority,
        result.message,
    )
    return result


def demote(tids: Iterable[int]) -> list[int]:
    """Move real-time threads back to SCHED_OTHER; return those changed."""
    out: list[int] = []
    for tid in tids:
        try:
            policy = procfs.sched_of(tid)[0]
        except HostError:
            continue  # the thread exited
        if policy in REALTIME_POLICIES and procfs.set_other(tid):
            out.append(tid)
    if out:
        log.warning(
            "demoted %s to SCHED_OTHER (%s) so %s cannot stall",
            counted(len(out), "real-time vCPU thread"),
            ",".join(map(str, out)),
            plural(len(out), "it", "they"),
        )
    return out


#: what callers use from here: this module and the group budgets it delegates with
__all__ = [
    "PERIOD", "RUNTIME", "RtResult", "apply", "cpu_controller", "delegate", "demote",
    "needs_group_budget", "plan_budget", "realtime_gate", "rt_runtime_us", "rt_sysctl",
    "unbudgeted_rt_threads", "undelegate",
]
