"""procfs: threads, vCPU names, scheduler calls and cgroup lines, on real processes."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from numahook.errors import HostError, InputError
from numahook.host import procfs

ROOT = os.geteuid() == 0

# A child that names two of its threads like QEMU's vCPU threads, plus a decoy.
_QEMU_LIKE = r"""
import sys, threading
ready = threading.Barrier(4)
def worker(name):
    with open(f"/proc/self/task/{threading.get_native_id()}/comm", "w") as fh:
        fh.write(name)
    ready.wait()
    threading.Event().wait()
for name in ("CPU 0/KVM", "CPU 1/TCG", "IO iothread1"):
    threading.Thread(target=worker, args=(name,), daemon=True).start()
ready.wait()
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def qemu_like() -> Iterator[subprocess.Popen[str]]:
    child = subprocess.Popen(
        [sys.executable, "-c", _QEMU_LIKE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline() == "ready\n"
        yield child
    finally:
        child.kill()
        child.wait()


@pytest.fixture
def sleeper() -> Iterator[int]:
    child = subprocess.Popen(["sleep", "300"])
    try:
        yield child.pid
    finally:
        child.kill()
        child.wait()


def test_threads_and_vcpu_names_of_a_real_process(qemu_like: subprocess.Popen[str]) -> None:
    tids = procfs.threads(qemu_like.pid)
    assert qemu_like.pid in tids and len(tids) == 4
    vcpus = procfs.vcpu_threads_from_proc(qemu_like.pid)
    assert sorted(vcpus) == [0, 1]
    assert procfs.comm_of(vcpus[0]) == "CPU 0/KVM"
    assert procfs.comm_of(vcpus[1]) == "CPU 1/TCG"


def test_threads_of_missing_process_names_fix(tmp_path: Path) -> None:
    with pytest.raises(HostError, match=r"threads of process 42 failed.*still running"):
        procfs.threads(42, str(tmp_path))


def test_vcpu_threads_from_fixture_tree(tmp_path: Path) -> None:
    names = {100: "qemu-system-x86", 101: "CPU 1/KVM", 102: "CPU 0/KVM", 103: "CPU 10/KVM",
             104: "CPU x/KVM", 105: "vhost-100"}
    for tid, comm in names.items():
        (tmp_path / "100" / "task" / str(tid)).mkdir(parents=True)
        (tmp_path / str(tid)).mkdir(exist_ok=True)
        (tmp_path / str(tid) / "comm").write_text(comm + "\n")
    (tmp_path / "100" / "task" / "106").mkdir()  # exited before its comm was read
    assert procfs.vcpu_threads_from_proc(100, str(tmp_path)) == {0: 102, 1: 101, 10: 103}


def test_sched_of_reports_other() -> None:
    assert procfs.sched_of(os.getpid()) == ("other", 0)


@pytest.mark.skipif(not ROOT, reason="SCHED_FIFO needs root")
def test_set_fifo_and_back_on_a_real_child(sleeper: int) -> None:
    # our own cpu cgroup is the root group, whose budget is the sysctl's
    procfs.set_fifo(sleeper, 7)
    assert procfs.sched_of(sleeper) == ("fifo", 7)
    assert procfs.set_other(sleeper) is True
    assert procfs.sched_of(sleeper) == ("other", 0)


def test_set_fifo_refuses_bad_priority() -> None:
    with pytest.raises(InputError, match="outside 1-99"):
        procfs.set_fifo(os.getpid(), 0)


def test_scheduler_calls_on_a_gone_thread() -> None:
    child = subprocess.Popen(["true"])
    child.wait()  # reaped: its pid is free
    assert procfs.set_other(child.pid) is False
    with pytest.raises(HostError, match="has exited"):
        procfs.set_fifo(child.pid, 1)
    with pytest.raises(HostError, match="still running"):
        procfs.sched_of(child.pid)


@pytest.mark.skipif(ROOT, reason="checks the advice given to a non-root caller")
def test_set_fifo_as_non_root_says_root() -> None:
    with pytest.raises(HostError, match="run numahook as root"):
        procfs.set_fifo(os.getpid(), 1)


#: forks once it is SCHED_FIFO, and prints whether the child started as SCHED_OTHER
_FORKS_WHEN_FIFO = r"""
import os, sys
sys.stdin.readline()            # wait until the parent test made us SCHED_FIFO
pid = os.fork()
if pid == 0:
    os._exit(0 if os.sched_getscheduler(0) == os.SCHED_OTHER else 1)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), flush=True)
"""


@pytest.mark.skipif(not ROOT, reason="setting SCHED_FIFO needs root")
def test_children_of_a_fifo_thread_start_as_sched_other() -> None:
    """Threads numahook makes real-time do not hand SCHED_FIFO to the threads they create."""
    proc = subprocess.Popen([sys.executable, "-c", _FORKS_WHEN_FIFO], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        try:
            procfs.set_fifo(proc.pid, 1)
        except HostError as exc:  # no RT budget where this test runs
            pytest.skip(f"cannot make a test process SCHED_FIFO here: {exc}")
        assert procfs.sched_of(proc.pid) == ("fifo", 1)
        assert os.sched_getscheduler(proc.pid) & procfs._RESET_ON_FORK
        out, _ = proc.communicate("go\n", timeout=30)
        assert out.strip() == "0", "the forked child inherited SCHED_FIFO"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


V1_HYBRID = """\
9:name=systemd:/
8:pids:/
4:memory:/machine/qemu-1-rt.libvirt-qemu
3:cpuset:/machine/qemu-1-rt.libvirt-qemu/vcpu0
2:cpu,cpuacct:/machine/qemu-1-rt.libvirt-qemu/vcpu0
0::/machine/qemu-1-rt.libvirt-qemu/vcpu0-v2
"""


def test_parse_cgroup_prefers_v1_over_unified() -> None:
    assert procfs.parse_cgroup_file(V1_HYBRID, "cpu") == "/machine/qemu-1-rt.libvirt-qemu/vcpu0"
    assert procfs.parse_cgroup_file(V1_HYBRID, "cpuacct").endswith("/vcpu0")
    assert procfs.parse_cgroup_file(V1_HYBRID, "name=systemd") == "/"
    # a controller not mounted in v1 falls back to the unified tree
    assert procfs.parse_cgroup_file(V1_HYBRID, "io").endswith("vcpu0-v2")


def test_parse_cgroup_pure_v2_and_none() -> None:
    path = "/machine.slice/machine-qemu\\x2d1\\x2drt.scope/libvirt/vcpu0"
    assert procfs.parse_cgroup_file(f"0::{path}\n", "cpu") == path
    assert procfs.parse_cgroup_file("2:cpu:/\n", "memory") is None


def test_cgroup_of_real_thread_and_fixture(tmp_path: Path) -> None:
    own = procfs.cgroup_of(os.getpid(), "cpu")
    assert own.startswith("/")
    (tmp_path / "77").mkdir()
    (tmp_path / "77" / "cgroup").write_text(V1_HYBRID)
    assert procfs.cgroup_of(77, "cpu", str(tmp_path)).endswith("libvirt-qemu/vcpu0")
    with pytest.raises(HostError, match="no cgroup of the memory controller"):
        (tmp_path / "78").mkdir()
        (tmp_path / "78" / "cgroup").write_text("2:cpu:/\n")
        procfs.cgroup_of(78, "memory", str(tmp_path))
    with pytest.raises(HostError, match="still running"):
        procfs.cgroup_of(79, "cpu", str(tmp_path))


def test_thread_group_and_qemu_uuid_from_a_fixture_tree(tmp_path: Path) -> None:
    uuid = "37458bd7-b570-4007-8934-5a9194048470"
    (tmp_path / "501").mkdir()
    (tmp_path / "501" / "status").write_text("Name:\tCPU 0/KVM\nTgid:\t500\nPid:\t501\n")
    (tmp_path / "500").mkdir()
    (tmp_path / "500" / "cmdline").write_text(
        "/usr/bin/qemu-system-x86_64\0-name\0guest=vm\0-uuid\0" + uuid.upper() + "\0-S\0")
    (tmp_path / "600").mkdir()
    (tmp_path / "600" / "cmdline").write_text("sleep\0-uuid\0not-a-uuid\0")
    (tmp_path / "700").mkdir()
    (tmp_path / "700" / "cmdline").write_text("sleep\0-uuid")  # the flag last: no value
    assert procfs.thread_group(501, str(tmp_path)) == 500
    assert procfs.thread_group(999, str(tmp_path)) is None  # exited
    assert procfs.qemu_uuid(500, str(tmp_path)) == uuid
    for pid in (600, 700, 999):
        assert procfs.qemu_uuid(pid, str(tmp_path)) is None


def test_thread_group_of_a_real_thread(qemu_like: subprocess.Popen[str]) -> None:
    tids = procfs.threads(qemu_like.pid)
    assert {procfs.thread_group(t) for t in tids} == {qemu_like.pid}


def test_start_time_tells_a_reused_pid_apart(tmp_path: Path) -> None:
    """A command name with spaces and ')' does not shift the fields; a gone pid is None."""
    assert procfs.start_time(os.getpid()) == int(
        Path("/proc/self/stat").read_text().rpartition(")")[2].split()[19])
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "stat").write_text("7 (a) b (c) S " + "1 " * 18 + "4711 0 0\n")
    assert procfs.start_time(7, str(tmp_path)) == 4711
    assert procfs.start_time(8, str(tmp_path)) is None
