"""The installed hook under a real libvirtd and QEMU (issue 4's "Show" list).

libvirtd runs /etc/libvirt/hooks/qemu.d/numahook by itself; these tests only define and
start domains and then look at what the host and the guest show.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from lab import daemons, env, guest
from lab.report import parse as parse_report
from numahook.host import rtsched
from tests.e2e.helpers import (
    HOLD,
    MACHINE_CPUSET,
    claim_files,
    delegate_config,
    hook_config,
    hugepages_2m,
    metadata,
    render_here,
    wait_until,
)
from tests.support import claims

__all__ = ["delegate_config"]  # a fixture, used by name


def test_managed_domain_boots_with_rendered_pinning(domains: Any) -> None:
    xml = render_here(domains.probe_xml("pin", vcpus=2, memory_mib=128, hugepage_kib=2048,
                                        extra=metadata()))
    dom = domains.define(xml)
    name = dom.name()
    pages_before = hugepages_2m()
    domains.start(dom)
    pins = dom.vcpuPinInfo()
    # rendered 1:1: vCPU 0 on CPU 0, vCPU 1 on CPU 1 (the host's two CPUs)
    assert [tuple(i for i, on in enumerate(p) if on) for p in pins] == [(0,), (1,)]
    text = guest.wait_for_report(dom, until_off=True, timeout=guest.BOOT_TIMEOUT)
    report = parse_report(text)
    assert sorted(report.nodes) == [0]
    assert report.nodes[0].cpus == frozenset({0, 1})
    wait_until(lambda: hugepages_2m() == pages_before, what="hugepages given back")
    assert not [p for p in claim_files() if name in p.read_text()]


def test_realtime_mask_on_throttled_rt_group_sched_host(domains: Any,
                                                        delegate_config: None) -> None:
    if not rtsched.needs_group_budget():
        pytest.skip("this kernel needs no RT group budget; the delegation path is not taken")
    machine_rt = Path("/sys/fs/cgroup/cpu/machine/cpu.rt_runtime_us")
    budget_before = machine_rt.read_text() if machine_rt.exists() else None
    xml = render_here(domains.probe_xml("rt", vcpus=2, memory_mib=128, hugepage_kib=2048,
                                        cmdline=HOLD, extra=metadata(mask="0")))
    assert "<vcpusched" not in xml  # libvirt's own would fail here (next test)
    dom = domains.define(xml)
    domains.start(dom)
    _, tids = guest.vcpu_threads(dom.name())
    assert sorted(tids) == [0, 1]
    policies = {v: (os.sched_getscheduler(t) & ~os.SCHED_RESET_ON_FORK,
                    os.sched_getparam(t).sched_priority)
                for v, t in tids.items()}
    assert policies[0] == (os.SCHED_FIFO, 1)
    assert policies[1] == (os.SCHED_OTHER, 0)
    claim = json.loads(next(p for p in claim_files() if dom.name() in p.read_text()).read_text())
    assert claim["tunables"]["realtime"]["budget"], \
        "the budget handed down must be recorded in the claim"
    domains.stop(dom)
    wait_until(lambda: not [p for p in claim_files() if dom.name() in p.read_text()],
               what="the claim to be released")
    if budget_before is not None:
        wait_until(lambda: machine_rt.read_text() == budget_before, what="RT budget returned")


def test_plain_libvirt_vcpusched_fails_here(domains: Any) -> None:
    """The failure numahook exists for: libvirt's <vcpusched> under RT group throttling."""
    if not rtsched.needs_group_budget():
        pytest.skip("RT throttling with RT_GROUP_SCHED is off here; vcpusched would work")
    import libvirt

    xml = domains.probe_xml("vcpusched", vcpus=2, cmdline=HOLD, extra=(
        "<cputune><vcpupin vcpu='0' cpuset='0'/><vcpupin vcpu='1' cpuset='1'/>"
        "<vcpusched vcpus='0' scheduler='fifo' priority='1'/></cputune>"))
    dom = domains.define(xml)
    with pytest.raises(libvirt.libvirtError, match="Operation not permitted"):
        dom.create()


def test_hugepages_reserved_at_start_and_returned_after_destroy(domains: Any) -> None:
    before = hugepages_2m()
    free = int(Path("/sys/devices/system/node/node0/hugepages/hugepages-2048kB/"
                    "free_hugepages").read_text())
    xml = render_here(domains.probe_xml("hp", vcpus=1, memory_mib=128, hugepage_kib=2048,
                                        cmdline=HOLD, extra=metadata()))
    dom = domains.define(xml)
    domains.start(dom)
    # exactly the deficit is added: pages already free are used first
    assert hugepages_2m() == before + max(0, 64 - free)
    claim = json.loads(next(p for p in claim_files() if dom.name() in p.read_text()).read_text())
    assert claim["tunables"]["hugepages"]["need"] == {"0:2048": 64}
    added = claim["tunables"]["hugepages"]["added"].get("0:2048", 0)
    assert hugepages_2m() == before + added
    domains.stop(dom)
    wait_until(lambda: hugepages_2m() == before, what="hugepages given back")


def test_stale_definition_is_refused_with_the_documented_message(domains: Any) -> None:
    import libvirt

    xml = render_here(domains.probe_xml("stale", vcpus=1, memory_mib=128, hugepage_kib=2048,
                                        extra=metadata()))
    assert "cpuset='0'" in xml
    dom = domains.define(xml)
    original = MACHINE_CPUSET.read_text().strip()
    env.set_value(MACHINE_CPUSET, "1")
    try:
        with pytest.raises(libvirt.libvirtError) as err:
            dom.create()
    finally:
        MACHINE_CPUSET.write_text(original)
    message = str(err.value)
    assert "does not match this host" in message
    assert "vCPU 0 is pinned to CPU 0, but on this host now it belongs on CPU 1" in message
    # no numahookd runs in these tests: the fix is to start it (issue 31)
    assert "numahookd is not running" in message and "systemctl start numahookd" in message
    assert not [p for p in claim_files() if dom.name() in p.read_text()]


def test_unmanaged_domain_is_untouched(domains: Any) -> None:
    before = {p.name for p in claim_files()}
    pages = hugepages_2m()
    report = domains.boot(domains.probe_xml("plain", vcpus=2))
    assert sorted(report.nodes) == [0]
    assert {p.name for p in claim_files()} == before
    assert hugepages_2m() == pages


def test_failing_reconnect_hook_leaves_the_domain_running(domains: Any) -> None:
    xml = render_here(domains.probe_xml("reconnect", vcpus=1, memory_mib=128,
                                        hugepage_kib=2048, cmdline=HOLD, extra=metadata()))
    dom = domains.define(xml)
    domains.start(dom)
    name = dom.name()
    # inject a failure into every hook call: an invalid config file
    with hook_config("[features]\nNUMA = maybe\n"):
        daemons.restart_daemon("libvirtd")
        conn = daemons.connect()
        try:
            assert conn.lookupByName(name).isActive()
        finally:
            conn.close()
    domains.conn = daemons.connect()  # the old connection died with libvirtd
    assert domains.conn.lookupByName(name).isActive()


def test_concurrent_starts_never_share_a_cpu(domains: Any) -> None:
    import libvirt

    xmls = [render_here(domains.probe_xml(f"race{i}", vcpus=1, memory_mib=128,
                                          hugepage_kib=2048, cmdline=HOLD, extra=metadata()))
            for i in range(2)]
    doms = [domains.define(x) for x in xmls]
    # rendered while neither ran, both ask for CPU 0
    assert all("vcpupin vcpu='0' cpuset='0'" in x for x in xmls)
    errors: dict[str, str] = {}
    barrier = threading.Barrier(len(doms))

    def start(dom_name: str) -> None:
        conn = daemons.connect()
        try:
            barrier.wait(timeout=30)
            conn.lookupByName(dom_name).create()
        except libvirt.libvirtError as exc:
            errors[dom_name] = str(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=start, args=(d.name(),)) for d in doms]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    running = [d for d in doms if d.isActive()]
    pins = [frozenset(i for i, on in enumerate(d.vcpuPinInfo()[0]) if on) for d in running]
    assert len(running) + len(errors) == 2
    assert len(running) >= 1
    if len(running) == 2:
        assert not pins[0] & pins[1]
    else:
        (message,) = errors.values()
        assert "does not match this host" in message or "not enough dedicated CPUs" in message


def test_save_and_restore_go_through_the_hook(domains: Any, tmp_path: Path) -> None:
    """restore's stdout is the XML libvirt restores: it must be valid and keep the guest."""
    xml = render_here(domains.probe_xml("restore", vcpus=2, memory_mib=128, hugepage_kib=2048,
                                        cmdline=HOLD, extra=metadata()))
    dom = domains.define(xml)
    domains.start(dom)
    name = dom.name()
    pins_before = dom.vcpuPinInfo()
    pages = hugepages_2m()
    image = tmp_path / "saved.img"
    dom.save(str(image))
    assert not dom.isActive()
    wait_until(lambda: not [p for p in claim_files() if name in p.read_text()],
               what="the claim to be released at save")
    domains.conn.restore(str(image))
    restored = domains.conn.lookupByName(name)
    assert restored.isActive()
    assert restored.vcpuPinInfo() == pins_before
    assert [p for p in claim_files() if name in p.read_text()], "restore claims again"
    assert hugepages_2m() == pages
    domains.stop(restored)


def test_cli_apply_and_status_on_the_real_libvirt(domains: Any) -> None:
    import json as jsonlib
    import subprocess
    import sys

    import libvirt

    repo = Path(__file__).resolve().parents[2]
    env_ = {**os.environ, "PYTHONPATH": str(repo)}

    def numahook(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "numahook.cli", *args], env=env_,
                              capture_output=True, text=True, timeout=120, check=False)

    dom = domains.define(domains.probe_xml("cliapply", vcpus=1, memory_mib=128,
                                           hugepage_kib=2048, cmdline=HOLD, extra=metadata()))
    name = dom.name()
    first = numahook("apply", name)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith(f"{name}: redefined")
    assert "vcpupin" in dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
    again = numahook("apply", name)
    assert (again.returncode, again.stdout.strip()) == (0, f"{name}: already rendered for "
                                                           "this host")
    missing = numahook("apply", "no-such-domain-here")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    domains.start(dom)
    status = numahook("status", "--json")
    assert status.returncode == 0, status.stderr
    from tests.support.schemas import validate

    validate("status", jsonlib.loads(status.stdout))  # with a real running domain
    mine = [d for d in jsonlib.loads(status.stdout)["running"] if d["name"] == name]
    assert mine and mine[0]["cells"][0]["host_nodes"] == "0"
    assert mine[0]["claim"]["hugepages_need"] == {"node0:2048kB": 64}


def kvm_pit_affinity(pid: int) -> tuple[int, frozenset[int]] | None:
    """(tid, affinity) of KVM's ``kvm-pit/<pid>`` kernel thread, None if there is none."""
    for comm in Path("/proc").glob("[0-9]*/comm"):
        try:
            if comm.read_text().strip() == f"kvm-pit/{pid}":
                tid = int(comm.parent.name)
                return tid, frozenset(os.sched_getaffinity(tid))
        except OSError:
            continue
    return None


def test_kvm_pit_thread_on_vcpu0s_cpu_after_started(domains: Any) -> None:
    """type='kvm' domains start here (their guest kernel does not run, QEMU does), and KVM
    runs the guest's PIT in the kernel thread kvm-pit/<QEMU pid>, on any CPU until the
    started hook pins it to vCPU 0's CPU (KubeVirt's PR #9613)."""
    if not Path("/dev/kvm").exists():
        pytest.skip("no /dev/kvm: type='kvm' domains cannot start here")
    xml = render_here(domains.probe_xml("pit", vcpus=2, memory_mib=128, kind="kvm",
                                        machine="q35", extra=metadata(passthrough=False)))
    dom = domains.define(xml)
    domains.start(dom)  # returns once the started hook has run
    pid, _ = guest.vcpu_threads(dom.name())
    assert pid is not None
    vcpu0 = frozenset(i for i, on in enumerate(dom.vcpuPinInfo()[0]) if on)
    found = kvm_pit_affinity(pid)
    assert found is not None, f"QEMU {pid} has no kvm-pit thread"
    assert found[1] == vcpu0 and len(vcpu0) == 1


def test_tcg_domain_has_no_kvm_pit_and_starts(domains: Any) -> None:
    """Under TCG QEMU emulates the PIT itself: the hook logs that and skips."""
    xml = render_here(domains.probe_xml("pittcg", vcpus=1, memory_mib=128, cmdline=HOLD,
                                        extra=metadata(passthrough=False)))
    dom = domains.define(xml)
    domains.start(dom)
    pid, _ = guest.vcpu_threads(dom.name())
    assert pid is not None and dom.isActive()
    assert kvm_pit_affinity(pid) is None


def _hook_started(dom: Any, log: Path) -> str:
    """The installed hook's started call by hand, as libvirtd makes it (live XML on stdin);
    its audit line."""
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    log.write_text("")
    proc = subprocess.run(["sh", str(repo / "libvirt-hooks" / "numahook"), dom.name(),
                           "started", "begin", "-"], input=dom.XMLDesc(0), text=True,
                          capture_output=True, env={"PATH": "/usr/bin:/bin",
                                                    "NUMAHOOK_PYTHONPATH": str(repo),
                                                    "NUMAHOOK_HOOK_LOG": str(log)},
                          check=False)
    assert (proc.returncode, proc.stderr) == (0, "")
    lines = [ln for ln in log.read_text().splitlines()
             if f"domain={dom.name()} action=realtime " in ln]
    assert len(lines) == 1, log.read_text()
    return lines[0]


def test_started_only_verifies_what_numahookd_verified(domains: Any, delegate_config: None,
                                                        tmp_path: Path) -> None:
    """The claim says numahookd applied and verified real-time for this QEMU (what
    tune_early records, set here so the race with libvirt cannot decide the test): the
    hook's fast path (numahook/hook/fast.py) verifies, moves the claim to running and
    applies nothing. With vCPU 0 knocked back to SCHED_OTHER it declines, and the full
    path applies FIFO again."""
    if not rtsched.needs_group_budget():
        pytest.skip("this kernel needs no RT group budget; numahookd applies nothing early")
    from numahook.records import replace
    from numahook.state.statedir import StateDir

    xml = render_here(domains.probe_xml("fast", vcpus=2, memory_mib=128, hugepage_kib=2048,
                                        cmdline=HOLD, extra=metadata(mask="0")))
    dom = domains.define(xml)
    domains.start(dom)
    pid, tids = guest.vcpu_threads(dom.name())
    assert pid is not None and sorted(tids) == [0, 1]
    state = StateDir()
    claim = state.load(dom.UUIDString())
    assert claim is not None and claim.phase == "running" and claims.budget(claim)

    def verified_by_numahookd() -> None:
        with state.lock():
            state.save(replace(claim, phase="reserved", qemu_pid=pid, verified_pid=pid))

    def policy(tid: int) -> tuple[int, int]:
        return (os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK,
                os.sched_getparam(tid).sched_priority)

    verified_by_numahookd()
    assert " path=verified " in _hook_started(dom, tmp_path / "hook.log")
    after = state.load(dom.UUIDString())
    assert after == replace(claim, phase="running", qemu_pid=pid, verified_pid=pid)
    assert policy(tids[0]) == (os.SCHED_FIFO, 1)

    os.sched_setscheduler(tids[0], os.SCHED_OTHER, os.sched_param(0))
    verified_by_numahookd()
    assert " path=budget " in _hook_started(dom, tmp_path / "hook.log")
    assert policy(tids[0]) == (os.SCHED_FIFO, 1)
    assert policy(tids[1]) == (os.SCHED_OTHER, 0)
    again = state.load(dom.UUIDString())
    assert again is not None and again.phase == "running"
