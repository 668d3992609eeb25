"""Publish the node probe where existing fleet tools read it; numahook has no manager of its own.

Three consumers, three files, each replaced atomically (temporary file in the same
directory, then rename) so a reader never sees half of one:

- ``<state_dir>/node.json``: the JSON status for any manager (docs/status-schema.md).
- ``<nfd_dir>/numahook``: a node-feature-discovery local feature file; nfd-worker turns
  its lines into Kubernetes node labels and ignores dot files, our temporary files.
- ``<textfile_dir>/numahook.prom``: Prometheus text format for node_exporter's textfile
  collector, which reads only ``*.prom`` and takes no timestamps.

The NFD and metrics files are written only where their consumer's directory already
exists: creating ``/etc/kubernetes/...`` on a host without Kubernetes, or a textfile
directory node_exporter does not read, would publish to nobody.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple

from numahook import SCHEMA_VERSION, __version__
from numahook.core.units import counted
from numahook.errors import InputError, StateError
from numahook.host import fsutil
from numahook.node.model import NodeCapability, size_name

log = logging.getLogger(__name__)

STATUS_FILE = "node.json"
NFD_FILE = "numahook"
#: Our NFD label namespace; names with a domain are never auto-prefixed by NFD.
LABEL_NS = "numahook.io"
#: Top-level sections the daemon may add to node.json.
EXTRA_SECTIONS = ("domains", "daemon")
#: nfd-worker ignores a feature file larger than this.
NFD_MAX_BYTES = 65536

_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")


def _utc(now: datetime | None) -> datetime:
    return (now or datetime.now(timezone.utc)).astimezone(timezone.utc)


def rfc3339(when: datetime) -> str:
    """``2024-05-01T12:00:00Z``: what NFD's expiry-time parses and JSON readers expect."""
    return _utc(when).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def consumer_dir(directory: str | os.PathLike[str], what: str) -> Path | None:
    """The directory a consumer (NFD, node_exporter) reads, or None when it is not installed.

    Shared with node/metrics.py: both publish only where someone reads.
    """
    path = Path(directory)
    if not path.is_dir():
        log.debug("%s is not a directory, so %s is not installed; not publishing there",
                  path, what)
        return None
    return path


# --------------------------------------------------------------------------- JSON status


#: Keys every entry of the daemon's ``domains`` list carries (docs/status-schema.md).
DOMAIN_KEYS = ("name", "uuid", "state")


def _section(key: str, value: Any) -> Any:
    if key != "domains":
        return dict(value)
    out = []
    for entry in value:
        missing = [k for k in DOMAIN_KEYS if k not in entry]
        if missing:
            raise InputError(f"a domains entry lacks {', '.join(missing)}; see "
                             "docs/status-schema.md")
        out.append(dict(entry))
    return out


def status_document(cap: NodeCapability, extra: Mapping[str, Any] | None = None,
                    now: datetime | None = None) -> dict[str, Any]:
    """The node.json object: schema version, time, generator, the node, daemon sections."""
    doc: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "generated_at": rfc3339(_utc(now)),
        "generator": f"numahook {__version__}",
        "node": cap.to_json(),
    }
    for key, value in (extra or {}).items():
        if key not in EXTRA_SECTIONS:
            raise InputError(f"node.json has no section {key!r}; use one of "
                             f"{', '.join(EXTRA_SECTIONS)}")
        doc[key] = _section(key, value)
    return doc


def write_status(cap: NodeCapability, state_dir: str | os.PathLike[str],
                 extra: Mapping[str, Any] | None = None, now: datetime | None = None) -> Path:
    """Write ``<state_dir>/node.json`` atomically, mode 0644.

    The file is world-readable so monitoring can read it, but numahook keeps its state
    directory 0700: a reader needs root, or a copy made by the operator. ``extra`` adds the
    daemon's sections: ``domains`` (a list, see :data:`DOMAIN_KEYS`) and ``daemon``.
    """
    path = Path(state_dir) / STATUS_FILE
    try:
        text = json.dumps(status_document(cap, extra, now), indent=2, sort_keys=True) + "\n"
    except (TypeError, ValueError) as exc:
        raise InputError(f"the node status is not plain JSON data ({exc}); report a bug") from None
    # not durable: numahookd rewrites it every pass and at start; fsync cost it more than
    # anything else it does while idle
    fsutil.atomic_write(path, text, 0o644, durable=False)
    return path


# --------------------------------------------------------------------------- NFD


def nfd_labels(cap: NodeCapability) -> dict[str, str]:
    """Node labels, in a stable order.

    ``realtime`` follows KubeVirt: present (``true``) only on a capable node, so the
    existence selector ``-l numahook.io/realtime`` selects exactly the capable nodes.
    The other booleans are always written, true or false. No label counts free
    resources (those are in the metrics and node.json): the Node's labels change when the
    host's configuration does (kernel, command line, mounts, numahook.conf) or libvirt
    comes and goes, not at every VM start and stop.
    """

    def flag(value: bool) -> str:
        return "true" if value else "false"

    labels: dict[str, str] = {}
    if cap.realtime_capable:
        labels["realtime"] = "true"
    labels["realtime-start"] = cap.start_policy.mode
    labels["preempt-rt"] = flag(cap.preempt_rt)
    labels["rt-group-sched"] = flag(cap.rt_group_sched)
    labels["isolcpus"] = flag(bool(cap.isolcpus))
    labels["nohz-full"] = flag(bool(cap.nohz_full))
    labels["numa-nodes"] = str(len(cap.nodes))
    labels["cgroup-version"] = str(cap.cgroup_version)
    # whether libvirt can back guests with pages of that size (a hugetlbfs is mounted for
    # it), not how many are free: a count would relabel the Node at every VM start and stop
    mounted = {m.pagesize_kib for m in cap.hugetlbfs}
    for size in cap.page_sizes():
        labels[f"hugepages-{size_name(size)}"] = flag(size in mounted)
    if cap.libvirt_reachable is not None:
        labels["libvirt"] = flag(cap.libvirt_reachable)
    return {f"{LABEL_NS}/{k}": v for k, v in labels.items()}


def _check_label(key: str, value: str) -> None:
    prefix, _, name = key.partition("/")
    if prefix != LABEL_NS or not _LABEL_NAME.fullmatch(name) or not _LABEL_VALUE.fullmatch(value):
        raise InputError(f"{key}={value} is not a valid Kubernetes label; report a bug")


def nfd_text(cap: NodeCapability, ttl: float | None = None, now: datetime | None = None) -> str:
    """The feature file. ``ttl`` seconds from ``now`` becomes ``# +expiry-time``."""
    lines = ["# numahook node features for node-feature-discovery; numahookd rewrites this",
             "# file on every probe and removes it when it stops."]
    if ttl is not None:
        lines.append(f"# +expiry-time={rfc3339(_utc(now) + timedelta(seconds=ttl))}")
    for key, value in nfd_labels(cap).items():
        _check_label(key, value)
        lines.append(f"{key}={value}")
    text = "\n".join(lines) + "\n"
    if len(text.encode()) > NFD_MAX_BYTES:
        raise InputError(f"the NFD feature file would exceed {NFD_MAX_BYTES} bytes; report a bug")
    return text


def write_nfd(cap: NodeCapability, nfd_dir: str | os.PathLike[str], ttl: float | None = None,
              now: datetime | None = None, hint: Mapping[int, str] | None = None
              ) -> Path | None:
    """Write ``<nfd_dir>/numahook`` atomically (0644); None when NFD's directory is absent.

    Pass ``ttl`` (seconds, e.g. three probe intervals) so NFD drops the labels by itself
    if numahookd dies without :func:`remove_nfd`; nfd-worker checks expiry at each
    re-discovery (every minute by default). ``hint``: as fsutil.atomic_write's.
    """
    directory = consumer_dir(nfd_dir, "node-feature-discovery")
    if directory is None:
        return None
    path = directory / NFD_FILE
    fsutil.atomic_write(path, nfd_text(cap, ttl, now), 0o644, durable=False, hint=hint)
    return path


def remove_nfd(nfd_dir: str | os.PathLike[str]) -> bool:
    """Remove our feature file at shutdown so NFD drops the labels; True if one was removed."""
    return remove_published(Path(nfd_dir) / NFD_FILE,
                   "so node-feature-discovery drops numahook's labels")


def remove_published(path: Path, why: str) -> bool:
    """Unlink a published file at shutdown; a failure names the file and why it matters."""
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StateError(f"removing {path} failed: {exc.strerror or exc}; remove it by hand "
                         f"{why}") from None
    return True


# --------------------------------------------------------------------------- sd_notify


class DomainCounts(NamedTuple):
    """``managed`` is None until libvirt has listed the inactive definitions: the running
    ones are known from files, the others only from libvirt."""

    managed: int | None
    running: int


def status_line(cap: NodeCapability,
                domains_summary: DomainCounts | Mapping[str, int | None] | None = None) -> str:
    """The one-line sd_notify ``STATUS=`` text that ``systemctl status numahookd`` shows."""
    facts = f"sched_rt_runtime_us={cap.sched_rt_runtime_us}"
    if not (cap.realtime_capable and cap.start_policy.ok):
        facts += f", realtime starts: {cap.start_policy.mode}"
    parts = [f"{'' if cap.realtime_capable else 'not '}realtime capable ({facts})"]
    if domains_summary is not None:
        counts = (domains_summary._asdict() if isinstance(domains_summary, DomainCounts)
                  else dict(domains_summary))
        managed, running = counts.get("managed"), counts.get("running") or 0
        if managed is None:
            parts.append(f"{running} running, still counting the managed domains")
        else:
            parts.append(f"{counted(managed, 'managed domain')}, {running} running")
    if cap.libvirt_reachable is False:
        parts.append("libvirt unreachable")
    return "; ".join(parts).replace("\n", " ")
