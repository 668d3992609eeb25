"""Reconcile passes: the realtime backstop, crash recovery and keeping definitions rendered.

The hook does the work at each lifecycle step; these passes catch what happens between steps
(a thread reset by hand, a vCPU hot-plugged later, a sysctl flipped under running FIFO
threads, a hook killed half-way, a cpuset changed under an inactive definition)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from numahook import NAMESPACE
from numahook.config import Config
from numahook.core import cpulist, metadata, render
from numahook.core.domainxml import DomainFacts
from numahook.core.units import counted, plural
from numahook.errors import NumahookError
from numahook.host import fsutil, libvirtstatus, procfs, rtsched
from numahook.ops import emulator, hostinputs, kvmpit, lifecycle, redefine
from numahook.state.recovery import rollback
from numahook.state.statedir import ClaimJournal, StateDir
from numahook.xml import safe as xmlsafe

log = logging.getLogger(__name__)

#: a claim younger than this may belong to a start between prepare and QEMU's launch
START_GRACE = 300.0


@dataclass
class Stats:
    passes: int = 0
    reapplied: int = 0
    demoted: int = 0
    released: int = 0
    redefined: int = 0
    last_pass_seconds: float = 0.0
    refused: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunningManaged:
    status: libvirtstatus.RunningDomain
    xml: str
    rt_vcpus: frozenset[int]
    priority: int
    #: the isolated emulator thread is real-time too
    emulator_rt: bool = False
    #: dedicated: the facts its kvm-pit thread (ops/kvmpit.py), and an emulator started wider
    #: (ops/emulator.py), are placed from
    pit: DomainFacts | None = None
    emulator: DomainFacts | None = None


@dataclass(frozen=True)
class InactiveManaged:
    name: str
    uuid: str
    #: the cpuset partition it renders from (None: the default)
    partition: str | None


class Reconciler:
    def __init__(self, cfg: Config, state: StateDir) -> None:
        self.cfg = cfg
        self.state = state
        self.stats = Stats()
        self._fingerprint = ""
        self._defined_digest: dict[str, tuple[str, float]] = {}
        #: id(status) -> (that status, what it says if managed), for unchanged status files
        self._status_seen: dict[int, tuple[libvirtstatus.RunningDomain,
                                           RunningManaged | None]] = {}
        #: uuid -> inactive managed definition, refreshed from libvirt on events only
        self._inactive: dict[str, InactiveManaged] | None = None
        #: uuid -> digest of the inactive XML last rendered from (or found rendered)
        self._rendered_from: dict[str, str] = {}
        #: kernel.sched_rt_runtime_us when the watch last found no stalled thread (the cgroup
        #: controllers that decide whether a group budget is needed do not change at runtime)
        self._rt_clean: int | None = None

    # -- what runs ----------------------------------------------------------------------
    def running_managed(self) -> list[RunningManaged]:
        """Managed domains that are fully up: the ``started`` hook has run for them.

        A domain still starting must be left alone: libvirt moves each vCPU thread into
        its cgroup after QEMU launches, and the kernel refuses to move a SCHED_FIFO thread
        into a group without RT budget, so an early FIFO would fail the start.
        """
        phases = {}
        if fsutil.exists(self.state.path):
            phases = {c.uuid: c.phase for c in self.state.list_claims()}
        out = []
        for dom in self._read_running():
            if dom.status.state == "running" and phases.get(dom.status.uuid,
                                                            "running") == "running":
                out.append(dom)
        return out

    def _read_running(self) -> list[RunningManaged]:
        """Every managed running domain, worked out again only for a rewritten status file:
        re-parsing every status XML for the realtime watch and each pass was most of the
        daemon's idle CPU. libvirtstatus returns the same object for an unchanged file."""
        seen: dict[int, tuple[libvirtstatus.RunningDomain, RunningManaged | None]] = {}
        for st in libvirtstatus.running_domains(self.cfg.libvirt_run):
            cached = self._status_seen.get(id(st))
            seen[id(st)] = cached if cached is not None and cached[0] is st else (
                st, self._managed(st))
        self._status_seen = seen
        return [d for _, d in seen.values() if d is not None]

    @staticmethod
    def _managed(st: libvirtstatus.RunningDomain) -> RunningManaged | None:
        if not metadata.opted_in(st.domain):
            return None
        try:
            doc = render.read(st.domain)
        except NumahookError as exc:
            log.warning("cannot read the live definition of %s: %s", st.name, exc)
            return None
        req = doc.request
        if req is None:
            return None
        try:
            rt = cpulist.parse_mask(req.realtime_mask, doc.facts.vcpus) if req.realtime \
                else frozenset()
        except NumahookError:
            rt = frozenset()
        return RunningManaged(st, xmlsafe.tostring(st.domain), rt, req.realtime_priority,
                              bool(rt and req.isolate_emulator),
                              doc.facts if req.dedicated and kvmpit.target(doc.facts) else None,
                              doc.facts if req.dedicated and emulator.target(doc.facts) else None)

    def threads_backstop(self) -> None:
        """The kvm-pit thread back on vCPU 0's CPU (ops/kvmpit.py), an emulator that is wider
        than its own CPUs narrowed (ops/emulator.py), for domains whose start is over."""
        for dom in self.running_managed():
            if dom.pit is not None:
                kvmpit.pin(dom.pit, dom.status.pid, self.cfg.proc_root, backstop=True)
            if dom.emulator is not None:
                emulator.narrow(dom.emulator, dom.status.pid, self.cfg.proc_root, backstop=True)

    # -- realtime backstop ----------------------------------------------------------
    def realtime_backstop(self, only: str | None = None) -> None:
        """Re-apply FIFO where a masked vCPU is not at its policy (reset, hot-plugged)."""
        for dom in self.running_managed():
            if not dom.rt_vcpus or (only and dom.status.name != only):
                continue
            tids = dict(dom.status.vcpu_tids)
            if dom.status.pid and not dom.rt_vcpus <= set(tids):
                # not in the status XML (yet): libvirt saves it after a hot-plugged vCPU's
                # thread moved to its cgroup, when the vCPU watch wakes this pass
                tids = {**procfs.vcpu_threads_from_proc(dom.status.pid, self.cfg.proc_root),
                        **tids}
            wrong = []
            for v in sorted(dom.rt_vcpus):
                tid = tids.get(v)
                if tid is None:
                    continue  # not plugged
                try:
                    if procfs.sched_of(tid) != ("fifo", dom.priority):
                        wrong.append(v)
                except NumahookError:
                    continue  # the thread exited
            emulator_wrong = False
            if dom.emulator_rt and dom.status.pid:
                try:
                    emulator_wrong = procfs.sched_of(dom.status.pid) != ("fifo", dom.priority)
                except NumahookError:
                    pass  # QEMU exited
            if not wrong and not emulator_wrong:
                continue
            what = [f"{plural(len(wrong), 'vCPU')} {cpulist.format(wrong)}"] if wrong else []
            if emulator_wrong:
                what.append("the emulator thread")
            log.warning("%s: real-time %s %s not SCHED_FIFO %d; re-applying", dom.status.name,
                        " and ".join(what), plural(len(wrong) + emulator_wrong, "is", "are"),
                        dom.priority)
            try:
                lifecycle.tune(dom.xml, self.cfg, self.state)
                self.stats.reapplied += len(wrong)
            except NumahookError as exc:
                log.error("%s: re-applying real-time failed: %s", dom.status.name, exc)

    # -- the sysctl flip --------------------------------------------------------------
    def rt_watch(self, force: bool = False) -> None:
        """FIFO threads in zero-budget groups once throttling is on get no CPU at all.

        That happens when kernel.sched_rt_runtime_us goes from -1 back to >= 0 under
        running real-time vCPUs. Delegate a budget at once, or demote them, loudly.
        The kernel refuses to zero the budget of a group that holds RT threads, so a
        stall can only begin at such a flip: between flips one sysctl read per tick is
        enough, and the full check runs again on a change (or ``force``, each pass).
        """
        runtime = rtsched.rt_runtime_us(self.cfg.proc_root)
        if not force and runtime == self._rt_clean:
            return
        self._rt_clean = None
        if rtsched.needs_group_budget(self.cfg.cgroup_root, self.cfg.proc_root) and \
                not self._rt_stall_check(runtime):
            return  # something is still stalled: check again at the next tick
        self._rt_clean = runtime

    def _rt_stall_check(self, runtime: int) -> bool:
        """Fix every stalled real-time thread; True when none is left stalled."""
        clean = True
        for dom in self.running_managed():
            tids = [t for v, t in dom.status.vcpu_tids.items() if v in dom.rt_vcpus]
            if dom.emulator_rt and dom.status.pid:
                tids.append(dom.status.pid)
            stalled = rtsched.unbudgeted_rt_threads(tids, self.cfg.cgroup_root,
                                                    self.cfg.proc_root)
            if not stalled:
                continue
            if self.cfg.rt_throttled == "delegate":
                try:
                    lifecycle.tune(dom.xml, self.cfg, self.state)
                    log.warning("kernel.sched_rt_runtime_us is now %d with real-time vCPUs of "
                                "%s in zero-budget cgroups; delegated RT budget to them",
                                runtime, dom.status.name)
                    continue
                except NumahookError as exc:
                    log.error("%s: delegating RT budget failed (%s); demoting instead",
                              dom.status.name, exc)
            demoted = rtsched.demote(stalled)
            self.stats.demoted += len(demoted)
            if rtsched.unbudgeted_rt_threads(stalled, self.cfg.cgroup_root,
                                             self.cfg.proc_root):
                clean = False
            log.critical(
                "kernel.sched_rt_runtime_us is now %d: the real-time vCPU threads %s of %s "
                "had no RT budget and would stall, so they were demoted to SCHED_OTHER; set "
                "it back to -1 or set throttled = delegate under [realtime] in %s",
                runtime, ",".join(map(str, demoted)), dom.status.name, self.cfg.path)
        return clean

    # -- crash recovery ----------------------------------------------------------------
    def orphans(self, now: float | None = None) -> None:
        """Release claims whose domain is gone (or whose start died half-way)."""
        if not fsutil.exists(self.state.path):
            return
        now = time.time() if now is None else now
        running = {d.uuid: d for d in libvirtstatus.running_domains(self.cfg.libvirt_run)}
        for path in self.state.corrupt_records():
            log.error("claim record %s is corrupt; inspect and remove it by hand", path)
        try:
            with self.state.lock(self.cfg.lock_timeout):
                self.state.remove_temporaries()
                for claim in self.state.list_claims():
                    if claim.uuid in running:
                        continue
                    if claim.phase != "running" and now - claim.created < START_GRACE:
                        continue  # a start may be between prepare and QEMU's launch
                    ok = rollback(ClaimJournal(self.state, claim), self.cfg.sysfs_root)
                    self.stats.released += 1
                    log.warning("released the orphaned claim of %s (phase %s): %s", claim.name,
                                claim.phase, "done" if ok else "partly, will retry")
        except NumahookError as exc:
            log.error("orphan cleanup skipped: %s", exc)

    # -- keeping definitions rendered ------------------------------------------------
    def inputs_fingerprint(self, partitions: set[str | None]) -> str:
        return hostinputs.fingerprint(self.cfg, partitions, self.state)

    def rerender_inactive(self, conn: Any, force: bool = False, only: Any = None,
                          cached: bool = False, resync: bool = False) -> None:
        """Render inactive managed domains again when their inputs changed.

        ``cached`` (the periodic pass): compare the inputs of the definitions known from
        the last listing and ask libvirt nothing unless they changed. Definitions only
        change through events (DEFINED, UNDEFINED, STOPPED), which list again, and a new
        connection forces a full pass, so a timer need not fetch every XML each time.

        ``resync`` (the ``resync_interval`` timer): an event can be lost (a daemon busy
        or stopped while libvirt dropped it, a bug), and the cached pass would never see
        that definition. So list every definition, and render each whose XML is not the
        one last rendered from, whatever the cached inputs say.
        """
        import libvirt

        if conn is None:
            return
        if cached and not force and only is None and self._inactive is not None:
            fp = self.inputs_fingerprint({d.partition for d in self._inactive.values()})
            if fp == self._fingerprint:
                return
        if only is not None:
            doms = [only]
        else:
            flags = (libvirt.VIR_CONNECT_LIST_DOMAINS_INACTIVE
                     | libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT)
            doms = conn.listAllDomains(flags)
        xml_flags = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
        managed = []
        listed: dict[str, InactiveManaged] = {}
        for dom in doms:
            try:
                xml = dom.XMLDesc(xml_flags)
                uuid = dom.UUIDString().lower()
            except libvirt.libvirtError:
                continue  # undefined meanwhile
            if NAMESPACE not in xml:
                self.forget(uuid)  # its metadata was removed
                continue
            managed.append((dom, xml, uuid))
            try:
                partition = render.parse(xml, readonly=True).facts.partition
            except NumahookError:
                partition = None
            listed[uuid] = InactiveManaged(dom.name(), uuid, partition)
        if only is None:
            self._inactive = listed
            self._rendered_from = {u: d for u, d in self._rendered_from.items() if u in listed}
        elif self._inactive is not None:
            self._inactive.update(listed)
        fp = self.inputs_fingerprint({d.partition for d in (self._inactive or listed).values()})
        unseen = [m for m in managed if self._rendered_from.get(m[2]) != redefine.digest(m[1])]
        if resync and unseen:
            log.warning("resync: %s changed without an event reaching numahookd (%s); "
                        "rendering again", counted(len(unseen), "definition"),
                        ", ".join(sorted(dom.name() for dom, _, _ in unseen)))
        if not force and only is None and fp == self._fingerprint:
            if not resync:
                return
            managed = unseen  # the inputs are unchanged: the rest are rendered already
        if only is None:  # one definition rendered says nothing of the others' inputs
            self._fingerprint = fp
        for dom, xml, uuid in managed:
            self._rerender_one(conn, dom, xml)
            self._rendered_from[uuid] = redefine.digest(xml)

    def forget(self, uuid: str) -> None:
        """A definition went away or started: the next listing has the truth."""
        if self._inactive is not None:
            self._inactive.pop(uuid.lower(), None)
        self._rendered_from.pop(uuid.lower(), None)

    @property
    def listed(self) -> bool:  # libvirt has listed the definitions once (before, none known)
        return self._inactive is not None

    def inactive(self) -> list[InactiveManaged]:
        """Inactive managed definitions as last listed (empty before the first listing)."""
        return sorted((self._inactive or {}).values(), key=lambda d: d.name)

    def _rerender_one(self, conn: Any, dom: Any, xml: str) -> None:
        import libvirt

        try:
            out = redefine.rerender(xml, self.cfg, self.state)
        except NumahookError as exc:
            log.warning("%s: its definition cannot be read: %s", dom.name(), exc)
            return
        if out is None:
            return
        if out.refused:
            if self.stats.refused.get(out.name) != out.refused:
                log.warning("%s cannot be rendered on this host now: %s", out.name, out.refused)
            self.stats.refused[out.name] = out.refused
            return
        self.stats.refused.pop(out.name, None)
        if not out.changed or out.xml is None:
            return
        digest = redefine.digest(out.xml)
        last = self._defined_digest.get(out.name)
        if last and last[0] == digest and time.monotonic() - last[1] < 60:
            log.error("%s: refusing to redefine the same XML twice within a minute (libvirt "
                      "changes something numahook renders?); check `numahook render`", out.name)
            return
        try:
            conn.defineXML(out.xml)
        except libvirt.libvirtError as exc:
            log.error("%s: redefining failed: %s", out.name, exc.get_error_message())
            return
        self._defined_digest[out.name] = (digest, time.monotonic())
        self.stats.redefined += 1
        log.info("redefined %s: %s", out.name, out.reason)

    def pass_(self, conn: Any) -> None:
        """One full reconcile pass (timer); a failing step never skips the others."""
        import libvirt

        start = time.monotonic()
        for part, args in ((self.orphans, ()), (self.realtime_backstop, ()),
                           (self.threads_backstop, ()), (self.rt_watch, (True,)),
                           (self.rerender_inactive, (conn, False, None, True))):
            try:
                part(*args)
            except NumahookError as exc:
                log.error("reconcile step %s failed: %s", part.__name__, exc)
            except libvirt.libvirtError as exc:  # the connection dropped mid-call
                log.warning("reconcile step %s: libvirt failed (%s); the next pass retries",
                            part.__name__, exc.get_error_message())
        self.stats.passes += 1
        self.stats.last_pass_seconds = time.monotonic() - start
