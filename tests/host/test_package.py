"""The .deb's life under systemd: install, upgrade, remove, purge (issue 13).

``scripts/lab host up`` installed the checkout's .deb with apt while libvirtd ran, so the
postinst's reload (deb-systemd-invoke, packaging/debian/numahook.postinst) is what made
libvirtd see the hook. This module runs last (conftest orders it so): it removes and
purges the package, then installs it again for whatever follows.
"""

from __future__ import annotations

from pathlib import Path

from tests.host.conftest import GUEST_MIB, PREFIX, Host, built_deb, domain_xml, install, repack

NAME = PREFIX + "pkg"
CONF = "/etc/numahook/numahook.conf"
HOOK_LINK = "/etc/libvirt/hooks/qemu.d/numahook"
PUBLISHED = ("/run/numahook", "/etc/kubernetes/node-feature-discovery/features.d/numahook",
             "/var/lib/prometheus/node-exporter/numahook.prom")


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
    install(host, repack(built_deb(), tmp_path, version + "+hostlab1"))
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
        install(host, built_deb())
