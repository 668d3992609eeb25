"""Claims built the way tests think of them: pages added and needed, budget, intent.

Since claims journal per tunable (numahook/tunables/), a claim holds entries; tests that
set up "a domain holding 64 pages" say so here instead of building each entry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from numahook.core.rtbudget import BudgetRecord
from numahook.host.hugepages import Pending, PoolKey
from numahook.state.claims import Claim
from numahook.tunables import hugepages, realtime


def make(uuid: str, name: str, *, hugepages_added: Mapping[PoolKey, int] | None = None,
         need: Mapping[PoolKey, int] | None = None,
         pending: Mapping[PoolKey, Pending] | None = None,
         rt_budget: tuple[BudgetRecord, ...] = (),
         intent: realtime.Intent | None = None, **rest: Any) -> Claim:
    entries: dict[str, Any] = dict(rest.pop("tunables", {}))
    if hugepages_added or need or pending:
        entries["hugepages"] = hugepages.Entry(need=dict(need or {}),
                                               added=dict(hugepages_added or {}),
                                               pending=dict(pending or {}))
    if rt_budget or intent is not None:
        entries["realtime"] = realtime.Entry(intent, tuple(rt_budget))
    if intent is not None and "fast" not in rest:  # what prepare declares with that intent
        rest["fast"] = {"realtime": fast_realtime(intent)}
    return Claim(uuid=uuid, name=name, tunables=entries, **rest)


def fast_realtime(intent: realtime.Intent) -> dict[str, Any]:
    """The fast path's checks tunables/realtime.py declares for ``intent``."""
    out: dict[str, Any] = {"fifo": {"vcpus": list(intent.vcpus), "priority": intent.priority}}
    if intent.emulator:
        out["emulator_fifo"] = intent.priority
    return out


def added(claim: Claim) -> dict[PoolKey, int]:
    return dict(hugepages.entry_of(claim).added)


def needed(claim: Claim) -> dict[PoolKey, int]:
    return dict(hugepages.entry_of(claim).need)


def budget(claim: Claim) -> tuple[BudgetRecord, ...]:
    entry = claim.entry("realtime")
    return entry.budget if entry else ()


def intent(claim: Claim) -> realtime.Intent | None:
    entry = claim.entry("realtime")
    return entry.intent if entry else None


def pending(claim: Claim) -> dict[PoolKey, Pending]:
    return dict(hugepages.entry_of(claim).pending)
