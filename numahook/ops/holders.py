"""Who holds what on this host: the map ``numahook status`` draws, and the free dedicated
CPUs per node that ``numahook node`` lists.

The holders are those of ``status.collect``'s document (running managed domains by their
live definitions, then claims without a running domain), so the map, the status lines,
the metrics (daemon/domainmetrics.py) and the refusals (ops/hostinputs.py's holders)
agree on who holds a CPU. Files only, like ``status``.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from numahook.config import Config
from numahook.core import cpulist, hostmap
from numahook.errors import NumahookError
from numahook.host import cgroups, sysfs
from numahook.ops import status

log = logging.getLogger(__name__)


def host_map(cfg: Config, doc: Mapping[str, Any]) -> hostmap.HostMap:
    """The map of this host for ``doc`` (``status.collect``'s). Dedicated CPUs come from
    the default partition's cpuset, as the metrics count them; when it cannot be read,
    every CPU no domain holds is drawn free (and the warning says why)."""
    topo = sysfs.read_topology(cfg.sysfs_root)
    try:
        partition: frozenset[int] | None = cgroups.partition_cpuset(cfg.cgroup_root, None).cpus
    except NumahookError as exc:
        log.warning("the map cannot tell free CPUs from the host's own: %s", exc)
        partition = None
    notes = {d["name"]: status.differs(d) for d in doc.get("running", ()) if status.differs(d)}
    slots, holders = hostmap.roles(doc, notes)
    return hostmap.build(topo, sysfs.offline_cpus(cfg.sysfs_root), slots, holders,
                         cgroups.DEFAULT_PARTITION, partition, cfg.shared_cpus)


def of_host(cfg: Config) -> hostmap.HostMap | None:
    """The map from the files alone, for ``numahook node``: None (logged) when the state
    or libvirt's status files cannot be read, since the node report stands without it."""
    try:
        return host_map(cfg, status.collect(cfg))
    except NumahookError as exc:
        log.warning("cannot tell which domains hold CPUs: %s", exc)
        return None


def node_rows(m: hostmap.HostMap) -> list[tuple[str, str]]:
    """``numahook node``'s rows: per node, the free dedicated CPUs and who holds the rest."""
    rows = []
    for node, mine, free, held in hostmap.dedicated(m):
        text = (f"{cpulist.format(free) or 'none'} free ({len(free)} of the {len(mine)} CPUs "
                f"of {m.partition}'s cpuset here")
        text += "".join(f"; {name} holds {cpulist.format(cpus)}" for name, cpus in held.items())
        rows.append((f"dedicated node{node}", text + ")"))
    return rows


def node_json(m: hostmap.HostMap) -> dict[str, Any]:
    """``numahook node --json``'s ``dedicated`` (docs/json.md)."""
    return {"partition": m.partition,
            "nodes": [{"id": node, "cpus": cpulist.format(mine), "free": cpulist.format(free),
                       "held": {name: cpulist.format(cpus) for name, cpus in held.items()}}
                      for node, mine, free, held in hostmap.dedicated(m)]}
