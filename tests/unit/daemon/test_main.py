"""numahookd's Daemon on a fixture host: what `systemctl status` shows while it counts, and its
start on a bad numahook.conf (EX_CONFIG, at err priority in the journal)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from numahook.config import Config
from tests.fixtures.hosts import host_roots
from tests.fixtures.status import MANAGED_STATUS

REPO = Path(__file__).resolve().parents[3]
libvirt = pytest.importorskip("libvirt")
daemon_main = pytest.importorskip("numahook.daemon.main")


@pytest.fixture
def receiver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(tmp_path / "notify.sock"))
    sock.setblocking(False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify.sock"))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    yield sock
    sock.close()


def _sent(sock: socket.socket) -> list[str]:
    out = []
    while True:
        try:
            out.append(sock.recv(4096).decode())
        except BlockingIOError:
            return out


def _statuses(messages: list[str]) -> list[str]:
    return [line.split("=", 1)[1] for m in messages for line in m.split("\n")
            if line.startswith("STATUS=")]


@pytest.fixture
def daemon(tmp_path: Path, receiver: socket.socket) -> Iterator[daemon_main.Daemon]:
    """A Daemon (not run) on a one-node host where one managed domain runs."""
    roots = host_roots(tmp_path / "host", "single")
    run = tmp_path / "libvirt-run"
    run.mkdir()
    (run / "other.xml").write_text(MANAGED_STATUS)
    paths = {"sysfs_root": str(roots["sysfs"]), "cgroup_root": str(roots["cgroup"]),
             "proc_root": str(roots["proc"]), "libvirt_run": str(run),
             "state_dir": str(tmp_path / "state")}
    conf = tmp_path / "numahook.conf"
    conf.write_text("[paths]\n" + "".join(f"{k} = {v}\n" for k, v in paths.items())
                    + f"[daemon]\nnfd_dir = {tmp_path}/no-nfd\n"
                    f"textfile_dir = {tmp_path}/no-textfile\nlibvirt_uri = test:///default\n")
    cfg = Config(**paths, nfd_dir=str(tmp_path / "no-nfd"),
                 textfile_dir=str(tmp_path / "no-textfile"), libvirt_uri="test:///default")
    d = daemon_main.Daemon(cfg, str(conf))
    d.state.ensure()
    yield d
    d.publisher.close()
    d.conn.close()
    d.loop.close()


def test_before_libvirt_listed_the_definitions_it_says_it_is_counting(
        daemon: daemon_main.Daemon, receiver: socket.socket) -> None:
    """At start READY used to claim "0 managed domains, 0 running" with one running."""
    daemon.probe_and_publish()
    daemon.ready()
    statuses = _statuses(_sent(receiver))
    assert statuses, "nothing was sent"
    for status in statuses:
        assert "; 1 running, still counting the managed domains;" in status, status


def test_reload_keeps_the_last_known_numbers(daemon: daemon_main.Daemon,
                                             receiver: socket.socket) -> None:
    """Every STATUS a reload sends carries the counts: the READY that ends it used to say
    "0 managed domains, 0 running" until the next reconcile pass, ~4 s later."""
    conn = libvirt.open("test:///default")  # libvirt's in-process test driver
    try:
        daemon.reconciler.rerender_inactive(conn, force=True)  # lists: none inactive here
    finally:
        conn.close()
    daemon.probe_and_publish()
    _sent(receiver)
    daemon.reload()
    messages = _sent(receiver)
    assert messages[0].startswith("RELOADING=1\n")
    assert messages[-1].startswith("READY=1\n")
    statuses = _statuses(messages)
    assert statuses
    for status in statuses:
        assert "; 1 managed domain, 1 running;" in status, status


def start(conf: Path, stderr: Path, journal: bool) -> tuple[int, str]:
    """numahookd --config CONF with stderr in a file that is, or is not, "the journal":
    systemd sets JOURNAL_STREAM to the device and inode of the stream it connected."""
    with open(stderr, "w") as fh:
        st = os.fstat(fh.fileno())
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("JOURNAL_STREAM", None)
        if journal:
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        proc = subprocess.run([sys.executable, "-m", "numahook.daemon.main", "--config",
                               str(conf)], stdout=subprocess.DEVNULL, stderr=fh, env=env,
                              timeout=60, check=False)
    return proc.returncode, stderr.read_text()


@pytest.mark.parametrize("journal", [True, False])
def test_a_bad_file_at_start_exits_ex_config_with_one_err_line(tmp_path: Path,
                                                               journal: bool) -> None:
    """78 is in the unit's RestartPreventExitStatus= (tests/unit/test_systemd_unit.py); <3> makes
    journald file the line at err, so that journalctl -p err shows why numahookd is down."""
    conf = tmp_path / "numahook.conf"
    conf.write_text("[realtime]\nthrottled = delgate\n")
    rc, err = start(conf, tmp_path / "stderr", journal)
    assert rc == 78
    assert err.splitlines() == [("<3>" if journal else "") + f"numahookd: {conf}:2: [realtime] "
                                "throttled: 'delgate' is not valid; set it to refuse or delegate"]
