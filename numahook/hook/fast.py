"""The ``started`` hook's fast path: numahookd already applied the tunables, so only verify.

On a throttled node numahookd applies what ``prepare`` recorded as soon as libvirt puts
the vCPU threads in their cgroups, and notes in the claim for which QEMU it did
(``verified_pid``, :func:`numahook.ops.lifecycle.tune_early`). The ``started`` hook then
has nothing to apply, but the full path still costs re, json and the renderer's
modules, several times the work itself (bench/started.py). This module checks the same
things with what the interpreter has loaded already, plus fcntl and the C half of json:

* the claim is this domain's, ``reserved``, with ``verified_pid`` equal to the QEMU pid in
  libvirt's status file;
* every check the domain's tunables declared at ``prepare`` holds (their ``fast_checks``,
  numahook/tunables/base.py, stored in the claim): the real-time policies, the kvm-pit
  thread, the emulator narrowed. A tunable that declared none it can be confirmed by
  makes this path decline, and the full path runs. The checks are data, so this path
  imports no tunable: the registry's modules would cost it more than its own work;

and then, under the state lock, moves the claim to ``running`` as the full path does.
Anything it does not understand or cannot confirm (an unusual config file, a missing or
different record, one thread off) makes :func:`started` return False, and the caller
takes the full path, which applies and verifies as before. It never changes a thread.

Reading only: the config's ``[paths]`` and ``[hook]`` values (the whole file was
validated by ``prepare`` moments before; lines this reader does not understand, or
that configparser would refuse for their shape, make the full path run), the
domain UUID from the XML libvirt passes (its first ``<uuid>``, which libvirt writes
before any ``<metadata>``), the claim, and the status file's ``pid`` attributes.
"""

from __future__ import annotations

import os
import time

from numahook.ini import simple_items

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from typing import Any

#: numahook.config's defaults for what this module reads
_DEFAULTS = {"state_dir": "/run/numahook", "libvirt_run": "/run/libvirt/qemu",
             "proc_root": "/proc", "lock_timeout": "10"}
_KEYS = {("paths", "state_dir"), ("paths", "libvirt_run"), ("paths", "proc_root"),
         ("hook", "lock_timeout")}
_MAX_FILE = 1 << 20
_HEX = frozenset("0123456789abcdef")
_RT_POLICIES = (os.SCHED_FIFO, os.SCHED_RR, 6)  # 6: SCHED_DEADLINE
_RESET_ON_FORK = 0x40000000


class _Decline(Exception):
    """Not verified here; the full path decides."""


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as fh:
        text = fh.read(_MAX_FILE + 1)
    if len(text) > _MAX_FILE:
        raise _Decline(f"{path} is too large")
    return text


def settings(environ: Any = os.environ) -> dict[str, str]:
    """The values of ``_KEYS`` from numahook.conf, as numahook.config would read them.

    Only the shape numahook/ini.py reads without configparser is understood; any other
    (a continuation, a duplicate key, no separator) declines.
    """
    out = dict(_DEFAULTS)
    explicit = "NUMAHOOK_CONFIG" in environ
    path = environ.get("NUMAHOOK_CONFIG", "/etc/numahook/numahook.conf")
    try:
        text = _read(path)
    except FileNotFoundError:
        if explicit:
            raise _Decline("no config file") from None
        return out
    except (OSError, ValueError):
        raise _Decline("config unreadable") from None
    items = simple_items(text)
    if items is None:
        raise _Decline("a line of a shape only configparser reads")
    for section, key, value, _line in items:
        where = (section.strip().lower(), key)
        if where in _KEYS:
            if where[0] == "paths" and (not value.startswith("/") or ".." in value.split("/")
                                        or "\0" in value):
                raise _Decline("a path numahook.config refuses")
            out[key] = value
    return out


def _uuid(xml: str) -> str:
    start = xml.find("<uuid>")
    end = xml.find("</uuid>", start)
    if start < 0 or end < 0:
        raise _Decline("no <uuid>")
    u = xml[start + 6:end].strip().lower()
    parts = u.split("-")
    if [len(p) for p in parts] != [8, 4, 4, 4, 12] or not set(u.replace("-", "")) <= _HEX:
        raise _Decline("not a UUID")
    return u


def _json_scanner() -> Any:
    """json's C scanner without json (json imports re, enum and more)."""
    import _json

    class Context:
        strict = True
        object_hook = None
        object_pairs_hook = None
        parse_float = float
        parse_int = int

        @staticmethod
        def parse_constant(name: str) -> None:
            raise ValueError(name)

    # typeshed types the argument as a scanner; the C code reads only these attributes
    return _json.make_scanner(Context)  # type: ignore[arg-type]


def _load_json(text: str) -> Any:
    body = text.strip()
    try:
        value, end = _json_scanner()(body, 0)
    except (StopIteration, ValueError) as exc:
        raise _Decline("claim is not JSON") from exc
    if end != len(body) or type(value) is not dict:
        raise _Decline("claim is not one JSON object")
    return value


def _dump_json(data: dict[str, Any]) -> str:
    """What json.dumps(data, sort_keys=True) gives, through the C encoder."""
    import _json

    def default(obj: object) -> None:
        raise TypeError(f"{type(obj).__name__} in a claim")

    encode = _json.make_encoder(None, default, _json.encode_basestring_ascii, None, ": ",
                                ", ", True, False, False)
    return "".join(encode(data, 0)) + "\n"


def _claim(path: str, uuid: str, name: str) -> tuple[str, dict[str, Any]]:
    """The claim's text and content, if it is one this path may act on."""
    try:
        st = os.lstat(path)
        text = _read(path)
    except (OSError, ValueError):
        raise _Decline("no claim") from None
    from numahook.host import lean

    if not lean.ours(st):
        raise _Decline("claim not ours")
    data = _load_json(text)
    if (data.get("version") != 2 or data.get("uuid") != uuid or data.get("name") != name
            or data.get("phase") != "reserved" or type(data.get("fast")) is not dict
            or data.get("verified_pid") is None
            or data.get("verified_pid") != data.get("qemu_pid")):
        raise _Decline("claim not verified by numahookd")
    return text, data


def _status(path: str) -> tuple[int, dict[int, int]]:
    """QEMU's pid and the vCPU thread ids from libvirt's status file (numahook/host/
    libvirtstatus.py reads the same attributes with lxml)."""
    try:
        text = _read(path)
    except (OSError, ValueError):
        raise _Decline("no status file") from None
    at = text.find("<domstatus ")  # after libvirt's "do not edit" comment
    head_end = text.find(">", at)
    if at < 0 or head_end < 0 or "<" in text[:at].replace("<!--", "", 1):
        raise _Decline("not a status file")
    head = text[at:head_end]
    pid = _attr(head, "pid")
    start = text.find("<vcpus>", head_end)
    stop = text.find("</vcpus>", start)
    dom = text.find("<domain ", head_end)
    if start < 0 or stop < 0 or (0 <= dom < start):
        raise _Decline("no vCPU threads in the status file")
    tids: dict[int, int] = {}
    for item in text[start + 7:stop].split("<vcpu ")[1:]:
        tag = " " + item[:item.find(">")]
        vcpu = _attr(tag, "id")
        if vcpu in tids:
            raise _Decline("a vCPU listed twice")
        tids[vcpu] = _attr(tag, "pid")
    return pid, tids


def _attr(tag: str, name: str) -> int:
    for quote in ("'", '"'):
        key = f" {name}={quote}"
        at = tag.find(key)
        if at >= 0:
            value = tag[at + len(key):tag.find(quote, at + len(key))]
            if not value.isdigit() or not value.isascii() or len(value) > 10:
                raise _Decline(f"{name} is not a number")
            number = int(value)
            if number <= 0 and name == "pid":
                raise _Decline("pid 0")
            return number
    raise _Decline(f"no {name} attribute")


def _write_running(state_dir: str, path: str, text: str, data: dict[str, Any],
                   timeout: float) -> None:
    """phase ``running``, as numahook.state.statedir writes a claim (atomic rename, no
    fsync), under its lock, if the record did not change meanwhile."""
    import fcntl

    from numahook.host import lean

    fd = os.open(os.path.join(state_dir, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        if not lean.flock_within(fd, timeout):
            raise _Decline("the state lock is busy")
        try:
            if _read(path) != text:
                raise _Decline("the claim changed meanwhile")
            data["phase"] = "running"
            lean.replace(path, _dump_json(data).encode("ascii"))
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def verify(name: str, xml: str, environ: Any = os.environ) -> str:
    """Check what numahookd applied; the audit line's fields. Raises _Decline."""
    if not name or "/" in name:
        raise _Decline("domain name")
    cfg = settings(environ)
    try:
        timeout = float(cfg["lock_timeout"])
    except ValueError:
        raise _Decline("lock_timeout") from None
    if not 0.1 <= timeout <= 120:
        raise _Decline("lock_timeout")
    uuid = _uuid(xml)
    path = os.path.join(cfg["state_dir"], "claims", f"{uuid}.json")
    text, data = _claim(path, uuid, name)
    pid, tids = _status(os.path.join(cfg["libvirt_run"], f"{name}.xml"))
    if pid != data["verified_pid"]:
        raise _Decline("another QEMU")
    if not any(data["fast"].values()):
        raise _Decline("nothing was applied early to verify")
    said = []
    for tunable, checks in sorted(data["fast"].items()):
        if type(checks) is not dict:
            raise _Decline(f"{tunable} declared no check this path can make")
        for kind, value in sorted(checks.items()):
            said.append(_CHECKS.get(kind, _unknown)(value, pid, tids, cfg["proc_root"]))
    _write_running(cfg["state_dir"], path, text, data, timeout)
    return (f"domain={name} {' '.join(s for s in said if s) or 'action=started'} "
            f"path=verified detail=applied by numahookd before started (qemu pid {pid}), "
            "verified")


# -- the checks a tunable may declare (numahook/tunables/base.py, fast_checks) ------------

def _int(v: object) -> int:
    if type(v) is not int:
        raise _Decline(f"{v!r} is not an integer")
    return v


def _sched(tid: int) -> tuple[int, int]:
    try:
        return (os.sched_getscheduler(tid) & ~_RESET_ON_FORK,
                os.sched_getparam(tid).sched_priority)
    except OSError:
        raise _Decline(f"thread {tid} cannot be read") from None


def _fifo(value: Any, pid: int, tids: dict[int, int], proc_root: str) -> str:
    """``{"vcpus": [...], "priority": P}``: exactly these vCPU threads SCHED_FIFO at P."""
    masked = {_int(v) for v in value["vcpus"]}
    priority = _int(value["priority"])
    if not masked or not 1 <= priority <= 99 or not masked <= set(tids):
        raise _Decline("real-time vCPUs")
    if sorted(tids) != list(range(len(tids))):
        # the claim holds the masked vCPUs below the boot count (tunables/realtime.py,
        # intent): the same as the mask's vCPUs with a thread only when vCPUs 0..n-1 are
        # the online ones
        raise _Decline("online vCPUs are not 0..n-1")
    for vcpu, tid in tids.items():
        policy, prio = _sched(tid)
        if vcpu in masked:
            if (policy, prio) != (os.SCHED_FIFO, priority):
                raise _Decline(f"vCPU {vcpu} is not FIFO {priority}")
        elif policy in _RT_POLICIES:
            raise _Decline(f"vCPU {vcpu} is real-time but not masked")
    vcpus = ",".join(str(v) for v in sorted(masked))
    return f"action=realtime vcpus={vcpus} priority={priority}"


def _emulator_fifo(value: Any, pid: int, tids: dict[int, int], proc_root: str) -> str:
    """P: QEMU's main (emulator) thread SCHED_FIFO at P."""
    if _sched(pid) != (os.SCHED_FIFO, _int(value)):
        raise _Decline("the emulator thread is not FIFO")
    return "emulator=True"


def _affinity(value: Any, pid: int, tids: dict[int, int], proc_root: str) -> str:
    """[CPUs]: QEMU's main thread runs on exactly these (the emulator narrowed)."""
    if os.sched_getaffinity(pid) != {_int(c) for c in value}:
        raise _Decline("the emulator is not on its own CPUs yet")
    return ""


def _kvm_pit(value: Any, pid: int, tids: dict[int, int], proc_root: str) -> str:
    """true: the kvm-pit thread on vCPU 0's CPUs, or none at all (the full path would only
    log that); found as numahook/host/procfs.py finds it."""
    from numahook.host import lean

    if value is not True or 0 not in tids:
        raise _Decline("kvm-pit check")
    tid = lean.find_comm(proc_root, f"kvm-pit/{pid}")
    if tid is not None and os.sched_getaffinity(tid) != os.sched_getaffinity(tids[0]):
        raise _Decline("the kvm-pit thread is not on vCPU 0's CPUs")
    return ""


def _unknown(value: Any, pid: int, tids: dict[int, int], proc_root: str) -> str:
    raise _Decline("a check this version does not know")


_CHECKS = {"fifo": _fifo, "emulator_fifo": _emulator_fifo, "affinity": _affinity,
           "kvm_pit": _kvm_pit}
#: the kinds of check a tunable may declare; tests/unit/tunables/test_registry.py holds the
#: tunables to them
CHECK_KINDS = frozenset(_CHECKS)


def started(name: str, xml: str, environ: Any = os.environ) -> bool:
    """True: numahookd's tuning holds and the claim says ``running``; False: take the
    full path (nothing was changed)."""
    try:
        line = verify(name, xml, environ)
    except (_Decline, OSError, ValueError, TypeError, KeyError, AttributeError, IndexError,
            OverflowError, RuntimeError):  # the full path's to judge, never a failure here
        return False
    _audit(line, environ)
    return True


def _audit(line: str, environ: Any) -> None:
    """The full path's audit line, to syslog (or NUMAHOOK_HOOK_LOG, in its format)."""
    path = environ.get("NUMAHOOK_HOOK_LOG")
    if path:
        now = time.time()
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        try:
            with open(path, "a", encoding="utf-8") as fh:
                fh.write(f"{stamp},{int(now % 1 * 1000):03d} numahook-hook[{os.getpid()}]: "
                         f"INFO {line}\n")
        except OSError:
            pass
        return
    import syslog

    syslog.openlog("numahook-hook", syslog.LOG_PID, syslog.LOG_DAEMON)
    syslog.syslog(syslog.LOG_INFO, line)


__all__ = ["settings", "started", "verify"]
