"""Prometheus text format for node_exporter's textfile collector (``numahook.prom``).

node_exporter reads only ``*.prom`` files and takes no timestamps; the file is written
only where its directory exists (numahook/node/publish.py says why) and removed when
numahookd stops, so that stale values are never scraped. Names follow Prometheus's rules:
base units, ``_total`` only on counters (tests/unit/node/test_promtool.py runs promtool).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Union

from numahook import __version__
from numahook.core.units import plural
from numahook.errors import InputError
from numahook.host import fsutil
from numahook.node.model import NodeCapability
from numahook.node.publish import consumer_dir, remove_published

METRICS_FILE = "numahook.prom"
_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_LABEL_KEY = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
_KINDS = ("gauge", "counter", "untyped")


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
                shown = ",".join(f'{k}="{v}"' for k, v in ident)
                raise InputError(f"{self.name} has two samples with labels {{{shown}}}; give "
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
        raise InputError(f"{plural(len(dupes), 'metric')} {', '.join(dupes)} "
                         f"{plural(len(dupes), 'is', 'are')} defined twice; give each one name")
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
                  extra_metrics: Iterable[Metric] = (),
                  hint: Mapping[int, str] | None = None) -> Path | None:
    """Write ``<textfile_dir>/numahook.prom`` atomically (0644, node_exporter runs unprivileged).

    None when the directory is absent (node_exporter's textfile collector is not set up).
    ``extra_metrics`` are the daemon's own (managed domains, reconcile duration, ...);
    ``hint``: as fsutil.atomic_write's.
    """
    directory = consumer_dir(textfile_dir, "node_exporter's textfile collector")
    if directory is None:
        return None
    path = directory / METRICS_FILE
    fsutil.atomic_write(path, metrics_text(cap, extra_metrics), 0o644, durable=False,
                        hint=hint)
    return path


def remove_metrics(textfile_dir: str | os.PathLike[str]) -> bool:
    """Remove our .prom file at shutdown; True if one was removed.

    node_exporter's textfile collector reads the file as it is and takes no timestamps, so
    a file left behind by a stopped daemon would be scraped as current forever.
    """
    return remove_published(Path(textfile_dir) / METRICS_FILE,
                   "so node_exporter stops serving numahook's stale metrics")
