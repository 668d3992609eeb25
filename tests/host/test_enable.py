"""The .deb enables and starts numahookd, as Debian does with the services it installs
(issue 31, item 7), under the VM's real systemd.

Each test starts from the package as ``scripts/lab host up`` left it and leaves it
installed, enabled and running again, with the checkout's .deb. The maintainer scripts
themselves (dh_installsystemd's, run with stubs) are tests/unit/test_enable_on_install.py.
"""

from __future__ import annotations

from pathlib import Path

from tests.host.conftest import Host, built_deb, install, repack

#: what deb-systemd-helper makes for an enabled unit, and remembers until purge
LINKS = ("/etc/systemd/system/multi-user.target.wants/numahookd.service",
         "/var/lib/systemd/deb-systemd-helper-enabled/numahookd.service.dsh-also",
         "/var/lib/systemd/deb-systemd-helper-enabled/multi-user.target.wants/numahookd.service",
         "/var/lib/systemd/deb-systemd-helper-masked/numahookd.service")


def _state(host: Host) -> tuple[str, str]:
    """(systemctl is-enabled, is-active) for numahookd; both print a word even on failure."""
    out = host.sh("systemctl is-enabled numahookd 2>&1; systemctl is-active numahookd",
                  check=False).stdout.split("\n")
    return out[0].strip(), out[1].strip()


def _left(host: Host) -> list[str]:
    return host.sh(f"ls -d {' '.join(LINKS)} 2>/dev/null", check=False).stdout.split()


def _running(host: Host) -> bool:
    return host.sh("pgrep -x numahookd", check=False).returncode == 0


def _active(host: Host) -> bool:
    return _state(host) == ("enabled", "active")


def test_a_first_install_enables_and_starts_numahookd(clean: Host) -> None:
    host = clean
    try:
        host.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q numahook", timeout=300)
        assert not _left(host) and not _running(host)
        out = install(host, built_deb())
        # Type=notify: deb-systemd-invoke start returned once numahookd said READY=1
        assert _state(host) == ("enabled", "active"), out[-2000:]
        unit = host.unit()
        assert unit["SubState"] == "running" and unit["StatusText"].strip(), unit
        assert "numahook: numahookd is enabled and running" in out, out[-2000:]
        assert host.sh("systemctl show -p UnitFilePreset --value numahookd"
                       ).stdout.strip() == "enabled"
    finally:
        if not _active(host):
            install(host, built_deb())
            host.sh("systemctl enable --now numahookd")


def test_an_admins_disable_outlives_an_upgrade(clean: Host, tmp_path: Path) -> None:
    host = clean
    version = host.sh("dpkg-query -W -f='${Version}' numahook").stdout.strip()
    host.sh("systemctl disable --now numahookd")
    try:
        out = install(host, repack(built_deb(), tmp_path, version + "+hostlab-enable1"))
        assert _state(host) == ("disabled", "inactive"), out[-2000:]
        assert not _running(host)
        assert "numahook: numahookd is disabled here" in out, out[-2000:]
    finally:
        install(host, built_deb())  # the downgrade to the checkout's version
        host.sh("systemctl enable --now numahookd")
    assert _active(host)


def test_remove_stops_it_and_purge_leaves_no_link(clean: Host) -> None:
    host = clean
    assert _active(host)
    try:
        host.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q numahook", timeout=300)
        unit = host.unit()
        assert unit["ActiveState"] == "inactive" and not _running(host), unit
        assert host.sh("systemctl show -p LoadState --value numahookd"
                       ).stdout.strip() == "not-found"
        host.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q numahook", timeout=300)
        assert not _left(host), f"purge left {_left(host)}"
        # a later install is a first install again: enabled and started
        out = install(host, built_deb())
        assert _active(host), out[-2000:]
    finally:
        if not _active(host):
            install(host, built_deb())
            host.sh("systemctl enable --now numahookd")
