"""The metrics per managed domain, per NUMA node, and the refusals: what an operator alerts
on ("a real-time domain lost FIFO", "starts are being refused", "node 1 has no dedicated
CPU left"), beside the node's own metrics (numahook/node/metrics.py).

Label sets stay bounded: one series per domain, or per domain and host node (and page
size, of which a host has one or two), never per vCPU or thread; refusals by stage and
check name, names the code defines (ops/refusals.py). numahookd rewrites the whole file
at every publish, so a domain's series go with its definition: an undefined domain is
in neither status.collect's running list nor the reconciler's inactive one.

Built in the publisher's thread from a snapshot the loop took (status.collect's document,
the reconciler's lists): the few files read here (the refusal counts under the state
directory, the partition's cpuset) are then off numahookd's loop.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from numahook.config import Config
from numahook.core import cpulist
from numahook.errors import NumahookError
from numahook.host import cgroups
from numahook.node.metrics import Metric
from numahook.node.model import NodeCapability
from numahook.ops import refusals

log = logging.getLogger(__name__)

#: a pool as status.collect names it (docs/schemas/status.schema.json): ``node0:2048kB``
_POOL = re.compile(r"node(\d+):(\d+)kB")

#: every family this module can export, for the dashboard's test and the docs
NAMES = ("numahook_managed_domains_defined", "numahook_managed_domains_unrenderable",
         "numahook_domain_running", "numahook_domain_realtime_vcpus",
         "numahook_domain_realtime_vcpus_fifo", "numahook_domain_pinned_cpus",
         "numahook_domain_hugepages", "numahook_dedicated_cpus",
         "numahook_dedicated_cpus_free", "numahook_refusals_total")


def node_of(cap: NodeCapability) -> dict[int, int]:
    """CPU -> its NUMA node, as the probe found them (online CPUs only)."""
    return {cpu: n.id for n in cap.nodes for cpu in n.cpus}


def _per_node(cpus: Iterable[int], nodes: Mapping[int, int]) -> Counter[int]:
    return Counter(nodes[c] for c in cpus if c in nodes)


def _held(entry: Mapping[str, Any]) -> frozenset[int]:
    """A running domain's CPUs: its pins (vCPUs, emulator, IO threads, held siblings), and
    what its claim holds besides, as hostinputs counts them taken."""
    claim = entry.get("claim") or {}
    return cpulist.parse(entry.get("cpus") or "") | cpulist.parse(claim.get("cpus") or "")


def _pages(claim: Mapping[str, Any] | None) -> dict[tuple[int, int], int]:
    """(node, page size in KiB) -> pages the claim's domain takes there (its need)."""
    out: dict[tuple[int, int], int] = {}
    for label, n in ((claim or {}).get("hugepages_need") or {}).items():
        m = _POOL.fullmatch(label)
        if m and n:
            out[(int(m.group(1)), int(m.group(2)))] = int(n)
    return out


def _holders(doc: Mapping[str, Any]) -> list[tuple[str, frozenset[int], dict[Any, int]]]:
    """(name, CPUs, pages) of every running domain and of every claim without one (a
    start between prepare and QEMU, or an orphan numahookd releases): all hold CPUs."""
    out = [(d["name"], _held(d), _pages(d.get("claim"))) for d in doc.get("running", ())]
    out += [(c.get("name") or c["uuid"], cpulist.parse(c.get("cpus") or ""), _pages(c))
            for c in doc.get("orphan_claims", ())]
    return out


def _dedicated(cfg: Config, cap: NodeCapability, held: frozenset[int]) -> list[Metric]:
    """The default partition's CPUs per node, and those no managed domain holds: what a
    new dedicated domain can still get there."""
    try:
        partition = cgroups.partition_cpuset(cfg.cgroup_root, None).cpus
    except NumahookError as exc:
        log.debug("no dedicated CPU metrics: %s", exc)
        return []
    total = [({"node": str(n.id)}, len(n.cpus & partition)) for n in cap.nodes]
    free = [({"node": str(n.id)}, len((n.cpus & partition) - held)) for n in cap.nodes]
    return [
        Metric.gauge("numahook_dedicated_cpus",
                     f"CPUs of the {cgroups.DEFAULT_PARTITION} partition's cpuset per NUMA "
                     "node: what dedicated domains are placed from.", samples=total),
        Metric.gauge("numahook_dedicated_cpus_free",
                     f"CPUs of the {cgroups.DEFAULT_PARTITION} partition's cpuset per NUMA "
                     "node that no managed domain holds.", samples=free),
    ]


def domain_metrics(cfg: Config, cap: NodeCapability, doc: Mapping[str, Any], listed: bool,
                   unrenderable: Collection[str] = ()) -> list[Metric]:
    """The families above, empty ones left out.

    ``doc``: status.collect's document with the reconciler's inactive definitions as its
    ``inactive`` list; ``listed``: libvirt has listed the definitions (before, only the
    running ones are known, so the count of defined ones is left out); ``unrenderable``:
    names of definitions numahookd could not render (its Stats.refused).
    """
    nodes = node_of(cap)
    running = {d["name"]: d for d in doc.get("running", ())}
    inactive = {d["name"] for d in doc.get("inactive", ())} - set(running)
    per_domain = [({"domain": name}, 1) for name in sorted(running)]
    per_domain += [({"domain": name}, 0) for name in sorted(inactive)]
    wanted, fifo = [], []
    for name in sorted(running):
        rt = [v for v in running[name].get("vcpus", ()) if v["realtime"] and v["tid"]]
        wanted.append(({"domain": name}, len(rt)))
        fifo.append(({"domain": name}, sum(v["policy"] == "fifo" for v in rt)))
    cpus: Counter[tuple[str, int]] = Counter()
    pages: Counter[tuple[str, int, int]] = Counter()
    held: set[int] = set()
    for name, mine, need in _holders(doc):
        held |= mine
        for node, n in _per_node(mine, nodes).items():
            cpus[(name, node)] += n  # two claims of one name (a rename) add up
        for (node, size), n in need.items():
            pages[(name, node, size)] += n
    counts = refusals.counts(cfg.state_dir)
    families = [
        Metric.gauge("numahook_managed_domains_defined",
                     "Managed domains libvirt knows, running or defined; left out until "
                     "libvirt has listed the definitions.",
                     samples=[({}, len(running) + len(inactive))] if listed else ()),
        Metric.gauge("numahook_managed_domains_unrenderable",
                     "Inactive managed definitions numahookd cannot render on this host "
                     "now: their start would be refused.",
                     samples=[({}, len(inactive & set(unrenderable)))] if listed else ()),
        Metric.gauge("numahook_domain_running",
                     "1 for a managed domain libvirt runs (or pauses), 0 for one only "
                     "defined.", samples=per_domain),
        Metric.gauge("numahook_domain_realtime_vcpus",
                     "vCPUs the domain's realtime mask selects, among those present.",
                     samples=wanted),
        Metric.gauge("numahook_domain_realtime_vcpus_fifo",
                     "Of the domain's real-time vCPUs, those whose thread runs SCHED_FIFO "
                     "now.", samples=fifo),
        Metric.gauge("numahook_domain_pinned_cpus",
                     "Host CPUs the domain holds per NUMA node: its vCPUs', emulator's and "
                     "IO threads' pins and the siblings it holds idle.",
                     samples=[({"domain": d, "node": str(n)}, v)
                              for (d, n), v in sorted(cpus.items())]),
        Metric.gauge("numahook_domain_hugepages",
                     "Hugepages the domain's memory takes per NUMA node and page size.",
                     samples=[({"domain": d, "node": str(n), "size_bytes": str(s * 1024)}, v)
                              for (d, n, s), v in sorted(pages.items())]),
        *_dedicated(cfg, cap, frozenset(held)),
        Metric.counter("numahook_refusals_total",
                       "Refusals by the hook call that refused (stage) or numahookd's "
                       "rendering (render), and the check that failed.",
                       samples=[({"stage": s, "check": c}, n)
                                for (s, c), n in sorted(counts.items())]),
    ]
    return [m for m in families if m.samples]
