"""A bad /etc/numahook/numahook.conf on a systemd host (issue 25, item 3).

The file is the one the .deb installed, edited as an operator would (a typo in
``[realtime] throttled``); the ``bad_config`` fixture puts it back and numahookd running
again whatever the test did. The unit is the .deb's: ``ExecReload=`` checks the file with
``numahook config check`` first, and ``RestartPreventExitStatus=78`` ends a start on a
bad file without restarts.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.host.conftest import GUEST_MIB, PREFIX, Host, domain_xml

CONF = "/etc/numahook/numahook.conf"
SAVED = "/root/numahook.conf.before-test"
NAME = PREFIX + "badconf"
UNIT = "numahookd.service"


class BadConfig:
    """Writes the typo into the installed file; knows the line and the one-line error."""

    def __init__(self, host: Host) -> None:
        self.host = host
        self.line = int(host.sh(f"grep -n '^throttled = ' {CONF} | cut -d: -f1").stdout)
        self.error = (f"{CONF}:{self.line}: [realtime] throttled: 'delgate' is not valid; "
                      "set it to refuse or delegate")

    def write(self) -> None:
        self.host.sh(f"sed -i 's/^throttled = .*/throttled = delgate/' {CONF}")


@pytest.fixture
def bad_config(clean: Host) -> Iterator[BadConfig]:
    host = clean
    host.sh(f"cp -p {CONF} {SAVED}")
    yield BadConfig(host)
    host.sh(f"mv {SAVED} {CONF} && systemctl reset-failed numahookd; systemctl start numahookd")
    host.wait(lambda: host.unit()["ActiveState"] == "active", "numahookd active again", 60)


def _cursor(host: Host) -> str:
    return host.sh("journalctl -n 0 --show-cursor -q | sed -n 's/^-- cursor: //p'").stdout.strip()


def _journal(host: Host, cursor: str, **fields: str) -> list[str]:
    """The messages since ``cursor`` whose journal fields have these values.

    Filtered here, not by journalctl: systemd 252's journalctl with --after-cursor and
    matches (-u, -p, -t) left out lines that are there, in this lab's runs.
    """
    entries = [json.loads(line) for line in host.sh(
        f"journalctl -q -o json --after-cursor='{cursor}'").stdout.splitlines() if line]
    return [str(e.get("MESSAGE")) for e in entries
            if all(str(e.get(k)) == v for k, v in fields.items())]


def _logged(host: Host, cursor: str, line: str, **fields: str) -> None:
    """Wait (bounded) for ``line``: journald reads a unit's stderr stream on its own
    schedule, and journalctl --sync does not wait for what is still in that stream."""
    host.wait(lambda: any(line in got for got in _journal(host, cursor, **fields)),
              f"{line!r} in the journal with {fields}", 30)


def test_reload_with_a_bad_file_fails_and_the_daemon_keeps_its_config(
        bad_config: BadConfig) -> None:
    host = bad_config.host
    host.sh("systemctl start numahookd")
    before = host.unit()
    cursor = _cursor(host)
    bad_config.write()
    reload = host.sh("systemctl reload numahookd", check=False)
    assert reload.returncode != 0, reload.stdout + reload.stderr
    _logged(host, cursor, f"numahook: {bad_config.error}", _SYSTEMD_UNIT=UNIT)
    # the check failed first, so numahookd was never signalled: same process, no restart,
    # no "reloaded" and not even its own "keeping the configuration in force"
    after = host.unit()
    assert (after["ActiveState"], after["MainPID"], after["NRestarts"]) == (
        "active", before["MainPID"], before["NRestarts"]), (before, after)
    daemon = _journal(host, cursor, _PID=before["MainPID"])
    assert not [m for m in daemon if "reloaded " in m or "keeping the configuration" in m]
    host.sh(f"cp -p {SAVED} {CONF}")
    assert host.sh("systemctl reload numahookd", check=False).returncode == 0


def test_a_start_on_a_bad_file_fails_once_with_the_error_at_err(bad_config: BadConfig) -> None:
    host = bad_config.host
    host.sh("systemctl stop numahookd && systemctl reset-failed numahookd")
    bad_config.write()
    cursor = _cursor(host)
    start = host.sh("systemctl restart numahookd", check=False)
    assert start.returncode != 0
    show = host.sh("systemctl show -p ActiveState,SubState,Result,ExecMainStatus,NRestarts "
                   "numahookd").stdout
    unit = dict(line.split("=", 1) for line in show.splitlines() if "=" in line)
    # failed, not activating (auto-restart): systemd scheduled no restart at all
    assert unit == {"ActiveState": "failed", "SubState": "failed", "Result": "exit-code",
                    "ExecMainStatus": "78", "NRestarts": "0"}, unit
    _logged(host, cursor, f"numahookd: {bad_config.error}", _SYSTEMD_UNIT=UNIT, PRIORITY="3")


def test_destroy_with_a_bad_file_and_no_daemon_gives_everything_back(
        bad_config: BadConfig) -> None:
    """The hook alone (numahookd stopped): release must not depend on the file."""
    host = bad_config.host
    host.sh("systemctl start numahookd")
    pages = host.inside("hugepages")
    host.define(domain_xml(NAME, 1, GUEST_MIB, realtime=None, hold=3600))
    host.wait(lambda: "<numa>" in host.sh(f"virsh dumpxml --inactive {NAME}").stdout,
              "numahookd to render the definition", 60)
    host.sh("systemctl stop numahookd")
    host.sh(f"virsh -q start {NAME}")
    uuid = host.sh(f"virsh domuuid {NAME}").stdout.strip()
    claim = f"test -e /run/numahook/claims/{uuid}.json"
    assert host.sh(claim, check=False).returncode == 0, "the start left no claim"
    assert host.inside("hugepages") != pages, "the start reserved no hugepages"
    bad_config.write()
    cursor = _cursor(host)
    host.sh(f"virsh -q destroy {NAME}")
    assert host.sh(claim, check=False).returncode == 1, "the destroy left the claim"
    assert host.inside("hugepages") == pages
    _logged(host, cursor,
            f"op=stopped: {bad_config.error} (went on with the built-in default for it)",
            SYSLOG_IDENTIFIER="numahook-hook", PRIORITY="3")
