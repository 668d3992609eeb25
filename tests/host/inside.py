"""Run inside the host VM (``python3 - CMD ARGS < inside.py``): what the VM's kernel shows.

Standalone on purpose: it is piped through ``scripts/lab host exec`` and imports nothing
of numahook or of the checkout, so it sees the host as the kernel does, not as numahook
models it. Prints one JSON document.
"""

import json
import os
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

POLICY = {os.SCHED_OTHER: "other", os.SCHED_FIFO: "fifo", os.SCHED_RR: "rr"}


def cpulist(text):
    out = set()
    for part in text.strip().split(","):
        if part:
            lo, _, hi = part.partition("-")
            out.update(range(int(lo), int(hi or lo) + 1))
    return sorted(out)


def hugepages():
    """node -> size KiB -> [nr, free]"""
    out = {}
    for d in Path("/sys/devices/system/node").glob("node[0-9]*/hugepages/hugepages-*kB"):
        node = d.parent.parent.name[4:]
        size = d.name.split("-")[1][:-2]
        out.setdefault(node, {})[size] = [int((d / f).read_text()) for f in
                                          ("nr_hugepages", "free_hugepages")]
    return out


def numa_maps(pid):
    """Pages per node of QEMU's hugetlbfs mappings: node -> pages (of any huge size)."""
    out = {}
    for line in Path(f"/proc/{pid}/numa_maps").read_text().splitlines():
        if " huge " not in f" {line} ":
            continue
        for node, pages in re.findall(r"\bN(\d+)=(\d+)", line):
            out[node] = out.get(node, 0) + int(pages)
    return out


def domain(name):
    root = ET.parse(f"/run/libvirt/qemu/{name}.xml").getroot()
    pid = int(root.get("pid"))
    vcpus = {}
    for v in root.findall("./vcpus/vcpu"):
        tid = int(v.get("pid"))
        pol = os.sched_getscheduler(tid) & ~getattr(os, "SCHED_RESET_ON_FORK", 0x40000000)
        vcpus[v.get("id")] = {"tid": tid, "affinity": sorted(os.sched_getaffinity(tid)),
                              "policy": POLICY.get(pol, str(pol)),
                              "priority": os.sched_getparam(tid).sched_priority,
                              "cgroup": Path(f"/proc/{pid}/task/{tid}/cgroup").read_text()}
    return {"pid": pid, "vcpus": vcpus, "numa_maps": numa_maps(pid),
            "hugepages": hugepages(), "cgroupfs": cgroupfs()}


def cgroupfs():
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == "/sys/fs/cgroup":
            return fields[2]
    return None


def node():
    base = Path("/sys/devices/system/node")
    nodes = {}
    for d in sorted(base.glob("node[0-9]*")):
        nodes[d.name[4:]] = {"cpus": cpulist((d / "cpulist").read_text()),
                             "distance": [int(x) for x in (d / "distance").read_text().split()]}
    return {"nodes": nodes, "online": cpulist(Path("/sys/devices/system/cpu/online").read_text()),
            "hugepages": hugepages()}


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    print(json.dumps({"domain": domain, "node": node, "hugepages": hugepages}[cmd](*args)))
