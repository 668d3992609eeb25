"""Read :class:`~numahook.core.topology.Topology` from a sysfs tree (``/sys`` or a fixture)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from numahook import log as logmod
from numahook.core import cpulist
from numahook.core.pci import HostPci, is_bdf
from numahook.core.topology import Cpu, HugepagePool, Node, Topology
from numahook.core.units import is_decimal
from numahook.errors import InputError
from numahook.host import fsutil

log = logmod.get(__name__)

_MEMTOTAL = re.compile(r"^Node\s+[0-9]+\s+MemTotal:\s+([0-9]{1,15})\s+kB", re.MULTILINE)
_PAGEDIR = re.compile(r"hugepages-([0-9]{1,9})kB")
#: a host bridge in a device's sysfs path: the PCI root complex (segment and root bus)
_ROOT_COMPLEX = re.compile(r"pci[0-9a-f]{4}:[0-9a-f]{2}")
_MAX_FILE = 1 << 16


def _read(path: str) -> str:
    return fsutil.read_text(path, _MAX_FILE)


def _read_int(path: str, default: int | None = None) -> int:
    if default is not None and not fsutil.exists(path):
        return default
    return fsutil.read_int(path)


def _pools(directory: str) -> dict[int, HugepagePool]:
    pools: dict[int, HugepagePool] = {}
    if not fsutil.is_dir(directory):
        return pools
    for entry in sorted(os.listdir(directory)):
        m = _PAGEDIR.fullmatch(entry)
        if not m:
            continue
        d = os.path.join(directory, entry)
        size = int(m.group(1))
        pools[size] = HugepagePool(
            size_kib=size,
            nr=_read_int(os.path.join(d, "nr_hugepages")),
            free=_read_int(os.path.join(d, "free_hugepages")),
            surplus=_read_int(os.path.join(d, "surplus_hugepages"), 0),
        )
    return pools


def read_topology(root: str | os.PathLike[str] = "/sys") -> Topology:
    """Read online CPUs and nodes. Offline CPUs are absent; CPU-less nodes have no CPUs."""
    sysroot = fsutil.clean(root)
    cpu_dir = os.path.join(sysroot, "devices/system/cpu")
    node_dir = os.path.join(sysroot, "devices/system/node")
    online_cpus = cpulist.parse(_read(os.path.join(cpu_dir, "online")), f"{cpu_dir}/online")

    node_cpus: dict[int, frozenset[int]] = {}
    nodes_online_file = os.path.join(node_dir, "online")
    if fsutil.exists(nodes_online_file):
        node_ids = sorted(cpulist.parse(_read(nodes_online_file), nodes_online_file))
    else:  # CONFIG_NUMA=n: one node holding everything
        node_ids = []
    for n in node_ids:
        path = os.path.join(node_dir, f"node{n}/cpulist")
        node_cpus[n] = cpulist.parse(_read(path), path) & online_cpus
    if not node_ids:
        node_ids = [0]
        node_cpus[0] = online_cpus
    cpu_node = {c: n for n, cs in node_cpus.items() for c in cs}

    cpus: dict[int, Cpu] = {}
    for c in sorted(online_cpus):
        topo = os.path.join(cpu_dir, f"cpu{c}/topology")
        if c not in cpu_node:
            log.warning("CPU %d is online but in no NUMA node; ignoring it", c)
            continue
        sib_path = os.path.join(topo, "thread_siblings_list")
        siblings = (
            cpulist.parse(_read(sib_path), sib_path) & online_cpus
            if fsutil.exists(sib_path)
            else frozenset({c})
        )
        cpus[c] = Cpu(
            id=c,
            node=cpu_node[c],
            package=_read_int(os.path.join(topo, "physical_package_id"), 0),
            die=_read_int(os.path.join(topo, "die_id"), 0),
            core=_read_int(os.path.join(topo, "core_id"), c),
            siblings=siblings | {c},
        )

    nodes: dict[int, Node] = {}
    for n in node_ids:
        d = os.path.join(node_dir, f"node{n}")
        memory = 0
        if fsutil.exists(os.path.join(d, "meminfo")):
            m = _MEMTOTAL.search(_read(os.path.join(d, "meminfo")))
            memory = int(m.group(1)) if m else 0
        distances: dict[int, int] = {}
        if fsutil.exists(os.path.join(d, "distance")):
            row = _read(os.path.join(d, "distance")).split()
            if len(row) == len(node_ids) and all(is_decimal(v) for v in row):
                distances = {node_ids[i]: int(v) for i, v in enumerate(row)}
            else:
                log.warning("%s does not list one distance per online node; ignoring it", d)
        nodes[n] = Node(
            id=n,
            cpus=node_cpus[n],
            memory_kib=memory,
            hugepages=_pools(os.path.join(d, "hugepages")),
            distances=distances,
        )

    global_pools = _pools(os.path.join(sysroot, "kernel/mm/hugepages"))
    sizes = frozenset(global_pools) or frozenset(s for n in nodes.values() for s in n.hugepages)
    return Topology(cpus=cpus, nodes=nodes, page_sizes=sizes, default_page_kib=_default_page(sizes))


_NODE_LINK = re.compile(r"node([0-9]{1,5})")


def offline_cpus(root: str | os.PathLike[str] = "/sys") -> dict[int, int | None]:
    """Present CPUs that are offline -> their node, or None where sysfs does not say.

    :func:`read_topology` leaves them out (they have no topology/ and no place in their
    node's cpulist), but a map of the host must show them; the kernel keeps each one's
    ``cpuN/nodeM`` link while it is offline, which is where its node is read from.
    """
    cpu_dir = os.path.join(fsutil.clean(root), "devices/system/cpu")
    try:
        present = cpulist.parse(_read(os.path.join(cpu_dir, "present")), f"{cpu_dir}/present")
        online = cpulist.parse(_read(os.path.join(cpu_dir, "online")), f"{cpu_dir}/online")
    except InputError as exc:
        log.warning("cannot tell which CPUs are offline: %s", exc)
        return {}
    out: dict[int, int | None] = {}
    for c in sorted(present - online):
        try:
            names = os.listdir(os.path.join(cpu_dir, f"cpu{c}"))
        except OSError:
            names = []
        nodes = [int(m.group(1)) for m in map(_NODE_LINK.fullmatch, names) if m]
        out[c] = nodes[0] if len(nodes) == 1 else None
    return out


def _default_page(sizes: frozenset[int]) -> int:
    # The kernel's default is the smallest supported size on x86 unless
    # default_hugepagesz= is given; /proc/meminfo says it, and the caller may override.
    return min(sizes) if sizes else 2048


def default_page_kib(proc_root: str | os.PathLike[str] = "/proc") -> int | None:
    """``Hugepagesize:`` from ``/proc/meminfo``: the size libvirt uses for a bare <hugepages/>."""
    try:
        text = _read(os.path.join(fsutil.clean(proc_root), "meminfo"))
    except InputError:
        return None
    m = re.search(r"^Hugepagesize:\s+([0-9]{1,9})\s+kB", text, re.MULTILINE)
    return int(m.group(1)) if m else None


def read_pci(root: str | os.PathLike[str], bdfs: Iterable[str]) -> dict[str, HostPci]:
    """Each device's NUMA node and root complex, for the devices a domain passes through.

    ``/sys/bus/pci/devices/<BDF>`` links to the device under the host bridge it hangs off
    (``devices/pci0000:17/0000:17:00.0/0000:18:00.0``): that ``pciDDDD:BB`` component is
    its root complex. ``numa_node`` holds -1 where the firmware gives no affinity.
    """
    out: dict[str, HostPci] = {}
    for bdf in bdfs:
        if not is_bdf(bdf):
            raise InputError(f"{bdf!r} is not a PCI device name like 0000:18:00.0")
        path = fsutil.under(root, "bus/pci/devices", bdf)  # refuses links out of the root
        if not fsutil.exists(path):
            out[bdf] = HostPci(bdf, present=False)
            continue
        node = _read_int(os.path.join(path, "numa_node"), -1)
        rel = os.path.relpath(os.path.realpath(path), os.path.realpath(root))
        bridges = [c for c in rel.split(os.sep) if _ROOT_COMPLEX.fullmatch(c)]
        out[bdf] = HostPci(bdf, present=True, node=node if node >= 0 else None,
                           root_complex=bridges[0] if bridges else None)
    return out
