"""Whitespace-preserving edits of lxml trees, so a rendered domain diffs minimally.

libvirt formats domains with two-space indentation; new elements copy the indentation
of their siblings, and removed elements hand their tail back, so ``git diff`` of a
rendered definition shows only what numahook changed.
"""

from __future__ import annotations

from collections.abc import Sequence

from lxml import etree

#: libvirt's element order under <domain> (from its formatter). New elements are inserted
#: after the nearest preceding element that exists, so output looks like libvirt's own.
DOMAIN_ORDER = (
    "name", "uuid", "genid", "title", "description", "metadata", "maxMemory", "memory",
    "currentMemory", "blkiotune", "memtune", "memoryBacking", "vcpu", "vcpus", "iothreads",
    "iothreadids", "defaultiothread", "cputune", "numatune", "resource", "sysinfo",
    "bootloader", "bootloader_args", "os", "idmap", "features", "cpu", "clock",
    "on_poweroff", "on_reboot", "on_crash", "pm", "perf", "devices", "seclabel",
)
CPU_ORDER = ("model", "vendor", "topology", "cache", "maxphysaddr", "feature", "numa")
FEATURES_ORDER = (
    "acpi", "apic", "pae", "hap", "viridian", "privnet", "hyperv", "kvm", "xen", "pvspinlock",
    "capabilities", "pmu", "vmport", "gic", "smm", "ioapic", "hpt", "htm", "nested-hv",
    "msrs", "ccf-assist", "cfpc", "sbbc", "ibs", "tcg", "async-teardown",
)
MEMBACKING_ORDER = ("hugepages", "nosharepages", "locked", "source", "access", "allocation",
                    "discard")
CPUTUNE_ORDER = ("shares", "period", "quota", "global_period", "global_quota",
                 "emulator_period", "emulator_quota", "iothread_period", "iothread_quota",
                 "vcpupin", "emulatorpin", "iothreadpin", "emulatorsched", "vcpusched",
                 "iothreadsched", "cachetune", "memorytune")
DEVICE_ORDER = ("emulator", "disk", "controller", "lease", "filesystem", "interface", "smartcard",
                "serial", "parallel", "console", "channel", "input", "tpm", "graphics", "sound",
                "audio", "video", "hostdev", "redirdev", "redirfilter", "hub", "watchdog",
                "memballoon", "rng", "panic", "shmem", "memory", "iommu", "vsock", "crypto")

_STEP = "  "


def _child_indent(parent: etree._Element) -> str:
    """Whitespace that precedes parent's children (``"\\n    "``)."""
    if len(parent) and parent.text and parent.text.strip() == "" and "\n" in parent.text:
        return parent.text
    return _own_indent(parent) + _STEP


def _own_indent(el: etree._Element) -> str:
    prev = el.getprevious()
    if prev is not None and prev.tail and prev.tail.strip() == "" and "\n" in prev.tail:
        return prev.tail
    parent = el.getparent()
    if prev is None and parent is not None and parent.text and parent.text.strip() == "" \
            and "\n" in parent.text:
        return parent.text
    depth = sum(1 for _ in el.iterancestors())
    return "\n" + _STEP * depth


def _format_new(el: etree._Element, indent: str) -> None:
    """Pretty-print a freshly built subtree whose opening tag sits at ``indent``."""
    if len(el) == 0:
        return
    inner = indent + _STEP
    el.text = inner
    for i, child in enumerate(el):
        child.tail = inner if i < len(el) - 1 else indent
        _format_new(child, inner)


def remove(el: etree._Element) -> None:
    """Remove ``el`` and keep the surrounding indentation intact."""
    parent = el.getparent()
    if parent is None:
        return
    prev = el.getprevious()
    if el.getnext() is None:
        # last child: its tail closes the parent; hand it to whoever is now last
        if prev is not None:
            prev.tail = el.tail
        else:
            parent.text = None
    parent.remove(el)
    if len(parent) == 0 and (parent.text or "").strip() == "":
        parent.text = None


_RANKS: dict[tuple[str, ...], dict[str, int]] = {}


def _rank(order: Sequence[str]) -> dict[str, int]:
    key = tuple(order)
    ranks = _RANKS.get(key)
    if ranks is None:
        ranks = _RANKS[key] = {tag: i for i, tag in enumerate(key)}
    return ranks


def insert(parent: etree._Element, el: etree._Element, order: Sequence[str]) -> etree._Element:
    """Insert ``el`` into ``parent`` at its place in ``order``, indented like its siblings."""
    ranks = _rank(order)
    tag = el.tag if isinstance(el.tag, str) else ""
    rank = ranks.get(tag, len(ranks))
    pos = 0
    # scan from the end: a run of same-tag siblings (240 vcpupins) is appended to in O(1)
    for i in range(len(parent) - 1, -1, -1):
        child = parent[i]
        ctag = child.tag if isinstance(child.tag, str) else ""
        crank = ranks.get(ctag)
        if (crank is not None and crank <= rank) or (crank is None and rank == len(ranks)):
            pos = i + 1
            break
    if len(parent) == 0:
        own = _own_indent(parent)
        indent = own + _STEP
        parent.text = indent
        el.tail = own
    else:
        indent = _child_indent(parent)
        if pos == len(parent):
            last = parent[-1]
            el.tail = last.tail
            last.tail = indent
        else:
            el.tail = indent
    parent.insert(pos, el)
    _format_new(el, indent)
    return el


def ensure(parent: etree._Element, tag: str, order: Sequence[str]) -> etree._Element:
    """The first ``tag`` child of ``parent``, created in order if missing."""
    found = parent.find(tag)
    if found is not None:
        return found
    return insert(parent, etree.Element(tag), order)


def element(tag: str, attrib: dict[str, str] | None = None,
            children: Sequence[etree._Element] = ()) -> etree._Element:
    el = etree.Element(tag, attrib or {})
    for c in children:
        el.append(c)
    return el
