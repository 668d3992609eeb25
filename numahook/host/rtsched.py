"""Real-time scheduling of vCPU threads: the one implementation the hook and the daemon call.

On a kernel with CONFIG_RT_GROUP_SCHED, the cgroup v1 cpu controller and RT throttling
on (``kernel.sched_rt_runtime_us`` >= 0), a thread can only become SCHED_FIFO when every
cgroup on its path has ``cpu.rt_runtime_us`` > 0, and libvirt leaves them at 0. There,
budget is handed down the path parents first, within the kernel's rule that children's
bandwidth never exceeds their parent's, and SCHED_FIFO is set afterwards. Everywhere
else libvirt's ``<vcpusched>`` already did the work and this module only verifies it.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable, Iterable, Mapping
from collections.abc import Set as AbstractSet
from pathlib import Path

from numahook import faults
from numahook import log as logmod
from numahook.errors import HostError, InputError, NumahookError, Refusal
from numahook.host import fsutil, procfs
from numahook.records import NamedTuple

log = logmod.get(__name__)

RUNTIME = "cpu.rt_runtime_us"
PERIOD = "cpu.rt_period_us"
#: The kernel compares bandwidths as ``(runtime << 20) / period`` (kernel/sched/core.c).
BW_SHIFT = 20
#: Below this, a busy real-time vCPU would be throttled for nearly the whole period.
MIN_BUDGET_US = 1000
_REALTIME = ("fifo", "rr")


class BudgetRecord(NamedTuple):
    """One ``cpu.rt_runtime_us`` file we raised: our share of it is ``new - previous``.

    ``applied`` is False while the write is only intended (journalled ahead of it).
    """

    path: str
    previous: int
    new: int
    applied: bool = False


#: journal(records): persist the list before returning, or raise to stop the change.
Journal = Callable[[list[BudgetRecord]], None]


class BudgetPlan(NamedTuple):
    per_vcpu_us: int
    period_us: int
    #: parents first, only files whose value changes
    records: list[BudgetRecord]


class RtResult(NamedTuple):
    path: str  # "vcpusched" or "budget"
    message: str
    per_vcpu_us: int | None = None
    period_us: int | None = None
    records: tuple[BudgetRecord, ...] = ()


def to_ratio(period: int, runtime: int) -> int:
    """The kernel's bandwidth measure (same result in us as in ns)."""
    if runtime < 0:  # RUNTIME_INF
        return 1 << BW_SHIFT
    if period <= 0:
        return 0
    return (runtime << BW_SHIFT) // period


def _runtime_for(children: Iterable[tuple[int, int]], period: int) -> int:
    """Smallest runtime in ``period`` that covers ``children`` ((runtime, period) pairs).

    With one period throughout that is the plain sum, which is what an operator expects
    to read; otherwise the least runtime whose kernel ratio reaches the children's.
    """
    kids = list(children)
    if all(p == period and r >= 0 for r, p in kids):
        return sum(r for r, _ in kids)
    ratio = sum(to_ratio(p, r) for r, p in kids)
    runtime = -(-ratio * period >> BW_SHIFT)  # ceil
    while to_ratio(period, runtime) < ratio:
        runtime += 1
    return runtime


def cpu_controller(cgroup_root: str = "/sys/fs/cgroup") -> Path | None:
    """The cgroup v1 cpu controller mount (``cpu``, ``cpu,cpuacct`` ...), None on v2."""
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        d = Path(cgroup_root) / name
        if (d / "cpu.shares").is_file():  # only v1 has cpu.shares; v2 has cpu.weight
            return d
    return None


def rt_runtime_us(proc_root: str = "/proc") -> int:
    """``kernel.sched_rt_runtime_us`` alone: the one read numahookd's watch makes per tick."""
    return fsutil.read_int(fsutil.under(proc_root, "sys/kernel/sched_rt_runtime_us"))


def rt_sysctl(proc_root: str = "/proc") -> tuple[int, int]:
    """``kernel.sched_rt_runtime_us`` and ``kernel.sched_rt_period_us``."""
    return rt_runtime_us(proc_root), fsutil.read_int(
        fsutil.under(proc_root, "sys/kernel/sched_rt_period_us"))


def needs_group_budget(cgroup_root: str = "/sys/fs/cgroup", proc_root: str = "/proc") -> bool:
    """True when SCHED_FIFO needs ``cpu.rt_runtime_us`` > 0 on every cgroup of the thread."""
    cpu = cpu_controller(cgroup_root)
    if cpu is None or not (cpu / RUNTIME).is_file():
        return False
    return rt_sysctl(proc_root)[0] >= 0


def _group_dir(cpu_root: Path, cgroup: str) -> Path:
    parts = [p for p in cgroup.split("/") if p]
    return fsutil.under(cpu_root, *parts) if parts else cpu_root


def _bandwidth(group: Path) -> tuple[int, int]:
    """(runtime, period) of a cgroup."""
    return fsutil.read_int(group / RUNTIME), fsutil.read_int(group / PERIOD)


def _ratio(group: Path) -> int:
    runtime, period = _bandwidth(group)
    return to_ratio(period, runtime)


def _children(group: Path) -> list[Path]:
    return sorted(p for p in group.iterdir() if p.is_dir() and (p / RUNTIME).is_file())


def plan_budget(
    leaf_cgroups: Iterable[str],
    cgroup_root: str = "/sys/fs/cgroup",
    proc_root: str = "/proc",
    cap_us: int | None = None,
) -> BudgetPlan:
    """Plan the largest equal budget for each real-time leaf group (one per RT vCPU).

    Each group on the paths keeps at least its current value and is raised to cover its
    children (ours at the planned budget, others as they are); at the top, all groups
    together must fit the root's budget, ``kernel.sched_rt_runtime_us``. The tightest
    level therefore decides, and its free budget is split evenly between the leaves.
    """
    cpu = cpu_controller(cgroup_root)
    if cpu is None:
        raise HostError(
            f"there is no cgroup v1 cpu controller under {cgroup_root}; "
            "mount it or let libvirt's <vcpusched> set the policy"
        )
    leaves = sorted({_group_dir(cpu, c) for c in leaf_cgroups} - {cpu})
    glob_runtime, glob_period = rt_sysctl(proc_root)
    root_ratio = to_ratio(glob_period, glob_runtime)
    if (cpu / RUNTIME).is_file():
        root_ratio = min(root_ratio, _ratio(cpu))
    if not leaves:
        return BudgetPlan(0, glob_period, [])

    # our tree: every group on a leaf's path, each with its parent
    parent: dict[Path, Path] = {}
    for leaf in leaves:
        node = leaf
        while node != cpu:
            parent[node] = node.parent
            node = node.parent
    ours = sorted(parent, key=lambda p: len(p.parts))  # parents first
    current = {n: _bandwidth(n) for n in ours}
    kids: dict[Path, list[Path]] = {n: [] for n in [cpu, *ours]}
    for n in ours:
        kids[parent[n]].append(n)
    others = {n: [_bandwidth(c) for c in _children(n) if c not in parent] for n in [cpu, *ours]}
    leafset = set(leaves)

    def solve(budget: int) -> dict[Path, int] | None:
        new: dict[Path, int] = {}
        for n in reversed(ours):  # children first
            runtime, period = current[n]
            below = others[n] + [(new[k], current[k][1]) for k in kids[n]]
            want = max(runtime, budget if n in leafset else 0, _runtime_for(below, period))
            if want > period or to_ratio(period, want) > root_ratio:
                return None
            new[n] = want
        top = others[cpu] + [(new[k], current[k][1]) for k in kids[cpu]]
        return new if sum(to_ratio(p, r) for r, p in top) <= root_ratio else None

    lo, hi = 0, max(period for _, period in current.values())
    while lo < hi:  # largest feasible budget
        mid = (lo + hi + 1) // 2
        if solve(mid) is None:
            hi = mid - 1
        else:
            lo = mid
    if cap_us is not None and cap_us < MIN_BUDGET_US:
        raise InputError(
            f"the configured real-time budget of {cap_us} us per vCPU is below the "
            f"{MIN_BUDGET_US} us minimum; raise it in /etc/numahook/numahook.conf"
        )
    budget = lo if cap_us is None else min(lo, cap_us)
    if budget < MIN_BUDGET_US:
        raise HostError(
            f"only {lo} us of real-time budget per second is free for "
            f"{len(leaves)} real-time vCPU(s), less than the {MIN_BUDGET_US} us minimum; "
            "lower cpu.rt_runtime_us of other cgroups or raise kernel.sched_rt_runtime_us"
        )
    new = solve(budget)
    if new is None:  # cannot happen: budget <= lo and feasibility is monotone
        raise HostError(f"planning {budget} us of real-time budget failed; report a bug")
    records = [
        BudgetRecord(str(n / RUNTIME), current[n][0], new[n])
        for n in ours
        if new[n] != current[n][0]
    ]
    return BudgetPlan(budget, current[leaves[0]][1], records)


_DELEGATE_HINTS = {
    errno.EINVAL: "another writer changed real-time budgets meanwhile, so children would "
    "exceed their parent; retry",
}
_RETURN_HINTS = {
    errno.EBUSY: "real-time threads still run in that cgroup; move them to SCHED_OTHER first",
}


def delegate(plan: BudgetPlan, journal: Journal | None = None) -> list[BudgetRecord]:
    """Write the plan parents first, journalling each write before and after.

    On a failure the budgets already written are returned and the error raised.
    """
    done: list[BudgetRecord] = []

    def note() -> None:
        if journal is not None:
            journal(list(done))

    try:
        for rec in plan.records:
            done.append(rec._replace(applied=False))
            note()  # write-ahead
            faults.point("rtsched.intent")
            try:
                fsutil.write_knob(rec.path, str(rec.new), hint=_DELEGATE_HINTS)
            except HostError:
                done.pop()
                note()
                raise
            faults.point("rtsched.written")
            done[-1] = rec._replace(applied=True)
            note()
    except NumahookError:
        try:
            undelegate(done, journal)
        except NumahookError as exc:
            log.error("returning real-time budget after a failure failed too: %s", exc)
        raise
    return done


def _lower(path: Path, value: int, wait: float) -> None:
    """Write a lower runtime, retrying EINVAL for up to ``wait`` seconds.

    A child cgroup that was just removed (libvirt tears the domain's groups down at stop)
    still counts against its parent until the kernel frees it, some milliseconds later.
    """
    deadline = time.monotonic() + wait
    while True:
        try:
            fsutil.write_knob(path, str(value), hint=_RETURN_HINTS)
            return
        except fsutil.KnobWriteError as exc:
            if exc.errno != errno.EINVAL or time.monotonic() >= deadline:
                raise
        time.sleep(0.02)


def undelegate(
    records: Iterable[BudgetRecord], journal: Journal | None = None, wait: float = 2.0
) -> None:
    """Give back what ``records`` added, children first.

    Each file is lowered by our share, but never below what its children still hold
    (another domain may have added to a shared parent since). A file already gone (libvirt
    removed the domain's cgroup) is fine. A record is dropped from the journal *before*
    its write: after a crash we may leak budget, but never take someone else's.
    """
    remaining = list(records)
    first: NumahookError | None = None

    def note() -> None:
        if journal is not None:
            journal(list(remaining))

    for rec in reversed(list(records)):
        path = Path(rec.path)
        try:
            if not path.is_file():
                remaining.remove(rec)
                note()
                continue
            cur = fsutil.read_int(path)
            if not rec.applied and cur != rec.new:
                remaining.remove(rec)  # the write never happened
                note()
                continue
            share = rec.new - rec.previous
            period = fsutil.read_int(path.parent / PERIOD)
            held = _runtime_for(map(_bandwidth, _children(path.parent)), period)
            target = min(cur, max(0, cur - share, held))
            left = share - (cur - target)
            before = list(remaining)
            idx = remaining.index(rec)
            if left > 0:
                remaining[idx] = BudgetRecord(rec.path, rec.previous, rec.previous + left, True)
            else:
                del remaining[idx]
            note()
            if target != cur:
                try:
                    _lower(path, target, wait)
                except HostError:
                    remaining[:] = before
                    note()
                    raise
            if left > 0:
                log.warning(
                    "kept %d us of real-time budget in %s: its children still hold it", left, path
                )
        except NumahookError as exc:
            log.error("returning real-time budget in %s failed: %s", path, exc)
            first = first or exc
    if first is not None:
        raise first


def _set_policies(vcpu_tids: Mapping[int, int], rt_vcpus: AbstractSet[int], priority: int,
                  emulator_tid: int | None = None) -> None:
    """Set FIFO on the masked vCPUs (and the emulator thread, if given) and OTHER on
    real-time others, then verify."""
    for vcpu, tid in sorted(vcpu_tids.items()):
        if vcpu in rt_vcpus:
            procfs.set_fifo(tid, priority)
        elif procfs.sched_of(tid)[0] in _REALTIME:
            procfs.set_other(tid)
    if emulator_tid is not None:
        procfs.set_fifo(emulator_tid, priority)
    for vcpu, tid in sorted(vcpu_tids.items()):
        want = ("fifo", priority) if vcpu in rt_vcpus else None
        got = procfs.sched_of(tid)
        if (want is not None and got != want) or (want is None and got[0] in _REALTIME):
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
            f"real-time vCPU(s) {', '.join(map(str, missing))} have no thread in the running "
            "domain; check the realtime mask against the vCPU count"
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
    log.info(
        "vCPUs %s%s are SCHED_FIFO priority %d (%s)",
        ",".join(map(str, sorted(rt_vcpus))) or "none",
        " and the emulator thread" if emulator_tid is not None else "",
        priority,
        result.message,
    )
    return result


def unbudgeted_rt_threads(
    tids: Iterable[int], cgroup_root: str = "/sys/fs/cgroup", proc_root: str = "/proc"
) -> list[int]:
    """Real-time threads sitting in a cgroup path with a zero budget somewhere.

    Once throttling is on (see needs_group_budget), such a thread gets no runtime at all:
    its vCPU stalls. The daemon delegates budget or demotes them.
    """
    cpu = cpu_controller(cgroup_root)
    if cpu is None:
        return []
    out: list[int] = []
    for tid in tids:
        try:
            if procfs.sched_of(tid)[0] not in _REALTIME:
                continue
            group = _group_dir(cpu, procfs.cgroup_of(tid, "cpu", proc_root))
            while group != cpu:
                if fsutil.read_int(group / RUNTIME) == 0:
                    out.append(tid)
                    break
                group = group.parent
        except NumahookError as exc:  # the thread or its cgroup went away meanwhile
            log.debug("skipping thread %d: %s", tid, exc)
    return out


def demote(tids: Iterable[int]) -> list[int]:
    """Move real-time threads back to SCHED_OTHER; return those changed."""
    out: list[int] = []
    for tid in tids:
        try:
            policy = procfs.sched_of(tid)[0]
        except HostError:
            continue  # the thread exited
        if policy in _REALTIME and procfs.set_other(tid):
            out.append(tid)
    if out:
        log.warning(
            "demoted %d real-time vCPU thread(s) to SCHED_OTHER (%s) so they cannot stall",
            len(out),
            ",".join(map(str, out)),
        )
    return out
