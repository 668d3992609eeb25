"""Real-time vCPUs at SCHED_FIFO as soon as libvirt has put them in their cgroups.

On a throttled node (RT group scheduling, ``kernel.sched_rt_runtime_us`` >= 0) FIFO
needs an RT budget on the vCPU's own ``vcpuN`` cgroup, which libvirt creates with none
while it sets up the vCPUs, so ``<vcpusched>`` cannot be used there. The ``started``
hook delegates the budget and sets FIFO, but only after Python has started and imported
numahook, while the guest already runs (bench/started.py measures how long). numahookd
is up already, so it watches the cpu controller with inotify: a ``vcpuN`` directory
appearing and libvirt's write of the thread id to its ``tasks`` file are events, and the
moment every real-time vCPU of a starting domain sits in its cgroup, it applies what
``prepare`` recorded in the claim (:func:`numahook.ops.lifecycle.tune_early`). The hook
then applies and verifies as before and finds the work done; without numahookd nothing
changes.

While a starting domain's vCPU cgroups are being filled, the thread races the booting
guest and the ``started`` hook for the CPU. It therefore runs SCHED_FIFO (priority
:data:`RACE_PRIORITY`, above the still-SCHED_OTHER vCPUs, not above other domains'
real-time vCPUs) from the moment the first ``vcpuN`` of a starting domain appears until
that domain is done, and never longer than :data:`RACE_WINDOW` seconds. A bug in it must
not starve the host, so the bound does not rest on this code alone: the thread blocks in
poll(2) between events, and the process's RLIMIT_RTTIME (:data:`RTTIME_SOFT_US`, hard
twice that) is CPU time an RT thread may use without blocking, after which the kernel
sends SIGXCPU and then SIGKILL (systemd restarts numahookd). Where the daemon's own
cgroup has no RT budget (RT group scheduling, a ``cpu.rt_runtime_us`` of 0) the kernel
refuses FIFO; the thread then races at SCHED_OTHER and says so once.

It runs in its own thread, blocked in poll(2) on the inotify fd: libvirt does not wait
for it, and the main loop may be busy with the very DEFINED event of the domain being
started (``virt-install`` defines and starts at once). Its state is its own; the claim
is shared through the state lock like any hook call's.

A vCPU hot-plugged into a running domain gets a ``vcpuN`` directory too. Its watch is
kept on the domain's directory after the start, and once libvirt has moved the new
thread in, the thread tells the main loop (a byte on :attr:`VcpuWatch.plugged_fd`), whose
reconcile pass re-applies the domain's real-time tuning and re-splits its budget evenly
(``Reconciler.backstop``). At start the watch scans the tree that is already
there, so domains running before numahookd are covered as well.

The main loop's watchdog timer covers the thread too (:meth:`VcpuWatch.health`): it wakes
at least every :data:`HEARTBEAT` seconds and stamps :attr:`VcpuWatch.beat`, so a thread
that died is restarted, and one that stopped making progress withholds systemd's
watchdog ping, which restarts the daemon.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import select
import threading
import time
from pathlib import Path

from numahook import faults
from numahook.config import Config
from numahook.errors import NumahookError
from numahook.host import fsutil, procfs, rtsched
from numahook.host.inotify import (
    IN_CREATE,
    IN_IGNORED,
    IN_ISDIR,
    IN_MODIFY,
    IN_ONLYDIR,
    IN_Q_OVERFLOW,
    Inotify,
)
from numahook.ops import lifecycle
from numahook.state.statedir import StateDir

log = logging.getLogger(__name__)

_VCPU_DIR = re.compile(r"vcpu([0-9]{1,5})\Z")
#: machine partition -> domain scope -> libvirt/ -> vcpuN, with room for nested partitions
_MAX_DEPTH = 6
#: directories watched at most; a host with more cgroups than this falls back to the hook
_MAX_WATCHES = 4096
#: the thread stamps its heartbeat at least this often (seconds), even when idle
HEARTBEAT = 1.0
#: beyond its lock wait, how long one event may take before the thread counts as hung
HANG_GRACE = 5.0
#: the thread's SCHED_FIFO priority while it races a starting domain's vCPUs
RACE_PRIORITY = 1
#: the longest the thread stays SCHED_FIFO for one race (seconds of wall time)
RACE_WINDOW = 1.0
#: RLIMIT_RTTIME soft limit: CPU microseconds an RT thread may use without blocking
RTTIME_SOFT_US = 200_000


class VcpuWatch:
    def __init__(self, cfg: Config, state: StateDir) -> None:
        self.cfg = cfg
        self.state = state
        self.ino: Inotify | None = None
        self._dirs: dict[int, tuple[Path, int]] = {}  # wd -> (directory, depth)
        self._vcpus: dict[int, Path] = {}  # wd -> a vcpuN directory of a starting domain
        self._done: set[Path] = set()  # domain directories handled (or not ours)
        self._plugged: dict[int, Path] = {}  # wd -> a vcpuN directory hot-plugged later
        self._thread: threading.Thread | None = None
        self._stop_r, self._stop_w = -1, -1
        #: monotonic time of the thread's last sign of progress
        self.beat = time.monotonic()
        #: times a dead thread was started again
        self.restarts = 0
        #: monotonic deadline of the current race at SCHED_FIFO, None while SCHED_OTHER
        self.racing_until: float | None = None
        self._fifo_refused = False
        # a vCPU thread moved into a hot-plugged vcpuN cgroup: one byte on the write end
        self.plugged_fd, self._plugged_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def start(self) -> bool:
        """Begin watching, in a thread of its own until :meth:`close`; False where there is
        nothing to watch (cgroup v2: ``<vcpusched>`` sets FIFO before the vCPUs run)."""
        found = rtsched.cpu_controller(self.cfg.cgroup_root)
        if found is None:
            log.info("no cgroup v1 cpu controller: <vcpusched> sets FIFO before the vCPUs run")
            return False
        cpu = Path(found)
        self.ino = Inotify()
        self._watch_dir(cpu, 0, scan=False)
        for child in sorted(cpu.iterdir()):
            if child.name.startswith("machine") and child.is_dir():
                # running domains too: their vCPUs are checked once (done), and a vCPU
                # hot-plugged there later is seen
                self._watch_dir(child, 1, at_start=True)
        self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
        limit_rttime()
        self.beat = time.monotonic()
        self._thread = threading.Thread(target=self._serve, name="vcpu-watch", daemon=True)
        self._thread.start()
        return True

    def _serve(self) -> None:
        assert self.ino is not None
        poller = select.poll()
        poller.register(self.ino.fd, select.POLLIN)
        poller.register(self._stop_r, select.POLLIN)
        while True:
            self.beat = time.monotonic()
            if faults.hit("vcpuwatch.die"):
                raise faults.Injected("vcpuwatch.die")
            if faults.hit("vcpuwatch.hang"):
                threading.Event().wait()
            wait = HEARTBEAT
            if self.racing_until is not None:
                wait = min(wait, max(0.0, self.racing_until - time.monotonic()))
            ready = {fd for fd, _ in poller.poll(int(wait * 1000))}
            if self._stop_r in ready:
                self._race_end()
                return
            try:
                if ready:
                    self._ready()
            except Exception:  # a bug here must not end the watch, nor the daemon
                log.exception("the vcpu watch failed on an event; it carries on")
            finally:
                if self.racing_until is not None and (
                        not self._vcpus or time.monotonic() >= self.racing_until):
                    self._race_end()

    # -- racing at SCHED_FIFO ---------------------------------------------------------
    def _race_begin(self) -> None:
        """SCHED_FIFO for this thread until the starting domain is done, at most
        :data:`RACE_WINDOW` seconds (the deadline is set once per race, never extended)."""
        if self.racing_until is not None or threading.current_thread() is not self._thread:
            return
        try:
            procfs.set_fifo(threading.get_native_id(), RACE_PRIORITY, reset_on_fork=True)
        except NumahookError as exc:
            if not self._fifo_refused:
                log.warning("the vcpu watch races at SCHED_OTHER: %s", exc)
                self._fifo_refused = True
            return
        self.racing_until = time.monotonic() + RACE_WINDOW

    def _race_end(self) -> None:
        if self.racing_until is None:
            return
        self.racing_until = None
        try:
            procfs.set_other(threading.get_native_id())
        except NumahookError as exc:  # cannot happen to our own thread; the rlimit bounds it
            log.error("the vcpu watch could not leave SCHED_FIFO: %s", exc)

    def health(self, now: float | None = None) -> str | None:
        """None while the thread works: ``"dead"`` when it ended, ``"hung"`` when it has
        shown no progress for longer than one event may take (the state lock's wait, as
        :func:`numahook.ops.lifecycle.tune_early` takes it, and then some)."""
        if self._thread is None:
            return None
        if not self._thread.is_alive():
            return "dead"
        now = time.monotonic() if now is None else now
        if now - self.beat > self.cfg.lock_timeout + HANG_GRACE:
            return "hung"
        return None

    def stalled_for(self) -> float:
        return time.monotonic() - self.beat

    def restart(self) -> bool:
        """Start a thread again in place of a dead one, on a fresh watch of the tree: what
        changed meanwhile was not seen, and domains starting then get FIFO from the hook."""
        self.close()
        self._vcpus.clear()
        self._plugged.clear()
        self._dirs.clear()
        self._done.clear()
        self.restarts += 1
        return self.start()

    def close(self) -> None:
        if self._thread is not None:
            os.write(self._stop_w, b"x")
            # bounded: a hung thread is abandoned (it is a daemon thread)
            self._thread.join(timeout=HEARTBEAT + 1.0)
            for fd in (self._stop_r, self._stop_w):
                os.close(fd)
            self._thread = None
        if self.ino is not None:
            self.ino.close()
            self.ino = None

    # -- watches ----------------------------------------------------------------------
    def _watch_dir(self, path: Path, depth: int, scan: bool = True,
                   at_start: bool = False) -> None:
        """``at_start``: the tree numahookd found, not one a start is creating now."""
        assert self.ino is not None
        if len(self._dirs) + len(self._vcpus) >= _MAX_WATCHES:
            log.warning("watching %d cgroups already; %s is left to the started hook",
                        _MAX_WATCHES, path)
            return
        try:
            wd = self.ino.add(str(path), IN_CREATE | IN_ONLYDIR)
        except OSError as exc:
            log.debug("cannot watch %s: %s", path, exc.strerror)
            return
        self._dirs[wd] = (path, depth)
        if scan:  # what was created before the watch existed
            try:
                names = sorted(os.listdir(path))
            except OSError:
                return
            for name in names:
                if (path / name).is_dir():
                    self._created(path, depth, name, scanned=at_start)

    def _created(self, parent: Path, depth: int, name: str, scanned: bool = False) -> None:
        child = parent / name
        if _VCPU_DIR.match(name):
            if not self._wanted():
                return
            if parent in self._done:
                if not scanned:  # found at start: the domain's check just saw them
                    self._hot_plugged(child)
                return
            try:
                assert self.ino is not None
                wd = self.ino.add(str(child), IN_MODIFY | IN_ONLYDIR)
            except OSError as exc:
                log.debug("cannot watch %s: %s", child, exc.strerror)
                return
            self._vcpus[wd] = child
            log.debug("vcpu watch: %s appeared", child)
            if not scanned:
                self._race_begin()
            self._check(parent)
        elif depth + 1 < _MAX_DEPTH:
            self._watch_dir(child, depth + 1, at_start=scanned)

    def _hot_plugged(self, vcpu_dir: Path) -> None:
        """A vcpuN cgroup of a running domain: wait for libvirt to move its thread in."""
        assert self.ino is not None
        try:
            wd = self.ino.add(str(vcpu_dir), IN_MODIFY | IN_ONLYDIR)
        except OSError as exc:
            log.debug("cannot watch %s: %s", vcpu_dir, exc.strerror)
            return
        self._plugged[wd] = vcpu_dir
        log.debug("vcpu watch: %s hot-plugged", vcpu_dir)
        if _first_task(vcpu_dir) is not None:  # moved before the watch existed
            self._moved(wd)

    def _moved(self, wd: int) -> None:
        vcpu_dir = self._plugged.pop(wd, None)
        if vcpu_dir is None:  # its thread's move was seen already
            return
        if self.ino is not None:
            self.ino.remove(wd)
        log.debug("vcpu watch: a thread moved into the hot-plugged %s", vcpu_dir)
        try:
            os.write(self._plugged_w, b"p")
        except BlockingIOError:
            pass  # bytes are waiting already: the main loop re-checks every domain

    def drain(self) -> None:
        """The main loop read its wake-up: empty the pipe."""
        try:
            while os.read(self.plugged_fd, 512):
                pass
        except BlockingIOError:
            pass

    def _wanted(self) -> bool:
        try:
            return self.cfg.rt_throttled == "delegate" and rtsched.needs_group_budget(
                self.cfg.cgroup_root, self.cfg.proc_root)
        except NumahookError:
            return False

    # -- events -----------------------------------------------------------------------
    def _ready(self) -> None:
        """Events are queued: follow new directories, check domains whose vCPUs moved."""
        if self.ino is None:
            return
        touched: set[Path] = set()
        for wd, mask, name in self.ino.read():
            if mask & IN_Q_OVERFLOW:
                log.warning("cgroup events were lost; real-time of domains starting now is "
                            "left to the started hook")
                continue
            if mask & IN_IGNORED:  # the directory went away
                self._forget(wd)
                continue
            if wd in self._dirs and mask & IN_CREATE and mask & IN_ISDIR:
                parent, depth = self._dirs[wd]
                self._created(parent, depth, name)
            elif wd in self._vcpus and mask & IN_MODIFY and name == "tasks":
                touched.add(self._vcpus[wd].parent)
            elif wd in self._plugged and mask & IN_MODIFY and name == "tasks":
                self._moved(wd)
        for domain_dir in sorted(touched):
            self._check(domain_dir)

    def _forget(self, wd: int) -> None:
        gone = self._dirs.pop(wd, None)
        self._vcpus.pop(wd, None)
        self._plugged.pop(wd, None)
        if gone is not None:
            self._done.discard(gone[0])

    def _check(self, domain_dir: Path) -> None:
        """Apply once every real-time vCPU of the domain is in its cgroup."""
        if domain_dir in self._done:
            return
        tids: dict[int, int] = {}
        for vcpu_dir in self._vcpus.values():
            if vcpu_dir.parent != domain_dir:
                continue
            tid = _first_task(vcpu_dir)
            if tid is not None:
                tids[int(vcpu_dir.name[4:])] = tid
        if not tids:
            return
        log.debug("vcpu watch: %s in the vCPU cgroups of %s", ", ".join(
            f"vCPU {v} thread {t}" for v, t in sorted(tids.items())), domain_dir)
        pid = procfs.thread_group(next(iter(tids.values())), self.cfg.proc_root)
        uuid = procfs.qemu_uuid(pid, self.cfg.proc_root) if pid else None
        finished = True
        if uuid is not None and pid is not None:
            try:
                finished = lifecycle.tune_early(uuid, tids, pid, self.cfg, self.state)
            except NumahookError as exc:
                log.warning("early real-time for domain %s failed (%s); the started hook "
                            "applies it", uuid, exc)
        if finished:
            self._done.add(domain_dir)
            for wd in [w for w, d in self._vcpus.items() if d.parent == domain_dir]:
                del self._vcpus[wd]
                if self.ino is not None:
                    self.ino.remove(wd)


def limit_rttime(soft_us: int = RTTIME_SOFT_US) -> None:
    """RLIMIT_RTTIME for the process: an RT thread that runs ``soft_us`` without blocking
    gets SIGXCPU, at twice that SIGKILL. Never raised above a lower limit already set."""
    soft, hard = resource.getrlimit(resource.RLIMIT_RTTIME)
    want_hard = 2 * soft_us if hard == resource.RLIM_INFINITY else min(hard, 2 * soft_us)
    want_soft = min(soft_us, want_hard) if soft == resource.RLIM_INFINITY \
        else min(soft, soft_us, want_hard)
    resource.setrlimit(resource.RLIMIT_RTTIME, (want_soft, want_hard))


def _first_task(vcpu_dir: Path) -> int | None:
    """The thread libvirt moved into a vcpuN cgroup (v1 ``tasks``), None before it did."""
    try:
        text = fsutil.read_text(vcpu_dir / "tasks", 1 << 16)
    except NumahookError:
        return None
    for line in text.split():
        if line.isdigit() and len(line) <= 10:
            return int(line)
    return None
