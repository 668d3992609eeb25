"""Small, careful file primitives shared by every adapter (sysfs, cgroupfs, procfs, state).

Everything numahook touches on the host goes through here so that reads are bounded,
our own files are replaced atomically, kernel knob writes fail with one actionable
sentence, and paths built from outside input cannot leave their root.

Paths are plain strings: importing pathlib (it loads urllib.parse, ipaddress, fnmatch
and ntpath) cost every managed hook call more than most of its own modules (bench/hook.py).
:func:`clean` spells a path as pathlib does, and :func:`exists`, :func:`is_dir`,
:func:`is_file` and :func:`is_link` answer and raise as pathlib's methods do, so
messages, records and errors read as they did.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Mapping

from numahook import log as logmod
from numahook.core.units import clip
from numahook.errors import HostError, InputError, StateError
from numahook.host import lean

log = logmod.get(__name__)

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from typing import Union

    PathLike = Union[str, "os.PathLike[str]"]

#: What to do when the kernel refuses a knob write, by errno (callers may pass their own).
_KNOB_HINTS = {
    errno.EPERM: "run numahook as root",
    errno.EACCES: "run numahook as root",
    errno.EROFS: "the file system is read-only; remount it read-write",
    errno.EINVAL: "the kernel rejected the value; check it against the kernel's limits",
    errno.EBUSY: "the resource is in use; stop what uses it and retry",
    errno.ENOSPC: "the kernel has no room for it; free the resource and retry",
    errno.ENOMEM: "the kernel is out of memory for it; free memory and retry",
    errno.ENOENT: "the kernel does not offer this file; check the kernel configuration",
    errno.ESRCH: "the process is gone; retry once it runs",
}


#: The errors for which pathlib's exists()/is_dir()/is_file()/is_symlink() answer False
#: rather than raise: the path is not there. EACCES and the rest still raise.
_ABSENT = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


def clean(path: PathLike) -> str:
    """``path`` as ``str(pathlib.Path(path))`` spells it.

    Empty and ``.`` components and a trailing slash go, ``..`` stays (it is not resolved);
    an empty path is ``.``. A root of exactly two slashes is kept, as POSIX lets it mean
    something else. Paths compared, used as keys or walked up with :func:`parent` must be
    clean, so that one directory has one spelling.
    """
    text = os.fspath(path)
    names = "/".join(n for n in text.split("/") if n and n != ".")
    if not text.startswith("/"):
        return names or "."
    return ("//" if text[:2] == "//" and text[2:3] != "/" else "/") + names


def parent(path: str) -> str:
    """The directory holding a :func:`clean` path (``pathlib.PurePath.parent``): a root is
    its own parent, and a relative name's is ``.``."""
    return os.path.dirname(path) or "."


def _mode(path: PathLike, follow: bool = True) -> int | None:
    try:
        return (os.stat(path) if follow else os.lstat(path)).st_mode
    except OSError as exc:
        if exc.errno not in _ABSENT:
            raise
        return None
    except ValueError:  # an embedded NUL byte
        return None


def exists(path: PathLike) -> bool:
    """``Path.exists``: follows links; raises what stat(2) says other than "not there"."""
    return _mode(path) is not None


def is_dir(path: PathLike) -> bool:
    """``Path.is_dir``, with the errors of :func:`exists`."""
    mode = _mode(path)
    return mode is not None and stat.S_ISDIR(mode)


def is_file(path: PathLike) -> bool:
    """``Path.is_file``, with the errors of :func:`exists`."""
    mode = _mode(path)
    return mode is not None and stat.S_ISREG(mode)


def is_link(path: PathLike) -> bool:
    """``Path.is_symlink``, with the errors of :func:`exists`."""
    mode = _mode(path, follow=False)
    return mode is not None and stat.S_ISLNK(mode)


class KnobWriteError(HostError):
    """A sysfs/cgroup/procfs write failed; ``errno`` and ``path`` let callers tolerate some."""

    def __init__(self, message: str, path: str, err: int) -> None:
        super().__init__(message)
        self.path = path
        self.errno = err


def read_text(path: PathLike, limit: int = 1 << 20) -> str:
    """Read a whole file, refusing more than ``limit`` bytes (sysfs files are tiny).

    Bytes that are not UTF-8 survive as surrogate escapes, so XML can be re-encoded losslessly.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InputError(
            f"reading {os.fspath(path)} failed: {exc.strerror or exc}; "
            "check that it exists and is readable by root"
        ) from None
    if len(data) > limit:
        raise InputError(
            f"{os.fspath(path)} is larger than {limit} bytes, which is not a file numahook "
            "expects there; check what wrote it"
        )
    return data.decode("utf-8", "surrogateescape")


def read_int(path: PathLike) -> int:
    """Read a file holding one integer (a kernel knob)."""
    text = read_text(path, limit=4096).strip()
    try:
        return int(text)
    except ValueError:
        raise InputError(
            f"{os.fspath(path)} holds {clip(text)}, not an integer; check the kernel interface"
        ) from None


def make_private_dirs(path: PathLike) -> None:
    """Create ``path`` and any missing parents with mode 0700 (os.makedirs only does the leaf)."""
    missing: list[str] = []
    p = clean(path)
    while not is_dir(p):
        missing.append(p)
        if parent(p) == p:
            break
        p = parent(p)
    for d in reversed(missing):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            if not is_dir(d):
                raise


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: What to do when writing one of our files fails, by errno; ``{}`` is the directory.
#: "Free space" is only advice for a full disk: on a read-only mount it sends the
#: operator looking for the wrong thing.
_WRITE_HINTS = {
    errno.ENOSPC: "free space in {}",
    errno.EDQUOT: "free space in {} (the quota is exhausted)",
    errno.EACCES: "fix the permissions of {}",
    errno.EPERM: "fix the permissions of {}",
    errno.EROFS: "{} is on a read-only file system; remount it read-write",
}


def atomic_write(path: PathLike, data: str | bytes, mode: int = 0o600,
                 durable: bool = True, hint: Mapping[int, str] | None = None) -> None:
    """Replace ``path`` so readers see the old or the new content, never a torn file.

    A temporary file in the same directory is written and renamed over the target; with
    ``durable`` it is fsynced first and the directory after, so the rename survives a
    power loss. Missing parents are created 0700. On failure nothing but the old file
    remains. ``hint`` replaces the advice for the errnos it maps: the caller may know
    better why a write fails there (numahookd's sandbox).
    """
    target = clean(path)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    where = parent(target)
    tmp_name: str | None = None
    try:
        make_private_dirs(where)
        fd, tmp_name = lean.create_temp(where, os.path.basename(target))
        try:
            os.fchmod(fd, mode)
            lean.write_all(fd, raw)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp_name, target)
        tmp_name = None
        if durable:
            _fsync_dir(where)
    except OSError as exc:
        advice = (hint or {}).get(exc.errno or 0) or _WRITE_HINTS.get(
            exc.errno or 0, "free space in {} or fix its permissions").format(where)
        raise StateError(f"writing {target} failed: {exc.strerror or exc}; {advice}") from None
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError as exc:
                log.warning("could not remove temporary file %s: %s", tmp_name, exc)


def write_knob(path: PathLike, value: str, hint: str | Mapping[int, str] | None = None) -> None:
    """Write one value to a kernel knob in a single write(2), or raise KnobWriteError.

    The kernel applies a knob write as a whole or not at all, so a failed write leaves no
    partial state. ``hint`` replaces the generic advice: for every errno (a string) or for
    the errnos it maps.
    """
    where = os.fspath(path)
    raw = value.encode("ascii")
    try:
        # O_TRUNC is ignored by sysfs/cgroupfs/procfs and keeps plain-file fixtures honest.
        fd = os.open(where, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            written = os.write(fd, raw)
        finally:
            os.close(fd)
    except OSError as exc:
        hints = {**_KNOB_HINTS, **hint} if isinstance(hint, Mapping) else _KNOB_HINTS
        advice = hint if isinstance(hint, str) else None
        advice = advice or hints.get(exc.errno or 0, "check the kernel log (dmesg)")
        raise KnobWriteError(
            f"writing {value.strip()} to {where} failed: {exc.strerror or exc}; {advice}",
            where,
            exc.errno or 0,
        ) from None
    if written != len(raw):
        raise KnobWriteError(
            f"writing {value.strip()} to {where} failed: only {written} of {len(raw)} bytes "
            "were taken; check the kernel log (dmesg)",
            where,
            errno.EIO,
        )


def under(root: PathLike, *parts: str) -> str:
    """Join ``parts`` below ``root``, refusing anything that could leave it.

    Parts come from outside (cgroup paths from /proc, domain names, UUIDs), so ``..``,
    absolute parts, NUL bytes and symlinks resolving outside ``root`` are refused.
    A part may hold several components (``devices/system/node``). The result is
    :func:`clean`.
    """
    base = clean(root)
    names: list[str] = []
    for part in parts:
        if not isinstance(part, str) or not part or "\0" in part or part.startswith("/"):
            raise InputError(f"path part {part!r} is not a relative name; use a plain name")
        components = part.split("/")
        if any(c == ".." for c in components):
            raise InputError(f"path part {part!r} climbs out with '..'; use a plain name")
        names.extend(c for c in components if c and c != ".")
    path = os.path.join(base, *names) if names else base
    real_root = os.path.realpath(base)
    real = os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip("/") + "/"):
        raise InputError(f"{path} resolves to {real}, outside {real_root}; remove the symlink")
    return path
