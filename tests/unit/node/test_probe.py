"""node: the real-time capability probe on fixture hosts, its parsers, the real host.

The fixture trees stand for hosts we do not have (PREEMPT_RT with isolcpus, cgroup v2, RT
throttling on or off); the real host is probed read-only and checked against /proc.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from numahook.config import Config
from numahook.core import cpulist
from numahook.errors import HostError, InputError
from numahook.node import cmdline, model, probe, report
from numahook.records import replace
from tests.fixtures.hosts import HOSTS, HUGE_1G, HUGE_2M
from tests.support.nodes import MOUNTS, SYSCTL_FIX, make_host

RT_CPUS = frozenset(range(2, 20)) | frozenset(range(42, 60))


# --------------------------------------------------------------------------- fixture hosts


def test_rt_host_with_throttling_off_is_capable(tmp_path: Path) -> None:
    cap = probe.probe(make_host(tmp_path, "intel-2s-ht-rt", 1, -1, MOUNTS), True)
    assert cap.realtime_capable and cap.sched_rt_runtime_us == -1
    assert cap.sched_rt_period_us == 1_000_000
    assert cap.preempt_rt
    assert cap.rt_group_sched and not cap.needs_group_budget
    assert cap.isolcpus == RT_CPUS and cap.nohz_full == RT_CPUS and cap.rcu_nocbs == RT_CPUS
    assert cap.cmdline["isolcpus"].raw == "2-19,42-59"
    assert cap.start_policy == model.StartPolicy(True, "vcpusched", cap.start_policy.reason)
    assert cap.cgroup_version == 1
    assert [n.id for n in cap.nodes] == [0, 1]
    assert cap.online_cpus == frozenset(range(80))
    assert {(p.node, p.size_kib, p.nr, p.free) for p in cap.hugepages} == {
        (n, size, nr, free) for n in (0, 1)
        for size, (nr, free) in ((HUGE_2M, (512, 512)), (HUGE_1G, (4, 4)))}
    assert cap.free_pages(HUGE_1G) == 8
    assert {m.pagesize_kib for m in cap.hugetlbfs} == {HUGE_2M, HUGE_1G}
    # capable, PREEMPT_RT, isolated, pages free and mounted: only the verdict remains
    assert len(cap.reasons) == 1 and "is -1: RT throttling is off" in cap.reasons[0]
    assert cap.warnings == ()


def test_plain_host_with_throttling_on_is_not_capable(tmp_path: Path) -> None:
    cfg = make_host(tmp_path, "intel-2s-ht", 1)
    cap = probe.probe(cfg)
    assert not cap.realtime_capable and cap.sched_rt_runtime_us == 950000
    assert cap.rt_group_sched and cap.needs_group_budget
    assert not cap.preempt_rt and cap.isolcpus == frozenset()
    assert cap.cmdline["isolcpus"] == model.CpuParam(None)
    assert (cap.start_policy.ok, cap.start_policy.mode) == (False, "refuse")
    assert cap.reasons[0].startswith(SYSCTL_FIX)
    text = " ".join(cap.reasons)
    for fix in ("throttled = delegate", "PREEMPT_RT kernel", "isolcpus=managed_irq,domain",
                "no hugetlbfs is mounted"):
        assert fix in text
    # every reason is one sentence that names a fix
    for r in cap.reasons[1:]:
        assert r.count(". ") == 0 and ";" in r

    delegating = probe.probe(replace(cfg, rt_throttled="delegate"))
    assert (delegating.start_policy.ok, delegating.start_policy.mode) == (True, "delegate")
    assert any("delegates RT group budget (950000 us" in r for r in delegating.reasons)


def test_cgroup_v2_has_no_rt_group_scheduling(tmp_path: Path) -> None:
    cap = probe.probe(make_host(tmp_path, "epyc-nps4", 2))
    assert cap.cgroup_version == 2
    assert not cap.rt_group_sched and cap.rt_budget is None and not cap.needs_group_budget
    assert not cap.realtime_capable  # KubeVirt's test is the sysctl alone
    assert cap.start_policy.ok and cap.start_policy.mode == "vcpusched"
    assert len(cap.nodes) == 4


def test_the_sysctl_decides_capability_alone(tmp_path: Path) -> None:
    for runtime, capable in ((-1, True), (950000, False), (0, False), (1_000_000, False)):
        cfg = make_host(tmp_path / str(runtime), "single", 1, runtime)
        assert probe.probe(cfg).realtime_capable is capable


def test_feature_gate_off_disables_real_time_starts(tmp_path: Path) -> None:
    cfg = replace(make_host(tmp_path, "intel-2s-ht-rt", 1, -1), realtime_gate=False)
    cap = probe.probe(cfg)
    assert cap.realtime_capable
    assert (cap.start_policy.ok, cap.start_policy.mode) == (False, "disabled")
    assert "realtime = true under [features]" in cap.start_policy.reason
    assert cap.start_policy.reason in cap.reasons


def test_libvirt_state_is_passed_through(tmp_path: Path) -> None:
    cfg = make_host(tmp_path, "single", 1, -1)
    assert probe.probe(cfg).libvirt_reachable is None
    down = probe.probe(cfg, False)
    assert down.libvirt_reachable is False
    assert any("libvirt at qemu:///system is not reachable; start" in r for r in down.reasons)
    assert not any("libvirt at" in r for r in probe.probe(cfg, True).reasons)


def test_hugepages_reasons(tmp_path: Path) -> None:
    cfg = make_host(tmp_path, "single", 1, -1, MOUNTS)
    assert not any("hugepages" in r for r in probe.probe(cfg).reasons)
    pool = Path(cfg.sysfs_root) / "devices/system/node/node0/hugepages/hugepages-2048kB"
    (pool / "free_hugepages").write_text("0\n")
    assert any("no 2 MiB hugepages are free, and none need to be" in r
               for r in probe.probe(cfg).reasons)
    (Path(cfg.proc_root) / "mounts").write_text("")
    assert any("no hugetlbfs is mounted" in r and "2 MiB pages reserved here go unused" in r
               and "pagesize=2M" in r for r in probe.probe(cfg).reasons)


def test_isolated_cpus_without_nohz_full_are_named(tmp_path: Path) -> None:
    cfg = make_host(tmp_path, "intel-2s-ht-rt", 1, -1)
    (Path(cfg.proc_root) / "cmdline").write_text(
        "BOOT_IMAGE=/vmlinuz isolcpus=managed_irq,domain,2-19 rcu_nocbs=2-19 quiet\n")
    cap = probe.probe(cfg)
    assert cap.isolcpus == frozenset(range(2, 20))
    assert cap.cmdline["isolcpus"].flags == ("managed_irq", "domain")
    assert any("not all in nohz_full" in r and "nohz_full=2-19 to" in r for r in cap.reasons)


def test_unparsable_cmdline_is_a_warning_not_a_failure(tmp_path: Path) -> None:
    cfg = make_host(tmp_path, "single", 1)
    (Path(cfg.proc_root) / "cmdline").write_text("isolcpus=3-1\n")
    cap = probe.probe(cfg)
    assert cap.isolcpus == frozenset()
    assert len(cap.warnings) == 1 and "descending range" in cap.warnings[0]


def test_missing_essentials_raise_host_error(tmp_path: Path) -> None:
    cfg = make_host(tmp_path, "single", 1)
    os.unlink(Path(cfg.proc_root) / "sys/kernel/sched_rt_runtime_us")
    with pytest.raises(HostError, match="sched_rt_runtime_us"):
        probe.probe(cfg)
    with pytest.raises(HostError, match="online"):
        probe.probe(replace(make_host(tmp_path / "b", "single"), sysfs_root=str(tmp_path / "x")))


# --------------------------------------------------------------------------- RT budget


def _group(cpu: Path, rel: str, runtime: int, period: int = 1_000_000) -> None:
    d = cpu / rel
    d.mkdir(parents=True, exist_ok=True)
    (d / "cpu.shares").write_text("1024\n")
    (d / "cpu.rt_runtime_us").write_text(f"{runtime}\n")
    (d / "cpu.rt_period_us").write_text(f"{period}\n")


def test_rt_budget_at_root_and_machine(tmp_path: Path) -> None:
    cfg = make_host(tmp_path, "intel-2s-ht", 1)
    b = probe.probe(cfg).rt_budget
    assert b is not None
    assert (b.root_runtime_us, b.root_free_us, b.machine_group) == (950000, 950000, "machine")
    assert (b.machine_runtime_us, b.machine_free_us, b.available_us) == (0, 0, 950000)

    cpu = Path(cfg.cgroup_root) / "cpu,cpuacct"
    _group(cpu, "machine", 500000)
    _group(cpu, "machine/qemu-1-a.libvirt-qemu", 200000)
    _group(cpu, "system.slice", 100000)
    b = probe.probe(cfg).rt_budget
    assert b is not None
    assert (b.root_free_us, b.machine_free_us, b.available_us) == (350000, 300000, 650000)

    # a child with another period counts by the kernel's bandwidth ratio
    _group(cpu, "machine/qemu-2-b.libvirt-qemu", 100000, 500000)
    b = probe.probe(cfg).rt_budget
    assert b is not None and (b.machine_free_us, b.available_us) == (100000, 450000)


def test_rt_budget_root_is_capped_by_the_sysctl(tmp_path: Path) -> None:
    cfg = make_host(tmp_path, "single", 1, 400000)
    b = probe.probe(cfg).rt_budget
    assert b is not None and b.root_runtime_us == 950000 and b.root_free_us == 400000


def test_rt_budget_without_machine_group(tmp_path: Path) -> None:
    cfg = make_host(tmp_path, "single", 1)
    cpu = Path(cfg.cgroup_root) / "cpu,cpuacct"
    for f in (cpu / "machine").iterdir():
        f.unlink()
    (cpu / "machine").rmdir()
    b = probe.probe(cfg).rt_budget
    assert b is not None and b.machine_group is None and b.available_us == b.root_free_us


def test_unlimited_runtime_reads_as_the_whole_period(tmp_path: Path) -> None:
    cfg = make_host(tmp_path, "single", 1, -1)
    (Path(cfg.cgroup_root) / "cpu,cpuacct/cpu.rt_runtime_us").write_text("-1\n")
    b = probe.probe(cfg).rt_budget
    assert b is not None and b.root_runtime_us == -1 and b.root_free_us == 1_000_000


# --------------------------------------------------------------------------- parsers


@pytest.mark.parametrize("text, isol, flags", [
    ("isolcpus=managed_irq,domain,2-19", range(2, 20), ("managed_irq", "domain")),
    ("isolcpus=nohz,domain,1-3,5", [1, 2, 3, 5], ("nohz", "domain")),
    ("isolcpus=4", [4], ()),
    ("isolcpus=0-15:2/4", [0, 1, 4, 5, 8, 9, 12, 13], ()),
    ("isolcpus=2-N", range(2, 16), ()),
    ("isolcpus=1 isolcpus=7", [7], ()),  # the last one wins
    ("quiet -- isolcpus=1", [], ()),  # after -- it is init's argument
    ("isolcpus=", [], ()),
])
def test_parse_isolcpus(text: str, isol: list[int], flags: tuple[str, ...]) -> None:
    got = cmdline.parse_cmdline(text, frozenset(range(16)))["isolcpus"]
    assert got.cpus == frozenset(isol) and got.flags == flags


def test_parse_cmdline_other_params() -> None:
    online = frozenset(range(8))
    got = cmdline.parse_cmdline("ro nohz_full=all rcu_nocbs root=/dev/sda1", online)
    assert got["nohz_full"].cpus == online and got["nohz_full"].raw == "all"
    assert got["rcu_nocbs"].cpus == online and got["rcu_nocbs"].raw == ""
    assert got["isolcpus"].raw is None
    with pytest.raises(InputError, match="nohz_full"):
        cmdline.parse_cmdline("nohz_full=x", online)
    with pytest.raises(InputError, match="used/group"):
        cmdline.parse_cmdline("nohz_full=0-7:5/4", online)


def test_parse_mounts() -> None:
    text = (MOUNTS + "hugetlbfs /mnt/huge\\040pages hugetlbfs rw,relatime 0 0\n"
            "none /dev/hugepages-x tmpfs rw 0 0\n")
    assert probe.parse_mounts(text, HUGE_2M) == (
        model.HugetlbfsMount("/dev/hugepages", HUGE_2M),
        model.HugetlbfsMount("/dev/hugepages1G", HUGE_1G),
        model.HugetlbfsMount("/mnt/huge pages", HUGE_2M, explicit=False),
    )


@pytest.mark.parametrize("text, kib", [
    ("2M", 2048), ("1G", 1048576), ("1024M", 1048576), ("64K", 64), ("2048k", 2048),
    ("2097152", 2048),
])
def test_pagesize_kib(text: str, kib: int) -> None:
    assert probe.pagesize_kib(text) == kib


@pytest.mark.parametrize("text", ["2X", "", "M", "100"])
def test_pagesize_kib_refuses(text: str) -> None:
    with pytest.raises(InputError):
        probe.pagesize_kib(text)


def test_size_name() -> None:
    assert [model.size_name(s) for s in (2048, 1048576, 64, 32768, 16777216)] == [
        "2Mi", "1Gi", "64Ki", "32Mi", "16Gi"]


# --------------------------------------------------------------------------- JSON


@pytest.mark.parametrize("name, version", [*((n, 1) for n in sorted(HOSTS)),
                                           ("epyc-nps4", 2), ("single", 2)])
def test_json_round_trip_on_every_host(tmp_path: Path, name: str, version: int) -> None:
    cap = probe.probe(make_host(tmp_path, name, version, mounts=MOUNTS), version == 1)
    doc = json.loads(json.dumps(cap.to_json()))
    assert model.NodeCapability.from_json(doc) == cap
    assert set(doc) == {"realtime_capable", "reasons", "warnings", "sched_rt", "kernel",
                        "cgroup_version", "cpus", "numa_nodes", "hugepages_default_kib",
                        "hugetlbfs", "libvirt", "start_policy"}
    assert doc["cpus"]["online"] == cpulist.format(HOSTS[name].online_cpus())
    assert doc["sched_rt"]["throttling"] is True


def test_text_report_has_a_line_per_fact(tmp_path: Path) -> None:
    cap = probe.probe(make_host(tmp_path, "intel-2s-ht-rt", 1, -1, MOUNTS), None)
    text = report.text_report(cap)
    for needle in ("real-time capable    yes (kernel.sched_rt_runtime_us = -1",
                   "PREEMPT_RT           yes", "isolcpus             2-19,42-59 (36 CPUs)",
                   "hugepages node1      2Mi: 512 free of 512; 1Gi: 4 free of 4",
                   "hugetlbfs            /dev/hugepages (2Mi), /dev/hugepages1G (1Gi)",
                   "libvirt              unknown (qemu:///system)", "reasons:\n  - "):
        assert needle in text


# --------------------------------------------------------------------------- real host


REAL = Path("/proc/sys/kernel/sched_rt_runtime_us")


@pytest.mark.skipif(not REAL.exists(), reason="no /proc/sys/kernel/sched_rt_runtime_us here")
def test_real_host_probe_agrees_with_proc() -> None:
    cap = probe.probe(Config(), None)  # reads only
    runtime = int(REAL.read_text())
    assert cap.sched_rt_runtime_us == runtime
    assert cap.realtime_capable is (runtime == -1)
    online = Path("/sys/devices/system/cpu/online").read_text()
    assert cap.online_cpus == cpulist.parse(online)
    assert cap.cgroup_version in (1, 2)
    assert cap.reasons and cap.reasons[0].startswith(f"kernel.sched_rt_runtime_us is {runtime}")
    assert model.NodeCapability.from_json(json.loads(json.dumps(cap.to_json()))) == cap


def test_check_libvirt_is_bounded() -> None:
    pytest.importorskip("libvirt")
    assert probe.check_libvirt("test:///default") is True
    started = time.monotonic()
    assert probe.check_libvirt("qemu+unix:///system?socket=/nonexistent/sock", 2.0) is False
    assert time.monotonic() - started < 3.0
