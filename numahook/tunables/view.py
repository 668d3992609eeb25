"""One view of a managed domain that runs: what every tunable, the reconciler and
``status`` read, derived once with one rule.

Before this view, the real-time vCPUs were worked out from the mask in five places and
the vCPU thread ids in three, each with its own fallback; a tunable added since would
have had to pick one. The rule for thread ids: libvirt's status file first, then QEMU's
thread names in /proc for every vCPU the status lacks, when it lacks any the mask wants
or has none at all (libvirt saves a hot-plugged vCPU's thread only after moving it into
its cgroup, which is when numahookd's vCPU watch asks; daemon/vcpuwatch.py).
"""

from __future__ import annotations

from numahook.core import cpulist
from numahook.errors import NumahookError
from numahook.host import libvirtstatus, procfs
from numahook.records import field, record

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from collections.abc import Mapping

    from numahook.core.domainxml import DomainFacts
    from numahook.core.render import Parsed
    from numahook.core.request import Request


@record(frozen=True)
class View:
    facts: DomainFacts
    request: Request
    #: the vCPUs the realtime mask names (all of them, plugged or not)
    rt_vcpus: frozenset[int]
    #: QEMU's pid (None: libvirt has not recorded it yet)
    pid: int | None
    #: vCPU -> thread id, for the vCPUs that have a thread
    tids: Mapping[int, int]
    #: libvirt's state word for it ("running", "paused", ...); "" where unknown
    state: str = ""
    #: the live definition, for the reconciler to apply a tunable again through lifecycle
    xml: str = field(default="", repr=False, compare=False)

    @property
    def name(self) -> str:
        return self.facts.name

    @property
    def rt_running(self) -> frozenset[int]:
        """The masked vCPUs that have a thread now (the others are not plugged yet)."""
        return frozenset(v for v in self.rt_vcpus if v in self.tids)


def realtime_vcpus(doc: Parsed) -> frozenset[int]:
    """The realtime mask's vCPUs; empty without realtime, or for a mask the live definition
    cannot hold any more (``prepare`` checked it; a hand-edited live XML is not ours to fix)."""
    req = doc.request
    if req is None or not req.realtime:
        return frozenset()
    try:
        return cpulist.parse_mask(req.realtime_mask, doc.facts.vcpus)
    except NumahookError:
        return frozenset()


def thread_ids(status: libvirtstatus.RunningDomain | None, wanted: frozenset[int],
               proc_root: str) -> dict[int, int]:
    if status is None:
        return {}
    tids = dict(status.vcpu_tids)
    if status.pid and (not tids or not wanted <= set(tids)):
        tids = {**procfs.vcpu_threads_from_proc(status.pid, proc_root), **tids}
    return tids


def of(doc: Parsed, status: libvirtstatus.RunningDomain | None, proc_root: str,
       xml: str = "") -> View:
    """The view of ``doc`` (a managed domain: its request is set) running as ``status``."""
    assert doc.request is not None
    rt = realtime_vcpus(doc)
    return View(doc.facts, doc.request, rt, status.pid if status else None,
                thread_ids(status, rt, proc_root), status.state if status else "", xml)


def of_status(status: libvirtstatus.RunningDomain, proc_root: str) -> View | None:
    """The view of a running domain read from its status file; None if not managed (or its
    live definition cannot be read, which is logged by the caller's render.read)."""
    from numahook.core import metadata, render
    from numahook.xml import safe

    if not metadata.opted_in(status.domain):
        return None
    doc = render.read(status.domain)
    if doc.request is None:
        return None
    return of(doc, status, proc_root, safe.tostring(status.domain))


def of_name(doc: Parsed, libvirt_run: str, proc_root: str) -> View:
    """The view of ``doc`` as the hook sees it: the XML on stdin, the status file by name."""
    return of(doc, libvirtstatus.status_of(doc.facts.name, libvirt_run), proc_root)
