"""CPU hotplug on a real kernel: numahookd takes the uevent, probes, renders (issue 13).

A CPU that a rendered definition uses goes offline inside the VM and comes back. The
kernel's own uevent reaches numahookd (numahook/host/uevents.py); node.json follows, and
an inactive managed definition is rendered again for the CPUs that are left.

QEMU's monitor cannot add a vCPU to this VM: with ``-smp N,maxcpus=M`` (M > N) Debian's
6.1 cloud kernel stalls in its first seconds under TCG (RCU stalls right after SMP
bring-up), so the VM has no free CPU slot and hotplug is exercised from inside.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from lab import report
from tests.host.conftest import GUEST_MIB, PREFIX, Host, domain_xml

NAME = PREFIX + "hotplug"


def _node_json(host: Host) -> dict:
    return host.json("cat /run/numahook/node.json")


def _node_cpus(host: Host) -> dict[int, frozenset[int]]:
    return {n["id"]: report.parse_cpulist(n["cpus"])
            for n in _node_json(host)["node"]["numa_nodes"]}


def _pins(host: Host) -> set[int]:
    root = ET.fromstring(host.sh(f"virsh dumpxml --inactive {NAME}").stdout)
    out: set[int] = set()
    for p in root.findall("./cputune/vcpupin"):
        out |= report.parse_cpulist(p.get("cpuset", ""))
    return out


def test_cpu_offline_and_online_reach_node_json_and_definitions(clean: Host) -> None:
    host = clean
    host.sh("systemctl restart numahookd")
    host.wait(lambda: host.unit()["ActiveState"] == "active", "numahookd active", 60)
    nodes = _node_cpus(host)
    host.define(domain_xml(NAME, 2, GUEST_MIB, realtime=None))
    host.wait(lambda: _pins(host), "numahookd to render the definition", 60)
    pinned = _pins(host)
    assert len(pinned) == 2
    cpu = max(pinned)  # never CPU 0, which the kernel does not take offline
    node = next(n for n, cpus in nodes.items() if cpu in cpus)
    try:
        host.sh(f"echo 0 > /sys/devices/system/cpu/cpu{cpu}/online")
        took = host.wait(lambda: _node_cpus(host)[node] == nodes[node] - {cpu},
                         f"node.json to drop CPU {cpu}", 30)
        online = report.parse_cpulist(_node_json(host)["node"]["cpus"]["online"])
        assert online == frozenset().union(*nodes.values()) - {cpu}
        host.wait(lambda: cpu not in _pins(host) and len(_pins(host)) == 2,
                  f"the definition rendered again without CPU {cpu}", 30)
        print(f"cpu{cpu} offline: node.json followed in {took:.1f} s; pins now {_pins(host)}")
    finally:
        host.sh(f"echo 1 > /sys/devices/system/cpu/cpu{cpu}/online")
    host.wait(lambda: _node_cpus(host) == nodes, f"node.json to take CPU {cpu} back", 30)
    # still a valid rendering: two dedicated CPUs, all online (numahook keeps pins that
    # stay valid rather than moving them back)
    pins = _pins(host)
    assert len(pins) == 2 and pins <= frozenset().union(*nodes.values()), pins
