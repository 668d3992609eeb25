"""Every XML parse numahook does: no entities, no DTD, no network, bounded size and depth.

Root processes (the hook inside libvirtd's start path, the daemon) parse XML that anyone
allowed to define a domain controls. lxml's defaults resolve entities and, with DTDs,
may reach the network, so every parse goes through this module.

Two parsers, one policy. :func:`parse` gives an lxml tree, for code that edits XML and must
keep comments and whitespace (rendering). :func:`parse_readonly` gives a stdlib
ElementTree (expat), for code that only reads: the hook's lifecycle calls, where loading
lxml (libxml2 + libxslt + ICU) would cost more than all the hook's work. Both refuse any
DOCTYPE, which every entity trick needs, and bound size and depth the same way.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from numahook.errors import InputError

TYPE_CHECKING = False  # typing.TYPE_CHECKING would import typing into the hook
if TYPE_CHECKING:
    from typing import Any

    from lxml import etree

#: libvirt itself refuses domain XML over 10 MiB (VIR_DOMAIN_XML_MAX_LEN-ish limits on RPC).
MAX_XML_BYTES = 10 * 1024 * 1024
#: Deeper than any libvirt document; stops stack-exhaustion games.
MAX_DEPTH = 64


def _parser() -> etree.XMLParser:
    from lxml import etree

    return etree.XMLParser(
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        dtd_validation=False,
        huge_tree=False,
        remove_comments=False,
        remove_pis=False,
        strip_cdata=False,
    )


def parse(data: bytes | str, what: str = "domain XML") -> etree._Element:
    """Parse ``data`` into an lxml tree root, or raise :class:`InputError` with one line."""
    from lxml import etree

    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if len(data) > MAX_XML_BYTES:
        raise InputError(f"{what} is {len(data)} bytes, more than the {MAX_XML_BYTES} allowed")
    if b"<!DOCTYPE" in data or b"<!ENTITY" in data:
        # libvirt never emits a DTD; refusing it outright closes entity tricks for good.
        raise InputError(f"{what} contains a DOCTYPE or ENTITY declaration, which is not allowed")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        reason = (str(exc).splitlines() or ["syntax error"])[0][:200]
        raise InputError(f"{what} is not well-formed XML: {reason}") from None
    except ValueError as exc:  # e.g. unicode strings with an encoding declaration
        raise InputError(f"{what} cannot be parsed: {str(exc)[:200]}") from None
    if root is None:
        raise InputError(f"{what} is empty")
    info = root.getroottree().docinfo
    if info.doctype or info.internalDTD is not None:
        # the byte check above misses UTF-16 and friends; the parsed tree does not lie
        raise InputError(f"{what} contains a DOCTYPE or ENTITY declaration, which is not allowed")
    _check_depth(root, what)
    return root


def parse_readonly(data: bytes | str, what: str = "domain XML") -> Any:
    """Parse UTF-8 XML into a stdlib ElementTree root for reading only (see module doc).

    libvirt always hands hooks and writes status files in UTF-8; anything else is refused.
    Comments and processing instructions are dropped, which reading does not need.
    """
    import xml.etree.ElementTree as ET

    if isinstance(data, bytes):
        if len(data) > MAX_XML_BYTES:
            raise InputError(f"{what} is {len(data)} bytes, more than the {MAX_XML_BYTES} "
                             "allowed")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise InputError(f"{what} is not UTF-8 text") from None
    else:
        text = data
        if len(text) > MAX_XML_BYTES:
            raise InputError(f"{what} is {len(text)} characters, more than the "
                             f"{MAX_XML_BYTES} allowed")
    # XML keywords are case-sensitive, and a DTD must precede the root element
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        raise InputError(f"{what} contains a DOCTYPE or ENTITY declaration, which is not allowed")
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise InputError(f"{what} is not well-formed XML: {str(exc)[:200]}") from None
    except UnicodeError:  # surrogate escapes of non-UTF-8 bytes read as text
        raise InputError(f"{what} is not UTF-8 text") from None
    _check_depth(root, what)
    return root


def _check_depth(root: Any, what: str) -> None:
    # iterative walk: recursion would be the very stack problem we guard against
    stack = [(root, 1)]
    while stack:
        el, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InputError(f"{what} nests deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in el)


_MARKUP = re.compile(r"<!--.*?-->|<!\[CDATA\[.*?\]\]>|<\?.*?\?>|<[^>]*>", re.DOTALL)
_ATTR = re.compile(r'(\s[^\s=]+=)"([^"]*)"')


def quote_style(data: str | bytes) -> str:
    """The attribute quote a document uses (libvirt writes ``'``), so output can match it."""
    text = data if isinstance(data, str) else data[:4096].decode("utf-8", "replace")
    m = re.search(r"<[A-Za-z][^>]*?=\s*(['\"])", text)
    return m.group(1) if m else '"'


def _requote(attr: re.Match[str]) -> str:
    value = attr.group(2)
    if "'" in value:
        return attr.group(0)
    return attr.group(1) + "'" + value.replace("&quot;", '"') + "'"


def _requoter() -> Callable[[re.Match[str]], str]:
    """Single-quote attributes as libvirt does, except inside <metadata>, which libvirt
    prints through libxml2 with double quotes: both come back as libvirt wrote them."""
    depth = 0

    def one(match: re.Match[str]) -> str:
        nonlocal depth
        tag = match.group(0)
        if tag.startswith(("<!", "<?")):
            return tag
        if tag.startswith("</"):
            if tag[2:-1].strip() == "metadata":
                depth -= 1
            return tag
        name = re.match(r"<([^\s/>]+)", tag)
        if name and name.group(1) == "metadata" and not tag.endswith("/>"):
            depth += 1
            return _ATTR.sub(_requote, tag)
        if depth > 0:
            return tag
        # lxml escapes '<', '>' and '"' inside values, so a start tag holds no raw '>'
        return _ATTR.sub(_requote, tag)

    return one


def tostring(root: Any, quote: str = '"') -> str:
    """Serialize without an XML declaration, as libvirt prints domains, in ``quote`` style.

    Takes an lxml element or a stdlib one (from :func:`parse_readonly`).
    """
    if hasattr(root, "getroottree"):
        from lxml import etree

        text = etree.tostring(root, encoding="unicode")
    else:
        import xml.etree.ElementTree as ET

        text = ET.tostring(root, encoding="unicode")
    return _MARKUP.sub(_requoter(), text) if quote == "'" else text
