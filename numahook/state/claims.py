"""The claim record: what one managed domain holds on this host, and its JSON.

A claim says what a domain holds: dedicated CPUs, hugepages we added and real-time budget
we delegated. :mod:`numahook.state.statedir` stores one per domain; the intent goes into it
*before* sysfs or cgroupfs is touched, the outcome after (write-ahead), and
:mod:`numahook.state.recovery` rolls back from what a killed process left.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping

from numahook.core.rtbudget import BudgetRecord
from numahook.errors import InputError
from numahook.host.hugepages import Pending, PoolKey
from numahook.records import field, record

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from typing import Any

PHASES = ("claimed", "reserved", "running")
VERSION = 1
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
class RealtimeIntent:
    """What ``prepare`` decided about realtime, so numahookd can apply it before ``started``.

    ``vcpus`` are the masked vCPUs online at boot; ``emulator`` says QEMU's main thread is
    real-time too (isolated emulator thread).
    """

    vcpus: tuple[int, ...]
    priority: int
    emulator: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"vcpus": list(self.vcpus), "priority": self.priority, "emulator": self.emulator}

    @classmethod
    def from_json(cls, data: Any) -> RealtimeIntent:
        vcpus = tuple(_int(v) for v in data["vcpus"])
        priority = _int(data["priority"])
        if not vcpus or any(not 0 <= v < 16384 for v in vcpus) or not 1 <= priority <= 99:
            raise ValueError("its realtime vCPUs or priority are out of range")
        if type(data["emulator"]) is not bool:
            raise TypeError("its realtime emulator flag is not true or false")
        return cls(vcpus, priority, data["emulator"])


@record(frozen=True)
class Claim:
    """What one domain holds on this host."""

    uuid: str
    name: str
    cpus: frozenset[int] = frozenset()
    #: (node, size_kib) -> pages we added to that pool
    hugepages: Mapping[PoolKey, int] = field(default_factory=dict)
    #: (node, size_kib) -> pages this domain needs; promised to it between prepare and
    #: started, so concurrent prepares do not count the same free pages twice
    need: Mapping[PoolKey, int] = field(default_factory=dict)
    #: (node, size_kib) -> an nr_hugepages write journalled but not yet confirmed
    hugepages_pending: Mapping[PoolKey, Pending] = field(default_factory=dict)
    #: cpu.rt_runtime_us files we raised, parents first
    rt_budget: tuple[BudgetRecord, ...] = ()
    phase: str = "claimed"
    created: float = field(default_factory=time.time)
    qemu_pid: int | None = None
    #: realtime to apply once the vCPU threads sit in their cgroups (None: no realtime)
    realtime: RealtimeIntent | None = None
    #: the boot the claim was made in: pools, budgets and cgroups do not outlive it
    boot: str = field(default_factory=boot_id)
    #: the QEMU pid for which numahookd applied ``realtime`` and verified it, before the
    #: ``started`` hook ran (ops/lifecycle.py, tune_early); that hook then only verifies
    #: (numahook/hook/fast.py). None: the hook applies it.
    verified_pid: int | None = None

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
            "hugepages": {f"{n}:{s}": v for (n, s), v in sorted(self.hugepages.items())},
            "need": {f"{n}:{s}": v for (n, s), v in sorted(self.need.items())},
            "hugepages_pending": {
                f"{n}:{s}": list(p) for (n, s), p in sorted(self.hugepages_pending.items())
            },
            "rt_budget": [list(r) for r in self.rt_budget],
            "phase": self.phase,
            "created": self.created,
            "qemu_pid": self.qemu_pid,
            "realtime": None if self.realtime is None else self.realtime.to_json(),
            "boot": self.boot,
            "verified_pid": self.verified_pid,
        }

    @classmethod
    def from_json(cls, data: Any) -> Claim:
        """Rebuild a claim, raising InputError for anything not written by to_json."""
        try:
            if data.get("version") != VERSION:
                raise ValueError(f"version {_shown(data.get('version'))} is not {VERSION}")
            pid = data["qemu_pid"]
            verified = data.get("verified_pid")  # absent in records of numahook 0.1.0
            rt = data.get("realtime")  # absent in records of numahook 0.1.0
            return cls(
                uuid=_str(data["uuid"]),
                name=_str(data["name"]),
                cpus=frozenset(_int(c) for c in data["cpus"]),
                hugepages={_pool(k): _int(v) for k, v in data["hugepages"].items()},
                need={_pool(k): _int(v) for k, v in data.get("need", {}).items()},
                hugepages_pending={
                    _pool(k): Pending(_int(b), _int(d))
                    for k, (b, d) in data["hugepages_pending"].items()
                },
                rt_budget=tuple(
                    BudgetRecord(_str(p), _int(a), _int(b), bool(ok))
                    for p, a, b, ok in data["rt_budget"]
                ),
                phase=_str(data["phase"]),
                created=float(data["created"]),
                qemu_pid=None if pid is None else _int(pid),
                realtime=None if rt is None else RealtimeIntent.from_json(rt),
                boot=_str(data.get("boot", "")),
                verified_pid=None if verified is None else _int(verified),
            )
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as exc:
            why = (f"it lacks {exc.args[0]}" if isinstance(exc, KeyError) else
                   "a part of it is not a JSON object" if isinstance(exc, AttributeError) else
                   str(exc))
            raise InputError(f"the claim record is malformed ({why})") from None


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


def _pool(key: str) -> PoolKey:
    node, _, size = key.partition(":")
    if not (node.isdigit() and size.isdigit()):
        raise ValueError(f"{_shown(key)} is not a hugepage pool (NODE:SIZE_KIB)")
    return int(node), int(size)
