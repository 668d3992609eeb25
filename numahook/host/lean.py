"""The readers and writers the ``started`` hook's fast path shares with the full path.

The fast path (numahook/hook/fast.py) may load nothing the interpreter has not loaded
already, so these use ``os`` alone (fcntl where a lock is taken). The full path's modules
call the same functions (state/statedir.py's lock, host/fsutil.py's atomic write,
host/procfs.py's kvm-pit search), so the two paths cannot drift apart: one rule for the
state lock's wait, one for a temporary file's name, one for finding a kernel thread.
"""

from __future__ import annotations

import os
import time

#: names tried for a temporary file before giving up (mkstemp's bound is 10000; a clash
#: needs the same pid and 32 random bits, so a few are plenty)
_TEMP_ATTEMPTS = 100


def flock_within(fd: int, timeout: float) -> bool:
    """An exclusive flock on ``fd``, polling with LOCK_NB for at most ``timeout`` seconds:
    libvirt gives hooks no timeout, so a blocking flock could hang a VM start forever.
    False when the time ran out; OSError for anything but EWOULDBLOCK and EINTR."""
    import fcntl

    deadline = time.monotonic() + timeout
    pause = 0.005
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except (BlockingIOError, InterruptedError):  # EWOULDBLOCK/EAGAIN, EINTR
            pass
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.1)


def create_temp(directory: str, name: str) -> tuple[int, str]:
    """Create ``.NAME.PID-RANDOM.tmp`` beside the target, exclusively and 0600: the shape
    state/statedir.py's ``remove_temporaries`` cleans up after a killed writer.
    (tempfile.mkstemp does the same, but importing tempfile costs the hook more than its
    whole prepare.)"""
    for _ in range(_TEMP_ATTEMPTS):
        tmp_name = os.path.join(directory, f".{name}.{os.getpid()}-{os.urandom(4).hex()}.tmp")
        try:
            fd = os.open(tmp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            continue
        return fd, tmp_name
    import errno

    raise FileExistsError(errno.EEXIST, "no free temporary file name", directory)


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def replace(path: str, data: bytes) -> None:
    """``path`` replaced atomically (a temporary beside it, renamed over it), no fsync: what
    state/statedir.py does for a claim; the temporary is removed on any failure."""
    fd, tmp = create_temp(os.path.dirname(path), os.path.basename(path))
    try:
        try:
            write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def ours(st: os.stat_result) -> bool:
    """A regular file this user owns that nobody else may write: the only kind of claim
    record numahook acts on as root (a record someone else wrote could say anything)."""
    return (st.st_mode & 0o170000) == 0o100000 and st.st_uid == os.geteuid() \
        and not st.st_mode & 0o022


def find_comm(proc_root: str, name: str) -> int | None:
    """The first process whose ``comm`` is exactly ``name`` (a kernel thread such as
    ``kvm-pit/<pid>`` is a child of kthreadd, not a thread of QEMU, so every process is
    looked at); None if there is none. OSError when ``proc_root`` cannot be listed."""
    want = name + "\n"
    for entry in os.listdir(proc_root):
        if not entry.isdigit():
            continue
        try:
            with open(f"{proc_root}/{entry}/comm", encoding="utf-8") as fh:
                if fh.read(64) == want:
                    return int(entry)
        except (OSError, ValueError):
            continue  # exited meanwhile
    return None
