"""Domain lifecycle operations: the one implementation the hook and numahookd both run.

Each operation reads files only (stdin XML, sysfs, cgroupfs, procfs, libvirt status XML,
our state dir) so the hook can run it inside libvirtd's start path without calling back
into libvirt. Each either completes or leaves a claim the next call or the daemon rolls
back: nothing is half-applied.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet

from numahook import faults, records
from numahook import log as logmod
from numahook.config import Config
from numahook.core import allocate, cpulist, hardware, metadata, render
from numahook.core.plan import Plan
from numahook.errors import HostError, NumahookError, Refusal
from numahook.host import fsutil, hugepages, libvirtstatus, procfs, rtsched
from numahook.ops import emulator, hostinputs, kvmpit
from numahook.records import record
from numahook.state.claims import Claim, RealtimeIntent
from numahook.state.recovery import recover, rollback
from numahook.state.statedir import ClaimJournal, StateDir
from numahook.xml import safe

log = logmod.get(__name__)


def audit(action: str, name: str, **fields: object) -> None:
    """One structured line per action, for the journal and for grep."""
    extra = " ".join(f"{k}={v}" for k, v in fields.items() if v not in (None, ""))
    log.info("domain=%s action=%s %s", name, action, extra)


def _pending_pages(state: StateDir, exclude_uuid: str) -> dict[tuple[int, int], int]:
    """Pages other starting domains were promised but QEMU has not mapped yet."""
    out: dict[tuple[int, int], int] = {}
    for claim in state.list_claims():
        if claim.uuid == exclude_uuid or claim.phase != "reserved":
            continue
        for pool, pages in claim.need.items():
            out[pool] = out.get(pool, 0) + pages
    return out


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
        recover(state, cfg.sysfs_root)  # before this start counts or changes a pool
        old = state.load(uuid)
        if old is not None:  # a start that failed before release ran: give it all back
            log.warning("%s has a claim left from an earlier start; releasing it first", name)
            if not rollback(ClaimJournal(state, old), cfg.sysfs_root):
                raise HostError(f"{name} still holds resources from an earlier start that "
                                "could not be given back; see the journal and run "
                                "`numahook status`")
        inputs, view = hostinputs.gather(cfg, doc.facts.partition, uuid, state=state,
                                          devices=doc.facts.bdfs)
        ev = render.evaluate(doc, inputs)
        if ev.failed is not None:
            raise ev.refusal()
        plan = ev.plan
        assert plan is not None
        stale = hardware.differences(doc.facts, plan)
        if stale:
            raise Refusal(f"{name}'s definition does not match this host: {stale[0]}; "
                          f"{view.describe()}; {rerender_fix(name, cfg, state)}",
                          "stale-definition")
        if plan.realtime_vcpus:
            gate = rtsched.realtime_gate(cfg)
            if not gate.ok:
                raise Refusal(gate.reason, gate.name)
        need = plan.page_need
        early = tuple(v for v in plan.realtime_vcpus if v < doc.facts.current_vcpus)
        intent = (RealtimeIntent(early, plan.priority, doc.request.isolate_emulator)
                  if early else None)
        claim = Claim(uuid=uuid, name=name, cpus=plan.cpus, phase="claimed", need=need,
                      realtime=intent)
        journal = ClaimJournal(state, claim)
        journal.update()  # the claim exists before any page is touched
        faults.point("admit.claimed")
        try:
            if need:
                asked = dict(need)
                for pool, pages in _pending_pages(state, uuid).items():
                    if pool in asked:
                        asked[pool] += pages
                hugepages.reserve(asked, cfg.sysfs_root, cfg.proc_root, journal.hugepages,
                                  compact=cfg.hugepages_compact)
        except NumahookError:
            rollback(journal, cfg.sysfs_root)
            raise
        faults.point("admit.reserved")
        journal.update(phase="reserved")
        faults.point("admit.phase-reserved")
        audit("admit", name, cpus=cpulist.format(plan.cpus),
              hugepages=",".join(f"node{n}:{p}x{s}kB" for (n, s), p in sorted(need.items())),
              added=",".join(f"node{n}:{p}" for (n, s), p in
                             sorted(journal.claim.hugepages.items())))
        return Admission(journal.claim, plan)


@record(frozen=True)
class Tuning:
    rt_vcpus: tuple[int, ...]
    result: rtsched.RtResult | None
    message: str


def vcpu_threads(name: str, cfg: Config,
                 plugged: AbstractSet[int] = frozenset()) -> tuple[int | None, dict[int, int]]:
    """vCPU thread ids: libvirt's status XML first, then /proc thread names.

    ``plugged``: vCPUs expected to run (the real-time mask); one the status XML lacks is
    looked up by name too, since libvirt saves the status of a hot-plugged vCPU only
    after it has moved its thread into its cgroup, which is when numahookd's vCPU watch
    (daemon/vcpuwatch.py) asks for it.
    """
    status = libvirtstatus.status_of(name, cfg.libvirt_run)
    if status is None:
        return None, {}
    tids = dict(status.vcpu_tids)
    if status.pid and (not tids or not set(plugged) <= set(tids)):
        named = procfs.vcpu_threads_from_proc(status.pid, cfg.proc_root)
        tids = {**named, **tids} if tids else named
    return status.pid, tids


def _apply_journalled(journal: ClaimJournal, tids: Mapping[int, int],
                      rt_vcpus: frozenset[int], priority: int, emulator: int | None,
                      cfg: Config, allow_delegation: bool) -> rtsched.RtResult:
    """rtsched.apply with each budget write journalled in the claim, after what an
    earlier application delegated (a re-apply adds to it). Under the state lock."""
    earlier = list(journal.claim.rt_budget)

    def note(records: list[rtsched.BudgetRecord]) -> None:
        journal.rt_budget(earlier + records)

    return rtsched.apply(
        tids, rt_vcpus, priority, allow_delegation=allow_delegation,
        cap_us=cfg.rt_max_budget_us, cgroup_root=cfg.cgroup_root, proc_root=cfg.proc_root,
        journal=note, emulator_tid=emulator)


def tune(xml: str, cfg: Config, state: StateDir) -> Tuning | None:
    """``started`` (and the daemon's backstop): SCHED_FIFO on exactly the masked vCPUs,
    the kvm-pit thread of a dedicated KVM domain on vCPU 0's CPU (ops/kvmpit.py), and the
    emulator back on its own CPUs where it started wider (ops/emulator.py)."""
    doc = render.parse(xml, readonly=True)
    req = doc.request
    if req is None or not req.managed:
        return None
    name = doc.facts.name
    rt_all = cpulist.parse_mask(req.realtime_mask, doc.facts.vcpus) if req.realtime \
        else frozenset()
    pid, tids = vcpu_threads(name, cfg, rt_all)
    if req.dedicated:
        kvmpit.pin(doc.facts, pid, cfg.proc_root)
        emulator.narrow(doc.facts, pid, cfg.proc_root)
    if not req.realtime:
        _mark_running(doc, cfg, state, pid)
        return None
    # vCPUs not plugged yet have no thread; the daemon tunes them when they appear
    rt_vcpus = frozenset(v for v in rt_all if v in tids)
    # QEMU's main thread is the emulator thread; real-time with it when it has its own CPU
    emulator_tid = pid if req.isolate_emulator and rt_all and pid else None
    state.ensure()
    with state.lock(cfg.lock_timeout):
        claim = state.load(doc.facts.uuid) or Claim(
            uuid=doc.facts.uuid, name=name, cpus=_live_cpus(doc), phase="running")
        journal = ClaimJournal(state, claim)
        journal.update(phase="running", qemu_pid=pid)
        faults.point("tune.journalled")
        result = _apply_journalled(journal, tids, rt_vcpus, req.realtime_priority,
                                   emulator_tid, cfg,
                                   allow_delegation=cfg.rt_throttled == "delegate")
        faults.point("tune.applied")
    audit("realtime", name, vcpus=cpulist.format(rt_vcpus), priority=req.realtime_priority,
          emulator=emulator_tid is not None, path=result.path, detail=result.message)
    return Tuning(tuple(sorted(rt_vcpus)), result, result.message)


def tune_early(uuid: str, tids: dict[int, int], pid: int, cfg: Config,
               state: StateDir) -> bool:
    """numahookd, between ``prepare`` and ``started``: FIFO as soon as libvirt has put the
    real-time vCPU threads in their cgroups, rather than once the ``started`` hook's
    Python is up.

    Only where the group budget must be delegated (elsewhere ``<vcpusched>`` does it
    before the vCPUs run). ``tids`` are the threads found in the ``vcpuN`` cgroups so far.
    True once done or once there is nothing to do; False to be asked again when more
    vCPU threads have moved. The ``started`` hook still applies and verifies, and finds
    the work done.
    """
    if cfg.rt_throttled != "delegate" or not rtsched.needs_group_budget(cfg.cgroup_root,
                                                                          cfg.proc_root):
        return True
    claim = state.load(uuid)
    if claim is None or claim.realtime is None or claim.phase == "running":
        return True
    intent = claim.realtime
    if not set(intent.vcpus) <= set(tids):
        return False
    with state.lock(cfg.lock_timeout):
        claim = state.load(uuid)  # again, under the lock: the hook may have moved on
        if claim is None or claim.realtime is None or claim.phase == "running":
            return True
        journal = ClaimJournal(state, claim)
        journal.update(qemu_pid=pid)
        result = _apply_journalled(journal, {v: tids[v] for v in intent.vcpus},
                                   frozenset(intent.vcpus), intent.priority,
                                   pid if intent.emulator else None, cfg,
                                   allow_delegation=True)
        _record_verified(journal, pid)
    audit("realtime-early", claim.name, vcpus=cpulist.format(intent.vcpus),
          priority=intent.priority, emulator=intent.emulator, path=result.path,
          detail=result.message)
    return True


def _record_verified(journal: ClaimJournal, pid: int) -> None:
    """Say in the claim that the intent is applied and verified for QEMU ``pid``: rtsched.apply
    returns only after reading back every policy it set. The ``started`` hook then takes
    its fast path (numahook/hook/fast.py), which verifies again and applies nothing."""
    journal.update(verified_pid=pid)


def _live_cpus(doc: render.Parsed) -> frozenset[int]:
    cpus: set[int] = set(metadata.held_cpus(doc.root))
    for pins in doc.facts.vcpupin.values():
        cpus |= pins
    cpus |= doc.facts.emulatorpin or set()
    return frozenset(cpus)


def _mark_running(doc: render.Parsed, cfg: Config, state: StateDir, pid: int | None) -> None:
    state.ensure()
    with state.lock(cfg.lock_timeout):
        claim = state.load(doc.facts.uuid)
        if claim is not None:
            ClaimJournal(state, claim).update(phase="running", qemu_pid=pid)


def release(uuid: str, name: str, cfg: Config, state: StateDir) -> bool:
    """``stopped``/``release``: give back hugepages we added and RT budget, drop the claim."""
    if not fsutil.exists(state.path):
        return True
    with state.lock(cfg.lock_timeout):
        claim = state.load(uuid)
        if claim is None:
            return True
        faults.point("release.before-rollback")
        ok = rollback(ClaimJournal(state, claim), cfg.sysfs_root)
        faults.point("release.after-rollback")
    audit("release", name, ok=ok, cpus=cpulist.format(claim.cpus),
          hugepages=",".join(f"node{n}:{p}" for (n, s), p in sorted(claim.hugepages.items())))
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
    if doc.request.realtime:
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
    inputs, view = hostinputs.gather(cfg, facts.partition, facts.uuid, state=state,
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
        if want != cells:
            threads = plan.topology[3]
            with_memory = frozenset(n.id for n in inputs.topology.nodes.values()
                                    if n.memory_kib > 0)
            try:
                alloc = allocate.allocate_cells(
                    inputs.topology, inputs.available, cells, threads,
                    1 if req.isolate_emulator else 0, vcpu_nodes=with_memory,
                    policy=req.threads)
            except Refusal as exc:
                raise Refusal(
                    f"this host cannot give {name} the same guest NUMA shape "
                    f"({len(cells)} cells of {'/'.join(str(len(c)) for c in cells)} vCPUs): "
                    f"{exc} ({view.describe()}); migrate it to a host whose cpuset spans "
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
