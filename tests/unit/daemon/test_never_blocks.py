"""numahookd's loop never waits without a bound: sd_notify, logging, the vCPU watch's health.

Real sockets, pipes and threads; the faults are numahook.faults switches, armed in-process.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from numahook import faults
from numahook.config import Config
from numahook.daemon import notify
from numahook.daemon.notify import Notifier
from numahook.daemon.vcpuwatch import HANG_GRACE, HEARTBEAT, VcpuWatch
from numahook.state.statedir import StateDir


def _qlen() -> int:
    return int(Path("/proc/sys/net/unix/max_dgram_qlen").read_text())


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.settimeout(5)
    yield sock
    sock.close()


def test_messages_reach_a_path_socket(receiver: socket.socket) -> None:
    n = Notifier({"NOTIFY_SOCKET": receiver.getsockname()})
    n.ready("up")
    n.watchdog()
    assert receiver.recv(4096) == b"READY=1\nSTATUS=up"
    assert receiver.recv(4096) == b"WATCHDOG=1"
    assert (n.sent, n.dropped) == (2, 0)


def test_an_abstract_socket_name_is_supported() -> None:
    name = f"numahook-test-{os.getpid()}-{os.urandom(4).hex()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(b"\0" + name.encode())
        sock.settimeout(5)
        n = Notifier({"NOTIFY_SOCKET": "@" + name})
        n.stopping()
        assert sock.recv(4096) == b"STOPPING=1"


def test_a_full_queue_drops_counts_and_never_blocks(receiver: socket.socket,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """The cause of the red e2e runs: sdnotify's sendall blocked here once the receiver's
    queue (net.unix.max_dgram_qlen) was full, and the daemon's loop with it."""
    n = Notifier({"NOTIFY_SOCKET": receiver.getsockname()})
    total = _qlen() + 40
    caplog.set_level(logging.WARNING, logger=notify.__name__)
    sender = threading.Thread(target=lambda: [n.watchdog() for _ in range(total)])
    sender.start()
    sender.join(timeout=30)
    assert not sender.is_alive(), "sending to a full NOTIFY_SOCKET blocked"
    assert n.sent + n.dropped == total
    assert n.dropped >= total - _qlen() - 1 > 0
    dropped_lines = [r for r in caplog.records if "sd_notify: dropped" in r.getMessage()]
    assert len(dropped_lines) == 1, "a drop is logged at most once a minute"
    assert "queue is full" in dropped_lines[0].getMessage()


def test_a_vanished_receiver_is_a_drop_not_an_error(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert n.send("WATCHDOG=1") is False
    assert n.dropped == 1


def test_each_message_opens_its_socket_so_a_new_receiver_is_followed(tmp_path: Path) -> None:
    """A re-executed PID 1 binds the path again; a cached socket would keep the old one."""
    path = tmp_path / "notify.sock"
    n = Notifier({"NOTIFY_SOCKET": str(path)})
    for round_ in range(2):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.bind(str(path))
            sock.settimeout(5)
            n.status(f"round {round_}")
            assert sock.recv(4096) == f"STATUS=round {round_}".encode()
        path.unlink()


@pytest.mark.parametrize("value", ["", "relative/path", "@"])
def test_no_or_unusable_socket_means_disabled(value: str) -> None:
    n = Notifier({"NOTIFY_SOCKET": value} if value else {})
    assert not n.enabled
    assert n.send("READY=1") is False and n.dropped == 0


@pytest.mark.parametrize(("usec", "pid", "want"), [
    ("1000000", "", 0.5), ("1000000", "self", 0.5), ("1000000", "1", None),
    ("0", "", None), ("", "", None), ("1e6", "", None), ("²", "", None),
])
def test_watchdog_interval_is_half_of_watchdog_usec(usec: str, pid: str,
                                                    want: float | None) -> None:
    env = {"WATCHDOG_USEC": usec, "WATCHDOG_PID": str(os.getpid()) if pid == "self" else pid}
    assert Notifier(env).watchdog_interval() == want


# --------------------------------------------------------------------------- logging

main = pytest.importorskip("numahook.daemon.main", reason="numahookd needs libvirt-python")


def test_stderr_is_the_journal_only_when_journal_stream_names_it() -> None:
    r, w = os.pipe()
    try:
        st = os.fstat(w)
        assert main.stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, w)
        assert not main.stderr_is_journal({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, w)
        assert not main.stderr_is_journal({"JOURNAL_STREAM": "garbage"}, w)
        assert not main.stderr_is_journal({}, w)
    finally:
        os.close(r)
        os.close(w)


def test_journal_lines_carry_their_sd_daemon_priority() -> None:
    fmt = main.JournalFormatter("%(levelname)s %(name)s: %(message)s")

    def line(level: int, msg: str) -> str:
        return fmt.format(logging.LogRecord("numahookd", level, __file__, 1, msg, None, None))

    assert line(logging.ERROR, "boom") == "<3>ERROR numahookd: boom"
    assert line(logging.WARNING, "hm").startswith("<4>")
    assert line(logging.INFO, "ok").startswith("<6>")
    assert line(logging.DEBUG, "x").startswith("<7>")
    assert line(logging.CRITICAL, "x").startswith("<2>")
    assert line(logging.ERROR, "two\nlines") == "<3>ERROR numahookd: two\n<3>lines"


def test_a_full_log_queue_drops_and_counts_instead_of_waiting() -> None:
    handler = main.DroppingQueueHandler(queue.Queue(2))
    logger = logging.getLogger("numahook-test-queue")
    logger.propagate = False
    logger.addHandler(handler)
    try:
        for i in range(5):
            logger.warning("line %d", i)
    finally:
        logger.removeHandler(handler)
    assert handler.dropped == 3 and handler.queue.qsize() == 2


# --------------------------------------------------------------------------- vCPU watch


@pytest.fixture
def v1_tree(tmp_path: Path) -> Config:
    """The least a cgroup v1 cpu controller has for the watch to start on it."""
    cpu = tmp_path / "cgroup" / "cpu"
    (cpu / "machine").mkdir(parents=True)
    (cpu / "cpu.shares").write_text("1024\n")
    return Config(cgroup_root=str(tmp_path / "cgroup"), state_dir=str(tmp_path / "state"),
                  lock_timeout=1.0)


@pytest.fixture
def armed(monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, int]]:
    switches: dict[str, int] = {}
    monkeypatch.setattr(faults, "_ARMED", switches)
    monkeypatch.setattr(faults, "_HITS", {})
    yield switches


def _watch(cfg: Config) -> VcpuWatch:
    return VcpuWatch(cfg, StateDir(cfg.state_dir))


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_watch_thread_is_seen_and_restarted(v1_tree: Config,
                                                   armed: dict[str, int]) -> None:
    armed["vcpuwatch.die"] = 1
    w = _watch(v1_tree)
    assert w.start()
    try:
        w._thread.join(timeout=10)
        assert w.health() == "dead"
        assert w.restart()
        assert w.health() is None and w.restarts == 1
        assert w._thread.is_alive()
    finally:
        w.close()


def test_a_hung_watch_thread_is_seen_once_it_outlasts_an_event(v1_tree: Config,
                                                               armed: dict[str, int]) -> None:
    armed["vcpuwatch.hang"] = 1
    w = _watch(v1_tree)
    assert w.start()
    try:
        beat = w.beat
        limit = v1_tree.lock_timeout + HANG_GRACE
        assert w.health(now=beat + limit - 0.1) is None
        assert w.health(now=beat + limit + 0.1) == "hung"
    finally:
        w.close()
    assert HEARTBEAT < limit


def test_an_idle_watch_thread_keeps_beating(v1_tree: Config, armed: dict[str, int]) -> None:
    """Idle is not hung: poll(2) wakes every HEARTBEAT and stamps the beat."""
    w = _watch(v1_tree)
    assert w.start()
    try:
        first = w.beat
        deadline = time.monotonic() + 30
        while w.beat == first and time.monotonic() < deadline:
            time.sleep(0.05)
        assert w.beat > first and w.health() is None
    finally:
        w.close()
