"""The renderer: ``(domain XML, inputs) -> new domain XML`` or a clear refusal. No I/O."""

from __future__ import annotations

from numahook.core import cpulist, domainxml, hardware, metadata, request
from numahook.core.domainxml import DomainFacts
from numahook.core.plan import Evaluation, Inputs, Plan
from numahook.core.request import Request
from numahook.errors import NumahookError
from numahook.records import record
from numahook.xml import safe

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from typing import Any


@record
class Parsed:
    """A domain document with our request read out of it; ``request`` is None if not opted in."""

    root: Any
    facts: DomainFacts
    request: Request | None
    #: attribute quote of the source, kept on output so diffs show only real changes
    quote: str = '"'


@record
class Result:
    xml: str
    plan: Plan
    evaluation: Evaluation
    facts: DomainFacts
    request: Request


def parse(xml: str | bytes, readonly: bool = False) -> Parsed:
    """``readonly``: the stdlib parser, for code that never edits (the hook's gate)."""
    root = safe.parse_readonly(xml) if readonly else safe.parse(xml)
    return read(root, safe.quote_style(xml))


def read(root: Any, quote: str = '"') -> Parsed:
    """Read a domain tree already parsed (e.g. the <domain> inside a libvirt status file)."""
    el = metadata.find(root) if root.tag == "domain" else None
    facts = domainxml.read(root)
    req = request.from_raw(metadata.parse(el)) if el is not None else None
    return Parsed(root, facts, req, quote)


def evaluate(doc: Parsed, inp: Inputs) -> Evaluation:
    if doc.request is None:
        raise NumahookError(f"{doc.facts.name} has no <numahook:domain> metadata, so numahook "
                            "leaves it alone; add the metadata element to opt in (numahook(8), "
                            "OPTING IN)")
    return hardware.evaluate(doc.facts, doc.request, inp)


def render_parsed(doc: Parsed, inp: Inputs) -> Result:
    """Render in place on ``doc.root``; raise :class:`Refusal` on the first failed check."""
    ev = evaluate(doc, inp)
    if ev.failed is not None:
        raise ev.refusal()
    plan = ev.plan
    assert doc.request is not None
    if plan is None:  # opted in but asked for nothing that changes the XML
        raise NumahookError(f"{doc.facts.name}'s <numahook:cpu> asks for nothing; set "
                            "dedicatedCpuPlacement=\"true\" at least")
    from numahook.core import designer

    designer.apply(doc.root, plan)
    el = metadata.find(doc.root)
    assert el is not None
    metadata.set_rendered(el, metadata.Rendered(
        plan.digest(), inp.topology.fingerprint(), cpulist.format(plan.held),
        cpulist.format(plan.emulator) if plan.emulator_start else ""))
    return Result(safe.tostring(doc.root, doc.quote), plan, ev, doc.facts, doc.request)


def render(xml: str | bytes, inp: Inputs) -> Result:
    return render_parsed(parse(xml), inp)
