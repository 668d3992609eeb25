"""The vCPU watch on a fixture cgroup v1 tree: domains running before numahookd, and
vCPUs hot-plugged into them, wake the main loop (daemon/vcpuwatch.py)."""

from __future__ import annotations

import os
import select
from collections.abc import Iterator
from pathlib import Path

import pytest

from numahook.config import Config
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
    watch._hot_plugged(_group(dom / "vcpu2", "4244\n"))
    assert _woken(watch, 0)


def test_a_full_pipe_never_blocks_the_watch(watch: VcpuWatch, throttled: Config) -> None:
    while True:  # fill it as a main loop that never reads would
        try:
            os.write(watch._plugged_w, b"x" * 4096)
        except BlockingIOError:
            break
    dom = Path(throttled.cgroup_root) / "cpu" / DOM
    watch._hot_plugged(_group(dom / "vcpu3", "4245\n"))  # returns: the byte is not needed
    watch.drain()
    assert not _woken(watch, 0)
