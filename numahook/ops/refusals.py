"""Refusals counted by check name, across processes, for ``numahook_refusals_total``.

Most refusals happen in the hook: a new process for every call, which must not talk to
numahookd (it may not run, and a socket would be a wait libvirt gives no bound to) and
must stay cheap. So a refusal adds one to a small file of its own under the state
directory, and numahookd reads the files when it publishes::

    <state_dir>/refusals/<stage>.<check>     "7\\n"

``stage`` is the hook call that refused (``prepare``, ``started``, ``migrate``,
``restore``), or ``render`` for a definition numahookd could not render. The state
directory is a tmpfs, so the counts start again at boot, as Prometheus counters may.

- **Crash safe.** A count is replaced atomically (a temporary file renamed over it), so a
  writer killed half-way loses its one increment, never the count; its temporary file
  is removed by the next writer.
- **Bounded.** One small file per stage and check name: check names come from the code
  (:class:`numahook.errors.Refusal`), a name that is not one becomes ``other``, and past
  :data:`MAX_FILES` new names count as ``other`` too. numahookd reads at most that many.
- **Cheap, and never in the way.** Writers take a lock of their own (flock on the
  directory), not the state lock, which a start reserving hugepages may hold for
  seconds: a refusal is reported at once. The lock is held for one read and one rename,
  and waited for at most :data:`LOCK_TIMEOUT`; a count that cannot be written is logged
  and dropped, never a reason to fail. Nothing here imports more than the hook's path
  already has.
"""

from __future__ import annotations

import errno
import fcntl
import os
import time

from numahook import log as logmod
from numahook.core.units import is_decimal
from numahook.errors import ConfigError, HostError, InputError, Refusal, StateError
from numahook.host import fsutil

log = logmod.get(__name__)

SUBDIR = "refusals"
#: the hook calls whose failure refuses (aborts) the start, migration or restore
HOOK_STAGES = ("prepare", "started", "migrate", "restore")
#: numahookd could not render a definition, so its start would be refused
RENDER = "render"
STAGES = (*HOOK_STAGES, RENDER)
#: the check name of a name that is not one, and of any name past MAX_FILES
OTHER = "other"
#: at most this many counter files: stages x the check names the code has, with room
MAX_FILES = 256
#: the longest check name kept as it is
MAX_CHECK = 64
#: how long a writer waits for another one (which holds the lock for microseconds)
LOCK_TIMEOUT = 1.0
#: the errors that say whose fault a start's failure is, when it is not a Refusal
_ERRORS = ((ConfigError, "config-error"), (InputError, "input-error"),
           (StateError, "state-error"), (HostError, "host-error"))
_CHECK_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")


def directory(state_dir: str) -> str:
    return os.path.join(state_dir, SUBDIR)


def check_of(exc: BaseException) -> str:
    """The check name a failure is counted under: a Refusal's own, else its kind."""
    if isinstance(exc, Refusal):
        return valid_check(exc.check)
    return next((name for kind, name in _ERRORS if isinstance(exc, kind)), "error")


def valid_check(name: str | None) -> str:
    """``name`` if it is a check name (lower case, digits, ``-``), else ``other``: a file
    name and a label value, so nothing from outside the code may become one."""
    if name and len(name) <= MAX_CHECK and name[0] != "-" and _CHECK_CHARS.issuperset(name):
        return name
    return OTHER


def count_error(state_dir: str, op: str, exc: BaseException) -> bool:
    """The hook's call on its refusal path: count ``exc`` under the call ``op``.

    Calls that cannot refuse (stopped, release, reconnect) are not counted. Never raises.
    """
    if op not in HOOK_STAGES:
        return False
    return count(state_dir, op, check_of(exc))


def count(state_dir: str, stage: str, check: str | None,
          timeout: float = LOCK_TIMEOUT) -> bool:
    """Add one refusal; False (logged) when it could not be counted. Never raises: a
    count is not worth failing or delaying anything for."""
    if stage not in STAGES:
        log.warning("refusal stage %r is not one of %s; not counted", stage, ", ".join(STAGES))
        return False
    check = valid_check(check)
    where = directory(state_dir)
    try:
        fsutil.make_private_dirs(where)
        fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        log.warning("cannot count a %s refusal (%s) in %s: %s", stage, check, where,
                    exc.strerror or exc)
        return False
    try:
        if not _lock(fd, timeout):
            log.warning("cannot count a %s refusal (%s): another writer held %s for more "
                        "than %g s", stage, check, where, timeout)
            return False
        names = _clean(where)
        path = os.path.join(where, f"{stage}.{check}")
        if f"{stage}.{check}" not in names and len(names) >= MAX_FILES:
            path = os.path.join(where, f"{stage}.{OTHER}")
        fsutil.atomic_write(path, f"{_read(path) + 1}\n", 0o600, durable=False)
        return True
    except (OSError, StateError) as exc:
        log.warning("cannot count a %s refusal (%s): %s", stage, check, exc)
        return False
    finally:
        os.close(fd)  # and with it the lock


def _lock(fd: int, timeout: float) -> bool:
    """flock with a bound: libvirt gives the hook none, and numahookd's loop must not wait."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EINTR):
                raise
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(0.005, left))


def _clean(where: str) -> set[str]:
    """The counter files; removes what a writer killed inside atomic_write left (every
    writer holds the lock, so a temporary file seen under it has no writer any more)."""
    names = set()
    for name in os.listdir(where):
        if name.startswith(".") and name.endswith(".tmp"):
            try:
                os.unlink(os.path.join(where, name))
            except OSError:
                pass
        elif not name.startswith("."):
            names.add(name)
    return names


def _read(path: str) -> int:
    """A count; 0 for a missing file, and for one that is not a count (a fresh start,
    which a Prometheus counter may take, rather than a refusal left uncounted)."""
    try:
        text = fsutil.read_text(path, 32).strip()
    except InputError:
        return 0
    return int(text) if is_decimal(text) and len(text) < 20 else 0


def counts(state_dir: str) -> dict[tuple[str, str], int]:
    """(stage, check) -> refusals so far, for numahookd's metrics; no lock needed, since
    every file is replaced whole. Names that are not ours are ignored."""
    where = directory(state_dir)
    try:
        names = sorted(os.listdir(where))[:MAX_FILES * 2]
    except OSError:
        return {}
    out: dict[tuple[str, str], int] = {}
    for name in names:
        stage, _, check = name.partition(".")
        if stage not in STAGES or valid_check(check) != check:
            continue
        path = os.path.join(where, name)
        if fsutil.is_link(path):
            continue
        n = _read(path)
        if n:
            out[(stage, check)] = n
        if len(out) >= MAX_FILES:
            break
    return out
