"""Keep a persistent definition rendered: shared by ``numahook apply`` and numahookd.

Compares meaning (see :func:`numahook.core.hardware.differences`) plus the rendered digest, so a
definition we wrote is never rewritten again for nothing: no redefine loops.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from numahook.config import Config
from numahook.core import hardware, metadata, render
from numahook.errors import NumahookError
from numahook.ops import hostinputs, refusals
from numahook.state.statedir import StateDir

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outcome:
    name: str
    #: the definition differs from what this host needs now
    changed: bool
    reason: str
    xml: str | None = None
    #: the domain cannot be rendered here (the start would be refused with this)
    refused: str | None = None
    #: the check that refused it (ops/refusals.py counts numahookd's refusals by it)
    check: str | None = None


def digest(xml: str) -> str:
    """What numahookd keeps of a definition it rendered from or wrote: the same XML is the
    same digest, so an unchanged definition is not rendered or written again."""
    return hashlib.sha256(xml.encode()).hexdigest()


def rerender(xml: str, cfg: Config, state: StateDir | None) -> Outcome | None:
    """What the definition should be now; None for a domain that did not opt in."""
    doc = render.parse(xml)
    if doc.request is None or not doc.request.managed:
        return None
    name = doc.facts.name
    before = metadata.rendered(metadata.find(doc.root))
    facts = doc.facts
    try:
        inputs, _ = hostinputs.gather(cfg, facts.partition, facts.uuid or None, state=state,
                                      devices=facts.bdfs)
        result = render.render_parsed(doc, inputs)
    except NumahookError as exc:
        return Outcome(name, False, "cannot be rendered", refused=str(exc),
                       check=refusals.check_of(exc))
    diffs = hardware.differences(facts, result.plan)
    digest = result.plan.digest()
    if diffs:
        return Outcome(name, True, diffs[0], result.xml)
    if before is None or before.digest != digest:
        return Outcome(name, True, "its real-time or memory tuning is not rendered yet",
                       result.xml)
    return Outcome(name, False, "up to date")


def apply(conn: Any, dom: Any, cfg: Config, state: StateDir | None) -> Outcome | None:
    """Render ``dom``'s persistent definition and redefine it when it changed."""
    import libvirt

    flags = libvirt.VIR_DOMAIN_XML_INACTIVE | libvirt.VIR_DOMAIN_XML_SECURE
    outcome = rerender(dom.XMLDesc(flags), cfg, state)
    if outcome is not None and outcome.changed and outcome.xml is not None:
        conn.defineXML(outcome.xml)
        log.info("redefined %s: %s", outcome.name, outcome.reason)
    return outcome
