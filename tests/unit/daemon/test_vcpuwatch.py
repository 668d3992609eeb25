"""The vCPU watch on a fixture cgroup v1 tree: domains running before numahookd, and
vCPUs hot-plugged into them, wake the main loop (daemon/vcpuwatch.py)."""

from __future__ import annotations

import os
import resource
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from numahook.config import Config
from numahook.daemon import vcpuwatch
from numahook.daemon.vcpuwatch import VcpuWatch
from numahook.state.statedir import StateDir

DOM = "machine/qemu-1-rt.libvirt-qemu"


def _group(path: Path, tasks: str = "") -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cpu.shares").write_text("1024\n")
    (path / "cpu.rt_runtime_us").write_text("0\n")
    (path / "cpu.rt_period_us").write_text("1000000\n")
    (path / "tasks").write_text(tasks)
    return path


@pytest.fixture
def throttled(tmp_path: Path) -> Config:
    """A throttled RT-group host with a domain already running with vCPU 0."""
    cpu = tmp_path / "cgroup" / "cpu"
    _group(cpu)
    _group(cpu / "machine")
    _group(cpu / DOM)
    _group(cpu / DOM / "vcpu0", "4242\n")
    sysctl = tmp_path / "proc" / "sys" / "kernel"
    sysctl.mkdir(parents=True)
    (sysctl / "sched_rt_runtime_us").write_text("950000\n")
    (sysctl / "sched_rt_period_us").write_text("1000000\n")
    return Config(cgroup_root=str(tmp_path / "cgroup"), proc_root=str(tmp_path / "proc"),
                  state_dir=str(tmp_path / "state"), lock_timeout=1.0,
                  rt_throttled="delegate")


@pytest.fixture
def watch(throttled: Config) -> Iterator[VcpuWatch]:
    w = VcpuWatch(throttled, StateDir(throttled.state_dir))
    assert w.start()
    yield w
    w.close()


def _woken(w: VcpuWatch, timeout: float) -> bool:
    return bool(select.select([w.plugged_fd], [], [], timeout)[0])


def test_a_running_domain_is_scanned_at_start(watch: VcpuWatch, throttled: Config) -> None:
    dom = Path(throttled.cgroup_root) / "cpu" / DOM
    assert dom in watch._done  # checked once: it is running, nothing to do early
    assert not _woken(watch, 0.2)  # its vCPU 0 is no hot-plug


def test_a_vcpu_hot_plugged_there_wakes_the_main_loop_once_its_thread_moved(
        watch: VcpuWatch, throttled: Config) -> None:
    vcpu1 = _group(Path(throttled.cgroup_root) / "cpu" / DOM / "vcpu1")
    assert not _woken(watch, 0.3)  # the directory alone: libvirt has not moved it yet
    (vcpu1 / "tasks").write_text("4243\n")
    assert _woken(watch, 10)
    watch.drain()
    assert not _woken(watch, 0)
    assert not watch._plugged  # the watch on that vcpuN is gone with it


def test_a_thread_moved_before_the_watch_existed_is_not_missed(
        watch: VcpuWatch, throttled: Config) -> None:
    dom = Path(throttled.cgroup_root) / "cpu" / DOM
    _group(dom / "vcpu2", "4244\n")  # the thread may be in before the watch sees vcpu2
    assert _woken(watch, 10)


def test_a_full_pipe_never_blocks_the_watch(watch: VcpuWatch, throttled: Config) -> None:
    while True:  # fill it as a main loop that never reads would
        try:
            os.write(watch._plugged_w, b"x" * 4096)
        except BlockingIOError:
            break
    dom = Path(throttled.cgroup_root) / "cpu" / DOM
    _group(dom / "vcpu3", "4245\n")  # its byte does not fit
    later = _group(dom / "vcpu5")  # seen only if the thread went on after vcpu3
    deadline = time.monotonic() + 10
    while later not in dict(watch._plugged).values() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert later in dict(watch._plugged).values()
    assert dom / "vcpu3" not in dict(watch._plugged).values()


# ------------------------------------------------------------ racing at SCHED_FIFO

ROOT = os.geteuid() == 0


def _policy(tid: int) -> int:
    return os.sched_getscheduler(tid) & ~getattr(os, "SCHED_RESET_ON_FORK", 0x40000000)


@pytest.mark.skipif(not ROOT, reason="SCHED_FIFO needs root")
def test_the_watch_races_at_fifo_and_drops_back_at_its_deadline(
        watch: VcpuWatch, throttled: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """A starting domain whose vCPU never gets its thread: FIFO from its first vcpuN on,
    SCHED_OTHER again once the race window is over, although the domain is not done."""
    monkeypatch.setattr(vcpuwatch, "RACE_WINDOW", 2.0)
    assert watch._thread is not None and watch._thread.native_id is not None
    tid = watch._thread.native_id
    assert _policy(tid) == os.SCHED_OTHER
    # the domain's directory and its vcpu0 at once: the watch may find vcpu0 by its
    # event or by scanning the new directory, and races either way
    _group(Path(throttled.cgroup_root) / "cpu" / "machine/qemu-2-new.libvirt-qemu" / "vcpu0")
    deadline = time.monotonic() + 10
    while _policy(tid) != os.SCHED_FIFO and time.monotonic() < deadline:
        time.sleep(0.01)
    assert _policy(tid) == os.SCHED_FIFO
    assert os.sched_getparam(tid).sched_priority == vcpuwatch.RACE_PRIORITY
    while _policy(tid) == os.SCHED_FIFO and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _policy(tid) == os.SCHED_OTHER and watch.racing_until is None
    assert watch._vcpus  # still waiting for the thread, at SCHED_OTHER now


_SPIN = """
import os, sys
from numahook.daemon import vcpuwatch
vcpuwatch.limit_rttime(20_000)
os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
while True:
    pass
"""


@pytest.mark.skipif(not ROOT, reason="SCHED_FIFO needs root")
def test_a_spinning_fifo_thread_is_killed_by_the_rttime_limit() -> None:
    """What bounds a buggy watch: the kernel ends an RT thread that never blocks."""
    proc = subprocess.run([sys.executable, "-c", _SPIN], timeout=30,
                          cwd=Path(__file__).resolve().parents[3])
    assert proc.returncode in (-signal.SIGXCPU, -signal.SIGKILL)


def test_the_rttime_limit_is_never_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _r: (5000, 8000))
    monkeypatch.setattr(resource, "setrlimit", lambda _r, lim: calls.append(lim))
    vcpuwatch.limit_rttime(200_000)
    assert calls == [(5000, 8000)]
    monkeypatch.setattr(resource, "getrlimit",
                        lambda _r: (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    vcpuwatch.limit_rttime(200_000)
    assert calls[-1] == (200_000, 400_000)
