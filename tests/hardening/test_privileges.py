"""Privileges: numahook's state is root's alone (issue 8, part 5).

The hook runs as root inside libvirtd's start path and the daemon as root; what they keep
(claims, the lock, node.json) must not be writable, or for claims even readable, by anyone
else, whatever umask they were started with. numahook listens on no socket.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest

from numahook.daemon.reconcile import Reconciler
from numahook.errors import StateError
from numahook.node import probe, publish
from tests.support import claims

from .conftest import FIGURES, HOOK, REPO, ROOT, Host, domain_xml, make_host, prerender, uuid_of

UUID = uuid_of(400)
NAME = "priv"
NOBODY = 65534


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def check(name: str) -> None:
    FIGURES.add("privileges", name)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    return make_host(tmp_path / "host", admin_pages=1)


def hook_with_umask(host: Host, xml: str, op: str, subop: str,
                    umask: str = "000") -> subprocess.CompletedProcess[str]:
    """The hook as a libvirtd with a careless umask would start it."""
    return subprocess.run(["/bin/sh", "-c", f'umask {umask}; exec /bin/sh "$0" "$@"', str(HOOK),
                           NAME, op, subop, "-"], input=xml, capture_output=True, text=True,
                          env=host.env(), timeout=120, check=False)


def test_state_files_are_root_only_whatever_the_umask(host: Host) -> None:
    xml = prerender(host.cfg(), domain_xml(NAME, UUID, pages=2), {1})
    deep = host.tmp / "a" / "b" / "state"  # missing parents are created 0700 too
    host.config.write_text(host.config.read_text().replace(f"state_dir = {host.state}",
                                                           f"state_dir = {deep}"))
    host.state = deep
    proc = hook_with_umask(host, xml, "prepare", "begin")
    assert proc.returncode == 0, proc.stderr
    me = os.geteuid()
    for d in (host.tmp / "a", host.tmp / "a" / "b", deep, deep / "claims"):
        check("dir-mode")
        assert mode(d) == 0o700 and os.lstat(d).st_uid == me, (d, oct(mode(d)))
    claim = deep / "claims" / f"{UUID}.json"
    for f in (claim, deep / "lock"):
        check("file-mode")
        assert stat.S_ISREG(os.lstat(f).st_mode)
        assert mode(f) == 0o600 and os.lstat(f).st_uid == me, (f, oct(mode(f)))
    assert sorted(os.listdir(deep / "claims")) == [claim.name]  # no temp files left
    assert hook_with_umask(host, xml, "release", "end").returncode == 0
    assert mode(deep) == 0o700 and mode(deep / "lock") == 0o600


def test_a_group_or_world_writable_state_dir_is_closed_again(host: Host) -> None:
    check("dir-mode-repaired")
    host.state.mkdir(mode=0o777)
    os.chmod(host.state, 0o777)
    (host.state / "claims").mkdir()
    os.chmod(host.state / "claims", 0o775)
    host.statedir().ensure()
    assert mode(host.state) == 0o700 and mode(host.state / "claims") == 0o700


@pytest.mark.parametrize("what", ["state", "claims"])
def test_a_state_dir_owned_by_someone_else_is_refused(host: Host, what: str) -> None:
    """Someone who created the dir first (e.g. under a world-writable parent) owns it."""
    if not ROOT:
        pytest.skip("chown needs root")
    check(f"foreign-owner-{what}")
    (host.state / "claims").mkdir(parents=True, mode=0o700)
    os.chown(host.state if what == "state" else host.state / "claims", NOBODY, NOBODY)
    xml = prerender(host.cfg(), domain_xml(NAME, UUID, pages=2), {1})
    baseline = host.nr()
    proc = host.hook(xml, NAME, "prepare", "begin")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"is not a directory owned by uid {os.geteuid()}" in proc.stderr
    assert host.nr() == baseline and os.listdir(host.state / "claims") == []
    assert host.hook(xml, NAME, "release", "end").returncode == 0  # never fails a stop


def test_a_symlinked_state_dir_is_refused(host: Host) -> None:
    check("symlinked-state-dir")
    elsewhere = host.tmp / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    os.symlink(elsewhere, host.state)
    with pytest.raises(StateError, match="is not a directory owned by"):
        host.statedir().ensure()


def test_a_symlinked_state_dir_is_refused_before_anything_is_created(host: Host) -> None:
    check("symlinked-state-dir-untouched")
    elsewhere = host.tmp / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    os.symlink(elsewhere, host.state)
    with pytest.raises(StateError):
        host.statedir().ensure()
    assert os.listdir(elsewhere) == []


def test_node_json_is_published_inside_the_private_state_dir(host: Host) -> None:
    check("node-json")
    cap = probe.probe(host.cfg(), libvirt_reachable=None)
    host.statedir().ensure()
    path = publish.write_status(cap, str(host.state))
    assert path.parent == host.state and mode(host.state) == 0o700
    assert mode(path) == 0o644  # readable by monitoring, but only through a root-only dir
    assert json.loads(path.read_text())["node"]


def test_numahook_listens_on_no_socket() -> None:
    """The only sockets are clients: libvirt's, sd_notify's and the kernel's uevents.

    numahook/host/uevents.py binds a netlink socket to the kernel's uevent multicast group:
    no process can connect to it, and it drops any datagram not sent by the kernel.
    numahook/daemon/notify.py opens an unbound AF_UNIX datagram socket per message and
    only sends on it.
    """
    check("no-listening-socket")
    uevents = (REPO / "numahook" / "host" / "uevents.py").read_text()
    assert "socket.AF_NETLINK" in uevents and "NETLINK_KOBJECT_UEVENT)" in uevents
    assert "if sender != 0:\n            continue" in uevents
    assert "AF_INET" not in uevents and ".listen(" not in uevents
    sd_notify = (REPO / "numahook" / "daemon" / "notify.py").read_text()
    assert "socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM" in sd_notify
    assert ".sendto(" in sd_notify and ".bind(" not in sd_notify
    assert ".recv" not in sd_notify and ".listen(" not in sd_notify
    found = []
    for path in sorted((REPO / "numahook").rglob("*.py")):
        if path.name == "uevents.py" and path.parent.name == "host":
            continue
        if path.name == "notify.py" and path.parent.name == "daemon":
            continue
        text = path.read_text()
        for pattern in (r"\.listen\(", r"\.bind\((?!\))", r"socket\.socket\(", r"AF_INET"):
            for m in re.finditer(pattern, text):
                found.append(f"{path.relative_to(REPO)}: {text[m.start():m.start() + 40]!r}")
    assert found == [], found


def test_a_claim_planted_by_another_user_is_not_trusted(host: Host) -> None:
    if not ROOT:
        pytest.skip("chown needs root")
    check("planted-claim")
    pool = host.pool / "nr_hugepages"
    pool.write_text("8\n")  # the administrator's pages
    host.state.mkdir(mode=0o777)
    os.chmod(host.state, 0o777)
    (host.state / "claims").mkdir(mode=0o777)
    os.chmod(host.state / "claims", 0o777)
    planted = host.state / "claims" / f"{uuid_of(401)}.json"
    forged = claims.make(uuid=uuid_of(401), name="planted", hugepages_added={(0, 2048): 8},
                         phase="running",
                   created=time.time() - 10_000)
    planted.write_text(json.dumps(forged.to_json()))
    os.chown(planted, NOBODY, NOBODY)
    Reconciler(host.cfg(), host.statedir()).orphans(now=time.time() + 10_000)
    assert host.nr() == 8, "root gave back pages on the word of another user's file"
