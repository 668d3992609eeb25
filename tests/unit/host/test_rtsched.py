"""rtsched: RT budget planning and delegation, FIFO apply/verify/undo, demotion.

The planning math runs on fixture cgroup trees; the kernel's side (EPERM without budget,
FIFO after delegation, its sum rule, EBUSY, the sysctl flip) runs on a real cgroup v1
group ``numahook-test-<pid>`` that the fixture removes again whatever happens.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from numahook.core.rtbudget import BudgetRecord
from numahook.errors import HostError, InputError, Refusal
from numahook.host import fsutil, procfs, rtsched
from numahook.host.rtsched import RUNTIME

ROOT = os.geteuid() == 0
DOM = "/machine/qemu-1-rt.libvirt-qemu"


# ---------------------------------------------------------------- fixture trees


class Tree(SimpleNamespace):
    cgroup: Path
    cpu: Path
    proc: Path

    def group(self, path: str, runtime: int = 0, period: int = 1_000_000) -> Path:
        d = self.cpu / path.strip("/")
        d.mkdir(parents=True, exist_ok=True)
        (d / "cpu.shares").write_text("1024\n")
        (d / RUNTIME).write_text(f"{runtime}\n")
        (d / "cpu.rt_period_us").write_text(f"{period}\n")
        return d

    def rt(self, path: str) -> int:
        return int((self.cpu / path.strip("/") / RUNTIME).read_text())


@pytest.fixture
def tree(tmp_path: Path) -> Tree:
    t = Tree(cgroup=tmp_path / "cgroup", cpu=tmp_path / "cgroup" / "cpu", proc=tmp_path / "proc")
    t.group("/", 950000)
    (t.proc / "sys" / "kernel").mkdir(parents=True)
    (t.proc / "sys/kernel/sched_rt_runtime_us").write_text("950000\n")
    (t.proc / "sys/kernel/sched_rt_period_us").write_text("1000000\n")
    t.group("/machine")
    t.group(DOM)
    for n in range(4):
        t.group(f"{DOM}/vcpu{n}")
    t.group(f"{DOM}/emulator")
    return t


def plan(t: Tree, leaves: list[str], cap: int | None = None) -> rtsched.BudgetPlan:
    return rtsched.plan_budget(leaves, str(t.cgroup), str(t.proc), cap)


def test_needs_group_budget_variants(tree: Tree, tmp_path: Path) -> None:
    assert rtsched.needs_group_budget(str(tree.cgroup), str(tree.proc)) is True
    (tree.proc / "sys/kernel/sched_rt_runtime_us").write_text("-1\n")
    assert rtsched.needs_group_budget(str(tree.cgroup), str(tree.proc)) is False
    (tree.proc / "sys/kernel/sched_rt_runtime_us").write_text("0\n")
    assert rtsched.needs_group_budget(str(tree.cgroup), str(tree.proc)) is True
    (tree.cpu / RUNTIME).unlink()  # no CONFIG_RT_GROUP_SCHED
    assert rtsched.needs_group_budget(str(tree.cgroup), str(tree.proc)) is False
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (v2 / "cpu.weight").write_text("100\n")
    assert rtsched.needs_group_budget(str(v2), str(tree.proc)) is False


def test_cpu_controller_comounted_name(tmp_path: Path) -> None:
    d = tmp_path / "cpu,cpuacct"
    d.mkdir()
    (d / "cpu.shares").write_text("1024\n")
    assert rtsched.cpu_controller(str(tmp_path)) == str(d)


def test_plan_splits_free_budget_between_rt_vcpus(tree: Tree) -> None:
    p = plan(tree, [f"{DOM}/vcpu0", f"{DOM}/vcpu2"])
    assert p.per_vcpu_us == 475000 and p.period_us == 1_000_000
    assert [(Path(r.path).parent.name, r.previous, r.new) for r in p.records] == [
        ("machine", 0, 950000),
        ("qemu-1-rt.libvirt-qemu", 0, 950000),
        ("vcpu0", 0, 475000),
        ("vcpu2", 0, 475000),
    ]
    assert not any(r.applied for r in p.records)


def test_plan_respects_other_groups_at_every_level(tree: Tree) -> None:
    tree.group("/system.slice", 200000)  # a sibling of /machine holding budget
    tree.cpu.joinpath(RUNTIME).write_text("950000\n")
    tree.group("/machine", 300000)
    tree.group("/machine/qemu-2-other.libvirt-qemu", 300000)
    # free at the top: 950000 - 200000 - 300000 (the other domain) = 450000 for two vCPUs
    p = plan(tree, [f"{DOM}/vcpu0", f"{DOM}/vcpu1"])
    assert p.per_vcpu_us == 225000
    machine = next(r for r in p.records if r.path.endswith("/machine/" + RUNTIME))
    assert (machine.previous, machine.new) == (300000, 750000)


def test_plan_tightest_level_is_a_parent_with_fixed_other_children(tree: Tree) -> None:
    # the emulator group already holds budget inside the domain
    tree.group(f"{DOM}/emulator", 150000)
    p = plan(tree, [f"{DOM}/vcpu0", f"{DOM}/vcpu1", f"{DOM}/vcpu3"])
    assert p.per_vcpu_us == (950000 - 150000) // 3


def test_plan_with_cap_and_mixed_periods(tree: Tree) -> None:
    p = plan(tree, [f"{DOM}/vcpu0", f"{DOM}/vcpu1"], cap=10000)
    assert p.per_vcpu_us == 10000
    assert [r.new for r in p.records] == [20000, 20000, 10000, 10000]
    tree.group("/machine", 0, period=500000)  # machine's period is half: same ratio, half runtime
    p = plan(tree, [f"{DOM}/vcpu0"], cap=10000)
    assert p.records[0].new == 5000


def test_plan_keeps_larger_existing_values(tree: Tree) -> None:
    tree.group("/machine", 900000)
    tree.group(DOM, 900000)
    tree.group(f"{DOM}/vcpu0", 1000)  # a smaller existing budget is raised
    p = plan(tree, [f"{DOM}/vcpu0"], cap=50000)
    assert [(Path(r.path).parent.name, r.new) for r in p.records] == [("vcpu0", 50000)]


def test_plan_after_a_hot_plug_splits_evenly_lowering_first(tree: Tree) -> None:
    """vCPU 0 got the whole budget alone; with vCPU 1 plugged both get half, and vCPU 0
    is lowered before vCPU 1 is raised, so the domain's children never exceed it."""
    tree.group("/machine", 950000)
    tree.group(DOM, 950000)
    tree.group(f"{DOM}/vcpu0", 950000)
    p = plan(tree, [f"{DOM}/vcpu0", f"{DOM}/vcpu1"])
    assert p.per_vcpu_us == 475000
    assert [(Path(r.path).parent.name, r.previous, r.new) for r in p.records] == [
        ("vcpu0", 950000, 475000),
        ("vcpu1", 0, 475000),
    ]
    # planned again once written, nothing changes: the split is stable
    records = rtsched.delegate(p)
    assert (tree.rt(f"{DOM}/vcpu0"), tree.rt(f"{DOM}/vcpu1")) == (475000, 475000)
    assert plan(tree, [f"{DOM}/vcpu0", f"{DOM}/vcpu1"]).records == []
    # giving back returns every leaf to what it held before numahook
    rtsched.undelegate(records)
    assert (tree.rt(f"{DOM}/vcpu0"), tree.rt(f"{DOM}/vcpu1")) == (475000, 0)


def test_plan_refuses_when_no_budget_is_left(tree: Tree) -> None:
    tree.group("/system.slice", 949500)
    with pytest.raises(HostError, match=r"only 50[01] us of real-time budget.*raise kernel"):
        plan(tree, [f"{DOM}/vcpu0"])
    with pytest.raises(InputError, match="below the 1000 us minimum"):
        plan(tree, [f"{DOM}/vcpu0"], cap=10)


def test_plan_thread_in_root_group_needs_nothing(tree: Tree) -> None:
    assert plan(tree, ["/"]).records == []


def test_delegate_writes_parents_first_with_write_ahead(tree: Tree) -> None:
    p = plan(tree, [f"{DOM}/vcpu0", f"{DOM}/vcpu1"], cap=10000)
    seen: list[list[BudgetRecord]] = []

    def journal(records: list[BudgetRecord]) -> None:
        if records and not records[-1].applied:  # intent recorded before the write
            assert fsutil.read_int(records[-1].path) == records[-1].previous
        seen.append(records)

    records = rtsched.delegate(p, journal)
    assert [r.applied for r in records] == [True] * 4
    assert len(seen) == 8 and seen[-1] == records
    assert (tree.rt("/machine"), tree.rt(DOM), tree.rt(f"{DOM}/vcpu0")) == (20000, 20000, 10000)
    rtsched.undelegate(records, journal)
    assert seen[-1] == []
    assert tree.rt("/machine") == tree.rt(DOM) == tree.rt(f"{DOM}/vcpu0") == 0


def test_delegate_failure_returns_what_was_written(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = plan(tree, [f"{DOM}/vcpu0"], cap=10000)
    real_write = fsutil.write_knob

    def refuse_leaf(path: fsutil.PathLike, value: str, hint: object = None) -> None:
        if "vcpu0" in str(path):
            raise fsutil.KnobWriteError("writing 10000 failed: Invalid argument; retry", "", 22)
        real_write(path, value, hint)  # type: ignore[arg-type]

    monkeypatch.setattr(fsutil, "write_knob", refuse_leaf)
    journal: list[list[BudgetRecord]] = []
    with pytest.raises(HostError, match="Invalid argument"):
        rtsched.delegate(p, journal.append)
    assert tree.rt("/machine") == tree.rt(DOM) == 0
    assert journal[-1] == []


def test_undelegate_shared_parent_keeps_the_other_domains_share(tree: Tree) -> None:
    other = "/machine/qemu-2-b.libvirt-qemu"
    tree.group(other)
    tree.group(f"{other}/vcpu0")
    a = rtsched.delegate(plan(tree, [f"{DOM}/vcpu0"], cap=100000))
    b = rtsched.delegate(plan(tree, [f"{other}/vcpu0"], cap=50000))
    assert tree.rt("/machine") == 150000
    # libvirt removed domain A's cgroup at stop before numahook gave its budget back
    for leaf in ("vcpu0", "vcpu1", "vcpu2", "vcpu3", "emulator"):
        for f in (tree.cpu / DOM.strip("/") / leaf).iterdir():
            f.unlink()
        (tree.cpu / DOM.strip("/") / leaf).rmdir()
    for f in (tree.cpu / DOM.strip("/")).iterdir():
        f.unlink()
    (tree.cpu / DOM.strip("/")).rmdir()
    rtsched.undelegate(a)
    assert tree.rt("/machine") == 50000
    rtsched.undelegate(b)
    assert tree.rt("/machine") == 0


def test_undelegate_never_goes_below_what_children_hold(tree: Tree) -> None:
    a = rtsched.delegate(plan(tree, [f"{DOM}/vcpu0"], cap=100000))
    tree.group("/machine/late", 70000)  # someone added a child without raising the parent
    journal: list[list[BudgetRecord]] = []
    rtsched.undelegate(a, journal.append)
    assert tree.rt("/machine") == 70000
    assert journal[-1] == [BudgetRecord(a[0].path, 0, 70000, True)], "the rest is still ours"


def test_undelegate_failure_keeps_the_record_once(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = rtsched.delegate(plan(tree, [f"{DOM}/vcpu0"], cap=100000))
    tree.group("/machine/late", 70000)  # only part of /machine can be given back
    real_write = fsutil.write_knob

    def refuse_machine(path: fsutil.PathLike, value: str, hint: object = None) -> None:
        if Path(path).parent.name == "machine":
            raise fsutil.KnobWriteError("writing failed: Device or resource busy; x", "", 16)
        real_write(path, value, hint)  # type: ignore[arg-type]

    monkeypatch.setattr(fsutil, "write_knob", refuse_machine)
    journal: list[list[BudgetRecord]] = []
    with pytest.raises(HostError, match="busy"):
        rtsched.undelegate(a, journal.append)
    assert journal[-1] == [a[0]]
    assert tree.rt("/machine") == 100000 and tree.rt(DOM) == 0


class Killed(BaseException):
    """Stands for SIGKILL: nothing in numahook may catch it."""


@pytest.mark.parametrize("kill_at", range(1, 7))
def test_crash_during_delegate_can_be_rolled_back(tree: Tree, kill_at: int) -> None:
    persisted: list[list[BudgetRecord]] = [[]]

    def journal(records: list[BudgetRecord]) -> None:
        if len(persisted) == kill_at + 1:
            raise Killed()
        persisted.append(records)

    with pytest.raises(Killed):
        rtsched.delegate(plan(tree, [f"{DOM}/vcpu0", f"{DOM}/vcpu1"], cap=10000), journal)
    rtsched.undelegate(persisted[-1])
    for g in ("/machine", DOM, f"{DOM}/vcpu0", f"{DOM}/vcpu1"):
        assert tree.rt(g) == 0, g


def test_unintended_record_is_not_returned(tree: Tree) -> None:
    tree.group("/machine", 5000)
    rec = BudgetRecord(str(tree.cpu / "machine" / RUNTIME), 5000, 20000, applied=False)
    rtsched.undelegate([rec])
    assert tree.rt("/machine") == 5000


def test_apply_validates_mask_and_priority() -> None:
    with pytest.raises(InputError, match=r"real-time vCPU 2 has no thread"):
        rtsched.apply({0: 1, 1: 2}, {0, 2}, 1)
    with pytest.raises(InputError, match="outside 1-99"):
        rtsched.apply({0: 1}, {0}, 100)


# ---------------------------------------------------------------- the real kernel

_FOUND = rtsched.cpu_controller()
CPU = Path(_FOUND) if _FOUND is not None else None


def _sysctl() -> int:
    return rtsched.rt_sysctl()[0]


@pytest.fixture
def rt_group() -> Iterator[SimpleNamespace]:
    """numahook-test-<pid>/dom/vcpu{0,1} with a sleeping process in each vcpu group."""
    if not ROOT or CPU is None or not (CPU / RUNTIME).is_file():
        pytest.skip("needs root and the cgroup v1 cpu controller with RT group scheduling")
    if _sysctl() < 0:
        pytest.skip("RT throttling is off on this host (kernel.sched_rt_runtime_us is -1)")
    base = CPU / f"numahook-test-{os.getpid()}"
    groups = [base, base / "dom", base / "dom" / "vcpu0", base / "dom" / "vcpu1"]
    made: list[Path] = []
    procs: list[subprocess.Popen[bytes]] = []
    sysctl = _sysctl()
    try:
        for g in groups:
            g.mkdir()
            made.append(g)
        for g in groups[2:]:
            p = subprocess.Popen(["sleep", "300"])
            procs.append(p)
            (g / "tasks").write_text(str(p.pid))
        yield SimpleNamespace(
            base=base,
            groups=groups,
            tids={0: procs[0].pid, 1: procs[1].pid},
            rel=lambda g: "/" + str(g.relative_to(CPU)),
        )
    finally:
        for p in procs:
            try:
                os.sched_setscheduler(p.pid, os.SCHED_OTHER, os.sched_param(0))
                (CPU / "tasks").write_text(str(p.pid))  # back to the root group
            except OSError:
                pass
            p.kill()
            p.wait()
        if _sysctl() != sysctl:
            Path("/proc/sys/kernel/sched_rt_runtime_us").write_text(str(sysctl))
        for g in reversed(made):  # children first: a parent cannot drop below them
            try:
                (g / RUNTIME).write_text("0")
            except OSError:
                pass
        for g in reversed(made):
            if g.is_dir():
                g.rmdir()


def _runtimes(env: SimpleNamespace) -> list[int]:
    return [fsutil.read_int(g / RUNTIME) for g in env.groups]


def test_real_fifo_fails_without_budget(rt_group: SimpleNamespace) -> None:
    tid = rt_group.tids[0]
    with pytest.raises(HostError, match=re.escape(procfs.NO_BUDGET_HINT)):
        procfs.set_fifo(tid, 1)
    assert procfs.sched_of(tid) == ("other", 0)
    assert procfs.cgroup_of(tid, "cpu") == rt_group.rel(rt_group.groups[2])


def test_real_throttled_host_without_delegation_is_refused(rt_group: SimpleNamespace) -> None:
    assert rtsched.needs_group_budget() is True
    with pytest.raises(Refusal, match=r"sched_rt_runtime_us to -1 or enable budget delegation"):
        rtsched.apply(rt_group.tids, {0}, 1)
    assert _runtimes(rt_group) == [0, 0, 0, 0]
    assert procfs.sched_of(rt_group.tids[0]) == ("other", 0)


def test_real_delegate_then_fifo_then_give_back(rt_group: SimpleNamespace,
                                                caplog: pytest.LogCaptureFixture) -> None:
    tids = rt_group.tids
    journal: list[list[BudgetRecord]] = []
    caplog.set_level(logging.INFO)
    result = rtsched.apply(tids, {0}, 1, allow_delegation=True, cap_us=20000,
                           journal=journal.append)
    # one vCPU, in the singular (it said "vCPUs 0 are SCHED_FIFO")
    assert "vCPU 0 is SCHED_FIFO priority 1 (budget delegated" in caplog.text
    assert result.path == "budget"
    assert result.message == "budget delegated: 20000 us per vCPU per 1 s period"
    assert procfs.sched_of(tids[0]) == ("fifo", 1)
    assert procfs.sched_of(tids[1]) == ("other", 0)
    assert _runtimes(rt_group) == [20000, 20000, 20000, 0]
    assert journal[0] == [result.records[0]._replace(applied=False)]
    assert journal[-1] == list(result.records)
    assert rtsched.unbudgeted_rt_threads(tids.values()) == []
    # the kernel's rule that the plan respects: children never above their parent
    with pytest.raises(fsutil.KnobWriteError, match="Invalid argument") as info:
        fsutil.write_knob(rt_group.groups[3] / RUNTIME, "1000")
    assert "children would exceed their parent" not in str(info.value)
    # budget cannot be taken from under a FIFO thread
    with pytest.raises(HostError, match="move them to SCHED_OTHER first"):
        rtsched.undelegate(result.records, journal.append)
    assert journal[-1] == list(result.records)
    assert _runtimes(rt_group) == [20000, 20000, 20000, 0]
    assert rtsched.demote(tids.values()) == [tids[0]]
    assert (f"demoted 1 real-time vCPU thread to SCHED_OTHER ({tids[0]}) so it cannot stall"
            in caplog.text)
    rtsched.undelegate(journal[-1], journal.append)
    assert journal[-1] == []
    assert _runtimes(rt_group) == [0, 0, 0, 0]


def test_real_give_back_after_the_domain_cgroups_are_removed(rt_group: SimpleNamespace) -> None:
    """libvirt removes the domain's groups at stop; the parent's budget still comes back,
    although the kernel counts a removed child for a few milliseconds more (EINVAL)."""
    result = rtsched.apply(rt_group.tids, {0, 1}, 1, allow_delegation=True, cap_us=10000)
    rtsched.demote(rt_group.tids.values())
    for tid in rt_group.tids.values():
        (CPU / "tasks").write_text(str(tid))
    for g in reversed(rt_group.groups[1:]):  # as libvirt does: rmdir, budgets untouched
        g.rmdir()
    journal: list[list[BudgetRecord]] = []
    rtsched.undelegate(result.records, journal.append)
    assert journal[-1] == []
    assert fsutil.read_int(rt_group.base / RUNTIME) == 0


def test_real_hot_plug_re_split_is_accepted_by_the_kernel(rt_group: SimpleNamespace) -> None:
    """vCPU 0 alone first, then vCPU 0 and 1: the kernel takes every write of the re-split
    (lowering vCPU 0 before raising vCPU 1), both end at the same budget, and all of it
    comes back."""
    first = rtsched.apply(rt_group.tids, {0}, 1, allow_delegation=True)
    records = list(first.records)
    try:
        assert first.per_vcpu_us is not None
        again = rtsched.apply(rt_group.tids, {0, 1}, 1, allow_delegation=True)
        records += again.records
        assert again.per_vcpu_us is not None
        assert _runtimes(rt_group)[2:] == [again.per_vcpu_us] * 2
        assert 2 * again.per_vcpu_us <= first.per_vcpu_us + 2
        assert [procfs.sched_of(t) for t in rt_group.tids.values()] == [("fifo", 1)] * 2
    finally:
        rtsched.demote(rt_group.tids.values())
        rtsched.undelegate(records)
    assert _runtimes(rt_group) == [0, 0, 0, 0]


def test_real_uncapped_budget_is_split_evenly(rt_group: SimpleNamespace) -> None:
    runtime = rtsched.rt_sysctl()[0]
    held = sum(fsutil.read_int(g / RUNTIME) for g in CPU.iterdir()
               if g.is_dir() and g != rt_group.base and (g / RUNTIME).is_file())
    free = runtime - held  # all top-level groups share the root's 1 s period here
    result = rtsched.apply(rt_group.tids, {0, 1}, 5, allow_delegation=True)
    try:
        assert result.per_vcpu_us is not None
        assert free - 2 <= 2 * result.per_vcpu_us <= free
        assert [procfs.sched_of(t) for t in rt_group.tids.values()] == [("fifo", 5)] * 2
        vcpu_runtimes = _runtimes(rt_group)[2:]
        assert vcpu_runtimes == [result.per_vcpu_us] * 2
    finally:
        rtsched.demote(rt_group.tids.values())
        rtsched.undelegate(result.records)
    assert _runtimes(rt_group) == [0, 0, 0, 0]


def test_real_failure_after_delegation_undoes_everything(
    rt_group: SimpleNamespace, monkeypatch: pytest.MonkeyPatch
) -> None:
    tids = rt_group.tids
    real_set_fifo = procfs.set_fifo

    def fail_second(tid: int, prio: int) -> None:
        if tid == tids[1]:
            raise HostError(f"setting SCHED_FIFO on thread {tid} failed: injected; retry")
        real_set_fifo(tid, prio)

    monkeypatch.setattr(rtsched.procfs, "set_fifo", fail_second)
    with pytest.raises(HostError, match="injected"):
        rtsched.apply(tids, {0, 1}, 1, allow_delegation=True, cap_us=10000)
    assert procfs.sched_of(tids[0]) == ("other", 0), "the first vCPU was made FIFO, then undone"
    assert _runtimes(rt_group) == [0, 0, 0, 0]


def test_real_sysctl_flip_stalls_fifo_threads_until_demoted(rt_group: SimpleNamespace) -> None:
    sysctl = Path("/proc/sys/kernel/sched_rt_runtime_us")
    original = sysctl.read_text().strip()
    tid = rt_group.tids[0]
    try:
        sysctl.write_text("-1")
        assert rtsched.needs_group_budget() is False
        result = rtsched.apply(rt_group.tids, {0}, 1)  # no delegation needed or allowed
        assert result.path == "vcpusched"
        assert result.message == "libvirt vcpusched, no budget needed"
        assert procfs.sched_of(tid) == ("fifo", 1), "FIFO works in a zero-budget group"
        assert _runtimes(rt_group) == [0, 0, 0, 0]
    finally:
        # turning throttling back on succeeds even under that FIFO thread
        sysctl.write_text(original)
    assert rtsched.needs_group_budget() is True
    assert rtsched.unbudgeted_rt_threads(rt_group.tids.values()) == [tid]
    assert rtsched.demote(rt_group.tids.values()) == [tid]
    assert procfs.sched_of(tid) == ("other", 0)
    assert rtsched.unbudgeted_rt_threads(rt_group.tids.values()) == []
