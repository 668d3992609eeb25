"""inotify(7) through libc: the stdlib has no binding, and this is all numahookd needs.

cgroupfs reports a ``mkdir`` (IN_CREATE) and a write to a control file such as ``tasks``
(IN_MODIFY) like any file system, which is how numahookd sees libvirt put a vCPU thread in
its cgroup the moment it happens.
"""

from __future__ import annotations

import ctypes
import os
import struct

IN_MODIFY = 0x00000002
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_ISDIR = 0x40000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of NUL-padded name
#: reads per wake-up; a burst larger than that waits for the next one
_MAX_READS = 64


class Inotify:
    """One non-blocking inotify instance; ``fd`` goes into the daemon's event loop."""

    def __init__(self) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        self._init = libc.inotify_init1
        self._init.argtypes = [ctypes.c_int]
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self._rm = libc.inotify_rm_watch
        self._rm.argtypes = [ctypes.c_int, ctypes.c_int]
        fd = self._init(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd: int = fd

    def add(self, path: str, mask: int) -> int:
        """Watch ``path``; the watch descriptor (the same one again for the same inode)."""
        wd = self._add(self.fd, os.fsencode(path), mask)
        if wd < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err), path)
        return int(wd)

    def remove(self, wd: int) -> None:
        self._rm(self.fd, wd)  # EINVAL when the kernel already dropped it: nothing to do

    def read(self) -> list[tuple[int, int, str]]:
        """Queued events as (watch descriptor, mask, name); empty when none."""
        out: list[tuple[int, int, str]] = []
        for _ in range(_MAX_READS):
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                break
            out.extend(parse(data))
        return out

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def parse(data: bytes) -> list[tuple[int, int, str]]:
    """Split one read(2) of an inotify fd into events; a truncated tail is dropped."""
    out = []
    pos = 0
    while pos + _EVENT.size <= len(data):
        wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
        pos += _EVENT.size
        if pos + length > len(data):
            break
        name = data[pos:pos + length].split(b"\0", 1)[0]
        pos += length
        out.append((wd, mask, os.fsdecode(name)))
    return out
