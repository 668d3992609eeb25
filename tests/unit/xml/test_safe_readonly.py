"""The read-only (stdlib expat) parser refuses what the lxml one refuses, and reads the same.

The hook's lifecycle calls parse with it to keep lxml's load time out of libvirtd's start
path; it must be no weaker and must see the same domain.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from numahook.core import render
from numahook.errors import InputError
from numahook.xml import safe
from tests.golden.cases import DATA

GOLDEN = DATA

XXE = ('<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
       "<domain><name>&x;</name></domain>")
LAUGHS = ('<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
          + "".join(f'<!ENTITY {chr(98 + i)} "{("&" + chr(97 + i) + ";") * 10}">'
                    for i in range(8))
          + ']><domain><name>&i;</name></domain>')

HOSTILE = {
    "xxe": XXE.encode(),
    "billion-laughs": LAUGHS.encode(),
    "xxe-utf16": XXE.encode("utf-16"),
    "deep": ("<a>" * 200 + "</a>" * 200).encode(),
    "latin1-bytes": "<domain><name>caf\xe9</name></domain>".encode("latin-1"),
    "truncated": b"<domain><name>x</name>",
    "nul": b"<domain>\x00</domain>",
    "oversized": b"<a>" + b"x" * (safe.MAX_XML_BYTES + 1) + b"</a>",
    "empty": b"",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
@pytest.mark.parametrize("parser", [safe.parse, safe.parse_readonly],
                         ids=["lxml", "readonly"])
def test_hostile_input_is_one_input_error(parser: object, name: str) -> None:
    with pytest.raises(InputError) as exc:
        parser(HOSTILE[name])  # type: ignore[operator]
    message = str(exc.value)
    assert "\n" not in message
    assert len(message) < 400
    assert "root:" not in message  # nothing of /etc/passwd


@pytest.mark.parametrize("path", sorted(GOLDEN.glob("*.xml")), ids=lambda p: p.name)
def test_both_parsers_read_the_same_domain(path: Path) -> None:
    data = path.read_bytes()
    full, fast = render.parse(data), render.parse(data, readonly=True)
    assert fast.facts == full.facts
    assert fast.request == full.request


def test_readonly_tree_serializes_for_callers_that_need_text() -> None:
    root = safe.parse_readonly(b"<domain type='kvm'><name>x</name></domain>")
    assert safe.tostring(root, "'") == "<domain type='kvm'><name>x</name></domain>"


def test_hook_path_does_not_load_lxml() -> None:
    import subprocess
    import sys

    code = ("import sys; import numahook.hook.main, numahook.ops.lifecycle; "
            "print(any(m == 'lxml' or m.startswith('lxml.') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(__file__).resolve().parents[3], check=True).stdout
    assert out.strip() == "False"
