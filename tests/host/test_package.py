"""The .deb's life under systemd: install, upgrade, remove, purge (issue 13).

``scripts/lab host up`` installed the checkout's .deb with apt while libvirtd ran, so the
postinst's reload (deb-systemd-invoke, packaging/debian/numahook.postinst) is what made
libvirtd see the hook. This module runs last (conftest orders it so): it removes and
purges the package, then installs it again for whatever follows.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.host.conftest import GUEST_MIB, PREFIX, Host, domain_xml

NAME = PREFIX + "pkg"
CONF = "/etc/numahook/numahook.conf"
HOOK_LINK = "/etc/libvirt/hooks/qemu.d/numahook"
PUBLISHED = ("/run/numahook", "/etc/kubernetes/node-feature-discovery/features.d/numahook",
             "/var/lib/prometheus/node-exporter/numahook.prom")


def _deb() -> Path:
    debs = sorted(Path(__file__).resolve().parents[2].joinpath("dist").glob("numahook_*_all.deb"),
                  key=lambda p: p.stat().st_mtime)
    if not debs:
        pytest.skip("no .deb in dist/ (scripts/lab host up builds one)")
    return debs[-1]


def _repack(deb: Path, tmp: Path, version: str) -> Path:
    root = tmp / "root"
    subprocess.run(["dpkg-deb", "-R", str(deb), str(root)], check=True, timeout=60)
    control = root / "DEBIAN" / "control"
    control.write_text("".join(f"Version: {version}\n" if ln.startswith("Version:") else ln
                               for ln in control.read_text().splitlines(True)))
    out = tmp / f"numahook_{version}_all.deb"
    subprocess.run(["dpkg-deb", "-b", "-Zxz", str(root), str(out)], check=True, timeout=120,
                   capture_output=True)
    return out


def _install(host: Host, deb: Path) -> None:
    host.sh(f"cat > /root/{deb.name}", input=deb.read_bytes())
    host.sh(f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q --allow-downgrades "
            f"-o Dpkg::Options::=--force-confold /root/{deb.name}", timeout=300)


def test_installed_hook_is_live_after_the_postinst_reload(clean: Host) -> None:
    host = clean
    log = host.sh("journalctl -q -o cat -u libvirtd").stdout
    assert "Reloading libvirtd.service" in log, "the postinst did not reload libvirtd"
    # the hook's prepare gate refuses what cannot run, so libvirt really calls it
    host.define(domain_xml(NAME, 9, GUEST_MIB, realtime="0"))
    out = host.sh(f"virsh -q start {NAME}", check=False)
    assert out.returncode != 0 and "numahook" in out.stderr, out.stderr


def test_upgrade_keeps_an_edited_conffile(clean: Host, tmp_path: Path) -> None:
    host = clean
    version = host.sh("dpkg-query -W -f='${Version}' numahook").stdout.strip()
    host.sh(f"sed -i 's/^lock_timeout = .*/lock_timeout = 7/' {CONF}")
    _install(host, _repack(_deb(), tmp_path, version + "+hostlab1"))
    assert host.sh("dpkg-query -W -f='${Version}' numahook").stdout.strip() == version + "+hostlab1"
    assert "lock_timeout = 7" in host.sh(f"cat {CONF}").stdout


def test_remove_and_purge_leave_nothing_and_spare_the_running_vm(clean: Host) -> None:
    host = clean
    host.sh("systemctl enable --now numahookd")
    host.define(domain_xml(NAME, 2, GUEST_MIB, realtime=None, hold=3600))
    host.wait(lambda: "<numa>" in host.sh(f"virsh dumpxml --inactive {NAME}").stdout,
              "numahookd to render the definition", 60)
    host.sh(f"virsh -q start {NAME}")
    pid = host.inside("domain", NAME)["pid"]
    try:
        host.sh("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q numahook", timeout=300)
        assert host.sh(f"test -e {HOOK_LINK}", check=False).returncode != 0, "hook left"
        assert host.unit()["ActiveState"] in ("inactive", "failed")
        host.sh("DEBIAN_FRONTEND=noninteractive apt-get purge -y -q numahook", timeout=300)
        left = host.sh("ls -d /etc/numahook /lib/systemd/system/numahookd.service "
                       "/etc/systemd/system/multi-user.target.wants/numahookd.service "
                       "/usr/libexec/numahook " + " ".join(PUBLISHED) + " 2>/dev/null",
                       check=False).stdout.split()
        assert not left, f"purge left {left}"
        assert host.sh("dpkg-query -W -f='${db:Status-Status}' numahook",
                       check=False).stdout.strip() in ("", "not-installed")
        # the running VM is not disturbed: same QEMU, still running
        assert host.inside("domain", NAME)["pid"] == pid
        assert host.sh(f"virsh -q domstate {NAME}").stdout.strip() == "running"
    finally:
        host.remove_domains()
        _install(host, _deb())
