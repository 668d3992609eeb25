"""The kvm-pit kernel thread on vCPU 0's CPU (numahook/tunables/kvmpit.py).

The thread is found by its name in a fixture /proc; the "kvm-pit" there is a real thread
of this test process, so the affinity numahook sets is the kernel's own, read back with
sched_getaffinity. The lab's e2e test does the same with KVM's real thread.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from numahook.core import domainxml
from numahook.daemon.reconcile import Reconciler
from numahook.host import procfs
from numahook.ops import lifecycle
from numahook.records import replace
from numahook.state.statedir import StateDir
from numahook.tunables import kvmpit
from numahook.xml import safe
from tests.fixtures.devices import domain, host_config, render_xml

QEMU = 4242


@pytest.fixture
def pit_thread(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A thread of ours that /proc (a fixture) calls kvm-pit/4242; (its tid, proc root)."""
    ready, stop = threading.Event(), threading.Event()
    tid: list[int] = []

    def run() -> None:
        tid.append(threading.get_native_id())
        ready.set()
        stop.wait(30)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert ready.wait(5)
    proc = tmp_path / "proc"
    for pid, comm in ((1, "systemd"), (2, "kthreadd"), (QEMU, "qemu-system-x86"),
                      (tid[0], f"kvm-pit/{QEMU}"), (tid[0] + 1, f"kvm-pit/{QEMU + 1}")):
        (proc / str(pid)).mkdir(parents=True, exist_ok=True)
        (proc / str(pid) / "comm").write_text(comm + "\n")
    try:
        yield tid[0], proc
    finally:
        stop.set()
        t.join(5)


def one_cpu() -> int:
    return min(os.sched_getaffinity(0))


def facts(kind: str = "kvm", cpu: int | None = None) -> domainxml.DomainFacts:
    pins = "" if cpu is None else f"<cputune><vcpupin vcpu='0' cpuset='{cpu}'/></cputune>"
    xml = domain(passthrough=False, vcpus=1).replace("<domain type='kvm'>",
                                                      f"<domain type='{kind}'>")
    return domainxml.read(safe.parse(xml.replace("<os>", pins + "<os>")))


def test_the_thread_is_found_by_its_name(pit_thread: tuple[int, Path]) -> None:
    tid, proc = pit_thread
    assert procfs.kvm_pit_thread(QEMU, str(proc)) == tid
    assert procfs.kvm_pit_thread(QEMU + 7, str(proc)) is None


def test_pinned_to_vcpu0s_cpu_and_read_back(pit_thread: tuple[int, Path]) -> None:
    tid, proc = pit_thread
    cpu = one_cpu()
    state = kvmpit.pin(facts(cpu=cpu), QEMU, str(proc))
    assert (state.outcome, state.tid, state.cpus) == ("pinned", tid, frozenset({cpu}))
    assert os.sched_getaffinity(tid) == {cpu}
    again = kvmpit.pin(facts(cpu=cpu), QEMU, str(proc), backstop=True)
    assert again.outcome == "in place"


def test_tcg_has_no_thread_to_pin(pit_thread: tuple[int, Path],
                                  caplog: pytest.LogCaptureFixture) -> None:
    tid, proc = pit_thread
    before = os.sched_getaffinity(tid)
    with caplog.at_level("INFO"):
        assert kvmpit.pin(facts("qemu", one_cpu()), QEMU, str(proc)).outcome == "tcg"
    assert os.sched_getaffinity(tid) == before
    assert "runs under TCG (type='qemu'), which has no kvm-pit thread" in caplog.text


def test_no_thread_and_no_dedicated_cpus(pit_thread: tuple[int, Path]) -> None:
    _, proc = pit_thread
    assert kvmpit.pin(facts(cpu=one_cpu()), QEMU + 7, str(proc)).outcome == "no thread"
    assert kvmpit.pin(facts(cpu=None), QEMU, str(proc)).outcome == "not dedicated"


def test_a_refused_affinity_is_logged_not_raised(pit_thread: tuple[int, Path],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """vCPU 0 on a CPU this host does not have: the kernel refuses (EINVAL)."""
    tid, proc = pit_thread
    before = os.sched_getaffinity(tid)
    state = kvmpit.pin(facts(cpu=4000), QEMU, str(proc))
    assert state.outcome == "failed" and os.sched_getaffinity(tid) == before
    assert f"setting the CPU affinity of thread {tid} to CPUs 4000 failed" in caplog.text


def status_file(run: Path, xml: str) -> None:
    body = xml.split("?>")[-1]
    (run / "iovm.xml").write_text(f"<domstatus state='running' reason='booted' pid='{QEMU}'>"
                                  f"<vcpus><vcpu id='0' pid='{QEMU + 10}'/></vcpus>{body}"
                                  "</domstatus>")


def test_started_hook_and_daemon_backstop(pit_thread: tuple[int, Path], tmp_path: Path) -> None:
    """lifecycle.tune (the started hook) pins it; numahookd's pass puts it back after it
    moved. The fixture host has CPUs 0-3; the domain's vCPU 0 gets this machine's CPU."""
    tid, proc = pit_thread
    if one_cpu() > 3:
        pytest.skip("this process may not run on the fixture host's CPUs 0-3")
    cfg = host_config(tmp_path, "single", cpusets={"": "0-3", "machine": str(one_cpu())})
    xml = render_xml(cfg, domain(passthrough=False, vcpus=1)).xml
    cfg = replace(cfg, proc_root=str(proc))  # the /proc that holds the kvm-pit thread
    status_file(Path(cfg.libvirt_run), xml)
    state = StateDir(cfg.state_dir)
    lifecycle.tune(xml, cfg, state)
    assert os.sched_getaffinity(tid) == {one_cpu()}
    os.sched_setaffinity(tid, os.sched_getaffinity(0))  # someone moved it
    rec = Reconciler(cfg, state)
    rec.backstop()
    assert os.sched_getaffinity(tid) == {one_cpu()}
