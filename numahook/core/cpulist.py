"""The kernel cpulist syntax (``0-3,8,10-11``) and KubeVirt's realtime mask grammar.

Both come from outside (sysfs files, cgroup files, domain metadata), so sizes are bounded
before anything is allocated: ``0-999999999`` is refused, never expanded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from numahook.core.units import clip
from numahook.errors import InputError

#: Highest CPU id we accept. Linux's NR_CPUS tops out at 8192 on x86_64.
MAX_CPU = 8191
#: Longest list text we parse; a real cpulist of 8192 CPUs written as singles is ~40 KiB.
MAX_TEXT = 65536

_ITEM = re.compile(r"([0-9]{1,5})(?:-([0-9]{1,5}))?")


def _range(item: str, what: str, limit: int) -> range:
    m = _ITEM.fullmatch(item)
    if not m:
        raise InputError(f"{what} {clip(item)} is not a number or a range A-B")
    lo = int(m.group(1))
    hi = int(m.group(2)) if m.group(2) is not None else lo
    if hi < lo:
        raise InputError(f"{what} {item!r} is a descending range; write it as {hi}-{lo}")
    if hi > limit:
        raise InputError(f"{what} {item!r} is beyond the largest allowed id {limit}")
    return range(lo, hi + 1)


def spans(text: str, what: str = "CPU list") -> list[tuple[int, int]]:
    """The ``[lo, hi)`` spans of cpulist text, in order and unmerged; checked, not expanded."""
    if len(text) > MAX_TEXT:
        raise InputError(f"{what} is {len(text)} characters long, more than {MAX_TEXT}")
    text = text.strip()
    if not text:
        return []
    return [(r.start, r.stop) for r in (_range(i.strip(), what, MAX_CPU) for i in text.split(","))]


def merge(parts: Iterable[tuple[int, int]]) -> frozenset[int]:
    """The CPUs of ``[lo, hi)`` spans, merged first: 9000 copies of 0-8191 must cost one
    expansion, not 9000."""
    merged: list[list[int]] = []
    for lo, hi in sorted(parts):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return frozenset(c for lo, hi in merged for c in range(lo, hi))


def parse(text: str, what: str = "CPU list") -> frozenset[int]:
    """Parse kernel cpulist text. Empty (or whitespace) means the empty set."""
    return merge(spans(text, what))


def format(cpus: Iterable[int]) -> str:
    """Format a set as the shortest kernel cpulist (``0-3,8``)."""
    ids = sorted(set(cpus))
    parts: list[str] = []
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)


def parse_mask(text: str | None, count: int) -> frozenset[int]:
    """Apply a realtime mask to vCPUs ``0..count-1``.

    Grammar: comma-separated ``N``, ``A-B``, ``^N``, ``^A-B``. Exclusions win over
    inclusions. No mask, or a mask of exclusions only, starts from all vCPUs. An id at or
    beyond ``count`` is an error rather than silently dropped, because a typo in a mask
    would otherwise quietly run a vCPU without real-time.
    """
    if text is None or not text.strip():
        return frozenset(range(count))
    if len(text) > MAX_TEXT:
        raise InputError(f"realtime mask is {len(text)} characters long, more than {MAX_TEXT}")
    include: set[int] = set()
    exclude: set[int] = set()
    any_include = False
    for raw in text.split(","):
        item = raw.strip()
        target = include
        if item.startswith("^"):
            target = exclude
            item = item[1:].strip()
        else:
            any_include = True
        ids = _range(item, "realtime mask item", MAX_CPU)
        if ids[-1] >= count:
            raise InputError(
                f"realtime mask item {raw.strip()!r} names vCPU {ids[-1]}, but the domain has "
                f"only vCPUs 0-{count - 1}; fix the mask"
            )
        target.update(ids)
    base = include if any_include else set(range(count))
    return frozenset(base - exclude)
