"""``systemctl restart libvirtd`` under a running real-time domain (issue 13).

libvirtd reconnects to its running QEMUs and calls the hook with ``reconnect``, which must
exit 0 and change nothing (numahook/hook/main.py). The VM keeps its QEMU, its pins and its
SCHED_FIFO vCPUs; numahook keeps its claim.
"""

from __future__ import annotations

from tests.host.conftest import GUEST_MIB, PREFIX, Host, domain_xml

NAME = PREFIX + "restart"


def test_libvirtd_restart_kills_no_vm_and_fifo_stays(clean: Host) -> None:
    host = clean
    host.define(domain_xml(NAME, 2, GUEST_MIB, realtime="0-1", hold=3600))
    host.wait(lambda: "<numa>" in host.sh(f"virsh dumpxml --inactive {NAME}").stdout,
              "numahookd to render the definition", 60)
    host.sh(f"virsh -q start {NAME}")
    before = host.inside("domain", NAME)
    claims = host.sh("ls /run/numahook/claims").stdout.split()
    assert all(t["policy"] == "fifo" for t in before["vcpus"].values()), before
    old = host.unit("libvirtd")["MainPID"]
    host.sh("systemctl restart libvirtd")
    host.wait(lambda: host.unit("libvirtd")["MainPID"] not in ("0", old)
              and host.sh(f"virsh -q domstate {NAME}", check=False).stdout.strip() == "running",
              "libvirtd back, with the domain running", 90)
    after = host.inside("domain", NAME)
    assert after["pid"] == before["pid"], "libvirtd's restart replaced the QEMU"
    assert after["vcpus"] == before["vcpus"], (before["vcpus"], after["vcpus"])
    assert host.sh("ls /run/numahook/claims").stdout.split() == claims
    log = host.sh("journalctl -q -o cat -u libvirtd --since=-3min").stdout
    assert "hook script execution failed" not in log.lower(), log[-2000:]
