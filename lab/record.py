"""The lab's record: what it changed, kept in ``/run/numahook-lab/state.json`` under a lock.

Everything the lab changes is written here before (or right after) it is changed, and
``down`` restores from this record only (:mod:`lab.undo`). The snapshot taken when the
record is made holds the values others may change while the lab is up: the RT sysctls,
hugepages per node, and the files of libvirt's /machine cgroups.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lab import STATE_DIR, LabError, read_value

STATE = STATE_DIR / "state.json"
LOCK = STATE_DIR / "lock"
SYSCTLS = ("kernel.sched_rt_runtime_us", "kernel.sched_rt_period_us")
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: cgroup v1 files of libvirt's partition that numahook (or a test) may write.
CGROUP_FILES = ("cpu.rt_runtime_us", "cpuset.cpus", "cpuset.mems")
NODE_ROOT = Path("/sys/devices/system/node")


def sysctl_path(name: str) -> Path:
    """``kernel.sched_rt_runtime_us`` -> its file under /proc/sys."""
    return Path("/proc/sys") / name.replace(".", "/")


@contextlib.contextmanager
def locked(timeout: float = 300.0) -> Iterator[None]:
    """Serialise lab changes between processes (bounded wait)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise LabError(
                        f"another lab command has held {LOCK} for {timeout:.0f} s"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load() -> dict[str, Any] | None:
    """The record, or None when the lab is not up."""
    try:
        return json.loads(STATE.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LabError(f"{STATE} is unreadable ({exc}); remove it after checking by hand") from None


def save(state: dict[str, Any]) -> None:
    """Write the record atomically."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = STATE.with_name(STATE.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(STATE)


def hugepage_files() -> list[Path]:
    """Every node's ``nr_hugepages`` of every page size: snapshotted, and reported."""
    return sorted(NODE_ROOT.glob("node[0-9]*/hugepages/hugepages-*kB/nr_hugepages"))


def _machine_cgroups() -> list[Path]:
    """libvirt's default partition in every cgroup v1 controller (and v2, if mounted)."""
    out = []
    for ctl in sorted(CGROUP_ROOT.iterdir()) if CGROUP_ROOT.is_dir() else []:
        if ctl.is_dir() and not ctl.is_symlink():
            out.append(ctl / "machine")
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        out.append(CGROUP_ROOT / "machine.slice")
    return out


def _snapshot() -> dict[str, Any]:
    """Values that the lab, numahook or a test may change while the lab is up."""
    values: dict[str, str] = {}
    for name in SYSCTLS:
        v = read_value(sysctl_path(name))
        if v is not None:
            values[str(sysctl_path(name))] = v
    for f in hugepage_files():
        values[str(f)] = read_value(f) or "0"
    absent = []
    for cg in _machine_cgroups():
        if cg.is_dir():
            for name in CGROUP_FILES:
                v = read_value(cg / name)
                if v is not None:
                    values[str(cg / name)] = v
        else:
            absent.append(str(cg))
    return {"values": values, "cgroups_absent": absent}


def new_state() -> dict[str, Any]:
    """An empty record, with the snapshot taken before the lab changes anything."""
    return {
        "holders": [],
        "snapshot": _snapshot(),
        "daemons": {},
        "mounts": [],
        "dirs": [],
        "files": {},
        "modes": {},
        "written": {},
        "domains": [],
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def mutate(fn: Any) -> Any:
    """Run ``fn(state)`` under the lock and save; LabError when the lab is not up."""
    with locked():
        state = load()
        if state is None:
            raise LabError("the lab is not up: run scripts/lab up")
        out = fn(state)
        save(state)
        return out
