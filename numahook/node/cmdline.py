"""The kernel command line's CPU lists (isolcpus, nohz_full, rcu_nocbs), as booted.

The kernel's bootparam syntax is wider than a cpulist file's (``A-B:used/group``, ``N``,
``all``); every item becomes spans that :func:`numahook.core.cpulist.merge` expands once,
so a line of many overlapping ranges costs one expansion, not one per item.
"""

from __future__ import annotations

import re

from numahook.core import cpulist
from numahook.errors import InputError
from numahook.node.model import CPU_PARAMS, CpuParam

#: ``isolcpus=`` flags (Documentation/admin-guide/kernel-parameters.txt).
ISOLCPUS_FLAGS = ("nohz", "domain", "managed_irq")
_STRIDE = re.compile(r"([0-9]{1,5})-([0-9]{1,5}):([0-9]{1,5})/([0-9]{1,5})")


def _kernel_cpus(text: str, what: str, online: frozenset[int]) -> frozenset[int]:
    """A kernel cpulist as bootparams accept it: plain lists plus ``A-B:U/G``, ``N``, ``all``.

    ``N`` is the last CPU; we only know online CPUs, so it is the highest online one.
    """
    last = max(online) if online else 0
    parts: list[tuple[int, int]] = []
    for item in text.split(","):
        item = item.strip()
        if item == "all":
            parts.extend((c, c + 1) for c in online)
            continue
        item = re.sub(r"(?<![0-9])N(?![0-9])", str(last), item)
        m = _STRIDE.fullmatch(item)
        if m:
            lo, hi, used, group = map(int, m.groups())
            if hi < lo or not 0 < used <= group or hi > cpulist.MAX_CPU:
                raise InputError(f"{what} item {item!r} is not a valid A-B:used/group range")
            parts.extend((g, min(g + used, hi + 1)) for g in range(lo, hi + 1, group))
            continue
        parts.extend(cpulist.spans(item, what))
    return cpulist.merge(parts)


def parse_cmdline(text: str, online: frozenset[int] = frozenset()) -> dict[str, CpuParam]:
    """isolcpus/nohz_full/rcu_nocbs from a kernel command line; the last occurrence wins.

    Arguments after a bare ``--`` belong to init, not the kernel, and are ignored. A bare
    ``rcu_nocbs`` (no list) offloads every CPU.
    """
    found: dict[str, str] = {}
    for word in text.split():
        if word == "--":
            break
        key, eq, value = word.partition("=")
        if key in CPU_PARAMS:
            found[key] = value if eq else ""
    out = {k: CpuParam(None) for k in CPU_PARAMS}
    for key, raw in found.items():
        value, flags = raw, []
        if key == "isolcpus":
            items = raw.split(",")
            while items and items[0] in ISOLCPUS_FLAGS:
                flags.append(items.pop(0))
            value = ",".join(items)
        if key == "rcu_nocbs" and raw == "":
            cpus = online
        else:
            cpus = _kernel_cpus(value, f"{key}= on the kernel command line", online)
        out[key] = CpuParam(raw, cpus, tuple(flags))
    return out
