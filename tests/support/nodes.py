"""The node probe on fixture hosts, and the daemon's parts of node.json.

tests/unit/node (probe, publish, promtool), tests/unit/test_cli.py (numahook node) and
tests/unit/test_schemas.py all probe the
same fixture hosts; they share these builders so that a fixture fix reaches all of them.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from numahook.config import Config
from numahook.node import model, probe
from tests.fixtures.hosts import HostSpec, host_roots

#: /proc/mounts with a hugetlbfs for each of the fixture hosts' page sizes
MOUNTS = ("sysfs /sys sysfs rw,nosuid,nodev,noexec,relatime 0 0\n"
          "hugetlbfs /dev/hugepages hugetlbfs rw,relatime,pagesize=2M 0 0\n"
          "hugetlbfs /dev/hugepages1G hugetlbfs rw,relatime,pagesize=1024M 0 0\n")

#: the reason, with its fix, that a node with RT throttling on (the fixtures' 950000) is not
#: real-time capable: the probe's tests and the CLI's ``numahook node`` tests expect it
SYSCTL_FIX = ("kernel.sched_rt_runtime_us is 950000: RT throttling is on; run `sysctl -w "
              "kernel.sched_rt_runtime_us=-1`")

#: a fixed "now" for documents that carry a time
NOW = datetime(2024, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def make_host(tmp_path: Path, name: str | HostSpec, version: int = 1,
              runtime: int | None = None, mounts: str | None = None) -> Config:
    """A fixture host (a catalogue name or a spec) as a Config; ``runtime`` rewrites
    kernel.sched_rt_runtime_us.

    The fixture's v1 cpu controller has cpu.rt_runtime_us but no cpu.shares, which is how
    rtsched tells v1 from v2, so it is added here as every real v1 cpu hierarchy has it.
    """
    roots = host_roots(tmp_path, name, version)
    if version == 1:
        cpu = roots["cgroup"] / "cpu,cpuacct"
        for d in [cpu, *(p for p in cpu.rglob("*") if p.is_dir())]:
            (d / "cpu.shares").write_text("1024\n")
    if runtime is not None:
        (roots["proc"] / "sys/kernel/sched_rt_runtime_us").write_text(f"{runtime}\n")
    if mounts is not None:
        (roots["proc"] / "mounts").write_text(mounts)
    return Config(sysfs_root=str(roots["sysfs"]), cgroup_root=str(roots["cgroup"]),
                  proc_root=str(roots["proc"]), state_dir=str(tmp_path / "run"))


def capability(tmp_path: Path, name: str = "intel-2s-ht-rt", runtime: int = -1,
               version: int = 1, libvirt: bool | None = True) -> model.NodeCapability:
    """Probe a fixture host with every hugetlbfs mounted (the host lives in tmp_path/host)."""
    return probe.probe(make_host(tmp_path / "host", name, version, runtime, MOUNTS), libvirt)


#: one running managed domain as numahookd lists it in node.json (and status --json)
DOMAIN = {"name": "rt1", "uuid": "c7a5fdbd-cdaf-9455-926a-d65c16db1809", "state": "running",
          "pid": 4242, "cpus": "2-5", "emulator": "6", "emulator_now": "6",
          "cells": [{"id": 0, "vcpus": "0-3", "memory_kib": 4194304, "host_nodes": "0"}],
          "memory": {"mode": "strict", "host_nodes": "0"},
          "vcpus": [{"vcpu": 0, "cpus": "2", "realtime": True, "tid": 4250, "policy": "fifo",
                     "priority": 1}],
          "realtime_ok": True,
          "claim": {"phase": "running", "cpus": "2-6", "hugepages_added": {"node0:1048576kB": 4},
                    "hugepages_need": {"node0:1048576kB": 4}, "rt_budget_files": 0,
                    "power_files": 5, "name": "rt1"},
          "devices": [{"bdf": "0000:18:00.0", "kind": "hostdev", "present": True,
                       "host_node": 0, "root_complex": "pci0000:17",
                       "placement": "expander-bus", "cell": 0, "bus": 1, "bus_nr": 254,
                       "port": 2, "address": "0000:02:00.0", "why": ""}],
          "kvm_pit": {"tid": 4261, "cpus": "2", "vcpu0_cpus": "2"},
          "power": {"cpus": "2-6", "idle_states": "disable", "governor": None,
                    "now": [{"cpu": c, "pm_qos_resume_latency_us": "n/a",
                             "scaling_governor": "performance"} for c in range(2, 7)],
                    "ok": True, "notes": []}}
#: numahookd's own section of node.json
DAEMON = {"orphan_claims": [], "reconcile_passes": 12, "last_pass_seconds": 0.004,
          "refused": {}}
