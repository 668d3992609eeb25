"""Reconcile passes: the tunables' backstops, crash recovery and keeping definitions rendered.

The hook does the work at each lifecycle step; these passes catch what happens between steps
(a thread reset by hand, a vCPU hot-plugged later, a sysctl flipped under running FIFO
threads, a hook killed half-way, a cpuset changed under an inactive definition). Every
tunable comes from the registry (numahook/tunables/); this module names none of them."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from numahook import NAMESPACE
from numahook.config import Config
from numahook.core import metadata, render
from numahook.core.units import counted
from numahook.errors import NumahookError
from numahook.host import fsutil, libvirtstatus
from numahook.ops import hostinputs, lifecycle, redefine, refusals
from numahook.state.recovery import rollback
from numahook.state.statedir import ClaimJournal, StateDir
from numahook.tunables import REGISTRY, view
from numahook.tunables.view import View
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
        #: id(status) -> (that status, its parsed live definition if managed), for
        #: unchanged status files
        self._status_seen: dict[int, tuple[libvirtstatus.RunningDomain,
                                           tuple[render.Parsed, str] | None]] = {}
        #: uuid -> inactive managed definition, refreshed from libvirt on events only
        self._inactive: dict[str, InactiveManaged] | None = None
        #: uuid -> digest of the inactive XML last rendered from (or found rendered)
        self._rendered_from: dict[str, str] = {}
        #: each tunable's memo between watch ticks (Tunable.watch)
        self._memo: dict[str, dict[str, Any]] = {t.name: {} for t in REGISTRY}

    # -- what runs ----------------------------------------------------------------------
    def running_managed(self) -> list[View]:
        """Managed domains that are fully up: the ``started`` hook has run for them.

        A domain still starting must be left alone: libvirt moves each vCPU thread into
        its cgroup after QEMU launches, and the kernel refuses to move a SCHED_FIFO thread
        into a group without RT budget, so an early FIFO would fail the start.
        """
        phases = {}
        if fsutil.exists(self.state.path):
            phases = {c.uuid: c.phase for c in self.state.list_claims()}
        out = []
        for st, parsed in self._read_running():
            if st.state == "running" and phases.get(st.uuid, "running") == "running":
                out.append(view.of(parsed[0], st, self.cfg.proc_root, parsed[1]))
        return out

    def _read_running(self) -> list[tuple[libvirtstatus.RunningDomain,
                                          tuple[render.Parsed, str]]]:
        """Every managed running domain, parsed again only for a rewritten status file:
        re-parsing every status XML for the watch and each pass was most of the daemon's
        idle CPU. libvirtstatus returns the same object for an unchanged file. The view
        itself is built fresh each time: a hot-plugged vCPU's thread is in /proc before
        libvirt saves it in the status file (tunables/view.py)."""
        seen: dict[int, tuple[libvirtstatus.RunningDomain,
                              tuple[render.Parsed, str] | None]] = {}
        for st in libvirtstatus.running_domains(self.cfg.libvirt_run):
            cached = self._status_seen.get(id(st))
            seen[id(st)] = cached if cached is not None and cached[0] is st else (
                st, self._managed(st))
        self._status_seen = seen
        return [(st, parsed) for st, parsed in seen.values() if parsed is not None]

    @staticmethod
    def _managed(st: libvirtstatus.RunningDomain) -> tuple[render.Parsed, str] | None:
        if not metadata.opted_in(st.domain):
            return None
        try:
            doc = render.read(st.domain)
        except NumahookError as exc:
            log.warning("cannot read the live definition of %s: %s", st.name, exc)
            return None
        if doc.request is None:
            return None
        return doc, xmlsafe.tostring(st.domain)

    # -- the tunables' backstops ------------------------------------------------------
    def backstop(self, only: str | None = None) -> None:
        """Each tunable's backstop on every managed domain whose start is over (``only``:
        that domain): what it cannot fix quietly is applied again through lifecycle, under
        the lock and journalled."""
        for seen in self.running_managed():
            if only and seen.name != only:
                continue
            for tunable in REGISTRY:
                if not tunable.wanted(seen):
                    continue
                problem = tunable.backstop(self.cfg, seen)
                if problem is None:
                    continue
                log.warning("%s: %s; re-applying", seen.name, problem)
                try:
                    lifecycle.tune(seen.xml, self.cfg, self.state, only=tunable.name)
                    self.stats.reapplied += 1
                except NumahookError as exc:
                    log.error("%s: re-applying %s failed: %s", seen.name, tunable.name, exc)

    def watch(self, force: bool = False) -> None:
        """Each tunable's cheap watch (every RT_WATCH_INTERVAL): the host changing under
        running domains between passes, such as a sysctl flip that would stall FIFO
        threads; ``force`` (each pass) checks in full."""
        for tunable in REGISTRY:
            self.stats.demoted += tunable.watch(
                self.cfg, self.running_managed, self._retune, force, self._memo[tunable.name])

    def _retune(self, seen: View, tunable: str) -> bool:
        try:
            lifecycle.tune(seen.xml, self.cfg, self.state, only=tunable)
            return True
        except NumahookError as exc:
            log.error("%s: re-applying %s failed: %s", seen.name, tunable, exc)
            return False

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
                    ok = rollback(ClaimJournal(self.state, claim), self.cfg)
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
                refusals.count(self.cfg.state_dir, refusals.RENDER, out.check)
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
        for part, args in ((self.orphans, ()), (self.backstop, ()), (self.watch, (True,)),
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
