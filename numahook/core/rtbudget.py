"""RT bandwidth arithmetic as the kernel does it, with no I/O: shared by the scheduler
adapter (:mod:`numahook.host.rtgroups`, which reads, plans and writes budgets) and the node
probe (:mod:`numahook.node.probe`, which reports what is free through the same reader).

The kernel compares bandwidths as ``(runtime << 20) / period`` (kernel/sched/core.c) and
refuses a child whose bandwidth would exceed its parent's.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet

from numahook.records import NamedTuple

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from typing import Any

#: The kernel compares bandwidths as ``(runtime << 20) / period`` (kernel/sched/core.c).
BW_SHIFT = 20
#: Below this, a busy real-time vCPU would be throttled for nearly the whole period.
MIN_BUDGET_US = 1000


class BudgetRecord(NamedTuple):
    """One ``cpu.rt_runtime_us`` file we raised: our share of it is ``new - previous``.

    ``applied`` is False while the write is only intended (journalled ahead of it).
    """

    path: str
    previous: int
    new: int
    applied: bool = False


#: journal(records): persist the list before returning, or raise to stop the change.
Journal = Callable[[list[BudgetRecord]], None]


class BudgetPlan(NamedTuple):
    per_vcpu_us: int
    period_us: int
    #: parents first, only files whose value changes
    records: list[BudgetRecord]


def held(runtime: int, period: int) -> int:
    """The runtime a cgroup holds, for sums and comparisons: -1 (unlimited, the kernel's
    RUNTIME_INF) holds the whole period.

    The one rule for -1, so that the planner, the give-back and the node probe agree on a
    group: the kernel's own arithmetic gives an unlimited group the bandwidth of a full
    period (:func:`to_ratio`), and taken as a number -1 would sort below 0.
    """
    return period if runtime < 0 else runtime


def to_ratio(period: int, runtime: int) -> int:
    """The kernel's bandwidth measure (same result in us as in ns)."""
    if runtime < 0:  # RUNTIME_INF
        return 1 << BW_SHIFT
    if period <= 0:
        return 0
    return (runtime << BW_SHIFT) // period


def runtime_for(children: Iterable[tuple[int, int]], period: int) -> int:
    """Smallest runtime in ``period`` that covers ``children`` ((runtime, period) pairs).

    With one period throughout that is the plain sum, which is what an operator expects
    to read; otherwise the least runtime whose kernel ratio reaches the children's.
    """
    kids = list(children)
    if all(p == period and r >= 0 for r, p in kids):
        return sum(r for r, _ in kids)
    ratio = sum(to_ratio(p, r) for r, p in kids)
    runtime = -(-ratio * period >> BW_SHIFT)  # ceil
    while to_ratio(period, runtime) < ratio:
        runtime += 1
    return runtime


class Tree(NamedTuple):
    """The cgroups on the paths to the real-time leaves, read once by the adapter.

    ``groups`` parents first (``root`` not among them); ``kids`` maps each group and the
    root to its children among ``groups``; ``current`` is each group's (runtime, period);
    ``others`` the (runtime, period) of every child that is not on our paths.
    """

    # Any: the adapter's groups are paths; this module only needs them hashable
    groups: Sequence[Any]
    kids: Mapping[Any, Sequence[Any]]
    current: Mapping[Any, tuple[int, int]]
    others: Mapping[Any, list[tuple[int, int]]]
    leaves: AbstractSet[Any]
    root: Any


def solve(tree: Tree, budget: int, root_ratio: int) -> dict[Any, int] | None:
    """New runtimes giving every leaf ``budget``, or None where the kernel would refuse.

    Each leaf gets exactly ``budget`` (more only where children of its own hold more), so
    a re-plan after a vCPU was hot-plugged splits the domain's budget evenly again rather
    than leaving the newcomer what is left. Every other group keeps at least its current
    value and is raised to cover its children (ours at the planned budget, others as they
    are); at the top, all groups together must fit the root's bandwidth.
    """
    new: dict[Any, int] = {}
    for n in reversed(tree.groups):  # children first
        runtime, period = tree.current[n]
        below = tree.others[n] + [(new[k], tree.current[k][1]) for k in tree.kids[n]]
        keep = budget if n in tree.leaves else runtime
        want = max(keep, runtime_for(below, period))
        if want > period or to_ratio(period, want) > root_ratio:
            return None
        new[n] = want
    top = tree.others[tree.root] + [(new[k], tree.current[k][1]) for k in tree.kids[tree.root]]
    return new if sum(to_ratio(p, r) for r, p in top) <= root_ratio else None


def largest(tree: Tree, root_ratio: int) -> int:
    """The largest budget per leaf that :func:`solve` accepts (feasibility is monotone)."""
    lo, hi = 0, max(period for _, period in tree.current.values())
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if solve(tree, mid, root_ratio) is None:
            hi = mid - 1
        else:
            lo = mid
    return lo
