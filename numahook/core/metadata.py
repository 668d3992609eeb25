"""Our ``<numahook:domain>`` metadata element: parse it, and record what was rendered.

The element carries only what libvirt XML cannot say, with KubeVirt's field names. Its
elements and attributes are declared in :mod:`numahook.core.schema`; this module walks that
table. Unknown attributes or elements in our namespace are errors: a misspelt
``isolateEmulatorThraed`` must not silently start a VM without isolation.
"""

from __future__ import annotations

from numahook import NAMESPACE
from numahook.core import schema
from numahook.errors import InputError
from numahook.records import field, record

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from typing import Any

NS = f"{{{NAMESPACE}}}"


@record(frozen=True)
class RawRequest:
    """Our element as written, before validation (policy: :mod:`numahook.core.request`).

    Keyed by the Request field each attribute fills (core/schema.py names it), so a new
    attribute needs no new field here.
    """

    #: Request field -> the attribute's text as written, for the attributes present
    text: dict[str, str] = field(default_factory=dict)
    #: the Request fields of the flag elements present (guestMappingPassthrough, realtime)
    present: frozenset[str] = frozenset()


@record(frozen=True)
class Rendered:
    """``<numahook:rendered>``: its fields are schema.RENDERED's attributes, one to one."""

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


def _attrs(el: Any, spec: schema.Element) -> dict[str, str]:
    """Field -> text; an attribute ``spec`` does not declare is an error, never ignored."""
    out: dict[str, str] = {}
    for key, value in el.attrib.items():
        name = _split(key)[1]  # numahook:mask and mask are the same attribute
        attr = spec.attr(name)
        if attr is None:
            raise InputError(spec.unknown_attribute(name))
        if len(value) > schema.MAX_ATTR:
            raise InputError(f"<numahook:{spec.name}> attribute {name} is too long (more than "
                             f"{schema.MAX_ATTR} characters)")
        out[attr.field] = value
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


def _read(el: Any, spec: schema.Element, text: dict[str, str], present: set[str]) -> None:
    """One element as ``spec`` declares it: its attributes, then which children it holds
    (each once; all of them where ``spec.exactly``), then each child in turn."""
    text.update(_attrs(el, spec))
    if spec.flag is not None:
        present.add(spec.flag)
    kids: list[tuple[Any, schema.Element]] = []
    for child in el:
        name = _local(child)
        if name is None:
            continue
        sub = spec.child(name)
        if sub is not None and sub.written:
            continue  # ours to write, not a request (set_rendered)
        if sub is None or any(s is sub for _, s in kids):
            raise InputError(spec.unexpected(name))
        kids.append((child, sub))
    if spec.exactly and len(kids) != len(spec.children):
        raise InputError(spec.unexpected(None))
    for child, sub in kids:
        _read(child, sub, text, present)


def parse(el: Any) -> RawRequest:
    """Read our element into a :class:`RawRequest`; structure errors raise InputError."""
    text: dict[str, str] = {}
    present: set[str] = set()
    _read(el, schema.DOMAIN, text, present)
    return RawRequest(text=text, present=frozenset(present))


def rendered(el: Any) -> Rendered | None:
    found = el.find(f"{NS}rendered")
    if found is None:
        return None
    return Rendered(**{a.field: found.get(a.name, "") for a in schema.RENDERED.attrs})


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
    for attr in schema.RENDERED.attrs:
        value = getattr(mark, attr.field)
        if value or attr.required:
            found.set(attr.name, value)
        elif attr.name in found.attrib:
            del found.attrib[attr.name]
