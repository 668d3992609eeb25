"""RT group scheduling: the budgets in the cgroup v1 cpu controller, handed down and back.

On a kernel with CONFIG_RT_GROUP_SCHED, the cgroup v1 cpu controller and RT throttling
on (``kernel.sched_rt_runtime_us`` >= 0), a thread can only become SCHED_FIFO when every
cgroup on its path has ``cpu.rt_runtime_us`` > 0, and libvirt leaves them at 0. There,
budget is handed down the path parents first, within the kernel's rule that children's
bandwidth never exceeds their parent's (the arithmetic: :mod:`numahook.core.rtbudget`).
Every change is journalled ahead of its write so a crash can give the budget back.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Iterable

from numahook import faults
from numahook import log as logmod
from numahook.core import rtbudget
from numahook.core.rtbudget import MIN_BUDGET_US, BudgetPlan, BudgetRecord, Journal, to_ratio
from numahook.core.units import counted
from numahook.errors import HostError, InputError, NumahookError
from numahook.host import fsutil, procfs

log = logmod.get(__name__)

RUNTIME = "cpu.rt_runtime_us"
PERIOD = "cpu.rt_period_us"
#: the policies ``procfs.sched_of`` names for real-time threads
REALTIME_POLICIES = ("fifo", "rr")


def cpu_controller(cgroup_root: str = "/sys/fs/cgroup") -> str | None:
    """The cgroup v1 cpu controller mount (``cpu``, ``cpu,cpuacct`` ...), None on v2."""
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        d = os.path.join(fsutil.clean(cgroup_root), name)
        # only v1 has cpu.shares; v2 has cpu.weight
        if fsutil.is_file(os.path.join(d, "cpu.shares")):
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
    if cpu is None or not fsutil.is_file(os.path.join(cpu, RUNTIME)):
        return False
    return rt_sysctl(proc_root)[0] >= 0



def _group_dir(cpu_root: str, cgroup: str) -> str:
    parts = [p for p in cgroup.split("/") if p]
    return fsutil.under(cpu_root, *parts) if parts else cpu_root


def setting(group: fsutil.PathLike) -> tuple[int, int]:
    """``cpu.rt_runtime_us`` and ``cpu.rt_period_us`` of a cgroup as the files say them
    (runtime -1: unlimited), for showing to the operator. The only reader of the two files:
    the planner, the give-back and the node probe all read through here."""
    return (fsutil.read_int(os.path.join(group, RUNTIME)),
            fsutil.read_int(os.path.join(group, PERIOD)))


def bandwidth(group: fsutil.PathLike) -> tuple[int, int]:
    """(runtime, period) of a cgroup for arithmetic: an unlimited group holds its whole
    period (:func:`numahook.core.rtbudget.held`, the one rule for -1)."""
    runtime, period = setting(group)
    return rtbudget.held(runtime, period), period


def _ratio(group: str) -> int:
    runtime, period = bandwidth(group)
    return to_ratio(period, runtime)


def _components(group: str) -> list[str]:
    """Sort key: name by name, as pathlib sorts, so ``a/b/c`` stays before ``a/b-c`` (as
    strings, ``-`` sorts before ``/``) and a plan's records keep their order."""
    return group.split("/")


def children(group: fsutil.PathLike) -> list[str]:
    """The child cgroups of ``group`` that have an RT budget, in a stable order."""
    paths = (os.path.join(group, name) for name in os.listdir(group))
    return sorted((p for p in paths if fsutil.is_dir(p)
                   and fsutil.is_file(os.path.join(p, RUNTIME))), key=_components)


def plan_budget(
    leaf_cgroups: Iterable[str],
    cgroup_root: str = "/sys/fs/cgroup",
    proc_root: str = "/proc",
    cap_us: int | None = None,
) -> BudgetPlan:
    """Plan the largest equal budget for each real-time leaf group (one per RT vCPU).

    Each leaf gets the planned budget, also when it held more (a vCPU hot-plugged into a
    domain whose leaves already hold budget: the domain's budget is split evenly again).
    Every other group on the paths keeps at least its current value and is raised to cover
    its children (ours at the planned budget, others as they are); at the top, all groups
    together must fit the root's budget, ``kernel.sched_rt_runtime_us``. The tightest
    level therefore decides, and its free budget is split evenly between the leaves.

    The records are in an order the kernel accepts at every step (a child never above its
    parent, siblings never above their parent together): first every lowering, children
    first, then every raise, parents first. Each intermediate state is then below the
    final one wherever a sum is checked.
    """
    cpu = cpu_controller(cgroup_root)
    if cpu is None:
        raise HostError(
            f"there is no cgroup v1 cpu controller under {cgroup_root}; "
            "mount it or let libvirt's <vcpusched> set the policy"
        )
    leaves = sorted({_group_dir(cpu, c) for c in leaf_cgroups} - {cpu}, key=_components)
    glob_runtime, glob_period = rt_sysctl(proc_root)
    root_ratio = to_ratio(glob_period, glob_runtime)
    if fsutil.is_file(os.path.join(cpu, RUNTIME)):
        root_ratio = min(root_ratio, _ratio(cpu))
    if not leaves:
        return BudgetPlan(0, glob_period, [])

    # our tree: every group on a leaf's path, each with its parent
    parent: dict[str, str] = {}
    for leaf in leaves:  # clean paths below cpu (fsutil.under), so the walk ends at cpu
        node = leaf
        while node != cpu:
            parent[node] = fsutil.parent(node)
            node = parent[node]
    ours = sorted(parent, key=lambda p: p.count("/"))  # parents first
    current = {n: bandwidth(n) for n in ours}
    kids: dict[str, list[str]] = {n: [] for n in [cpu, *ours]}
    for n in ours:
        kids[parent[n]].append(n)
    others = {n: [bandwidth(c) for c in children(n) if c not in parent] for n in [cpu, *ours]}

    tree = rtbudget.Tree(ours, kids, current, others, set(leaves), cpu)
    lo = rtbudget.largest(tree, root_ratio)
    if cap_us is not None and cap_us < MIN_BUDGET_US:
        raise InputError(
            f"the configured real-time budget of {cap_us} us per vCPU is below the "
            f"{MIN_BUDGET_US} us minimum; raise it in /etc/numahook/numahook.conf"
        )
    budget = lo if cap_us is None else min(lo, cap_us)
    if budget < MIN_BUDGET_US:
        raise HostError(
            f"only {lo} us of real-time budget per second is free for "
            f"{counted(len(leaves), 'real-time vCPU')}, less than the {MIN_BUDGET_US} us "
            "minimum; lower cpu.rt_runtime_us of other cgroups or raise "
            "kernel.sched_rt_runtime_us"
        )
    new = rtbudget.solve(tree, budget, root_ratio)
    if new is None:  # cannot happen: budget <= lo and feasibility is monotone
        raise HostError(f"planning {budget} us of real-time budget failed; report a bug")
    lowered = [BudgetRecord(os.path.join(n, RUNTIME), current[n][0], new[n])
               for n in reversed(ours) if new[n] < current[n][0]]
    raised = [BudgetRecord(os.path.join(n, RUNTIME), current[n][0], new[n])
              for n in ours if new[n] > current[n][0]]
    records = lowered + raised
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


def _lower(path: str, value: int, wait: float) -> None:
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
    (another domain may have added to a shared parent since). A group made unlimited (-1)
    meanwhile holds its whole period, as everywhere, so our share comes off that. A file
    already gone (libvirt removed the domain's cgroup) is fine. A record is dropped from
    the journal *before* its write: after a crash we may leak budget, but never take
    someone else's.
    """
    remaining = list(records)
    first: NumahookError | None = None

    def note() -> None:
        if journal is not None:
            journal(list(remaining))

    for rec in reversed(list(records)):
        path = fsutil.clean(rec.path)
        try:
            if not fsutil.is_file(path):
                remaining.remove(rec)
                note()
                continue
            group = fsutil.parent(path)
            cur, period = bandwidth(group)
            if not rec.applied and cur != rec.new:
                remaining.remove(rec)  # the write never happened
                note()
                continue
            share = rec.new - rec.previous
            held = rtbudget.runtime_for(map(bandwidth, children(group)), period)
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
            if procfs.sched_of(tid)[0] not in REALTIME_POLICIES:
                continue
            group = _group_dir(cpu, procfs.cgroup_of(tid, "cpu", proc_root))
            while group != cpu:
                if fsutil.read_int(os.path.join(group, RUNTIME)) == 0:
                    out.append(tid)
                    break
                group = fsutil.parent(group)
        except NumahookError as exc:  # the thread or its cgroup went away meanwhile
            log.debug("skipping thread %d: %s", tid, exc)
    return out
