"""rtsched: FIFO apply/verify/undo and demotion, with budgets delegated on the real kernel.

The budget planning math runs on fixture cgroup trees in test_rtgroups.py; here the
kernel's side (EPERM without budget, FIFO after delegation, its sum rule, EBUSY, the
sysctl flip) runs on a real cgroup v1 group ``numahook-test-<pid>`` that the fixture
removes again whatever happens.
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
