"""The claim record: what one managed domain holds on this host, and its JSON.

A claim says what a domain holds: its dedicated CPUs, and for each tunable
(numahook/tunables/) what it changed and the value to put back, the tunable's *entry*.
:mod:`numahook.state.statedir` stores one claim per domain; an entry is written *before*
sysfs or cgroupfs is touched, and again after (write-ahead), and
:mod:`numahook.state.recovery` undoes every tunable from what a killed process left.

Version 2 keeps the entries under ``tunables``; version 1 (numahook 0.2 and earlier) had
fixed hugepage and real-time keys, which :func:`_entries_v1` still reads, so an upgrade
under running domains gives back everything they held.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

from numahook import tunables
from numahook.errors import InputError
from numahook.records import field, record

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from typing import Any

PHASES = ("claimed", "reserved", "running")
VERSION = 2
UUID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")


_BOOT: list[str] = []


def boot_id() -> str:
    """This boot's id (``kernel.random.boot_id``); "" where the kernel does not say."""
    if not _BOOT:
        try:
            with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as fh:
                _BOOT.append(fh.read(64).strip())
        except (OSError, ValueError):
            _BOOT.append("")
    return _BOOT[0]


def check_uuid(value: str) -> str:
    u = value.strip().lower()
    if not UUID_PATTERN.match(u):
        raise InputError(f"{value!r} is not a domain UUID; pass the UUID libvirt shows")
    return u


@record(frozen=True)
class Claim:
    """What one domain holds on this host."""

    uuid: str
    name: str
    cpus: frozenset[int] = frozenset()
    phase: str = "claimed"
    created: float = field(default_factory=time.time)
    qemu_pid: int | None = None
    #: the boot the claim was made in: pools, budgets and cgroups do not outlive it
    boot: str = field(default_factory=boot_id)
    #: the QEMU pid for which numahookd applied every tunable's early part and verified it,
    #: before the ``started`` hook ran (ops/lifecycle.py, tune_early); that hook then only
    #: verifies (numahook/hook/fast.py). None: the hook applies them.
    verified_pid: int | None = None
    #: tunable name -> its entry (numahook/tunables/); absent: it changed nothing here
    tunables: Mapping[str, Any] = field(default_factory=dict)
    #: tunable name -> what the started hook's fast path must confirm (Tunable.fast_checks,
    #: numahook/hook/fast.py), plain JSON; None where it cannot
    fast: Mapping[str, Any] = field(default_factory=dict)

    def entry(self, tunable: str) -> Any:
        """The tunable's entry, or None when it holds nothing."""
        return self.tunables.get(tunable)

    def from_earlier_boot(self) -> bool:
        """Made before the last reboot ("" is a record of numahook 0.1.0: this boot)."""
        return bool(self.boot) and bool(boot_id()) and self.boot != boot_id()

    def __post_init__(self) -> None:
        object.__setattr__(self, "uuid", check_uuid(self.uuid))
        if self.phase not in PHASES:
            raise InputError(f"claim phase {self.phase!r} is not one of {', '.join(PHASES)}")

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "uuid": self.uuid,
            "name": self.name,
            "cpus": sorted(self.cpus),
            "phase": self.phase,
            "created": self.created,
            "qemu_pid": self.qemu_pid,
            "boot": self.boot,
            "verified_pid": self.verified_pid,
            "tunables": {name: e.to_json() for name, e in sorted(self.tunables.items())
                         if e is not None},
            "fast": dict(self.fast),
        }

    @classmethod
    def from_json(cls, data: Any) -> Claim:
        """Rebuild a claim, raising InputError for anything not written by to_json (of
        this version or version 1)."""
        try:
            version = data.get("version")
            if version not in (1, VERSION):
                raise ValueError(f"version {_shown(version)} is not {VERSION} or 1")
            pid = data["qemu_pid"]
            verified = data.get("verified_pid")  # absent in records of numahook 0.1.0
            entries = (_entries_v1(data) if version == 1
                       else tunables.decode(data["tunables"]))
            return cls(
                uuid=_str(data["uuid"]),
                name=_str(data["name"]),
                cpus=frozenset(_int(c) for c in data["cpus"]),
                phase=_str(data["phase"]),
                created=float(data["created"]),
                qemu_pid=None if pid is None else _int(pid),
                boot=_str(data.get("boot", "")),
                verified_pid=None if verified is None else _int(verified),
                tunables=entries,
                fast=_fast(data, version),
            )
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as exc:
            why = (f"it lacks {exc.args[0]}" if isinstance(exc, KeyError) else
                   "a part of it is not a JSON object" if isinstance(exc, AttributeError) else
                   str(exc))
            raise InputError(f"the claim record is malformed ({why})") from None


def _fast(data: Any, version: int) -> dict[str, Any]:
    """The fast path's checks; a version-1 claim has its real-time intent instead, which
    says the same for the one tunable that could be verified early then."""
    if version == 1:
        rt = data.get("realtime")
        if rt is None:
            return {}
        checks: dict[str, Any] = {"fifo": {"vcpus": rt["vcpus"], "priority": rt["priority"]}}
        if rt["emulator"]:
            checks["emulator_fifo"] = rt["priority"]
        return {"realtime": checks}
    fast = data["fast"]
    if type(fast) is not dict or any(v is not None and type(v) is not dict
                                     for v in fast.values()):
        raise TypeError("its fast-path checks are not JSON objects")
    return fast


def _entries_v1(data: Any) -> dict[str, Any]:
    """Version 1's fixed keys as the entries of the tunables that own them now."""
    out = {}
    pages = {"need": data.get("need", {}), "added": data["hugepages"],
             "pending": data["hugepages_pending"]}
    if any(pages.values()):
        out["hugepages"] = tunables.by_name("hugepages").decode(pages)
    rt = {"intent": data.get("realtime"), "budget": data["rt_budget"]}  # realtime: 0.2.0 on
    if rt["intent"] is not None or rt["budget"]:
        out["realtime"] = tunables.by_name("realtime").decode(rt)
    return out


def _shown(v: Any) -> str:
    """A value of the record as the file spells it (JSON), not as Python would."""
    import json  # only for a malformed record: the hook's start-up pays nothing

    text = json.dumps(v)
    return text if len(text) <= 40 else text[:40] + "..."


def _int(v: Any) -> int:
    if type(v) is not int:
        raise TypeError(f"{_shown(v)} is not an integer")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{_shown(v)} is not a string")
    return v
