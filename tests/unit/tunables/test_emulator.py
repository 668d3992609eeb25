"""The emulator narrowed to its own CPUs once started (numahook/tunables/emulator.py).

QEMU's threads are real threads of this test process, listed in a fixture /proc with
QEMU's names and libvirt's cgroups, so the affinities set and read back are the kernel's
own. The host VM lab (tests/host/test_emulator.py) does the same with a real QEMU.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from numahook.config import Config
from numahook.core import domainxml
from numahook.daemon.reconcile import Reconciler
from numahook.ops import lifecycle
from numahook.state.claims import Claim
from numahook.state.statedir import StateDir
from numahook.tunables import emulator
from numahook.xml import safe

if len(os.sched_getaffinity(0)) < 2:
    pytest.skip("narrowing needs two CPUs this process may use", allow_module_level=True)
CPUS = sorted(os.sched_getaffinity(0))
OWN, BORROWED = CPUS[0], CPUS[1]
DOMAIN = "/machine.slice/machine-qemu\\x2d1\\x2dspan.scope/libvirt"

#: QEMU's threads: name, cgroup leaf
THREADS = [("qemu-system-x86", "emulator"), ("TC tc-ram-node0", "emulator"),
           ("IO mon_iothread", "emulator"), ("CPU 0/TCG", "vcpu0"), ("CPU 1/TCG", "vcpu1"),
           ("IO iothread1", "iothread1"), ("worker", "emulator")]


@pytest.fixture
def qemu(tmp_path: Path) -> Iterator[tuple[Path, dict[str, int]]]:
    """Threads of ours named and grouped as QEMU's; (proc root, tid by name)."""
    ready, stop = threading.Barrier(len(THREADS) + 1), threading.Event()
    tids: dict[str, int] = {}

    def run(name: str) -> None:
        tids[name] = threading.get_native_id()
        os.sched_setaffinity(0, {OWN, BORROWED})  # the start set, as libvirt left it
        ready.wait(5)
        stop.wait(30)

    started = [threading.Thread(target=run, args=(n,), daemon=True) for n, _ in THREADS]
    for t in started:
        t.start()
    ready.wait(5)
    proc = tmp_path / "proc"
    pid = tids["qemu-system-x86"]
    for name, leaf in THREADS:
        tid = tids[name]
        (proc / str(pid) / "task" / str(tid)).mkdir(parents=True, exist_ok=True)
        (proc / str(tid)).mkdir(exist_ok=True)
        (proc / str(tid) / "comm").write_text(name + "\n")
        (proc / str(tid) / "cgroup").write_text(f"0::{DOMAIN}/{leaf}\n")
    try:
        yield proc, tids
    finally:
        stop.set()
        for t in started:
            t.join(5)


def affinity(tids: dict[str, int]) -> dict[str, set[int]]:
    return {name: set(os.sched_getaffinity(tid)) for name, tid in tids.items()}


def test_every_emulator_thread_is_narrowed_and_nothing_else(
        qemu: tuple[Path, dict[str, int]]) -> None:
    proc, tids = qemu
    got = emulator.narrow(facts(), tids["qemu-system-x86"], str(proc))
    assert got.outcome == "narrowed" and got.moved == 4 and got.cpus == {OWN}
    now = affinity(tids)
    for name, leaf in THREADS:
        assert now[name] == ({OWN} if leaf == "emulator" else {OWN, BORROWED}), name
    # again: already in place, nothing moved
    assert emulator.narrow(facts(), tids["qemu-system-x86"], str(proc)).outcome == "in place"


def test_without_a_wider_start_set_nothing_is_touched(qemu: tuple[Path, dict[str, int]]) -> None:
    proc, tids = qemu
    assert emulator.target(facts(None)) is None
    assert emulator.narrow(facts(None), tids["qemu-system-x86"], str(proc)).outcome == \
        "not needed"
    assert all(cpus == {OWN, BORROWED} for cpus in affinity(tids).values())


def test_a_thread_in_another_cgroup_is_left_alone_even_without_a_vcpu_name(
        qemu: tuple[Path, dict[str, int]]) -> None:
    proc, tids = qemu
    (proc / str(tids["worker"]) / "cgroup").write_text(f"0::{DOMAIN}/vcpu1\n")
    emulator.narrow(facts(), tids["qemu-system-x86"], str(proc))
    assert set(os.sched_getaffinity(tids["worker"])) == {OWN, BORROWED}


def test_a_refused_move_is_reported_not_raised(qemu: tuple[Path, dict[str, int]]) -> None:
    proc, tids = qemu
    gone = 1 << 22  # past PID_MAX_LIMIT: a thread listed in /proc that the kernel lacks
    (proc / str(tids["qemu-system-x86"]) / "task" / str(gone)).mkdir()
    (proc / str(gone)).mkdir()
    (proc / str(gone) / "comm").write_text("qemu-system-x86\n")
    (proc / str(gone) / "cgroup").write_text(f"0::{DOMAIN}/emulator\n")
    got = emulator.narrow(facts(), tids["qemu-system-x86"], str(proc))
    assert got.outcome == "failed" and "thread" in got.detail


DOMAIN_XML = (
    "<domain type='qemu'><name>span</name><uuid>5e1b1a5e-0000-4000-8000-000000000011</uuid>"
    "<metadata><numahook:domain xmlns:numahook='https://numahook.io/xmlns/domain/1'>"
    "<numahook:cpu dedicatedCpuPlacement='true'/>"
    f"<numahook:rendered digest='d' host='h' emulator='{OWN}'/></numahook:domain></metadata>"
    f"<memory>131072</memory><vcpu>2</vcpu><cputune><vcpupin vcpu='0' cpuset='{OWN}'/>"
    f"<vcpupin vcpu='1' cpuset='{BORROWED}'/><emulatorpin cpuset='{OWN},{BORROWED}'/>"
    "</cputune><os><type>hvm</type></os></domain>")


def facts(own: int | None = OWN) -> domainxml.DomainFacts:
    xml = DOMAIN_XML if own is not None else DOMAIN_XML.replace(f" emulator='{OWN}'", "")
    return domainxml.read(safe.parse(xml))


def test_the_started_hook_narrows_and_numahookd_only_once_the_start_is_over(
        qemu: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    """lifecycle.tune (the started hook) narrows. numahookd's pass (daemon/reconcile.py)
    repairs a widened emulator, but while the claim is still ``reserved`` QEMU may still
    preallocate on the borrowed CPU, so it leaves a starting domain alone."""
    proc, tids = qemu
    pid = tids["qemu-system-x86"]
    run = tmp_path / "run"
    run.mkdir()
    (run / "span.xml").write_text(
        f"<domstatus state='running' reason='booted' pid='{pid}'><vcpus>"
        f"<vcpu id='0' pid='{tids['CPU 0/TCG']}'/><vcpu id='1' pid='{tids['CPU 1/TCG']}'/>"
        f"</vcpus>{DOMAIN_XML}</domstatus>")
    cfg = Config(proc_root=str(proc), libvirt_run=str(run), state_dir=str(tmp_path / "state"))
    state = StateDir(cfg.state_dir)
    state.ensure()
    claim = Claim(uuid=facts().uuid, name="span", cpus=frozenset(CPUS[:2]), phase="reserved")
    state.save(claim)
    rec = Reconciler(cfg, state)
    rec.backstop()
    assert set(os.sched_getaffinity(pid)) == {OWN, BORROWED}
    lifecycle.tune(DOMAIN_XML, cfg, state)  # started: narrows, and the claim says running
    assert set(os.sched_getaffinity(pid)) == {OWN}
    assert state.load(claim.uuid).phase == "running"
    os.sched_setaffinity(pid, {OWN, BORROWED})  # someone widened it
    rec.backstop()
    assert set(os.sched_getaffinity(pid)) == {OWN}
