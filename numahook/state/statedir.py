"""Our state directory: the global lock, one claim file per managed domain, the journal.

A claim says what a domain holds on this host: dedicated CPUs, and what each tunable
changed (numahook/tunables/). The rule that makes it crash safe is write-ahead: the
intent goes into the claim *before* sysfs or cgroupfs is touched, the outcome after.
A process killed between the two leaves a record from which the next call or the
daemon rolls back (:func:`numahook.state.recovery.rollback`), rounding towards
leaking rather than taking what belongs to the administrator or another domain.

Layout (``/run/numahook`` by default, 0700, files 0600)::

    lock               flock(2) target; held for every read-modify-write
    claims/<uuid>.json one record per domain, replaced atomically
    host/<name>.orig   a host-wide tunable's value before numahook first changed it
    numahookd.pid      "PID START BOOT" of the running numahookd, so that the hook, which
                       may ask neither libvirt nor systemd, can say whether it runs
"""

from __future__ import annotations

import fcntl
import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager

from numahook import log as logmod
from numahook import records
from numahook.core.units import is_decimal
from numahook.errors import InputError, StateError
from numahook.host import fsutil, lean, procfs
from numahook.state.claims import UUID_PATTERN, Claim, boot_id, check_uuid
from numahook.tunables.base import Journal, Store

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from typing import Any

log = logmod.get(__name__)

DEFAULT_DIR = "/run/numahook"
#: A claim is a few hundred bytes; anything far larger is not ours.
_MAX_CLAIM = 1 << 20


class StateDir(Store):
    """The state directory; every read-modify-write happens under :meth:`lock`."""

    def __init__(self, path: str = DEFAULT_DIR) -> None:
        self.path = fsutil.clean(path)
        self.claims_dir = os.path.join(self.path, "claims")
        self.daemon_file = os.path.join(self.path, "numahookd.pid")
        self.host_dir = os.path.join(self.path, "host")

    # -- host-wide tunables' saved values (numahook/tunables/hostwide.py) ---------------
    def _host_file(self, tunable: str) -> str:
        return fsutil.under(self.host_dir, f"{tunable}.orig")

    def original(self, tunable: str) -> str | None:
        path = self._host_file(tunable)
        if not fsutil.exists(path):
            return None
        return fsutil.read_text(path, _MAX_CLAIM)

    def save_original(self, tunable: str, value: str) -> None:
        fsutil.make_private_dirs(self.host_dir)
        fsutil.atomic_write(self._host_file(tunable), value, 0o600, durable=False)

    def forget(self, tunable: str) -> None:
        try:
            os.unlink(self._host_file(tunable))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise StateError(f"removing {self._host_file(tunable)} failed: {exc.strerror}; "
                             "check the state directory") from None

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

    def mark_daemon(self) -> None:
        """numahookd runs as this process: a stale definition's refusal then says that
        numahookd will render it, or that it must be started."""
        pid = os.getpid()
        fsutil.atomic_write(self.daemon_file, f"{pid} {procfs.start_time(pid)} {boot_id()}\n",
                            0o600, durable=False)

    def unmark_daemon(self) -> None:
        """At exit; a newer numahookd's file is left alone."""
        if self._daemon() == (str(os.getpid()), str(procfs.start_time(os.getpid())), boot_id()):
            try:
                os.unlink(self.daemon_file)
            except OSError as exc:
                log.warning("cannot remove %s: %s", self.daemon_file, exc.strerror)

    def _daemon(self) -> tuple[str, ...]:
        try:
            return tuple(fsutil.read_text(self.daemon_file, 256).split())
        except InputError:
            return ()

    def daemon_running(self, proc_root: str = "/proc") -> bool:
        """The numahookd that wrote the pid file still runs: same pid, start and boot (a
        killed numahookd leaves the file, and its pid may be reused)."""
        mark = self._daemon()
        return (len(mark) == 3 and is_decimal(mark[0]) and mark[2] == boot_id()
                and str(procfs.start_time(int(mark[0]), proc_root)) == mark[1])

    @contextmanager
    def lock(self, timeout: float = 30.0) -> Iterator[None]:
        """Hold the global lock, waiting at most ``timeout`` seconds for it.

        libvirt gives hooks no timeout, so a blocking flock could hang a VM start forever;
        instead poll with LOCK_NB and give up with a StateError.
        """
        self.ensure()
        lockfile = os.path.join(self.path, "lock")
        try:
            fd = os.open(lockfile, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StateError(
                f"opening {lockfile} failed: {exc.strerror}; check the state directory"
            ) from None
        try:
            try:
                got = lean.flock_within(fd, timeout)
            except OSError as exc:
                raise StateError(
                    f"locking {lockfile} failed: {exc.strerror}; check the state directory's "
                    "file system"
                ) from None
            if not got:
                raise StateError(
                    f"another numahook call held the state lock for more than {timeout:g} s;"
                    " check for a hung numahook process"
                )
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def _file(self, uuid: str) -> str:
        return fsutil.under(self.claims_dir, f"{check_uuid(uuid)}.json")

    def save(self, claim: Claim) -> None:
        text = json.dumps(claim.to_json(), indent=1, sort_keys=True) + "\n"
        # No fsync: a claim journals kernel state (hugepage pools, RT budgets, cgroups)
        # that a power loss resets as well, and the rename alone is atomic for every
        # process. fsync costs milliseconds per write where /run is not a tmpfs, on a
        # start's critical path (prepare, and FIFO racing the guest's boot; bench/README.md).
        fsutil.atomic_write(self._file(claim.uuid), text, 0o600, durable=False)

    def _read(self, path: str) -> Claim:
        # a record root did not write (the dir was open once) is never acted on as root
        try:
            st = os.lstat(path)
        except OSError as exc:
            raise InputError(f"claim record {path} cannot be read: {exc.strerror}") from None
        if not lean.ours(st):
            raise InputError(f"claim record {path} is not a file owned by uid {os.geteuid()} "
                             "or is writable by others; numahook did not write it")
        try:
            data = json.loads(fsutil.read_text(path, _MAX_CLAIM))
        except ValueError as exc:
            raise InputError(f"claim record {path} is not JSON ({exc})") from None
        claim = Claim.from_json(data)
        if f"{claim.uuid}.json" != os.path.basename(path):
            raise InputError(f"claim record {path} holds the claim of {claim.uuid}")
        return claim

    def load(self, uuid: str) -> Claim | None:
        """The domain's claim; None when it has none, or when its record is corrupt
        (logged; :meth:`corrupt_records` lists it for cleaning)."""
        path = self._file(uuid)
        if not fsutil.exists(path):
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
            path = os.path.join(self.claims_dir, name)
            if fsutil.is_link(path):
                # we never write links: one here points somewhere we must not trust
                log.warning("ignoring claim record %s: it is a symbolic link", name)
                yield stem, None
                continue
            try:
                yield stem, self._read(path)
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
                os.unlink(os.path.join(self.claims_dir, name))
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
        stem = uuid.lower() if UUID_PATTERN.match(uuid.lower()) else uuid
        path = fsutil.under(self.claims_dir, f"{stem}.json")
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StateError(
                f"removing {path} failed: {exc.strerror}; check the state directory"
            ) from None

    def held_cpus(self, exclude_uuid: str | None = None) -> frozenset[int]:
        """CPUs claimed by every domain except ``exclude_uuid``."""
        skip = check_uuid(exclude_uuid) if exclude_uuid else None
        out: set[int] = set()
        for claim in self.list_claims():
            if claim.uuid != skip:
                out |= claim.cpus
        return frozenset(out)


class ClaimJournal(Journal):
    """The latest version of one claim, saved on every change: the write-ahead log that
    each tunable writes its entry to (numahook/tunables/base.py). Used under the lock."""

    def __init__(self, state: StateDir, claim: Claim) -> None:
        self.state = state
        self.claim = claim

    @property
    def uuid(self) -> str:
        return self.claim.uuid

    @property
    def name(self) -> str:
        return self.claim.name

    def update(self, **changes: Any) -> Claim:
        claim = records.replace(self.claim, **changes)
        self.state.save(claim)
        self.claim = claim
        return claim

    def entry(self, tunable: str) -> Any:
        return self.claim.entry(tunable)

    def put(self, tunable: str, entry: Any) -> None:
        self.update(tunables={**self.claim.tunables, tunable: entry})

    def others(self) -> list[Claim]:
        return [c for c in self.state.list_claims() if c.uuid != self.claim.uuid]

    def put_other(self, uuid: str, tunable: str, entry: Any) -> bool:
        other = self.state.load(uuid)
        if other is None:
            return False
        ClaimJournal(self.state, other).put(tunable, entry)
        return True
