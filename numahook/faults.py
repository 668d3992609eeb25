"""Fault-injection points for the crash tests: die with SIGKILL at a named step.

The crash tests (tests/hardening/test_crash.py) prove that a process killed at any step
of ``prepare``, ``started`` or ``release`` loses nothing: the next hook call or the
daemon's reconcile pass restores a consistent state. To kill the hook at an exact step,
the code calls :func:`point` there, and the test sets ``NUMAHOOK_FAULT``::

    NUMAHOOK_FAULT=admit.reserved                 # die the first time admit.reserved is hit
    NUMAHOOK_FAULT=hugepages.written@2            # die the second time
    NUMAHOOK_FAULT=rtsched.intent,tune.applied    # whichever comes first

The daemon's failure tests need faults that are not a kill: an event lost, a thread
that dies or hangs. :func:`hit` serves them; the same variable arms them
(``NUMAHOOK_FAULT=daemon.drop-defined``), and :data:`SWITCHES` lists them.

This is for tests only. In production ``NUMAHOOK_FAULT`` is unset: the environment is
read once at import, and :func:`point` then costs one dict lookup on an empty dict.
"""

from __future__ import annotations

import os

#: Every point the code calls, in lifecycle order (the crash tests iterate over these).
POINTS = (
    "admit.claimed",  # lifecycle.admit: the claim record exists, nothing touched yet
    "admit.reserved",  # lifecycle.admit: hugepages reserved, phase still "claimed"
    "admit.phase-reserved",  # lifecycle.admit: phase "reserved" journalled
    "tune.journalled",  # lifecycle.tune: phase "running" journalled, nothing applied
    "tune.applied",  # lifecycle.tune: every tunable applied (budget delegated, FIFO set)
    "release.before-rollback",  # lifecycle.release: under the lock, nothing given back
    "release.after-rollback",  # lifecycle.release: everything given back, claim dropped
    "hugepages.pending",  # hugepages._Ledger.change: intent journalled, knob not written
    "hugepages.written",  # hugepages._Ledger.change: knob written, outcome not journalled
    "rtsched.intent",  # rtgroups.delegate: intent journalled, cpu.rt_runtime_us not written
    "rtsched.written",  # rtgroups.delegate: written, not yet journalled as applied
    "power.saved",  # tunables.power: each CPU's old values journalled, nothing written
    "power.latency-written",  # tunables.power: one pm_qos_resume_latency_us written
    "power.governor-written",  # tunables.power: one scaling_governor written
    "rollback.power-undone",  # recovery.rollback: CPU power put back, nothing else yet
    "rollback.realtime-undone",  # recovery.rollback: budget given back, pages not yet
    "rollback.hugepages-undone",  # recovery.rollback: pages given back, claim not dropped
)

#: Faults that change behaviour instead of killing (:func:`hit`), for the daemon's tests.
SWITCHES = (
    "daemon.drop-defined",  # numahookd drops a DEFINED event, as if libvirt had lost it
    "vcpuwatch.die",  # the vCPU watch thread dies of an exception nothing catches
    "vcpuwatch.hang",  # the vCPU watch thread blocks for good
)

ENV = "NUMAHOOK_FAULT"


def _parse(spec: str) -> dict[str, int]:
    """``name[@N],...`` -> {name: N}; N (default 1) is the hit that kills."""
    armed: dict[str, int] = {}
    for item in spec.split(","):
        name, _, nth = item.strip().partition("@")
        if not name:
            continue
        armed[name] = int(nth) if nth.isdigit() and int(nth) > 0 else 1
    return armed


_ARMED: dict[str, int] = _parse(os.environ.get(ENV, ""))
_HITS: dict[str, int] = {}


def point(name: str) -> None:
    """SIGKILL this process if ``NUMAHOOK_FAULT`` names this point (at its Nth hit)."""
    nth = _ARMED.get(name)
    if nth is None:
        return
    hits = _HITS.get(name, 0) + 1
    _HITS[name] = hits
    if hits >= nth:
        import signal  # its enums cost every hook call; only a test's kill needs it

        os.kill(os.getpid(), signal.SIGKILL)


class Injected(BaseException):
    """An injected failure; a BaseException, so that no ``except Exception`` absorbs it."""


def hit(name: str) -> bool:
    """True at exactly the Nth hit of an armed switch (N from ``name@N``, default 1)."""
    nth = _ARMED.get(name)
    if nth is None:
        return False
    hits = _HITS.get(name, 0) + 1
    _HITS[name] = hits
    return hits == nth
