"""Each CPU's power files in sysfs: its idle-state latency limit and its cpufreq governor.

``cpuN/power/pm_qos_resume_latency_us`` is the per-CPU PM QoS limit every cpuidle governor
(menu, teo, ladder, haltpoll) honours when it picks an idle state for that CPU alone; the
global ``/dev/cpu_dma_latency`` that tuned's ``force_latency`` holds would reach every CPU
of the host. Its two special values mean the opposite of what they look like
(Documentation/ABI/testing/sysfs-devices-power; drivers/base/power/sysfs.c):

* ``0`` is *no limit*: any idle state, however deep. The kernel stores it as
  PM_QOS_RESUME_LATENCY_NO_CONSTRAINT and shows it as ``0`` again.
* ``n/a`` is a limit of 0 µs: no resume latency is acceptable, so cpuidle keeps the CPU
  in the polling state (state0, ``POLL``, exit latency 0).
* ``N`` (1 to S32_MAX - 1) allows the states whose exit latency is at most N µs; negative
  values and S32_MAX are refused with EINVAL. The kernel parses it with base 0
  (``0x10`` is 16), so numahook writes decimal only.

CRI-O writes ``0`` for its ``enable``, ``n/a`` for ``disable`` and N (> 0 only) for
``max_latency:N`` (internal/runtimehandlerhooks/high_performance_hooks_linux.go,
convertAnnotationToLatency). numahook's ``enable`` writes nothing instead: ``0`` would lift
a limit the administrator set for the whole host. tests/e2e/test_power.py shows on a
real kernel that ``n/a`` stops the deeper states' usage counters.

``cpuN/cpufreq`` is a link to the CPU's *policy*; a policy may span several CPUs
(``related_cpus``: one clock domain, as on many Arm clusters and some acpi-cpufreq
hosts), and writing ``scaling_governor`` through one of them sets it for all of them.
:func:`policy_cpus` says which, so a domain never changes a CPU it does not hold.
"""

from __future__ import annotations

import errno
import os

from numahook.core.units import clip
from numahook.errors import HostError
from numahook.host import fsutil
from numahook.records import record

LATENCY = "power/pm_qos_resume_latency_us"
GOVERNOR = "cpufreq/scaling_governor"
AVAILABLE = "cpufreq/scaling_available_governors"
POLICY_CPUS = "cpufreq/related_cpus"
#: what the latency file holds for "polling only"
POLL_ONLY = "n/a"
#: a value is a few characters; anything longer is not this file
_LIMIT = 4096


def path(sysfs_root: str, cpu: int, name: str) -> str:
    """``cpuN``'s file ``name``; ``cpu`` is an int of ours, so nothing can climb out."""
    return os.path.join(sysfs_root, "devices/system/cpu", f"cpu{int(cpu)}", name)


def latency_value(asked: str | int) -> str | None:
    """What ``pm_qos_resume_latency_us`` gets for an ``idleStates`` value; None: leave it."""
    if asked == "enable":
        return None
    if asked == "disable":
        return POLL_ONLY
    return str(int(asked))


def describe_latency(value: str) -> str:
    """A latency file's value in words, for ``check``, ``status`` and the journal."""
    if value == POLL_ONLY:
        return "no idle state deeper than polling"
    if value == "0":
        return "any idle state (no limit)"
    return f"idle states that wake within {value} us"


def read(sysfs_root: str, cpu: int, name: str) -> str | None:
    """The file's value without its newline; None where the kernel does not offer it (no
    cpufreq, an offline CPU's cpufreq, a kernel without the PM QoS file)."""
    where = path(sysfs_root, cpu, name)
    if not fsutil.exists(where):
        return None
    return fsutil.read_text(where, _LIMIT).strip()


def write(sysfs_root: str, cpu: int, name: str, value: str) -> None:
    """One write, or KnobWriteError (its errno says whether the file is gone)."""
    fsutil.write_knob(path(sysfs_root, cpu, name), value, {
        errno.EINVAL: "the kernel refused the value; check it against the file's "
                      "documentation (Documentation/ABI/testing/sysfs-devices-power, "
                      "or scaling_available_governors)"})


def governors(sysfs_root: str, cpu: int) -> tuple[str, ...] | None:
    """The governors the CPU's cpufreq driver offers; None: no cpufreq for it."""
    text = read(sysfs_root, cpu, AVAILABLE)
    return None if text is None else tuple(text.split())


def policy_cpus(sysfs_root: str, cpu: int) -> frozenset[int] | None:
    """Every CPU whose governor a write through ``cpu`` sets (its policy's
    ``related_cpus``, which cpufreq prints as numbers and blanks, ``2 3``, not as a
    cpulist); None: no cpufreq for it."""
    text = read(sysfs_root, cpu, POLICY_CPUS)
    if text is None:
        return None
    words = text.split()
    if not all(w.isascii() and w.isdigit() and len(w) <= 6 for w in words):
        raise HostError(f"cpu{cpu}'s {POLICY_CPUS} holds {clip(text)}, not CPU numbers; "
                        "check the kernel's cpufreq driver")
    return frozenset(int(w) for w in words)


@record(frozen=True)
class Writes:
    """What this host lets a set of CPUs get, read now: which files take which value, and
    which CPUs are left as they are, and why."""

    #: the latency file's value to write (None: leave the idle states be)
    latency: str | None
    governor: str | None
    latency_cpus: tuple[int, ...]
    governor_cpus: tuple[int, ...]
    #: advisories: CPUs left as they are, and why
    notes: tuple[str, ...] = ()
    #: why a start is refused (a governor the host lacks), else ""
    refused: str = ""

    def summary(self, cpus: tuple[int, ...]) -> str:
        """What ``numahook check`` says the CPUs will get, advisories last."""
        from numahook.core import cpulist
        from numahook.core.units import plural

        parts = [f"{plural(len(cpus), 'CPU')} {cpulist.format(cpus)}: "
                 + (f"{describe_latency(self.latency)} (pm_qos_resume_latency_us "
                    f"{self.latency} on {cpulist.format(self.latency_cpus) or 'none'})"
                    if self.latency is not None else "idle states as they are")]
        if self.governor is not None and self.governor_cpus:
            parts.append(f"governor {self.governor} on {cpulist.format(self.governor_cpus)}")
        return "; ".join(parts + [f"advisory: {n}" for n in self.notes])


def plan(sysfs_root: str, cpus: tuple[int, ...], latency: str | None,
         governor: str | None) -> Writes:
    """Which of ``cpus`` get ``latency`` and ``governor``; reads, writes nothing.

    A CPU without the latency file, or without cpufreq, is left as it is with an
    advisory; so is one whose cpufreq policy also governs a CPU outside ``cpus``. A
    governor some CPU's driver does not offer is a refusal naming the ones it does.
    """
    from numahook.core import cpulist
    from numahook.core.units import plural

    notes: list[str] = []
    lat_cpus: tuple[int, ...] = ()
    if latency is not None:
        lat_cpus = tuple(c for c in cpus if read(sysfs_root, c, LATENCY) is not None)
        lacking = sorted(set(cpus) - set(lat_cpus))
        if lacking:
            notes.append(f"{plural(len(lacking), 'CPU')} {cpulist.format(lacking)} "
                         f"{plural(len(lacking), 'has', 'have')} no pm_qos_resume_latency_us "
                         "(a kernel without per-CPU PM QoS), so their idle states stay as "
                         "they are")
    gov_cpus: list[int] = []
    if governor is not None:
        without, wider = [], []
        for c in cpus:
            offered = governors(sysfs_root, c)
            if offered is None:
                without.append(c)
            elif governor not in offered:
                return Writes(latency, governor, lat_cpus, (), tuple(notes), (
                    f"governor {clip(governor)}, which CPU {c}'s cpufreq driver does not offer "
                    f"(it offers {', '.join(offered) or 'none'}); set governor= on "
                    "<numahook:power> to one of them, or remove it"))
            elif not (policy_cpus(sysfs_root, c) or {c}) <= set(cpus):
                wider.append(c)
            else:
                gov_cpus.append(c)
        if without:
            notes.append(f"no cpufreq for {plural(len(without), 'CPU')} "
                         f"{cpulist.format(without)} (a VM, or cpufreq off in the firmware "
                         f"or kernel), so governor {governor} is not set there")
        if wider:
            notes.append(f"the cpufreq policy of {plural(len(wider), 'CPU')} "
                         f"{cpulist.format(wider)} also governs CPUs the domain does not "
                         "hold, so its governor stays as it is")
    return Writes(latency, governor, lat_cpus, tuple(gov_cpus), tuple(notes))


__all__ = ["AVAILABLE", "GOVERNOR", "LATENCY", "POLICY_CPUS", "POLL_ONLY", "Writes",
           "describe_latency", "governors", "latency_value", "path", "plan", "policy_cpus",
           "read", "write"]
