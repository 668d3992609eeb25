"""numahookd does its own work with its systemd sandbox in force (issues 13 and 16).

The sandbox (packaging/numahookd.service: ProtectSystem=strict, a capability bounding set
of three, SystemCallFilter=@system-service, MemoryDenyWriteExecute=, ...) could stop the
daemon from writing hugepages or cgroup files, or from setting SCHED_FIFO. Each of these
is shown here on the daemon's own paths, started by systemd, with the sandbox checked in
/proc first: the realtime backstop (FIFO), orphan recovery (hugepages), and, for the cgroup
writes that only cgroup v1 hosts need, the same sandbox running a probe.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.host.conftest import GUEST_MIB, PREFIX, Host, domain_xml

NAME = PREFIX + "sandbox"
HOOK_LINK = "/etc/libvirt/hooks/qemu.d/numahook"
#: lines of the installed unit that are not the sandbox
NOT_SANDBOX = ("Type=", "NotifyAccess=", "ExecStart=", "ExecReload=", "Restart", "Watchdog",
               "Timeout")


def _status(host: Host, pid: str) -> dict[str, str]:
    text = host.sh(f"cat /proc/{pid}/status").stdout
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


@pytest.fixture
def running(clean: Host) -> Iterator[Host]:
    host = clean
    host.sh("systemctl restart numahookd")
    host.wait(lambda: host.unit()["ActiveState"] == "active", "numahookd active", 60)
    pid = host.unit()["MainPID"]
    st = _status(host, pid)
    # the sandbox is in force on the very process that does the work
    assert st["NoNewPrivs"].strip() == "1" and st["Seccomp"].strip() == "2", st
    assert int(st["CapBnd"], 16) == (1 << 23) | (1 << 1) | (1 << 2), st["CapBnd"]  # NICE, DAC_*
    assert " / " in host.sh(f"grep ' / / ' /proc/{pid}/mountinfo").stdout
    assert "ro" in host.sh(f"grep ' / / ' /proc/{pid}/mountinfo").stdout.split()[5].split(",")
    host.define(domain_xml(NAME, 2, GUEST_MIB, realtime="0-1", hold=3600))
    host.wait(lambda: "<numa>" in host.sh(f"virsh dumpxml --inactive {NAME}").stdout,
              "numahookd to render the definition", 60)
    host.sh(f"virsh -q start {NAME}")
    yield host
    host.sh(f"test -e {HOOK_LINK} || ln -s /usr/libexec/numahook/qemu-hook {HOOK_LINK}; "
            "systemctl reload libvirtd")


def test_backstop_sets_fifo_again_under_the_sandbox(running: Host) -> None:
    host = running
    tid = host.inside("domain", NAME)["vcpus"]["0"]["tid"]
    # demoted and seen demoted in one step: the backstop's next pass is seconds away
    host.sh(f"chrt -o -p 0 {tid} && chrt -p {tid} | grep -q 'policy: SCHED_OTHER'")
    # the hook does not run again; only numahookd's realtime backstop can do this
    host.wait(lambda: host.inside("domain", NAME)["vcpus"]["0"]["policy"] == "fifo",
              "numahookd's backstop to set SCHED_FIFO again", 30)


def test_orphan_recovery_gives_hugepages_back_under_the_sandbox(running: Host) -> None:
    host = running
    held = host.inside("hugepages")
    # the hook goes away while the domain runs (a broken upgrade, a hand edit): libvirt
    # then stops the domain without a release call, and only numahookd gives pages back
    host.sh(f"rm {HOOK_LINK} && systemctl reload libvirtd")
    host.sh(f"virsh -q destroy {NAME}")
    host.wait(lambda: sum(v["2048"][0] for v in host.inside("hugepages").values())
              == sum(v["2048"][0] for v in held.values()) - GUEST_MIB // 2,
              "numahookd to release the orphaned claim's pages", 60)
    journal = host.sh("journalctl -q -o cat -u numahookd --since=-5min").stdout
    assert f"released the orphaned claim of {NAME}" in journal, journal[-2000:]


def test_the_same_sandbox_lets_cgroup_hugepage_and_fifo_writes_through(running: Host) -> None:
    host = running
    unit = host.sh("systemctl cat numahookd").stdout
    service = unit.split("[Service]", 1)[1].split("\n[", 1)[0]
    sandbox = [ln for ln in service.splitlines()
               if ln.strip() and not ln.startswith("#") and not ln.startswith(NOT_SANDBOX)]
    assert any(ln.startswith("ProtectSystem=strict") for ln in sandbox), sandbox
    view = host.inside("domain", NAME)
    cg = view["vcpus"]["1"]["cgroup"].split("::", 1)[1].strip()
    tid, prio = view["vcpus"]["1"]["tid"], view["vcpus"]["1"]["priority"]
    probe = (
        "import os,pathlib as p\n"
        # the nearest cgroup of the vCPU with the cpu controller (libvirt's scope on v2)
        f"d=p.Path('/sys/fs/cgroup{cg}')\n"
        "while not (d / 'cpu.weight').exists(): d = d.parent\n"
        "f=d / 'cpu.weight'; f.write_text(f.read_text())\n"
        "h=p.Path('/sys/devices/system/node/node1/hugepages/hugepages-2048kB/nr_hugepages')\n"
        "h.write_text(h.read_text())\n"
        f"os.sched_setscheduler({tid}, os.SCHED_FIFO, os.sched_param({prio}))\n"
        "print('sandbox-probe-ok')\n"
    )
    host.sh("cat > /run/numahook-sandbox-probe.py", input=probe)
    text = ("[Service]\nType=oneshot\nExecStart=/usr/bin/python3 /run/numahook-sandbox-probe.py\n"
            + "\n".join(sandbox) + "\nReadOnlyPaths=/run/numahook-sandbox-probe.py\n")
    host.sh("cat > /run/systemd/system/numahook-sandbox-probe.service", input=text)
    try:
        host.sh("systemctl daemon-reload && systemctl start numahook-sandbox-probe")
        out = host.sh("journalctl -q -o cat -u numahook-sandbox-probe").stdout
        assert "sandbox-probe-ok" in out, out
    finally:
        host.sh("rm -f /run/systemd/system/numahook-sandbox-probe.service "
                "/run/numahook-sandbox-probe.py; systemctl daemon-reload")
    assert json.dumps(host.inside("domain", NAME)["vcpus"]["1"]["policy"]) == '"fifo"'
