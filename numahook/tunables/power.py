"""CPU power per domain: the idle states and cpufreq governor of the CPUs it runs on.

A real-time vCPU that halts lets its host CPU drop into a deep idle state, and the wake-up
then costs tens to hundreds of microseconds (seapath issue #57: from about 60 µs to over
40 ms between kernels, the vCPU's CPU idle in the traces). CRI-O's ``cpu-c-states.crio.io``
and ``cpu-freq-governor.crio.io`` set each container CPU's ``pm_qos_resume_latency_us``
and ``scaling_governor`` at start and put them back at stop; this is the same for a
domain, asked with ``<numahook:power idleStates governor>`` (host/cpupower.py says what
the files' values mean). A real-time domain that asks nothing gets ``[power]
realtime_idle_states`` (``disable`` unless configured).

**Which CPUs.** Those the domain holds and its threads run on: its dedicated vCPU pins and
its isolated emulator's CPUs (``Plan.cpus`` but the held siblings; without
isolateEmulatorThread the emulator floats over vCPU CPUs, so that adds nothing). Never
``[cpus] shared``, where a shared emulator and a dedicatedMask's floating vCPUs run beside
the host's housekeeping: the domain uses those CPUs but does not hold them, and another
domain may use them too. The isolated emulator is included: it runs
SCHED_FIFO with the real-time vCPUs, delivers the guest's timer interrupts under TCG and
emulates its devices under KVM, so its wake-up latency is the guest's; KubeVirt's pod gets
the same from CRI-O, whose cpuset holds the emulator CPU. threadPolicy ``isolate``'s held
siblings are not touched: they run nothing, and a sibling kept polling would keep half of
the core's partitioned resources from the vCPU it is held for, where an idle one gives
them back. A cpufreq policy that also governs a CPU the domain does not hold is left alone,
with an advisory: writing through it would change that CPU too.

**When.** At ``prepare`` (under the state lock, before QEMU runs), so the guest boots with
it, and a refusal (a governor the host lacks) undoes everything admitted so far. numahookd's
backstop puts back a value that changed under a running domain (``verify``), through the
lifecycle's re-apply, under the lock.

**Journal.** The entry holds the CPUs, what was asked, and each file's value before
numahook first wrote it (``saved_*``), journalled before any write. Every write sets a
value and undo writes the saved ones back, so a crash anywhere leaves an entry whose undo
restores the host; a re-apply keeps the first saved values.
"""

from __future__ import annotations

from numahook.records import field, record
from numahook.tunables.base import Tunable, integer, shown, string

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

    from numahook.config import Config
    from numahook.core.domainxml import DomainFacts
    from numahook.core.plan import Check, Plan
    from numahook.core.render import Parsed
    from numahook.host.cpupower import Writes
    from numahook.tunables.base import Journal
    from numahook.tunables.view import View

#: the check ``prepare`` refuses under and ``numahook check`` shows
CHECK = "cpu-power"
_MAX_CPU = 1 << 16


@record(frozen=True)
class Entry:
    #: the CPUs it tunes: the vCPU pins and the isolated emulator's
    cpus: tuple[int, ...]
    #: idleStates as asked (None: not asked, so the default for ``realtime``)
    idle: str | int | None = None
    #: governor as asked
    governor: str | None = None
    #: a real-time domain, whose default idleStates is [power] realtime_idle_states
    realtime: bool = False
    #: CPU -> its pm_qos_resume_latency_us before numahook first wrote it
    saved_latency: Mapping[int, str] = field(default_factory=dict)
    #: CPU -> its scaling_governor before numahook first wrote it
    saved_governor: Mapping[int, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"cpus": list(self.cpus), "idle": self.idle, "governor": self.governor,
                "realtime": self.realtime,
                "saved_latency": {str(c): v for c, v in sorted(self.saved_latency.items())},
                "saved_governor": {str(c): v for c, v in sorted(self.saved_governor.items())}}


def targets(plan: Plan) -> tuple[int, ...]:
    """The CPUs the domain holds that its threads run on: the claim's CPUs but the held
    siblings. Never the shared set (``[cpus] shared``) a shared emulator or the floating
    vCPUs of a dedicatedMask use: the host's housekeeping runs there too."""
    return tuple(sorted(plan.cpus - set(plan.held)))


def targets_of(cfg: Config, facts: DomainFacts) -> tuple[int, ...]:
    """The same CPUs read from a running domain's definition: each vCPU pinned to one CPU
    of its own, and the emulator's, but the shared set."""
    own: set[int] = set()
    for cpus in facts.vcpupin.values():
        if len(cpus) == 1:  # a floating vCPU's pin is the whole shared set
            own |= cpus
    own |= facts.emulator_cpus or set()
    return tuple(sorted(own - cfg.shared_cpus))


def asked_idle(cfg: Config, idle: str | int | None, realtime: bool) -> str | int:
    """idleStates in force: as asked, else the real-time default, else ``enable``."""
    if idle is not None:
        return idle
    return cfg.rt_idle_states if realtime else "enable"


def plan_writes(cfg: Config, cpus: tuple[int, ...], idle: str | int | None,
                governor: str | None, realtime: bool) -> Writes:
    """Which of ``cpus`` get which value on this host; reads sysfs, writes nothing."""
    from numahook.host import cpupower

    latency = cpupower.latency_value(asked_idle(cfg, idle, realtime))
    return cpupower.plan(cfg.sysfs_root, cpus, latency, governor)


class Power(Tunable):
    name = "power"
    step = "prepare"
    attributes = ("power", "power.idleStates", "power.governor")
    plan_fields = ("vcpu_pins", "emulator", "held", "floating", "emulator_shared")

    def wanted(self, doc: Parsed | View) -> bool:
        req = doc.request
        return req is not None and req.dedicated and (req.asks_power or req.realtime)

    def _writes(self, cfg: Config, cpus: tuple[int, ...], req: Any) -> Writes:
        return plan_writes(cfg, cpus, req.idle_states, req.governor, req.realtime)

    def precondition(self, cfg: Config, doc: Parsed, plan: Plan) -> Check | None:
        """Refuses a governor the host lacks, naming the ones it has; says what the CPUs
        will get otherwise, with the advisories (``numahook check`` shows it)."""
        from numahook.core.plan import Check

        cpus = targets(plan)
        w = self._writes(cfg, cpus, doc.request)
        if w.refused:
            return Check(CHECK, False, f"{doc.facts.name} asks for {w.refused}")
        return Check(CHECK, True, w.summary(cpus))

    def intent(self, doc: Parsed, plan: Plan) -> Entry:
        req = doc.request
        assert req is not None
        return Entry(targets(plan), req.idle_states, req.governor,
                     req.realtime)

    def apply(self, cfg: Config, journal: Journal,
              view: View | None) -> dict[str, object] | None:
        """Journal every value about to be replaced, then write; a value already in place
        is not written. Without an entry (numahookd re-applying to a domain adopted
        without one) the CPUs and the request come from the running definition."""
        from numahook import faults, records
        from numahook import log as logmod
        from numahook.core import cpulist
        from numahook.errors import Refusal
        from numahook.host import cpupower

        entry = journal.entry(self.name)
        if entry is None:
            if view is None:
                return None
            req = view.request
            entry = Entry(targets_of(cfg, view.facts), req.idle_states, req.governor, req.realtime)
        w = plan_writes(cfg, entry.cpus, entry.idle, entry.governor, entry.realtime)
        if w.refused:
            raise Refusal(f"{journal.name} asks for {w.refused}", CHECK)
        root = cfg.sysfs_root
        lat_now = {c: cpupower.read(root, c, cpupower.LATENCY) for c in w.latency_cpus}
        gov_now = {c: cpupower.read(root, c, cpupower.GOVERNOR) for c in w.governor_cpus}
        saved_l, saved_g = dict(entry.saved_latency), dict(entry.saved_governor)
        for saved, now in ((saved_l, lat_now), (saved_g, gov_now)):
            for c, value in now.items():
                if value is not None:
                    saved.setdefault(c, value)  # the first value seen is the host's
        journal.put(self.name, records.replace(entry, saved_latency=saved_l,
                                               saved_governor=saved_g))
        faults.point("power.saved")  # journalled, nothing written
        for c, value in lat_now.items():
            if value is not None and value != w.latency:
                assert w.latency is not None
                cpupower.write(root, c, cpupower.LATENCY, w.latency)
                faults.point("power.latency-written")
        for c, value in gov_now.items():
            if value is not None and value != w.governor:
                assert w.governor is not None
                cpupower.write(root, c, cpupower.GOVERNOR, w.governor)
                faults.point("power.governor-written")
        log = logmod.get(__name__)
        for note in w.notes:
            log.warning("domain=%s power: %s", journal.name, note)
        return {"cpus": cpulist.format(entry.cpus),
                "idle_states": asked_idle(cfg, entry.idle, entry.realtime),
                "pm_qos_resume_latency_us": w.latency,
                "latency_cpus": cpulist.format(w.latency_cpus),
                "governor": w.governor if w.governor_cpus else None,
                "governor_cpus": cpulist.format(w.governor_cpus)}

    def _off(self, cfg: Config, view: View) -> tuple[Writes, list[int], list[int]]:
        """(what is wanted, CPUs whose latency differs, CPUs whose governor differs)."""
        from numahook.host import cpupower

        w = self._writes(cfg, targets_of(cfg, view.facts), view.request)
        root = cfg.sysfs_root
        lat = [c for c in w.latency_cpus if cpupower.read(root, c, cpupower.LATENCY)
               not in (None, w.latency)]
        gov = [c for c in w.governor_cpus if cpupower.read(root, c, cpupower.GOVERNOR)
               not in (None, w.governor)]
        return w, lat, gov

    def verify(self, cfg: Config, view: View) -> str | None:
        """What differs from what ``apply`` writes; what it leaves alone (no file, a wider
        policy, a governor the host no longer offers) is nothing to re-apply."""
        from numahook.core import cpulist
        from numahook.core.units import plural

        if not self.wanted(view):
            return None
        w, lat, gov = self._off(cfg, view)
        out = []
        if lat:
            out.append(f"pm_qos_resume_latency_us of {plural(len(lat), 'CPU')} "
                       f"{cpulist.format(lat)} is not {w.latency}")
        if gov:
            out.append(f"scaling_governor of {plural(len(gov), 'CPU')} {cpulist.format(gov)} "
                       f"is not {w.governor}")
        return "; ".join(out) or None

    def backstop(self, cfg: Config, view: View) -> str | None:
        """A value changed under the running domain: apply again, under the lock (numahookd
        must not write beside a release that is restoring the saved values)."""
        return self.verify(cfg, view)

    def undo(self, cfg: Config, journal: Journal) -> bool:
        """Write each saved value back, governors first (the reverse of apply). A file that
        is gone (its CPU's cpufreq went offline) or a value the kernel refuses now (its
        governor's module unloaded) cannot be put back by retrying: warned and dropped,
        so the domain can start again. Anything else is kept for the next call."""
        import errno

        from numahook import log as logmod
        from numahook import records
        from numahook.host import cpupower, fsutil

        entry = journal.entry(self.name)
        if entry is None or not (entry.saved_latency or entry.saved_governor):
            return True
        log = logmod.get(__name__)
        left: dict[str, dict[int, str]] = {}
        for key, name in (("saved_governor", cpupower.GOVERNOR),
                          ("saved_latency", cpupower.LATENCY)):
            keep = left.setdefault(key, {})
            for c, value in sorted(getattr(entry, key).items()):
                try:
                    if cpupower.read(cfg.sysfs_root, c, name) not in (None, value):
                        cpupower.write(cfg.sysfs_root, c, name, value)
                except fsutil.KnobWriteError as exc:
                    if exc.errno in (errno.ENOENT, errno.EINVAL):
                        log.warning("%s: CPU %d's %s cannot be put back to %s: %s",
                                    journal.name, c, name, value, exc)
                        continue
                    log.error("%s: putting back CPU %d's %s failed: %s", journal.name, c,
                              name, exc)
                    keep[c] = value
        journal.put(self.name, records.replace(entry, saved_governor=left["saved_governor"],
                                               saved_latency=left["saved_latency"]))
        return not (left["saved_governor"] or left["saved_latency"])

    def status(self, cfg: Config, view: View) -> dict[str, Any]:
        """What each CPU's files hold now, beside what the domain asks."""
        from numahook.core import cpulist
        from numahook.errors import NumahookError
        from numahook.host import cpupower

        if not self.wanted(view):
            return {"power": None}
        cpus = targets_of(cfg, view.facts)
        req = view.request
        out = {"cpus": cpulist.format(cpus), "governor": req.governor,
               "idle_states": str(asked_idle(cfg, req.idle_states, req.realtime))}
        try:
            w, lat, gov = self._off(cfg, view)
            now = [{"cpu": c, "pm_qos_resume_latency_us": cpupower.read(
                        cfg.sysfs_root, c, cpupower.LATENCY),
                    "scaling_governor": cpupower.read(cfg.sysfs_root, c, cpupower.GOVERNOR)}
                   for c in cpus]
        except NumahookError as exc:
            return {"power": {**out, "now": [], "ok": False, "notes": [str(exc)]}}
        return {"power": {**out, "now": now, "ok": not (lat or gov), "notes": list(w.notes)}}

    def held(self, entry: Entry | None) -> dict[str, Any]:
        return {"power_files": len(entry.saved_latency) + len(entry.saved_governor)
                if entry else 0}

    def text(self, domain: dict[str, Any]) -> list[str]:
        from numahook.core.units import counted, plural

        out = []
        power = domain.get("power")
        if power:
            gov, now = power["governor"], power["now"]
            out.append(f"  power: {plural(len(now), 'CPU')} {power['cpus']}, idle states "
                       f"{power['idle_states']} "
                       f"(pm_qos_resume_latency_us {_by_value(now, 'pm_qos_resume_latency_us')})"
                       + (f", governor {gov} (scaling_governor "
                          f"{_by_value(now, 'scaling_governor')})" if gov else "")
                       + ("" if power["ok"] else "; not as applied, numahookd puts it back"))
            out += [f"  power advisory: {n}" for n in power["notes"]]
        files = (domain.get("claim") or {}).get("power_files", 0)
        if files:
            out.append(f"  holds: {counted(files, 'CPU power file')} to put back at stop")
        return out

    def fast_checks(self, doc: Parsed, plan: Plan) -> dict[str, Any] | None:
        return {}  # written at prepare under the lock; numahookd's backstop watches it

    def decode(self, data: Any) -> Entry:
        from numahook.core import schema

        cpus = tuple(integer(c) for c in data["cpus"])
        idle, governor, realtime = data["idle"], data["governor"], data["realtime"]
        if any(not 0 <= c < _MAX_CPU for c in cpus):
            raise ValueError("its power CPUs are out of range")
        if not (idle is None or idle in ("enable", "disable") or (
                type(idle) is int and 1 <= idle <= schema.PM_QOS_MAX_US)):
            raise ValueError(f"its idleStates {shown(idle)} is not one numahook writes")
        if type(realtime) is not bool:
            raise TypeError("its power realtime flag is not true or false")
        return Entry(cpus, idle, None if governor is None else string(governor), realtime,
                     _saved(data["saved_latency"]), _saved(data["saved_governor"]))


def _saved(data: Any) -> dict[int, str]:
    if type(data) is not dict:
        raise TypeError("its saved power values are not a JSON object")
    out = {}
    for key, value in data.items():
        if not (key.isascii() and key.isdigit() and int(key) < _MAX_CPU):
            raise ValueError(f"{shown(key)} is not a CPU")
        out[int(key)] = string(value)
    return out


def _by_value(now: list[dict[str, Any]], key: str) -> str:
    """Each CPU's ``key`` grouped by value: ``n/a on 2-3, 0 on 4``."""
    from numahook.core import cpulist

    groups: dict[str, list[int]] = {}
    for row in now:
        groups.setdefault(row[key] or "absent", []).append(row["cpu"])
    return ", ".join(f"{v} on {cpulist.format(c)}" for v, c in groups.items()) or "unread"


TUNABLE = Power()
