"""Our state directory: the global lock and one claim record per managed domain.

A claim says what a domain holds on this host: dedicated CPUs, hugepages we added and
real-time budget we delegated. The rule that makes it crash safe is write-ahead: the
intent goes into the claim *before* sysfs or cgroupfs is touched, the outcome after.
A process killed between the two leaves a record from which the next call or the
daemon rolls back (:func:`rollback`), rounding towards leaking rather than taking
what belongs to the administrator or another domain.

Layout (``/run/numahook`` by default, 0700, files 0600)::

    lock               flock(2) target; held for every read-modify-write
    claims/<uuid>.json one record per domain, replaced atomically
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import stat
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from numahook import faults, records
from numahook import log as logmod
from numahook.core.rtbudget import BudgetRecord
from numahook.errors import InputError, NumahookError, StateError
from numahook.host import fsutil, hugepages, rtsched
from numahook.host.hugepages import Pending, Pool
from numahook.records import field, record

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from typing import Any

log = logmod.get(__name__)

DEFAULT_DIR = "/run/numahook"
PHASES = ("claimed", "reserved", "running")
VERSION = 1
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
#: A claim is a few hundred bytes; anything far larger is not ours.
_MAX_CLAIM = 1 << 20


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


def _uuid(value: str) -> str:
    u = value.strip().lower()
    if not _UUID.match(u):
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
            raise ValueError(f"realtime {data!r}")
        if type(data["emulator"]) is not bool:
            raise TypeError(f"{data['emulator']!r} is not a boolean")
        return cls(vcpus, priority, data["emulator"])


@record(frozen=True)
class Claim:
    """What one domain holds on this host."""

    uuid: str
    name: str
    cpus: frozenset[int] = frozenset()
    #: (node, size_kib) -> pages we added to that pool
    hugepages: Mapping[Pool, int] = field(default_factory=dict)
    #: (node, size_kib) -> pages this domain needs; promised to it between prepare and
    #: started, so concurrent prepares do not count the same free pages twice
    need: Mapping[Pool, int] = field(default_factory=dict)
    #: (node, size_kib) -> an nr_hugepages write journalled but not yet confirmed
    hugepages_pending: Mapping[Pool, Pending] = field(default_factory=dict)
    #: cpu.rt_runtime_us files we raised, parents first
    rt_budget: tuple[BudgetRecord, ...] = ()
    phase: str = "claimed"
    created: float = field(default_factory=time.time)
    qemu_pid: int | None = None
    #: realtime to apply once the vCPU threads sit in their cgroups (None: no realtime)
    realtime: RealtimeIntent | None = None
    #: the boot the claim was made in: pools, budgets and cgroups do not outlive it
    boot: str = field(default_factory=boot_id)

    def from_earlier_boot(self) -> bool:
        """Made before the last reboot ("" is a record of numahook 0.1.0: this boot)."""
        return bool(self.boot) and bool(boot_id()) and self.boot != boot_id()

    def __post_init__(self) -> None:
        object.__setattr__(self, "uuid", _uuid(self.uuid))
        if self.phase not in PHASES:
            raise InputError(f"claim phase {self.phase!r} is not one of {', '.join(PHASES)}")

    def holds_resources(self) -> bool:
        return bool(self.hugepages or self.hugepages_pending or self.rt_budget)

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
        }

    @classmethod
    def from_json(cls, data: Any) -> Claim:
        """Rebuild a claim, raising InputError for anything not written by to_json."""
        try:
            if data.get("version") != VERSION:
                raise ValueError(f"version {data.get('version')!r}")
            pid = data["qemu_pid"]
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
            )
        except (AttributeError, KeyError, TypeError, ValueError, OverflowError) as exc:
            raise InputError(f"the claim record is malformed ({exc!r})") from None


def _int(v: Any) -> int:
    if type(v) is not int:
        raise TypeError(f"{v!r} is not an integer")
    return v


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"{v!r} is not a string")
    return v


def _pool(key: str) -> Pool:
    node, size = key.split(":")
    return int(node), int(size)


class StateDir:
    """The state directory; every read-modify-write happens under :meth:`lock`."""

    def __init__(self, path: str = DEFAULT_DIR) -> None:
        self.path = Path(path)
        self.claims_dir = self.path / "claims"

    def ensure(self) -> None:
        """Create the directories 0700, and refuse one that others could write to."""
        try:
            # check what exists before creating anything inside it: a state dir that is a
            # link must not get a claims/ directory in the link's target
            for d in (self.path, self.claims_dir):
                if os.path.lexists(d) and not stat.S_ISDIR(os.lstat(d).st_mode):
                    raise StateError(f"{d} is not a directory owned by uid {os.geteuid()} "
                                     "(a link or a file); remove it so numahook can recreate "
                                     "it")
            fsutil.make_private_dirs(self.claims_dir)
            for d in (self.path, self.claims_dir):
                st = os.lstat(d)
                if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                    raise StateError(
                        f"{d} is not a directory owned by uid {os.geteuid()}; remove it so "
                        "numahook can recreate it"
                    )
                if st.st_mode & 0o077:
                    os.chmod(d, 0o700)
        except OSError as exc:
            raise StateError(
                f"creating the state directory {self.path} failed: {exc.strerror}; "
                "check that its parent exists and is writable by root"
            ) from None

    @contextmanager
    def lock(self, timeout: float = 30.0) -> Iterator[None]:
        """Hold the global lock, waiting at most ``timeout`` seconds for it.

        libvirt gives hooks no timeout, so a blocking flock could hang a VM start forever;
        instead poll with LOCK_NB and give up with a StateError.
        """
        self.ensure()
        lockfile = self.path / "lock"
        try:
            fd = os.open(lockfile, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(
                f"opening {lockfile} failed: {exc.strerror}; check the state directory"
            ) from None
        try:
            deadline = time.monotonic() + timeout
            pause = 0.005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as exc:
                    if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
                        raise StateError(
                            f"locking {lockfile} failed: {exc.strerror}; check the state "
                            "directory's file system"
                        ) from None
                left = deadline - time.monotonic()
                if left <= 0:
                    raise StateError(
                        f"another numahook call held the state lock for more than {timeout:g} s;"
                        " check for a hung numahook process"
                    )
                time.sleep(min(pause, left))
                pause = min(pause * 2, 0.1)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _file(self, uuid: str) -> Path:
        return fsutil.under(self.claims_dir, f"{_uuid(uuid)}.json")

    def save(self, claim: Claim) -> None:
        text = json.dumps(claim.to_json(), indent=1, sort_keys=True) + "\n"
        # No fsync: a claim journals kernel state (hugepage pools, RT budgets, cgroups)
        # that a power loss resets as well, and the rename alone is atomic for every
        # process. fsync cost 2-5 ms per write where /run is not a tmpfs, on a start's
        # critical path (prepare, and FIFO racing the guest's boot).
        fsutil.atomic_write(self._file(claim.uuid), text, 0o600, durable=False)

    def _read(self, path: Path) -> Claim:
        # a record root did not write (the dir was open once) is never acted on as root
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise InputError(f"claim record {path} cannot be read: {exc.strerror}") from None
        if st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise InputError(f"claim record {path} is not owned by uid {os.geteuid()} or is "
                             "writable by others; numahook did not write it")
        try:
            data = json.loads(fsutil.read_text(path, _MAX_CLAIM))
        except ValueError as exc:
            raise InputError(f"claim record {path} is not JSON ({exc})") from None
        claim = Claim.from_json(data)
        if f"{claim.uuid}.json" != path.name:
            raise InputError(f"claim record {path} holds the claim of {claim.uuid}")
        return claim

    def load(self, uuid: str) -> Claim | None:
        """The domain's claim; None when it has none, or when its record is corrupt
        (logged; :meth:`corrupt_records` lists it for cleaning)."""
        path = self._file(uuid)
        if not path.exists():
            return None
        try:
            return self._read(path)
        except InputError as exc:
            log.warning("ignoring corrupt claim record %s: %s", path, exc)
            return None

    def _scan(self) -> Iterator[tuple[str, Claim | None]]:
        try:
            names = sorted(os.listdir(self.claims_dir))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StateError(
                f"listing {self.claims_dir} failed: {exc.strerror}; check the state directory"
            ) from None
        for name in names:
            if name.startswith(".") or not name.endswith(".json"):
                continue  # atomic_write's temporary files
            stem = name[: -len(".json")]
            if (self.claims_dir / name).is_symlink():
                # we never write links: one here points somewhere we must not trust
                log.warning("ignoring claim record %s: it is a symbolic link", name)
                yield stem, None
                continue
            try:
                yield stem, self._read(self.claims_dir / name)
            except InputError as exc:
                log.warning("ignoring corrupt claim record %s: %s", name, exc)
                yield stem, None

    def remove_temporaries(self) -> list[str]:
        """Remove what a writer killed inside ``atomic_write`` left; the names removed.

        Claims are written only under the lock, so a temporary file seen by a holder of
        the lock has no writer any more. Must run under the state lock.
        """
        try:
            names = sorted(os.listdir(self.claims_dir))
        except OSError:
            return []
        removed = []
        for name in names:
            if not (name.startswith(".") and name.endswith(".tmp")):
                continue
            try:
                os.unlink(self.claims_dir / name)
            except OSError as exc:
                log.warning("cannot remove the stale temporary file %s: %s", name,
                            exc.strerror)
                continue
            removed.append(name)
        if removed:
            log.warning("removed temporary files left by a killed writer: %s",
                        ", ".join(removed))
        return removed

    def list_claims(self) -> list[Claim]:
        """Every readable claim, by UUID; corrupt records are logged and left out."""
        return [c for _, c in self._scan() if c is not None]

    def corrupt_records(self) -> list[str]:
        """File stems of claim records that cannot be read: orphans for the daemon to remove."""
        return [stem for stem, c in self._scan() if c is None]

    def remove(self, uuid: str) -> None:
        """Drop a claim record; also takes the stems :meth:`corrupt_records` returns."""
        if "/" in uuid:
            raise InputError(f"{uuid!r} is not a claim name; pass a domain UUID")
        stem = uuid.lower() if _UUID.match(uuid.lower()) else uuid
        path = fsutil.under(self.claims_dir, f"{stem}.json")
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StateError(
                f"removing {path} failed: {exc.strerror}; check the state directory"
            ) from None

    def held_cpus(self, exclude_uuid: str | None = None) -> frozenset[int]:
        """CPUs claimed by every domain except ``exclude_uuid``."""
        skip = _uuid(exclude_uuid) if exclude_uuid else None
        out: set[int] = set()
        for claim in self.list_claims():
            if claim.uuid != skip:
                out |= claim.cpus
        return frozenset(out)


class ClaimJournal:
    """The latest version of one claim, saved on every change: the write-ahead log.

    Pass :meth:`hugepages` and :meth:`rt_budget` as the ``journal`` callbacks of
    :func:`numahook.host.hugepages.reserve` and :func:`numahook.host.rtsched.apply`.
    """

    def __init__(self, state: StateDir, claim: Claim) -> None:
        self.state = state
        self.claim = claim

    def update(self, **changes: Any) -> Claim:
        claim = records.replace(self.claim, **changes)
        self.state.save(claim)
        self.claim = claim
        return claim

    def hugepages(self, added: dict[Pool, int], pending: dict[Pool, Pending]) -> None:
        self.update(hugepages=added, hugepages_pending=pending)

    def rt_budget(self, records: list[BudgetRecord]) -> None:
        self.update(rt_budget=tuple(records))


def hand_over(journal: ClaimJournal, sysfs_root: str = "/sys") -> None:
    """Pages this claim added that other domains now count on change owner, not pool.

    A stopping domain's pages turn free when its QEMU exits, before libvirt runs the
    release hook; a domain starting in between is admitted on them without adding any.
    Lowering the pool then would take its RAM away. So the pages that claims not yet
    holding their own (their need minus what they added) can use are handed to them,
    and they give them back when they stop: every page we added is still given back
    exactly once. The giver's record shrinks before the taker's grows, so a crash in
    between can strand pages but never make two claims own the same ones.
    Must run under the state lock.
    """
    claim = journal.claim
    if not claim.hugepages:
        return
    others = sorted((c for c in journal.state.list_claims() if c.uuid != claim.uuid),
                    key=lambda c: c.created)
    keep = dict(claim.hugepages)
    transfers: dict[str, dict[Pool, int]] = {}
    for pool, added in sorted(claim.hugepages.items()):
        try:
            free = hugepages.counts(sysfs_root, pool).free
        except NumahookError:
            continue  # the pool is gone; release() says so
        waiting = sum(c.need.get(pool, 0) for c in others if c.phase in ("claimed", "reserved"))
        # what the pool can lose without taking pages anyone counts on
        spare = max(0, free - waiting)
        retained = max(0, added - spare)
        for other in others:
            if retained <= 0:
                break
            wants = other.need.get(pool, 0) - other.hugepages.get(pool, 0)
            if wants <= 0:
                continue
            n = min(wants, retained)
            transfers.setdefault(other.uuid, {})[pool] = n
            keep[pool] -= n
            retained -= n
    if not transfers:
        return
    journal.update(hugepages={p: n for p, n in keep.items() if n})
    for uuid, pools in transfers.items():
        taker = journal.state.load(uuid)
        if taker is None:
            log.error("handing %s pages to a claim that vanished; they stay in the pool",
                      pools)
            continue
        merged = dict(taker.hugepages)
        for pool, n in pools.items():
            merged[pool] = merged.get(pool, 0) + n
        ClaimJournal(journal.state, taker).update(hugepages=merged)
        log.info("handed %s hugepages from %s to %s, which counts on them", pools, claim.name,
                 taker.name)


def recover(state: StateDir, sysfs_root: str = "/sys") -> None:
    """Before a call changes a pool: make every claim say what it still holds.

    Only a holder of the state lock writes ``nr_hugepages``, so a pending record seen
    under the lock was left by a writer that died. Read back now, the pool's growth since
    its write-ahead is that writer's alone; once another start has reserved, settling
    would count that start's pages as the dead one's and give them back. And where /run
    is not a tmpfs, records outlive a reboot but the pools, budgets and cgroups they
    journal do not: such a claim is dropped, giving nothing back. Must run under the
    state lock.
    """
    for claim in state.list_claims():
        if claim.from_earlier_boot():
            log.warning("dropping the claim of %s from an earlier boot; what it held went "
                        "with that boot", claim.name)
            state.remove(claim.uuid)
        elif claim.hugepages_pending:
            settled = hugepages.settle(claim.hugepages, claim.hugepages_pending, sysfs_root)
            log.warning("%s: a hugepage write was interrupted (a crash); it holds %s now",
                        claim.name, settled or "no pages")
            ClaimJournal(state, claim).update(hugepages=settled, hugepages_pending={})


def rollback(journal: ClaimJournal, sysfs_root: str = "/sys") -> bool:
    """Give back the claim's hugepages and RT budget, then drop the claim.

    Used at domain stop and by the daemon for orphans (a domain that is gone, a process
    killed mid-reservation). Real-time threads must already be gone or demoted. Returns
    False, keeping the claim with what is still held, when something could not be given
    back; the error is logged and the next call retries.
    """
    stale = journal.claim.from_earlier_boot()
    ok = True
    try:
        recover(journal.state, sysfs_root)
        journal.claim = journal.state.load(journal.claim.uuid) or journal.claim
    except NumahookError as exc:
        log.error("settling interrupted hugepage writes failed: %s", exc)
    if stale:  # recover() dropped it, unless its record could not be read
        journal.state.remove(journal.claim.uuid)
        return True
    claim = journal.claim
    try:
        if claim.hugepages_pending:  # the record could not be re-read above
            settled = hugepages.settle(claim.hugepages, claim.hugepages_pending, sysfs_root)
            journal.update(hugepages=settled, hugepages_pending={})
        hand_over(journal, sysfs_root)
        hugepages.release(journal.claim.hugepages, sysfs_root, journal.hugepages)
    except NumahookError as exc:
        log.error("giving back the hugepages of %s failed: %s", claim.name, exc)
        ok = False
    faults.point("rollback.hugepages-released")
    try:
        rtsched.undelegate(journal.claim.rt_budget, journal.rt_budget)
    except NumahookError as exc:
        log.error("giving back the real-time budget of %s failed: %s", claim.name, exc)
        ok = False
    if ok:
        journal.state.remove(claim.uuid)
        log.info("released everything %s held", claim.name)
    return ok
