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
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, NamedTuple, Union

from numahook import SCHEMA_VERSION, __version__, fsutil
from numahook.errors import InputError, StateError
from numahook.node import NodeCapability, size_name

log = logging.getLogger(__name__)

STATUS_FILE = "node.json"
NFD_FILE = "numahook"
METRICS_FILE = "numahook.prom"
#: Our NFD label namespace; names with a domain are never auto-prefixed by NFD.
LABEL_NS = "numahook.io"
#: Top-level sections the daemon may add to node.json.
EXTRA_SECTIONS = ("domains", "daemon")
#: nfd-worker ignores a feature file larger than this.
NFD_MAX_BYTES = 65536

_LABEL_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?")
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?")
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_KINDS = ("gauge", "counter", "untyped")


def _utc(now: datetime | None) -> datetime:
    return (now or datetime.now(timezone.utc)).astimezone(timezone.utc)


def rfc3339(when: datetime) -> str:
    """``2024-05-01T12:00:00Z``: what NFD's expiry-time parses and JSON readers expect."""
    return _utc(when).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def _consumer_dir(directory: str | os.PathLike[str], what: str) -> Path | None:
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
              now: datetime | None = None) -> Path | None:
    """Write ``<nfd_dir>/numahook`` atomically (0644); None when NFD's directory is absent.

    Pass ``ttl`` (seconds, e.g. three probe intervals) so NFD drops the labels by itself
    if numahookd dies without :func:`remove_nfd`; nfd-worker checks expiry at each
    re-discovery (every minute by default).
    """
    directory = _consumer_dir(nfd_dir, "node-feature-discovery")
    if directory is None:
        return None
    path = directory / NFD_FILE
    fsutil.atomic_write(path, nfd_text(cap, ttl, now), 0o644, durable=False)
    return path


def remove_nfd(nfd_dir: str | os.PathLike[str]) -> bool:
    """Remove our feature file at shutdown so NFD drops the labels; True if one was removed."""
    return _remove(Path(nfd_dir) / NFD_FILE,
                   "so node-feature-discovery drops numahook's labels")


def _remove(path: Path, why: str) -> bool:
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise StateError(f"removing {path} failed: {exc.strerror or exc}; remove it by hand "
                         f"{why}") from None
    return True


# --------------------------------------------------------------------------- Prometheus

Labels = Mapping[str, str]
SampleLike = Union["Sample", tuple[Labels, float]]


class Sample(NamedTuple):
    labels: Labels
    value: float


@dataclass(frozen=True)
class Metric:
    """One metric family: name, HELP text, TYPE, and its samples (label set -> value).

    ``Metric.gauge("numahook_managed_domains", "Domains numahook manages.", 3)`` for one
    unlabelled sample; pass ``samples=[({"state": "running"}, 2), ...]`` for several.
    """

    name: str
    help: str
    kind: str = "gauge"
    samples: tuple[Sample, ...] = ()

    def __post_init__(self) -> None:
        if not _METRIC_NAME.fullmatch(self.name):
            raise InputError(f"metric name {self.name!r} is not valid in Prometheus; use only "
                             "letters, digits, _ and :, not starting with a digit")
        if self.kind not in _KINDS:
            raise InputError(f"metric type {self.kind!r} is unknown; use one of "
                             f"{', '.join(_KINDS)}")
        seen: set[tuple[tuple[str, str], ...]] = set()
        fixed: list[Sample] = []
        for s in self.samples:
            labels, value = s
            for key in labels:
                if not _LABEL_KEY.fullmatch(key) or key.startswith("__"):
                    raise InputError(f"label name {key!r} of {self.name} is not valid; use "
                                     "letters, digits and _, not starting with __")
            ident = tuple(sorted((k, str(v)) for k, v in labels.items()))
            if ident in seen:
                raise InputError(f"{self.name} has two samples with labels {dict(ident)}; give "
                                 "each sample its own label values")
            seen.add(ident)
            fixed.append(Sample(dict(ident), float(value)))
        object.__setattr__(self, "samples", tuple(fixed))

    @classmethod
    def gauge(cls, name: str, help: str, value: float | None = None,
              samples: Iterable[SampleLike] = ()) -> Metric:
        items = list(samples)
        if value is not None:
            items.insert(0, ({}, value))
        return cls(name, help, "gauge", tuple(Sample(*s) for s in items))

    @classmethod
    def counter(cls, name: str, help: str, value: float | None = None,
                samples: Iterable[SampleLike] = ()) -> Metric:
        items = list(samples)
        if value is not None:
            items.insert(0, ({}, value))
        return cls(name, help, "counter", tuple(Sample(*s) for s in items))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if value.is_integer() and abs(value) < 2**63 else repr(value)


def render_metrics(metrics: Sequence[Metric]) -> str:
    """Prometheus text exposition format 0.0.4: HELP and TYPE, then the samples."""
    names = [m.name for m in metrics]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise InputError(f"metric(s) {', '.join(dupes)} are defined twice; give each one name")
    out: list[str] = []
    for m in metrics:
        out.append(f"# HELP {m.name} {_escape_help(m.help)}")
        out.append(f"# TYPE {m.name} {m.kind}")
        for labels, value in m.samples:
            body = ",".join(f'{k}="{_escape_value(str(v))}"' for k, v in labels.items())
            out.append(f"{m.name}{{{body}}} {_number(value)}" if body
                       else f"{m.name} {_number(value)}")
    return "\n".join(out) + "\n"


def _seconds(us: int) -> float:
    """Microseconds (the kernel's unit) to seconds, Prometheus's base unit; -1 stays -1."""
    return -1 if us < 0 else us / 1_000_000


def node_metrics(cap: NodeCapability) -> list[Metric]:
    """The node's own metrics; ``numahook_libvirt_up`` is left out while it is unknown.

    Prometheus's naming rules, which ``promtool check metrics`` enforces: base units
    (seconds, bytes) in the name, ``_total`` only on counters.
    """
    pools = [({"node": str(p.node), "size_bytes": str(p.size_kib * 1024)}, p)
             for p in cap.hugepages]
    metrics = [
        Metric.gauge("numahook_build_info",
                     "Always 1; the version label is numahook's version.",
                     samples=[({"version": __version__}, 1)]),
        Metric.gauge("numahook_node_realtime_capable",
                     "1 if kernel.sched_rt_runtime_us is -1 (KubeVirt's real-time test).",
                     int(cap.realtime_capable)),
        Metric.gauge("numahook_realtime_start_allowed",
                     "1 if numahook would start a real-time domain here under its config.",
                     int(cap.start_policy.ok)),
        Metric.gauge("numahook_sched_rt_runtime_seconds",
                     "kernel.sched_rt_runtime_us in seconds; -1 means RT throttling is off.",
                     _seconds(cap.sched_rt_runtime_us)),
        Metric.gauge("numahook_sched_rt_period_seconds",
                     "kernel.sched_rt_period_us in seconds.",
                     _seconds(cap.sched_rt_period_us)),
        Metric.gauge("numahook_rt_group_sched",
                     "1 if RT group scheduling (cgroup v1 cpu.rt_runtime_us) is present.",
                     int(cap.rt_group_sched)),
        Metric.gauge("numahook_rt_budget_available_seconds",
                     "RT runtime per period a new domain under the machine group could get.",
                     samples=[({}, _seconds(cap.rt_budget.available_us))]
                     if cap.rt_budget else ()),
        Metric.gauge("numahook_preempt_rt", "1 if the kernel is PREEMPT_RT.",
                     int(cap.preempt_rt)),
        Metric.gauge("numahook_isolated_cpus", "CPUs named by isolcpus= on the command line.",
                     len(cap.isolcpus)),
        Metric.gauge("numahook_nohz_full_cpus", "CPUs named by nohz_full= on the command line.",
                     len(cap.nohz_full)),
        Metric.gauge("numahook_online_cpus", "Online CPUs.", len(cap.online_cpus)),
        Metric.gauge("numahook_numa_nodes", "Online NUMA nodes.", len(cap.nodes)),
        Metric.gauge("numahook_hugepages_reserved",
                     "Hugepages reserved (nr_hugepages) per NUMA node and page size.",
                     samples=[(labels, p.nr) for labels, p in pools]),
        Metric.gauge("numahook_hugepages_free", "Free hugepages per NUMA node and page size.",
                     samples=[(labels, p.free) for labels, p in pools]),
        Metric.gauge("numahook_hugepages_surplus",
                     "Surplus hugepages per NUMA node and page size.",
                     samples=[(labels, p.surplus) for labels, p in pools]),
    ]
    if cap.libvirt_reachable is not None:
        metrics.append(Metric.gauge("numahook_libvirt_up",
                                    "1 if libvirt answered a read-only connection.",
                                    int(cap.libvirt_reachable)))
    return [m for m in metrics if m.samples]


def metrics_text(cap: NodeCapability, extra_metrics: Iterable[Metric] = ()) -> str:
    return render_metrics([*node_metrics(cap), *extra_metrics])


def write_metrics(cap: NodeCapability, textfile_dir: str | os.PathLike[str],
                  extra_metrics: Iterable[Metric] = ()) -> Path | None:
    """Write ``<textfile_dir>/numahook.prom`` atomically (0644, node_exporter runs unprivileged).

    None when the directory is absent (node_exporter's textfile collector is not set up).
    ``extra_metrics`` are the daemon's own (managed domains, reconcile duration, ...).
    """
    directory = _consumer_dir(textfile_dir, "node_exporter's textfile collector")
    if directory is None:
        return None
    path = directory / METRICS_FILE
    fsutil.atomic_write(path, metrics_text(cap, extra_metrics), 0o644, durable=False)
    return path


def remove_metrics(textfile_dir: str | os.PathLike[str]) -> bool:
    """Remove our .prom file at shutdown; True if one was removed.

    node_exporter's textfile collector reads the file as it is and takes no timestamps, so
    a file left behind by a stopped daemon would be scraped as current forever.
    """
    return _remove(Path(textfile_dir) / METRICS_FILE,
                   "so node_exporter stops serving numahook's stale metrics")


# --------------------------------------------------------------------------- sd_notify


class DomainCounts(NamedTuple):
    managed: int
    running: int


def status_line(cap: NodeCapability,
                domains_summary: DomainCounts | Mapping[str, int] | None = None) -> str:
    """The one-line sd_notify ``STATUS=`` text that ``systemctl status numahookd`` shows."""
    facts = f"sched_rt_runtime_us={cap.sched_rt_runtime_us}"
    if not (cap.realtime_capable and cap.start_policy.ok):
        facts += f", realtime starts: {cap.start_policy.mode}"
    parts = [f"{'' if cap.realtime_capable else 'not '}realtime capable ({facts})"]
    if domains_summary is not None:
        counts = (domains_summary._asdict() if isinstance(domains_summary, DomainCounts)
                  else dict(domains_summary))
        managed, running = counts.get("managed", 0), counts.get("running", 0)
        noun = "domain" if managed == 1 else "domains"
        parts.append(f"{managed} managed {noun}, {running} running")
    if cap.libvirt_reachable is False:
        parts.append("libvirt unreachable")
    return "; ".join(parts).replace("\n", " ")
