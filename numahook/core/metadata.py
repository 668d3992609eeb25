"""Our ``<numahook:domain>`` metadata element: parse it, and record what was rendered.

The element carries only what libvirt XML cannot say, with KubeVirt's field names.
Unknown attributes or elements in our namespace are errors: a misspelt
``isolateEmulatorThraed`` must not silently start a VM without isolation.
"""

from __future__ import annotations

from numahook import NAMESPACE
from numahook.errors import InputError
from numahook.records import record

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from typing import Any

NS = f"{{{NAMESPACE}}}"
_MAX_ATTR = 4096

_CPU_ATTRS = {"dedicatedCpuPlacement", "isolateEmulatorThread", "ioThreadsPolicy",
              "pciNumaAffinity", "threadPolicy"}
_RT_ATTRS = {"mask", "priority"}


@record(frozen=True)
class RawRequest:
    """Attribute text as written, before validation (policy: :mod:`numahook.core.request`)."""

    dedicated: str | None = None
    isolate_emulator: str | None = None
    io_threads_policy: str | None = None
    passthrough: bool = False
    realtime: bool = False
    realtime_mask: str | None = None
    realtime_priority: str | None = None
    pci_numa_affinity: str | None = None
    thread_policy: str | None = None


@record(frozen=True)
class Rendered:
    digest: str
    host: str
    #: CPUs the domain holds besides its pins (threadPolicy isolate's idle siblings), so
    #: whoever counts the CPUs a running domain holds from its XML sees them too
    held: str = ""
    #: the emulator's own CPUs, where the rendered <emulatorpin> is wider while QEMU
    #: starts (core/prealloc.py); empty when the two are the same
    emulator: str = ""


def _split(tag: str) -> tuple[str | None, str]:
    """``{ns}local`` -> (ns, local), as lxml's QName does, for either parser's trees."""
    if tag.startswith("{"):
        ns, _, local = tag[1:].partition("}")
        return ns, local
    return None, tag


def opted_in(domain: Any) -> bool:
    """Whether a domain carries our element: the cheap test, no validation."""
    meta = domain.find("metadata")
    return meta is not None and meta.find(f"{NS}domain") is not None


def find(domain: Any) -> Any | None:
    """Our element, or None for a domain that did not opt in."""
    meta = domain.find("metadata")
    if meta is None:
        return None
    found = meta.findall(f"{NS}domain")
    if len(found) > 1:
        raise InputError("the domain has more than one <numahook:domain> element; keep one")
    return found[0] if found else None


def _attrs(el: Any, allowed: set[str], where: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in el.attrib.items():
        name = _split(key)[1]
        if name not in allowed:
            raise InputError(
                f"<numahook:{where}> has unknown attribute {name!r}; "
                f"allowed: {', '.join(sorted(allowed))}"
            )
        if len(value) > _MAX_ATTR:
            raise InputError(f"<numahook:{where}> attribute {name} is too long")
        out[name] = value
    return out


def _local(el: Any) -> str | None:
    if not isinstance(el.tag, str):
        return None  # comment or processing instruction
    namespace, local = _split(el.tag)
    if namespace != NAMESPACE:
        raise InputError(
            f"<{local}> inside <numahook:domain> is not in the numahook namespace"
        )
    return local


def parse(el: Any) -> RawRequest:
    """Read our element into a :class:`RawRequest`; structure errors raise InputError."""
    _attrs(el, set(), "domain")
    cpu = None
    for child in el:
        name = _local(child)
        if name is None or name == "rendered":
            continue
        if name != "cpu" or cpu is not None:
            raise InputError(f"<numahook:domain> may hold one <numahook:cpu>, not <{name}>")
        cpu = child
    if cpu is None:
        return RawRequest()
    attrs = _attrs(cpu, _CPU_ATTRS, "cpu")
    passthrough = realtime = False
    mask = priority = None
    for child in cpu:
        name = _local(child)
        if name is None:
            continue
        if name == "numa" and not passthrough:
            _attrs(child, set(), "numa")
            kids = [k for k in child if _local(k) is not None]
            if [_local(k) for k in kids] != ["guestMappingPassthrough"]:
                raise InputError(
                    "<numahook:numa> must hold exactly <numahook:guestMappingPassthrough/>"
                )
            _attrs(kids[0], set(), "guestMappingPassthrough")
            passthrough = True
        elif name == "realtime" and not realtime:
            rt = _attrs(child, _RT_ATTRS, "realtime")
            if any(_local(k) for k in child):
                raise InputError("<numahook:realtime> takes attributes only, no child elements")
            realtime = True
            mask = rt.get("mask")
            priority = rt.get("priority")
        else:
            raise InputError(
                f"<numahook:cpu> holds an unexpected or repeated <{name}>; "
                "allowed: one <numa>, one <realtime>"
            )
    return RawRequest(
        dedicated=attrs.get("dedicatedCpuPlacement"),
        isolate_emulator=attrs.get("isolateEmulatorThread"),
        io_threads_policy=attrs.get("ioThreadsPolicy"),
        passthrough=passthrough,
        realtime=realtime,
        realtime_mask=mask,
        realtime_priority=priority,
        pci_numa_affinity=attrs.get("pciNumaAffinity"),
        thread_policy=attrs.get("threadPolicy"),
    )


def rendered(el: Any) -> Rendered | None:
    found = el.find(f"{NS}rendered")
    if found is None:
        return None
    return Rendered(digest=found.get("digest", ""), host=found.get("host", ""),
                    held=found.get("held", ""), emulator=found.get("emulator", ""))


def _rendered_cpus(domain: Any, attr: str) -> frozenset[int] | None:
    from numahook.core import cpulist

    found = domain.find(f"metadata/{NS}domain/{NS}rendered")
    if found is None or not found.get(attr):
        return None
    try:
        return cpulist.parse(found.get(attr), f"<numahook:rendered {attr}>")
    except InputError:
        return None


def held_cpus(domain: Any) -> frozenset[int]:
    """The CPUs ``<numahook:rendered held>`` records; empty if absent or unreadable (the
    claim records them too, so a hand-edited attribute only loses this second record)."""
    return _rendered_cpus(domain, "held") or frozenset()


def emulator_cpus(domain: Any) -> frozenset[int] | None:
    """``<numahook:rendered emulator>``: None if absent or unreadable. An unreadable one
    only makes the prepare gate see a stale definition, which a re-render mends."""
    return _rendered_cpus(domain, "emulator")


def set_rendered(el: Any, mark: Rendered) -> None:
    """Record what this rendering was computed from, so later checks are a string compare."""
    from lxml import etree

    from numahook.xml.edit import insert

    found = el.find(f"{NS}rendered")
    if found is None:
        found = insert(el, etree.Element(f"{NS}rendered"), ("cpu", f"{NS}cpu", f"{NS}rendered"))
    found.set("digest", mark.digest)
    found.set("host", mark.host)
    for attr, value in (("held", mark.held), ("emulator", mark.emulator)):
        if value:
            found.set(attr, value)
        elif attr in found.attrib:
            del found.attrib[attr]
