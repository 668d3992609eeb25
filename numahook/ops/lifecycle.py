"""Domain lifecycle operations: the one implementation the hook and numahookd both run.

Each operation reads files only (stdin XML, sysfs, cgroupfs, procfs, libvirt status XML,
our state dir) so the hook can run it inside libvirtd's start path without calling back
into libvirt. Each either completes or leaves a claim the next call or the daemon rolls
back: nothing is half-applied. What is applied comes from the registry of tunables
(numahook/tunables/), which this module iterates without naming any.
"""

from __future__ import annotations

from numahook import faults, records
from numahook import log as logmod
from numahook.config import Config
from numahook.core import allocate, cpulist, hardware, metadata, render, shared
from numahook.core.plan import Plan
from numahook.errors import HostError, NumahookError, Refusal
from numahook.host import fsutil
from numahook.ops import hostinputs
from numahook.records import record
from numahook.state.claims import Claim
from numahook.state.recovery import recover, rollback, settle_host
from numahook.state.statedir import ClaimJournal, StateDir
from numahook.tunables import REGISTRY, view
from numahook.xml import safe

log = logmod.get(__name__)


def audit(action: str, name: str, **fields: object) -> None:
    """One structured line per action, for the journal and for grep."""
    extra = " ".join(f"{k}={v}" for k, v in fields.items() if v not in (None, ""))
    log.info("domain=%s action=%s %s", name, action, extra)


def rerender_fix(name: str, cfg: Config, state: StateDir) -> str:
    """The one command that renders ``name``: numahookd renders a definition within a
    second of a change, so a stale one means it is not running, or has not seen the
    change (the host's inputs are checked every reconcile_interval)."""
    if state.daemon_running(cfg.proc_root):
        return (f"numahookd is running but has not rendered it yet; run `numahook apply "
                f"{name}`, then start again")
    return (f"numahookd is not running, so nothing renders definitions; run `systemctl start "
            f"numahookd` (it renders {name} at once), then start again")


@record(frozen=True)
class Admission:
    claim: Claim
    plan: Plan


def admit(xml: str, cfg: Config, state: StateDir) -> Admission | None:
    """``prepare``: gate the start, claim the CPUs, reserve the hugepages. None: not ours.

    Runs under the state lock, so two domains starting at once can never double-book.
    """
    doc = render.parse(xml, readonly=True)
    if doc.request is None or not doc.request.managed:
        return None
    name, uuid = doc.facts.name, doc.facts.uuid
    state.ensure()
    with state.lock(cfg.lock_timeout):
        recover(state, cfg)  # before this start counts or changes the host
        old = state.load(uuid)
        if old is not None:  # a start that failed before release ran: give it all back
            log.warning("%s has a claim left from an earlier start; releasing it first", name)
            if not rollback(ClaimJournal(state, old), cfg):
                raise HostError(f"{name} still holds resources from an earlier start that "
                                "could not be given back; see the journal and run "
                                "`numahook status`")
        inputs, host = hostinputs.gather(cfg, doc.facts.partition, uuid, state=state,
                                          devices=doc.facts.bdfs)
        ev = render.evaluate(doc, inputs)
        if ev.failed is not None:
            raise ev.refusal()
        plan = ev.plan
        assert plan is not None
        stale = hardware.differences(doc.facts, plan)
        if stale:
            raise Refusal(f"{name}'s definition does not match this host: {stale[0]}; "
                          f"{host.describe()}; {rerender_fix(name, cfg, state)}",
                          "stale-definition")
        used = [t for t in REGISTRY if t.wanted(doc)]
        for tunable in used:
            gate = tunable.precondition(cfg, doc, plan)
            if gate is not None and not gate.ok:
                raise Refusal(gate.reason, gate.name)
        entries = {t.name: e for t in used if (e := t.intent(doc, plan)) is not None}
        claim = Claim(uuid=uuid, name=name, cpus=plan.cpus, phase="claimed", tunables=entries,
                      fast={t.name: t.fast_checks(doc, plan) for t in used})
        journal = ClaimJournal(state, claim)
        journal.update()  # the claim exists before anything is touched
        faults.point("admit.claimed")
        try:
            for tunable in used:
                if tunable.step == "prepare":
                    _audit(tunable.name, name, tunable.apply(cfg, journal, None))
        except NumahookError:
            rollback(journal, cfg)
            raise
        faults.point("admit.reserved")
        journal.update(phase="reserved")
        settle_host(state, cfg)
        faults.point("admit.phase-reserved")
        audit("admit", name, cpus=cpulist.format(plan.cpus),
              hugepages=",".join(f"node{n}:{p}x{s}kB" for (n, s), p in
                                 sorted(plan.page_need.items())),
              tunables=",".join(sorted(journal.claim.tunables)))
        return Admission(journal.claim, plan)


def _audit(action: str, name: str, fields: dict[str, object] | None) -> None:
    if fields is not None:
        audit(action, name, **fields)


def tune(xml: str, cfg: Config, state: StateDir, only: str | None = None) -> bool:
    """``started``, ``reconnect`` and the daemon's backstop: apply every tunable of the
    ``started`` step that the domain uses, with the claim in phase ``running``. ``only``:
    that one tunable, whatever its step, for the backstop: a ``prepare`` tunable whose
    value changed under the running domain is applied again here, under the lock, never
    beside a release putting it back. False: not ours."""
    doc = render.parse(xml, readonly=True)
    if doc.request is None or not doc.request.managed:
        return False
    seen = view.of_name(doc, cfg.libvirt_run, cfg.proc_root)
    used = [t for t in REGISTRY if t.wanted(doc)
            and (t.step == "started" if only is None else t.name == only)]
    state.ensure()
    with state.lock(cfg.lock_timeout):
        claim = state.load(seen.facts.uuid) or Claim(
            uuid=seen.facts.uuid, name=seen.name, cpus=_live_cpus(doc), phase="running")
        journal = ClaimJournal(state, claim)
        journal.update(phase="running", qemu_pid=seen.pid)
        faults.point("tune.journalled")
        for tunable in used:
            _audit(tunable.name, seen.name, tunable.apply(cfg, journal, seen))
        settle_host(state, cfg)
        faults.point("tune.applied")
    return True


def tune_early(uuid: str, tids: dict[int, int], pid: int, cfg: Config,
               state: StateDir) -> bool:
    """numahookd, between ``prepare`` and ``started``: each tunable's early part as soon as
    libvirt has put the vCPU threads in their cgroups, rather than once the ``started``
    hook's Python is up (real time where the group budget must be delegated).

    ``tids`` are the threads found in the ``vcpuN`` cgroups so far. True once done or
    once there is nothing to do; False to be asked again when more vCPU threads have
    moved. The ``started`` hook still verifies, and finds the work done.
    """
    claim = state.load(uuid)
    if claim is None or claim.phase == "running" or not any(
            claim.entry(t.name) is not None for t in REGISTRY if t.has_early):
        return True
    with state.lock(cfg.lock_timeout):
        claim = state.load(uuid)  # again, under the lock: the hook may have moved on
        if claim is None or claim.phase == "running":
            return True
        journal = ClaimJournal(state, claim)
        done = []
        for tunable in REGISTRY:
            if claim.entry(tunable.name) is None:
                continue
            result = tunable.early(cfg, journal, tids, pid)
            if result is False:
                return False
            done.append(result)
        if True in done:
            # every early part applied and read back: the started hook's fast path
            # (numahook/hook/fast.py) verifies again and applies nothing
            journal.update(qemu_pid=pid, verified_pid=pid)
    return True


def _live_cpus(doc: render.Parsed) -> frozenset[int]:
    cpus: set[int] = set(metadata.held_cpus(doc.root))
    for pins in doc.facts.vcpupin.values():
        cpus |= pins
    cpus |= doc.facts.emulatorpin or set()
    return frozenset(cpus)


def release(uuid: str, name: str, cfg: Config, state: StateDir) -> bool:
    """``stopped``/``release``: undo what every tunable journalled, drop the claim."""
    if not fsutil.exists(state.path):
        return True
    with state.lock(cfg.lock_timeout):
        claim = state.load(uuid)
        if claim is None:
            return True
        faults.point("release.before-rollback")
        ok = rollback(ClaimJournal(state, claim), cfg)
        faults.point("release.after-rollback")
    audit("release", name, ok=ok, cpus=cpulist.format(claim.cpus),
          tunables=",".join(sorted(claim.tunables)))
    return ok


def adopt(xml: str, cfg: Config, state: StateDir) -> None:
    """``reconnect``: re-establish the claim of a running domain and re-check realtime."""
    doc = render.parse(xml, readonly=True)
    if doc.request is None or not doc.request.managed:
        return
    state.ensure()
    with state.lock(cfg.lock_timeout):
        claim = state.load(doc.facts.uuid)
        if claim is None:
            claim = Claim(uuid=doc.facts.uuid, name=doc.facts.name, cpus=_live_cpus(doc),
                          phase="running")
            log.warning("%s was running without a claim; recorded its CPUs %s", claim.name,
                        cpulist.format(claim.cpus))
        ClaimJournal(state, claim).update(phase="running")
    tune(xml, cfg, state)
    audit("adopt", doc.facts.name, cpus=cpulist.format(claim.cpus))


def relocate(xml: str, cfg: Config, state: StateDir) -> str | None:
    """``migrate``/``restore``: re-pin the host side to this host, keeping the guest's view.

    libvirt refuses a guest ABI change, so the guest cells (their vCPUs and memory),
    topology and distances stay; vCPU, emulator and IO thread pins, the cells' host nodes
    and vcpusched follow this host. None: not ours, print nothing.
    """
    doc = render.parse(xml)
    if doc.request is None or not doc.request.managed:
        return None
    facts, req = doc.facts, doc.request
    name = facts.name
    inputs, host = hostinputs.gather(cfg, facts.partition, facts.uuid, state=state,
                                      devices=facts.bdfs)
    ev = hardware.evaluate(facts, req, inputs)
    if ev.failed is not None:
        raise ev.refusal()
    plan = ev.plan
    assert plan is not None
    if facts.cells:
        cells = [tuple(sorted(c.cpus)) for c in sorted(facts.cells, key=lambda c: c.id)]
        covered = [v for c in cells for v in c]
        if not all(cells) or sorted(covered) != list(range(facts.vcpus)):
            raise Refusal(
                f"{name}'s guest NUMA cells do not hold every vCPU exactly once (a cell "
                "without CPUs?), which numahook never renders, so it cannot keep their shape "
                f"here; run `numahook apply {name}` on the source host and try again",
                "guest-shape")
        want = [c.vcpus for c in plan.cells]
        if want != cells and plan.floating:
            raise Refusal(
                f"this host would give {name} other guest NUMA cells ({len(want)} instead of "
                f"{len(cells)}), and numahook keeps a guest's cells only for domains without "
                "dedicatedMask; migrate it to a host whose free CPUs and shared set put its "
                "dedicated vCPUs on as many nodes", "guest-shape")
        if want != cells:
            threads = plan.topology[3]
            with_memory = frozenset(n.id for n in inputs.topology.nodes.values()
                                    if n.memory_kib > 0)
            try:
                alloc = allocate.allocate_cells(
                    inputs.topology, shared.pool(inputs), cells, threads,
                    1 if req.isolated_emulator else 0, vcpu_nodes=with_memory,
                    policy=req.threads, holders=inputs.holders)
            except Refusal as exc:
                raise Refusal(
                    f"this host cannot give {name} the same guest NUMA shape "
                    f"({len(cells)} cells of {'/'.join(str(len(c)) for c in cells)} vCPUs): "
                    f"{exc} ({host.describe()}); migrate it to a host whose cpuset spans "
                    "matching nodes", "guest-shape") from None
            plan = hardware.replan(facts, req, inputs, alloc, cells)
    from numahook.core import designer  # editing XML: the one lifecycle call that loads lxml

    designer.apply_host_side(doc.root, plan)
    ours = metadata.find(doc.root)
    mark = metadata.rendered(ours)
    if mark is not None:  # the CPUs narrowed to at started, and held ones, are this host's
        metadata.set_rendered(ours, records.replace(
            mark, held=cpulist.format(plan.held),
            emulator=cpulist.format(plan.emulator) if plan.emulator_start else ""))
    audit("relocate", name, cpus=cpulist.format(plan.cpus))
    return safe.tostring(doc.root, doc.quote)
