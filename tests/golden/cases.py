"""Golden cases: an input domain, a fixture host and its cgroup tree -> ``<case>-out.xml``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: the golden outputs, ``<case>-out.xml``
DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Case:
    id: str
    source: str
    host: str
    cgroup_version: int = 1
    #: cgroup dir -> cpulist; None means every online CPU in the root and machine groups
    cpusets: dict[str, str] | None = None
    #: numahook.conf text the case renders under (``[cpus] shared``)
    config: str = ""


CASES = [
    Case("single-numavm", "numavm", "single"),
    Case("intel-numavm", "numavm", "intel-2s-ht"),
    # 48 vCPUs as 24 two-thread cores span both sockets: two cells, SLIT distances
    Case("intel-wide", "wide-ht", "intel-2s-ht"),
    # isolcpus host, cpuset limited to the isolated CPUs; 1 GiB pages, iothread, mask
    Case("intelrt-realtime", "realtime", "intel-2s-ht-rt",
         cpusets={"": "0-79", "machine": "2-19,42-59"}),
    # NPS4: 16 CPUs per node, 48 vCPUs -> three nodes; cgroup v2, systemd layout
    Case("epyc-wide-v2", "wide-ht", "epyc-nps4", cgroup_version=2),
    # cpuset straddles two nodes with two CPUs each: an asymmetric split is impossible to
    # avoid, so two cells of two vCPUs
    Case("quad-numavm-split-v2", "numavm", "quad-nosmt", cgroup_version=2,
         cpusets={"": "0-31", "machine.slice": "6-9"}),
    # node3 has CPUs but no memory: passthrough must not put a cell there
    Case("asym-numavm", "numavm", "asym-cpuless", cpusets={"": "0-19", "machine": "10-19"}),
    Case("offline-numavm", "numavm", "offline-cpus"),
    # dedicated only, partition /machine/rt as libvirt names it without systemd
    Case("intel-dedicated-partition", "dedicated-only", "intel-2s-ht",
         cpusets={"": "0-79", "machine": "0-79", "machine/rt.partition": "2-4,42-44"}),
    # 24 vCPUs as 12 two-thread cores, exclusion-only mask, isolated emulator and shared
    # IO threads on an NPS4 host with a v2 systemd partition
    Case("epyc-realtime-v2-systemd", "realtime-2m", "epyc-nps4", cgroup_version=2,
         cpusets={"": "0-63", "machine.slice": "4-63"}),
    # hugepages without passthrough (issue 25): vCPUs and isolated emulator on the one node
    # with room for all seven (node 1), all memory bound strict there, no guest cells
    Case("intel-hugepages-dedicated", "hugepages-dedicated", "intel-2s-ht",
         cpusets={"": "0-79", "machine": "18-27,58-59"}),
    # passthrough devices (intel-2s-io): 48 vCPUs over both sockets, so two cells; one
    # expander bus per cell and host root complex (NIC ports and a VF share one), the
    # numa_node -1 card on pcie.0, the user's explicit address kept
    Case("intel-io-wide", "io-wide", "intel-2s-io"),
    # pciNumaAffinity required with the NIC on node 1: cell 0 is host node 1; isolate
    # holds the vCPUs' siblings (<numahook:rendered held>)
    Case("intel-io-required", "io-required", "intel-2s-io"),
    # as libvirt stores a definition: the GPU on libvirt's root port of pcie.0 moves to a
    # root port behind the expander bus of its cell; threadPolicy require
    Case("intel-io-defined", "io-defined", "intel-2s-io"),
    # the host VM lab's bug (issue 25): 3 real-time vCPUs span two nodes of two CPUs, the
    # isolated emulator on node 1. While QEMU starts, <emulatorpin> also holds a CPU of
    # node 0, where cell 0's memory is preallocated; <numahook:rendered emulator> keeps
    # the emulator's own CPU for the narrowing at started (core/prealloc.py)
    Case("quad-rt-span-v2", "rt-span", "quad-nosmt", cgroup_version=2,
         cpusets={"": "0-31", "machine.slice": "6-9"}),
    # the same without isolation, mask 0-2,^1: the emulator floats on vCPU 1's CPU (node
    # 0) and borrows real-time vCPU 2's, the only CPU the domain holds on node 1
    Case("quad-rt-span-mask-v2", "rt-span-mask", "quad-nosmt", cgroup_version=2,
         cpusets={"": "0-31", "machine.slice": "6-9"}),
    # emulatorThreadPolicy share (issue 29): a real-time domain's emulator and IO threads on
    # the shared core 0 (CPUs 0 and 40), SCHED_OTHER: no <emulatorsched>, and 4 dedicated
    # CPUs for 4 vCPUs, none of them from the shared set
    Case("intel-share-realtime", "share-realtime", "intel-2s-ht", config="[cpus]\nshared = 0,40\n"),
    # shared CPUs on node 0, the vCPUs on node 1: while QEMU starts, <emulatorpin> also
    # holds non-real-time vCPU 0's CPU on node 1 for cell 0's preallocation; <numahook:
    # rendered emulator> keeps the shared set for the narrowing at started
    Case("quad-share-span-v2", "share-span", "quad-nosmt", cgroup_version=2,
         cpusets={"": "0-31", "machine.slice": "0-1,8-11"}, config="[cpus]\nshared = 0-1\n"),
    # dedicatedMask (issue 29): vCPU 0 floats on the shared core 0 (CPUs 0 and 40) with the
    # emulator and IO thread; vCPUs 1-3 get CPUs of their own on both sockets (the
    # cpuset leaves two per node), so two cells, and vCPU 0 joins cell 0, whose node holds
    # the shared CPUs
    Case("intel-mixed-realtime", "mixed-realtime", "intel-2s-ht",
         cpusets={"": "0-79", "machine": "0,19,20,40,59,60"}, config="[cpus]\nshared = 0,40\n"),
    # the shared CPU (16) on node 2, which holds no cell: floating vCPU 0 joins cell 0; no
    # emulator policy, so the emulator floats over the non-real-time vCPUs' CPUs, vCPU 0's
    # shared one among them
    Case("quad-mixed-span-v2", "mixed-span", "quad-nosmt", cgroup_version=2,
         cpusets={"": "0-31", "machine.slice": "8-9,16"}, config="[cpus]\nshared = 16\n"),
]


#: the host maps ``numahook status`` draws, ``map/<id>.txt`` (tests/golden/test_hostmap.py)
MAPS = DATA / "map"


@dataclass(frozen=True)
class MapCase:
    """Golden domains running on a fixture host, claims of starts, and the map drawn."""

    id: str
    host: str
    #: golden outputs (``<case>-out.xml``) running there, as libvirt's status files
    running: tuple[str, ...]
    cgroup_version: int = 1
    cpusets: dict[str, str] | None = None
    #: (name, cpus) of claims without a running domain: starts between prepare and QEMU
    claims: tuple[tuple[str, str], ...] = ()
    #: (domain, vCPU) of real-time vCPUs whose thread lost SCHED_FIFO
    lost: tuple[tuple[str, int], ...] = ()
    width: int = 80


MAP_CASES = [
    # one node, 2 cores x 2 threads numbered 0,2 / 1,3, all four held
    MapCase("single-numavm", "single", ("single-numavm",)),
    # isolcpus host whose cpuset is the isolated CPUs; real-time vCPU 3 lost FIFO, a start
    # holds two CPUs, the isolated emulator on its own core; 2 x 20 cores wrap in bands
    MapCase("intelrt-realtime", "intel-2s-ht-rt", ("intelrt-realtime",),
            cpusets={"": "0-79", "machine": "2-19,42-59"}, claims=(("starting", "5,45"),),
            lost=(("fedora-realtime", 3),)),
    # two domains: threadPolicy isolate's idle siblings (h), and one on both threads
    MapCase("intel-two-domains", "intel-2s-io", ("intel-io-required", "intel-numavm")),
    # offline CPUs in their node's row, in place
    MapCase("offline-numavm", "offline-cpus", ("offline-numavm",)),
    # a CPU-less node and a memory-less one; the cpuset leaves most CPUs to the host
    MapCase("asym-numavm", "asym-cpuless", ("asym-numavm",),
            cpusets={"": "0-19", "machine": "10-19"}),
    # NPS4 under cgroup v2: four nodes, an exclusion-only mask, an isolated emulator
    MapCase("epyc-realtime-v2", "epyc-nps4", ("epyc-realtime-v2-systemd",), cgroup_version=2,
            cpusets={"": "0-63", "machine.slice": "4-63"}),
    # the emulator's start set borrows vCPU 0's CPU, its own is 9; a 40-column terminal
    MapCase("quad-rt-span-narrow", "quad-nosmt", ("quad-rt-span-v2",), cgroup_version=2,
            cpusets={"": "0-31", "machine.slice": "6-9"}, width=40),
]
