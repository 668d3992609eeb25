"""The CPU set the host's cgroups assign to a domain's resource partition.

libvirt maps ``<resource><partition>/machine/rt</partition>`` to a cgroup directory in one
of two layouts: plain cgroupfs (``machine/rt.partition``, libvirt's
virCgroupSetPartitionSuffix) or systemd slices (``machine.slice/machine-rt.slice``).
On cgroup v1 it lives under the cpuset hierarchy; on v2 in the unified tree.
"""

from __future__ import annotations

import os
import re

from numahook.core import cpulist
from numahook.core.units import clip
from numahook.errors import InputError
from numahook.host import fsutil
from numahook.records import record

DEFAULT_PARTITION = "/machine"
_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]{0,63}")
_MAX_DEPTH = 8
_TOP = ("machine", "system", "user")
#: cgroup v1 controller names: libvirt prefixes '_' to a component named like one of
#: them followed by a dot, or it would collide with the controller's own files
_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio",
                "net_cls", "net_prio", "perf_event", "hugetlb", "pids", "rdma", "misc",
                "cgroup")


@record(frozen=True)
class Cpuset:
    cpus: frozenset[int]
    #: the cgroup directory the set was read from
    path: str
    layout: str
    version: int


def validate_partition(partition: str | None) -> list[str]:
    """Split a partition into components, refusing anything that could escape the tree."""
    text = DEFAULT_PARTITION if partition is None else partition
    if not text.startswith("/") or len(text) > 512:
        raise InputError(f"resource partition {clip(text, 80)} must be an absolute path like "
                         "/machine or /machine/rt")
    parts = text.strip("/").split("/")
    if not parts or parts == [""]:
        raise InputError("resource partition '/' is the root cgroup; use /machine or below")
    if len(parts) > _MAX_DEPTH:
        raise InputError(f"resource partition {clip(text, 80)} nests deeper than {_MAX_DEPTH}")
    for p in parts:
        if not _COMPONENT.fullmatch(p):
            raise InputError(
                f"resource partition {clip(text, 80)} has component {clip(p)}; use letters, "
                "digits, '_' and '-' only ('..', '.' and empty components are refused)"
            )
    return parts


def cgroupfs_path(parts: list[str]) -> str:
    """libvirt's cgroupfs name (``/machine/rt`` -> ``machine/rt.partition``)."""
    out = []
    for i, p in enumerate(parts):
        if i == 0 and p in _TOP:
            out.append(p)
            continue
        name = p + ".partition"
        clash = name.startswith(("_", ".")) or p in _CONTROLLERS
        out.append("_" + name if clash else name)
    return "/".join(out)


def _systemd_escape(text: str) -> str:
    return "".join(c if c.isalnum() or c in ":_." else f"\\x{ord(c):02x}" for c in text)


def systemd_path(parts: list[str]) -> str:
    """systemd's nested slices (``/machine/rt`` -> ``machine.slice/machine-rt.slice``)."""
    out = []
    for i in range(len(parts)):
        out.append("-".join(_systemd_escape(p) for p in parts[: i + 1]) + ".slice")
    return "/".join(out)


def version(root: str | os.PathLike[str]) -> int:
    """2 for a pure unified hierarchy, else 1 (legacy or hybrid)."""
    base = fsutil.clean(root)
    if (fsutil.exists(os.path.join(base, "cgroup.controllers"))
            and not fsutil.is_dir(os.path.join(base, "cpuset"))):
        return 2
    return 1


def cpuset_root(root: str | os.PathLike[str]) -> str:
    base = fsutil.clean(root)
    return base if version(base) == 2 else os.path.join(base, "cpuset")


def _read_set(directory: str, ver: int) -> frozenset[int] | None:
    names = (("cpuset.cpus.effective", "cpuset.cpus") if ver == 2
             else ("cpuset.effective_cpus", "cpuset.cpus"))
    for name in names:
        f = os.path.join(directory, name)
        try:
            with open(f, encoding="ascii") as fh:
                text = fh.read(cpulist.MAX_TEXT + 1)
        except FileNotFoundError:
            continue
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"cannot read {f}: {exc}") from None
        if text.strip() or ver == 1:
            return cpulist.parse(text, f)
    return None


def partition_cpuset(root: str | os.PathLike[str], partition: str | None) -> Cpuset:
    """The effective CPU set of ``partition``.

    A partition libvirt has not created yet inherits its nearest existing ancestor's set,
    which is exactly what it will get when created.
    """
    parts = validate_partition(partition)
    ver = version(root)
    base = cpuset_root(root)
    if not fsutil.is_dir(base):
        raise InputError(f"no cpuset cgroup hierarchy at {base}; mount the cpuset controller")
    systemd = (fsutil.is_dir(os.path.join(base, "machine.slice"))
               and not fsutil.is_dir(os.path.join(base, "machine")))
    rel = systemd_path(parts) if systemd else cgroupfs_path(parts)
    layout = "systemd" if systemd else "cgroupfs"
    comps = rel.split("/")
    for depth in range(len(comps), -1, -1):
        d = os.path.join(base, *comps[:depth]) if depth else base
        if fsutil.is_dir(d):
            got = _read_set(d, ver)
            if got is not None:
                return Cpuset(got, d, layout, ver)
    raise InputError(f"no readable cpuset for partition {partition or DEFAULT_PARTITION} "
                     f"under {base}")
