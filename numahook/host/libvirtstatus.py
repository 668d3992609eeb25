"""Running domains as libvirt records them in its status XML (/run/libvirt/qemu/NAME.xml).

The hook may not call back into libvirt, so it learns which domains run, their vCPU
thread ids and the host CPUs they are pinned to from these root-only files. The format
(``<domstatus state= reason= pid=>`` around ``<vcpus><vcpu id pid/></vcpus>`` and the live
``<domain>``) is libvirt's private one; the test sample was captured from libvirt 9.0.
"""

from __future__ import annotations

import os

from numahook import log as logmod
from numahook.core import cpulist, metadata
from numahook.core.units import clip, is_decimal
from numahook.errors import InputError
from numahook.host import fsutil
from numahook.records import field, record
from numahook.xml import safe

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from typing import Any

log = logmod.get(__name__)

DEFAULT_ROOT = "/run/libvirt/qemu"


@record(frozen=True)
class RunningDomain:
    """One domain libvirt considers active, as read from its status file."""

    name: str
    uuid: str
    #: QEMU's pid; None while libvirt has not recorded it yet
    pid: int | None
    state: str
    #: vCPU id -> thread id (empty until QEMU's vCPUs exist)
    vcpu_tids: dict[int, int]
    domain: Any = field(repr=False, compare=False)
    #: union of the vcpupin, emulatorpin and iothreadpin cpusets of the live definition,
    #: and the idle siblings it holds (``<numahook:rendered held>``)
    pinned_cpus: frozenset[int] = frozenset()


#: Linux's PID_MAX_LIMIT; 0 would mean "the caller" to sched_setscheduler
_PID_MAX = 1 << 22


def _int(text: str | None, what: str, lo: int = 0, hi: int = _PID_MAX) -> int:
    value = (text or "").strip()
    if not is_decimal(value) or len(value) > 10 or not lo <= int(value) <= hi:
        raise InputError(f"{what} is {clip(value)}, not a number from {lo} to {hi}")
    return int(value)


def parse_status(data: str | bytes, what: str = "libvirt status XML") -> RunningDomain:
    """Parse one status document (pure; the caller did the reading)."""
    root = safe.parse_readonly(data, what)
    if root.tag != "domstatus":
        raise InputError(f"{what} has root <{root.tag}>, not <domstatus>")
    dom = root.find("domain")
    if dom is None:
        raise InputError(f"{what} has no <domain> element")
    name = (dom.findtext("name") or "").strip()
    uuid = (dom.findtext("uuid") or "").strip().lower()
    if not name or not uuid:
        raise InputError(f"{what} has no domain name or uuid")
    pid_attr = root.get("pid")
    pid = _int(pid_attr, f"{what} pid", 1) if pid_attr is not None else None
    tids: dict[int, int] = {}
    for vcpu in root.iterfind("vcpus/vcpu"):
        tids[_int(vcpu.get("id"), f"{what} vcpu id", 0, 16383)] = _int(
            vcpu.get("pid"), f"{what} vcpu pid", 1)
    pinned: set[int] = set(metadata.held_cpus(dom))
    for tag in ("vcpupin", "emulatorpin", "iothreadpin"):
        for pin in dom.iterfind(f"cputune/{tag}"):
            pinned |= cpulist.parse(pin.get("cpuset") or "", f"{what} {tag} cpuset")
    return RunningDomain(
        name=name,
        uuid=uuid,
        pid=pid,
        state=root.get("state") or "unknown",
        vcpu_tids=tids,
        domain=dom,
        pinned_cpus=frozenset(pinned),
    )


def _load(path: str) -> RunningDomain:
    return parse_status(fsutil.read_text(path, safe.MAX_XML_BYTES), f"status file {path}")


#: status file -> (inode, mtime, size) and what it said. libvirt replaces the file (a new
#: one renamed over it) whenever the domain changes, so a long-lived reader (numahookd,
#: several times per pass) parses a file again only after that; shared, so read-only.
_seen: dict[str, tuple[tuple[int, int, int], RunningDomain]] = {}


def running_domains(root: str = DEFAULT_ROOT) -> list[RunningDomain]:
    """All domains with a status file, by name; unreadable or corrupt files are skipped."""
    try:
        names = sorted(n for n in os.listdir(root) if n.endswith(".xml"))
    except FileNotFoundError:
        return []  # libvirtd never ran a domain since boot
    except OSError as exc:
        log.warning("cannot list libvirt status files in %s: %s", root, exc.strerror)
        return []
    out: list[RunningDomain] = []
    listed = set()
    for name in names:
        try:
            path = fsutil.under(root, name)
            st = os.stat(path)
        except (InputError, OSError) as exc:
            log.warning("skipping libvirt status file %s/%s: %s", root, name, exc)
            continue
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        listed.add(path)
        cached = _seen.get(path)
        if cached is not None and cached[0] == key:
            out.append(cached[1])
            continue
        try:
            dom = _load(path)
        except InputError as exc:
            log.warning("skipping libvirt status file %s/%s: %s", root, name, exc)
            continue
        _seen[path] = (key, dom)
        out.append(dom)
    prefix = os.path.join(root, "")
    for gone in [p for p in _seen if p.startswith(prefix) and p not in listed]:
        del _seen[gone]
    return sorted(out, key=lambda d: d.name)


def status_of(name: str, root: str = DEFAULT_ROOT) -> RunningDomain | None:
    """The status of domain ``name``, or None when it is not running."""
    if "/" in name:
        raise InputError(f"domain name {name!r} contains '/', which libvirt never allows")
    path = fsutil.under(root, f"{name}.xml")
    if not fsutil.exists(path):
        return None
    return _load(path)
