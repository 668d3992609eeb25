"""rtgroups: RT budgets in the cgroup v1 cpu controller, planned, handed down and back.

The planning math and the journalled writes run on fixture cgroup trees; the kernel's
side (its sum rule, EBUSY, removed groups) runs in test_rtsched.py on a real cgroup, through
rtsched.apply, which delegates with these functions.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from numahook.core.rtbudget import BudgetPlan, BudgetRecord
from numahook.errors import HostError, InputError
from numahook.host import fsutil, rtgroups
from numahook.host.rtgroups import RUNTIME
from numahook.node import probe

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


def plan(t: Tree, leaves: list[str], cap: int | None = None) -> BudgetPlan:
    return rtgroups.plan_budget(leaves, str(t.cgroup), str(t.proc), cap)


def test_needs_group_budget_variants(tree: Tree, tmp_path: Path) -> None:
    assert rtgroups.needs_group_budget(str(tree.cgroup), str(tree.proc)) is True
    (tree.proc / "sys/kernel/sched_rt_runtime_us").write_text("-1\n")
    assert rtgroups.needs_group_budget(str(tree.cgroup), str(tree.proc)) is False
    (tree.proc / "sys/kernel/sched_rt_runtime_us").write_text("0\n")
    assert rtgroups.needs_group_budget(str(tree.cgroup), str(tree.proc)) is True
    (tree.cpu / RUNTIME).unlink()  # no CONFIG_RT_GROUP_SCHED
    assert rtgroups.needs_group_budget(str(tree.cgroup), str(tree.proc)) is False
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    (v2 / "cpu.weight").write_text("100\n")
    assert rtgroups.needs_group_budget(str(v2), str(tree.proc)) is False


def test_cpu_controller_comounted_name(tmp_path: Path) -> None:
    d = tmp_path / "cpu,cpuacct"
    d.mkdir()
    (d / "cpu.shares").write_text("1024\n")
    assert rtgroups.cpu_controller(str(tmp_path)) == str(d)


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
    records = rtgroups.delegate(p)
    assert (tree.rt(f"{DOM}/vcpu0"), tree.rt(f"{DOM}/vcpu1")) == (475000, 475000)
    assert plan(tree, [f"{DOM}/vcpu0", f"{DOM}/vcpu1"]).records == []
    # giving back returns every leaf to what it held before numahook
    rtgroups.undelegate(records)
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

    records = rtgroups.delegate(p, journal)
    assert [r.applied for r in records] == [True] * 4
    assert len(seen) == 8 and seen[-1] == records
    assert (tree.rt("/machine"), tree.rt(DOM), tree.rt(f"{DOM}/vcpu0")) == (20000, 20000, 10000)
    rtgroups.undelegate(records, journal)
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
        rtgroups.delegate(p, journal.append)
    assert tree.rt("/machine") == tree.rt(DOM) == 0
    assert journal[-1] == []


def test_undelegate_shared_parent_keeps_the_other_domains_share(tree: Tree) -> None:
    other = "/machine/qemu-2-b.libvirt-qemu"
    tree.group(other)
    tree.group(f"{other}/vcpu0")
    a = rtgroups.delegate(plan(tree, [f"{DOM}/vcpu0"], cap=100000))
    b = rtgroups.delegate(plan(tree, [f"{other}/vcpu0"], cap=50000))
    assert tree.rt("/machine") == 150000
    # libvirt removed domain A's cgroup at stop before numahook gave its budget back
    for leaf in ("vcpu0", "vcpu1", "vcpu2", "vcpu3", "emulator"):
        for f in (tree.cpu / DOM.strip("/") / leaf).iterdir():
            f.unlink()
        (tree.cpu / DOM.strip("/") / leaf).rmdir()
    for f in (tree.cpu / DOM.strip("/")).iterdir():
        f.unlink()
    (tree.cpu / DOM.strip("/")).rmdir()
    rtgroups.undelegate(a)
    assert tree.rt("/machine") == 50000
    rtgroups.undelegate(b)
    assert tree.rt("/machine") == 0


def test_undelegate_never_goes_below_what_children_hold(tree: Tree) -> None:
    a = rtgroups.delegate(plan(tree, [f"{DOM}/vcpu0"], cap=100000))
    tree.group("/machine/late", 70000)  # someone added a child without raising the parent
    journal: list[list[BudgetRecord]] = []
    rtgroups.undelegate(a, journal.append)
    assert tree.rt("/machine") == 70000
    assert journal[-1] == [BudgetRecord(a[0].path, 0, 70000, True)], "the rest is still ours"


def test_undelegate_failure_keeps_the_record_once(
    tree: Tree, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = rtgroups.delegate(plan(tree, [f"{DOM}/vcpu0"], cap=100000))
    tree.group("/machine/late", 70000)  # only part of /machine can be given back
    real_write = fsutil.write_knob

    def refuse_machine(path: fsutil.PathLike, value: str, hint: object = None) -> None:
        if Path(path).parent.name == "machine":
            raise fsutil.KnobWriteError("writing failed: Device or resource busy; x", "", 16)
        real_write(path, value, hint)  # type: ignore[arg-type]

    monkeypatch.setattr(fsutil, "write_knob", refuse_machine)
    journal: list[list[BudgetRecord]] = []
    with pytest.raises(HostError, match="busy"):
        rtgroups.undelegate(a, journal.append)
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
        rtgroups.delegate(plan(tree, [f"{DOM}/vcpu0", f"{DOM}/vcpu1"], cap=10000), journal)
    rtgroups.undelegate(persisted[-1])
    for g in ("/machine", DOM, f"{DOM}/vcpu0", f"{DOM}/vcpu1"):
        assert tree.rt(g) == 0, g


def test_unintended_record_is_not_returned(tree: Tree) -> None:
    tree.group("/machine", 5000)
    rec = BudgetRecord(str(tree.cpu / "machine" / RUNTIME), 5000, 20000, applied=False)
    rtgroups.undelegate([rec])
    assert tree.rt("/machine") == 5000


# ---------------------------------------------------------------- -1: unlimited


def test_an_unlimited_group_holds_its_whole_period_for_planner_and_probe(tree: Tree) -> None:
    """One rule for -1, read in one place. With throttling off (-1) a group may be -1 too.
    The node probe always read such a group as holding its whole period; the planner read
    it as -1, below 0, so it "raised" /machine from -1 to the domain's budget, and giving
    that back left /machine at 0 rather than unlimited."""
    (tree.proc / "sys/kernel/sched_rt_runtime_us").write_text("-1\n")
    tree.cpu.joinpath(RUNTIME).write_text("-1\n")
    tree.group("/machine", -1)
    machine = tree.cpu / "machine"
    assert rtgroups.setting(machine) == (-1, 1_000_000)
    assert rtgroups.bandwidth(machine) == (1_000_000, 1_000_000)

    budget = probe.read_rt_budget(str(tree.cgroup), -1, 1_000_000)
    assert budget is not None
    assert (budget.machine_runtime_us, budget.machine_free_us) == (-1, 1_000_000)

    p = plan(tree, [f"{DOM}/vcpu0"], cap=100000)
    assert [Path(r.path).parent.name for r in p.records] == ["qemu-1-rt.libvirt-qemu", "vcpu0"]
    journal: list[list[BudgetRecord]] = []
    rtgroups.undelegate(rtgroups.delegate(p), journal.append)
    assert journal[-1] == []
    assert (tree.rt("/machine"), tree.rt(DOM), tree.rt(f"{DOM}/vcpu0")) == (-1, 0, 0)


def test_a_group_made_unlimited_meanwhile_gives_our_share_back(
        tree: Tree, caplog: pytest.LogCaptureFixture) -> None:
    """Throttling turned off and /machine set to -1 while the domain ran: at release
    /machine holds its whole period like any group, and our share comes off it. Read as
    -1 it could not be lowered, so the record stayed in the claim and the give-back
    warned that children still held budget that no child held."""
    records = rtgroups.delegate(plan(tree, [f"{DOM}/vcpu0"], cap=100000))
    (tree.proc / "sys/kernel/sched_rt_runtime_us").write_text("-1\n")
    tree.group("/machine", -1)
    journal: list[list[BudgetRecord]] = []
    rtgroups.undelegate(records, journal.append)
    assert journal[-1] == []
    assert "children still hold it" not in caplog.text
    assert (tree.rt("/machine"), tree.rt(DOM)) == (900000, 0)
