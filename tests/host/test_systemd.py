"""numahookd under a real systemd: Type=notify, reload, watchdog and journal (issue 13).

The unit is the one the .deb installed (packaging/numahookd.service); nothing here edits it.
"""

from __future__ import annotations

import json
import re

from tests.host.conftest import Host


def test_enable_now_ends_active_with_ready_and_status(host: Host) -> None:
    host.sh("systemctl enable --now numahookd")
    host.wait(lambda: host.unit()["ActiveState"] == "active", "numahookd active", 60)
    unit = host.unit()
    assert unit["SubState"] == "running", unit
    # Type=notify: systemd counts it started only after READY=1, with the STATUS= text
    assert unit["StatusText"].strip(), f"no STATUS= text from numahookd: {unit}"
    assert host.sh("systemctl is-enabled numahookd").stdout.strip() == "enabled"


def test_reload_goes_through_reloading_and_back_to_ready(host: Host) -> None:
    host.sh("systemctl start numahookd")
    pid = host.unit()["MainPID"]
    cursor = host.sh("journalctl -n 0 --show-cursor -q | sed -n 's/^-- cursor: //p'").stdout.strip()
    # systemd logs each notification it takes from the unit at debug level
    host.sh("systemd-analyze log-level debug")
    try:
        host.sh("systemctl reload numahookd")
        host.wait(lambda: "READY=1" in _pid1_log(host, cursor), "READY=1 after the reload", 60)
    finally:
        host.sh("systemd-analyze log-level info")
    log = _pid1_log(host, cursor)
    notes = re.findall(rf"numahookd\.service: Got notification message from PID {pid} \((.*)\)",
                       log)
    reloading = next(i for i, n in enumerate(notes) if "RELOADING=1" in n)
    assert any("READY=1" in n for n in notes[reloading + 1:]), notes
    unit = host.unit()
    assert unit["ActiveState"] == "active" and unit["MainPID"] == pid, unit


def _pid1_log(host: Host, cursor: str) -> str:
    return host.sh(f"journalctl -q -o cat _PID=1 --after-cursor='{cursor}'").stdout


def test_watchdog_kills_and_restarts_a_stopped_daemon(host: Host) -> None:
    host.sh("systemctl start numahookd")
    before = host.unit()
    watchdog_s = int(host.sh("systemctl show -p WatchdogUSec --value numahookd").stdout
                     .strip().rstrip("s") or 0)
    assert watchdog_s > 0, "the unit sets no WatchdogSec"
    abort_s = int(host.sh("systemctl show -p TimeoutAbortUSec --value numahookd").stdout
                  .strip().rstrip("s") or 0)
    # systemd's clock starts at the daemon's last WATCHDOG=1, which came anywhere up to
    # half of WatchdogSec (or a long loop pass) before the SIGSTOP: read it in the same
    # command, so that the bound below is measured from it, not from the kill
    last_ping_us = int(host.sh(
        "systemctl show -p WatchdogTimestampMonotonic --value numahookd && "
        f"kill -STOP {before['MainPID']}").stdout.split()[0])
    assert last_ping_us > 0, "numahookd never pinged the watchdog"
    took = host.wait(lambda: host.unit()["MainPID"] not in ("0", before["MainPID"])
                     and host.unit()["ActiveState"] == "active",
                     "numahookd restarted by the watchdog", watchdog_s + abort_s + 60, every=2)
    after = host.unit()
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1, (before, after)
    lines = [json.loads(line) for line in host.sh(
        "journalctl -q -o json -u numahookd --since=-5min").stdout.splitlines() if line.strip()]
    fired = [int(e["__MONOTONIC_TIMESTAMP"]) for e in lines
             if "Watchdog timeout" in str(e.get("MESSAGE", ""))
             and int(e["__MONOTONIC_TIMESTAMP"]) > last_ping_us]
    assert fired, "no 'Watchdog timeout' line after the last ping in the unit's journal"
    # the stopped process could not ping; systemd acted no earlier than WatchdogSec after
    # the last ping it had (1 s for its timer and the journal's clock)
    waited = (fired[0] - last_ping_us) / 1e6
    assert waited >= watchdog_s - 1, (f"systemd acted {waited:.1f} s after the last ping, "
                                      "before WatchdogSec")
    print(f"watchdog: SIGSTOP to a restarted daemon in {took:.0f} s; systemd acted "
          f"{waited:.1f} s after the last ping (WatchdogSec={watchdog_s}, "
          f"TimeoutAbortSec={abort_s})")


def test_journal_has_the_daemons_lines_with_priorities(host: Host) -> None:
    host.sh("systemctl restart numahookd")
    host.wait(lambda: host.unit()["ActiveState"] == "active", "numahookd active", 60)
    text = host.sh("journalctl -q -u numahookd -o json --since=-2min").stdout
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]
    own = [e for e in lines if e.get("_COMM") == "numahookd" or
           e.get("SYSLOG_IDENTIFIER") == "numahookd"]
    assert own, "journalctl -u numahookd shows no line of the daemon itself"
    assert all(e.get("PRIORITY") in {"0", "1", "2", "3", "4", "5", "6", "7"} for e in own)


TEXTFILE_DIR = "/var/lib/prometheus/node-exporter"


def test_a_textfile_dir_made_after_the_start_needs_a_restart_and_says_so(host: Host) -> None:
    """Issue 25: the sandbox binds ReadWritePaths= only at start, so after `mkdir` and a
    reload the write fails with EROFS; the journal must name the restart (it said "free
    space … or fix its permissions"), and the restart must make the file appear."""
    host.sh(f"systemctl stop numahookd; rm -rf {TEXTFILE_DIR}; systemctl start numahookd")
    host.wait(lambda: host.unit()["ActiveState"] == "active", "numahookd active", 60)
    try:
        cursor = host.sh("journalctl -n 0 --show-cursor -q | "
                         "sed -n 's/^-- cursor: //p'").stdout.strip()
        host.sh(f"mkdir -p {TEXTFILE_DIR} && systemctl reload numahookd")

        def failure() -> str:
            return next((line for line in host.sh(
                f"journalctl -q -o cat -u numahookd --after-cursor='{cursor}'").stdout
                .splitlines() if "publishing the metrics file failed" in line), "")

        host.wait(failure, "the metrics write to fail after the reload", 60)
        line = failure()
        assert "Read-only file system" in line, line
        assert (f"{TEXTFILE_DIR} was created after numahookd started; run `systemctl restart "
                "numahookd` so its sandbox can write there") in line, line
        assert "free space" not in line, line
        host.sh(f"test ! -e {TEXTFILE_DIR}/numahook.prom")
        host.sh("systemctl restart numahookd")
        host.wait(lambda: host.sh(f"test -s {TEXTFILE_DIR}/numahook.prom", check=False)
                  .returncode == 0, "numahook.prom after the restart", 60)
    finally:
        host.sh(f"systemctl stop numahookd; rm -rf {TEXTFILE_DIR}; systemctl start numahookd")
