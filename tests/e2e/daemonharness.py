"""numahookd as systemd runs it, for the e2e tests: a NOTIFY_SOCKET the test owns, a
watchdog, a test config (1 s reconcile, 2 s probe) and a log file."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from tests.e2e.helpers import hook_config, wait_until

REPO = Path(__file__).resolve().parents[2]


class Notifications:
    """A NOTIFY_SOCKET the test owns: every datagram numahookd sends, in order.

    A reader thread drains it all the time, as PID 1 does: a unix datagram socket queues
    only net.unix.max_dgram_qlen messages, and a harness that read only inside
    ``wait_for`` once let that queue fill (which then blocked the old sd_notify and the
    daemon's whole loop). ``read=False`` leaves it unread on purpose.
    """

    def __init__(self, path: Path, read: bool = True) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.messages: list[str] = []
        self._cond = threading.Condition()
        self._closed = False
        self._reader: threading.Thread | None = None
        if read:
            self.sock.settimeout(0.2)  # the reader's check for close()
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()

    def _read(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(4096)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._cond:
                self.messages.append(data.decode())
                self._cond.notify_all()

    def wait_for(self, needle: str, timeout: float = 30.0, after: int = 0) -> int:
        """Index of the first message from ``after`` on that contains ``needle``."""
        assert self._reader is not None, "this socket is left unread on purpose"
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i in range(after, len(self.messages)):
                    if needle in self.messages[i]:
                        return i
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {needle!r} from numahookd in {timeout:.0f} s; "
                                         f"got {self.messages[after:]}")
                self._cond.wait(left)

    def count(self, needle: str, after: int = 0) -> int:
        with self._cond:
            return sum(needle in m for m in self.messages[after:])

    def close(self) -> None:
        self._closed = True
        if self._reader is not None:
            self._reader.join(timeout=5)
        self.sock.close()


class Daemon:
    def __init__(self, tmp: Path, throttled: str = "delegate", extra_conf: str = "",
                 read_notify: bool = True, fault: str = "", reconcile: float = 1) -> None:
        self.tmp = tmp
        self.nfd = tmp / "nfd"
        self.prom = tmp / "prom"
        self.nfd.mkdir(exist_ok=True)
        self.prom.mkdir(exist_ok=True)
        self.conf = tmp / "numahook.conf"
        self.conf.write_text(
            f"[realtime]\nthrottled = {throttled}\n[daemon]\nreconcile_interval = {reconcile:g}\n"
            f"probe_interval = 2\nnfd_dir = {self.nfd}\ntextfile_dir = {self.prom}\n"
            + extra_conf)
        self.log = tmp / "numahookd.log"
        self.notify = Notifications(tmp / "notify.sock", read=read_notify)
        self.fault = fault
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self, journal: bool = False) -> None:
        """``journal``: stderr is the log, and JOURNAL_STREAM names it, as under systemd."""
        environ = {k: v for k, v in os.environ.items()
                   if not k.startswith(("NOTIFY", "JOURNAL_STREAM", "NUMAHOOK_FAULT"))}
        environ.update(NOTIFY_SOCKET=str(self.notify.path), WATCHDOG_USEC="1000000",
                       PYTHONPATH=str(REPO))
        if self.fault:
            environ["NUMAHOOK_FAULT"] = self.fault
        argv = [sys.executable, "-m", "numahook.daemon.main", "--config", str(self.conf), "-v"]
        with open(self.log, "ab") as out:
            if journal:
                st = os.fstat(out.fileno())
                environ["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
            else:
                argv += ["--log-file", str(self.log)]
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=out, env=environ)
        self.started_at = time.monotonic()
        self.mark = len(self.notify.messages)
        if self.notify._reader is not None:
            self.notify.wait_for("READY=1", after=self.mark)
        else:
            wait_until(lambda: " ready" in self.logtext(), timeout=30,
                       what="numahookd to log that it is ready")

    def signal(self, signum: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(signum)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.terminate()
        try:
            return self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(timeout=10)

    def logtext(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextlib.contextmanager
def running(tmp: Path, hook_conf: str = "") -> Iterator[Daemon]:
    """A started numahookd, the hook under ``hook_conf``; its log's tail on stderr after."""
    with hook_config(hook_conf):
        d = Daemon(tmp)
        d.start()
        try:
            yield d
        finally:
            d.stop()
            d.notify.close()
            print(d.logtext()[-3000:], file=sys.stderr)
