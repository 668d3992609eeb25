"""Real time: SCHED_FIFO on exactly the masked vCPUs (and an isolated emulator thread),
with RT group budget delegated where the kernel's settings need it (host/rtsched.py).

Its claim entry holds the intent ``prepare`` decided (so numahookd can apply it as soon as
libvirt moves the vCPU threads, before ``started``) and every ``cpu.rt_runtime_us`` it
raised, journalled before the write (core/rtbudget.py's BudgetRecord), so undo and
recovery lower exactly those.
"""

from __future__ import annotations

from numahook.records import record
from numahook.tunables.base import Tunable, integer, string

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from numahook.config import Config
    from numahook.core.plan import Check, Plan
    from numahook.core.render import Parsed
    from numahook.core.rtbudget import BudgetRecord
    from numahook.tunables.base import Journal
    from numahook.tunables.view import View



@record(frozen=True)
class Intent:
    """What ``prepare`` decided: the masked vCPUs online at boot, their priority, and
    whether QEMU's main thread (an isolated emulator) is real-time too."""

    vcpus: tuple[int, ...]
    priority: int
    emulator: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"vcpus": list(self.vcpus), "priority": self.priority, "emulator": self.emulator}

    @classmethod
    def from_json(cls, data: Any) -> Intent:
        vcpus = tuple(integer(v) for v in data["vcpus"])
        priority = integer(data["priority"])
        if not vcpus or any(not 0 <= v < 16384 for v in vcpus) or not 1 <= priority <= 99:
            raise ValueError("its realtime vCPUs or priority are out of range")
        if type(data["emulator"]) is not bool:
            raise TypeError("its realtime emulator flag is not true or false")
        return cls(vcpus, priority, data["emulator"])


@record(frozen=True)
class Entry:
    intent: Intent | None = None
    #: cpu.rt_runtime_us files raised, parents first
    budget: tuple[BudgetRecord, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {"intent": None if self.intent is None else self.intent.to_json(),
                "budget": [list(r) for r in self.budget]}


class Realtime(Tunable):
    name = "realtime"
    attributes = ("realtime", "realtime.mask", "realtime.priority", "isolateEmulatorThread",
                  "emulatorThreadPolicy")
    plan_fields = ("realtime_vcpus", "priority", "vcpusched", "emulator_realtime", "locked")

    def wanted(self, doc: Parsed | View) -> bool:
        return doc.request is not None and doc.request.realtime

    def precondition(self, cfg: Config, doc: Parsed, plan: Plan) -> Check | None:
        from numahook.host import rtsched

        return rtsched.realtime_gate(cfg) if plan.realtime_vcpus else None

    def intent(self, doc: Parsed, plan: Plan) -> Entry | None:
        assert doc.request is not None
        early = tuple(v for v in plan.realtime_vcpus if v < doc.facts.current_vcpus)
        if not early:
            return None
        return Entry(Intent(early, plan.priority, doc.request.isolated_emulator))

    def _apply(self, cfg: Config, journal: Journal, tids: dict[int, int],
               vcpus: frozenset[int], priority: int, emulator: int | None,
               allow_delegation: bool) -> Any:
        """rtsched.apply with each budget write journalled after what an earlier
        application delegated (a re-apply adds to it)."""
        from numahook import records
        from numahook.host import rtsched

        entry = journal.entry(self.name) or Entry()
        earlier = list(entry.budget)

        def note(written: list[BudgetRecord]) -> None:
            journal.put(self.name, records.replace(entry, budget=tuple(earlier + written)))

        return rtsched.apply(tids, vcpus, priority, allow_delegation=allow_delegation,
                             cap_us=cfg.rt_max_budget_us, cgroup_root=cfg.cgroup_root,
                             proc_root=cfg.proc_root, journal=note, emulator_tid=emulator)

    def _emulator(self, view: View) -> int | None:
        """QEMU's main thread is the emulator thread: real-time with the vCPUs when it has
        its own isolated CPU."""
        return view.pid if view.request.isolated_emulator and view.rt_vcpus and view.pid \
            else None

    def apply(self, cfg: Config, journal: Journal,
              view: View | None) -> dict[str, object] | None:
        assert view is not None
        from numahook.core import cpulist

        vcpus = view.rt_running  # vCPUs not plugged yet: numahookd tunes them when they appear
        emulator = self._emulator(view)
        result = self._apply(cfg, journal, dict(view.tids), vcpus,
                             view.request.realtime_priority, emulator,
                             cfg.rt_throttled == "delegate")
        return {"vcpus": cpulist.format(vcpus), "priority": view.request.realtime_priority,
                "emulator": emulator is not None, "path": result.path,
                "detail": result.message}

    def early(self, cfg: Config, journal: Journal, tids: dict[int, int],
              pid: int) -> bool | None:
        """Where the group budget must be delegated (elsewhere ``<vcpusched>`` sets FIFO
        before the vCPUs run), FIFO as soon as libvirt has put the real-time vCPU threads
        in their cgroups, rather than once the ``started`` hook's Python is up."""
        from numahook import log as logmod
        from numahook.core import cpulist
        from numahook.host import rtsched

        entry = journal.entry(self.name)
        if entry is None or entry.intent is None or cfg.rt_throttled != "delegate" or \
                not rtsched.needs_group_budget(cfg.cgroup_root, cfg.proc_root):
            return None
        intent = entry.intent
        if not set(intent.vcpus) <= set(tids):
            return False
        result = self._apply(cfg, journal, {v: tids[v] for v in intent.vcpus},
                             frozenset(intent.vcpus), intent.priority,
                             pid if intent.emulator else None, True)
        logmod.get(__name__).info(
            "domain=%s action=realtime-early vcpus=%s priority=%s emulator=%s path=%s "
            "detail=%s", journal.name, cpulist.format(intent.vcpus), intent.priority,
            intent.emulator, result.path, result.message)
        return True

    def _wrong(self, view: View) -> tuple[list[int], list[int], bool]:
        """(masked vCPUs not at their policy, unmasked vCPUs real-time, the emulator off)."""
        from numahook.errors import NumahookError
        from numahook.host import procfs
        from numahook.host.rtgroups import REALTIME_POLICIES

        want = ("fifo", view.request.realtime_priority)
        wrong, extra = [], []
        for v, tid in sorted(view.tids.items()):
            try:
                now = procfs.sched_of(tid)
            except NumahookError:
                continue  # the thread exited
            if v in view.rt_vcpus and now != want:
                wrong.append(v)
            elif v not in view.rt_vcpus and now[0] in REALTIME_POLICIES:
                extra.append(v)
        emulator = self._emulator(view)
        emulator_wrong = False
        if emulator is not None:
            try:
                emulator_wrong = procfs.sched_of(emulator) != want
            except NumahookError:
                pass  # QEMU exited
        return wrong, extra, emulator_wrong

    def verify(self, cfg: Config, view: View) -> str | None:
        """Exactly the masked vCPUs SCHED_FIFO at the priority, as rtsched.apply leaves
        them, and the emulator thread too when it is real-time."""
        from numahook.core import cpulist
        from numahook.core.units import plural

        wrong, extra, emulator_wrong = self._wrong(view)
        what = [f"{plural(len(wrong), 'vCPU')} {cpulist.format(wrong)}"] if wrong else []
        if emulator_wrong:
            what.append("the emulator thread")
        out = []
        if what:
            out.append(f"real-time {' and '.join(what)} "
                       f"{plural(len(wrong) + emulator_wrong, 'is', 'are')} not SCHED_FIFO "
                       f"{view.request.realtime_priority}")
        if extra:
            out.append(f"{plural(len(extra), 'vCPU')} {cpulist.format(extra)} outside the "
                       f"mask {plural(len(extra), 'is', 'are')} real-time")
        return "; ".join(out) or None

    def backstop(self, cfg: Config, view: View) -> str | None:
        """A masked vCPU not at its policy (reset by hand, hot-plugged): apply again."""
        return self.verify(cfg, view) if view.rt_vcpus else None

    def watch(self, cfg: Config, running: Callable[[], list[View]],
              retune: Callable[[View, str], bool], force: bool, memo: dict[str, Any]) -> int:
        """FIFO threads in zero-budget groups once throttling is on get no CPU at all.

        That happens when kernel.sched_rt_runtime_us goes from -1 back to >= 0 under
        running real-time vCPUs. Delegate a budget at once, or demote them, loudly.
        The kernel refuses to zero the budget of a group that holds RT threads, so a
        stall can only begin at such a flip: between flips one sysctl read per tick is
        enough (``memo["clean"]``: the value when no thread was stalled), and the full
        check runs again on a change or when ``force``d.
        """
        from numahook.host import rtsched

        runtime = rtsched.rt_runtime_us(cfg.proc_root)
        if not force and runtime == memo.get("clean"):
            return 0
        memo["clean"] = None
        demoted = 0
        if rtsched.needs_group_budget(cfg.cgroup_root, cfg.proc_root):
            demoted, clean = self._unstall(cfg, running(), retune, runtime)
            if not clean:
                return demoted  # something is still stalled: check again at the next tick
        memo["clean"] = runtime
        return demoted

    def _unstall(self, cfg: Config, views: list[View], retune: Callable[[View, str], bool],
                 runtime: int) -> tuple[int, bool]:
        """Fix every stalled real-time thread: (threads demoted, none left stalled)."""
        from numahook import log as logmod
        from numahook.host import rtsched

        log = logmod.get(__name__)
        clean = True
        count = 0
        for view in views:
            tids = [view.tids[v] for v in sorted(view.rt_running)]
            emulator = self._emulator(view)
            if emulator is not None:
                tids.append(emulator)
            stalled = rtsched.unbudgeted_rt_threads(tids, cfg.cgroup_root, cfg.proc_root)
            if not stalled:
                continue
            if cfg.rt_throttled == "delegate":
                if retune(view, self.name):
                    log.warning("kernel.sched_rt_runtime_us is now %d with real-time vCPUs of "
                                "%s in zero-budget cgroups; delegated RT budget to them",
                                runtime, view.name)
                    continue
                log.error("%s: delegating RT budget failed; demoting instead", view.name)
            demoted = rtsched.demote(stalled)
            count += len(demoted)
            if rtsched.unbudgeted_rt_threads(stalled, cfg.cgroup_root, cfg.proc_root):
                clean = False
            log.critical(
                "kernel.sched_rt_runtime_us is now %d: the real-time vCPU threads %s of %s "
                "had no RT budget and would stall, so they were demoted to SCHED_OTHER; set "
                "it back to -1 or set throttled = delegate under [realtime] in %s",
                runtime, ",".join(map(str, demoted)), view.name, cfg.path)
        return count, clean

    def undo(self, cfg: Config, journal: Journal) -> bool:
        """Lower the budgets raised. The real-time threads are gone (QEMU exited) or were
        demoted first; the kernel refuses to lower a budget under running FIFO threads."""
        from numahook import log as logmod
        from numahook import records
        from numahook.errors import NumahookError
        from numahook.host import rtsched

        entry = journal.entry(self.name)
        if entry is None or not entry.budget:
            return True

        def note(left: list[BudgetRecord]) -> None:
            journal.put(self.name, records.replace(entry, budget=tuple(left)))

        try:
            rtsched.undelegate(entry.budget, note)
        except NumahookError as exc:
            logmod.get(__name__).error("giving back the real-time budget of %s failed: %s",
                                       journal.name, exc)
            return False
        return True

    def status(self, cfg: Config, view: View) -> dict[str, Any]:
        from numahook.errors import NumahookError
        from numahook.host import procfs

        ok = True
        for v in view.rt_running:
            try:
                ok = ok and procfs.sched_of(view.tids[v])[0] == "fifo"
            except NumahookError:
                continue
        return {"realtime_ok": ok}

    def held(self, entry: Entry | None) -> dict[str, Any]:
        return {"rt_budget_files": len(entry.budget) if entry else 0}

    def text(self, domain: dict[str, Any]) -> list[str]:
        """Each vCPU's line says its policy (ops/status.py); this, the budget held."""
        from numahook.core.units import counted

        files = (domain.get("claim") or {}).get("rt_budget_files", 0)
        return [f"  holds: {counted(files, 'RT budget file')}"] if files else []

    def fast_checks(self, doc: Parsed, plan: Plan) -> dict[str, Any] | None:
        """Its intent: exactly the masked vCPUs online at boot FIFO at the priority, and the
        emulator thread too when it is isolated."""
        entry = self.intent(doc, plan)
        if entry is None or entry.intent is None:
            return {}
        out: dict[str, Any] = {"fifo": {"vcpus": list(entry.intent.vcpus),
                                        "priority": entry.intent.priority}}
        if entry.intent.emulator:
            out["emulator_fifo"] = entry.intent.priority
        return out

    def decode(self, data: Any) -> Entry:
        from numahook.core.rtbudget import BudgetRecord

        intent = data["intent"]
        return Entry(None if intent is None else Intent.from_json(intent),
                     tuple(BudgetRecord(string(p), integer(a), integer(b), bool(ok))
                           for p, a, b, ok in data["budget"]))


TUNABLE = Realtime()
