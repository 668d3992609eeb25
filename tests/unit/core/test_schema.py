"""The metadata declared once: the table agrees with the records it fills, and the
documents written from it (README, docs/json.md, the JSON Schema) are up to date.

numahook-metadata(5) is checked with the other man pages (tests/unit/test_manpages.py),
the JSON Schema against the parser in tests/unit/test_schemas.py, and the parser against
every attribute and value in tests/unit/core/test_metadata.py.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from numahook import records
from numahook.core import metadata, request, schema
from numahook.core.request import Request

REPO = Path(__file__).resolve().parents[3]


def gen_metadata() -> ModuleType:
    path = str(REPO / "scripts" / "gen-metadata")
    loader = importlib.machinery.SourceFileLoader("gen_metadata", path)
    spec = importlib.util.spec_from_loader("gen_metadata", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_every_request_field_is_filled_by_one_attribute_or_element() -> None:
    fills = [a.field for el in schema.ELEMENTS for a in el.attrs]
    fills += [el.flag for el in schema.ELEMENTS if el.flag is not None]
    assert sorted(fills) == sorted(records.field_names(Request))
    assert len(set(fills)) == len(fills)


def test_the_table_defaults_are_the_request_defaults() -> None:
    empty = Request()
    for el in schema.ELEMENTS:
        if el.flag is not None:
            assert getattr(empty, el.flag) is False, el.name
        for attr in el.attrs:
            assert getattr(empty, attr.field) == attr.default, attr.name
            # None says nothing about what absence means: the documents need the words
            assert attr.default is not None or attr.absent, attr.name
    assert request.from_raw(metadata.RawRequest()) == empty


def test_rendered_declares_the_rendered_record_field_by_field() -> None:
    assert [a.field for a in schema.RENDERED.attrs] == list(
        records.field_names(metadata.Rendered))
    assert [a.name for a in schema.RENDERED.attrs if a.required] == ["digest", "host"]
    assert [c for c in schema.DOMAIN.children if c.written] == [schema.RENDERED]


def test_names_are_unique_where_the_parser_looks_them_up() -> None:
    for el in schema.DOMAIN.walk():
        names = [a.name for a in el.attrs]
        assert len(set(names)) == len(names), el.name
        kids = [c.name for c in el.children]
        assert len(set(kids)) == len(kids), el.name
        assert not (set(names) & set(kids)), el.name  # the JSON form's keys


def test_docs_are_one_line_each_as_the_documents_expect() -> None:
    """The writers add the full stop and put each doc in a Markdown table cell; a choice's
    doc follows the attribute's, with semicolons between the choices."""
    docs = [el.doc for el in schema.DOMAIN.walk()]
    for el in schema.DOMAIN.walk():
        for a in el.attrs:
            docs += [a.doc, a.absent]
            if isinstance(a.kind, schema.Choice):
                docs += [d for _, d in a.kind.choices]
                assert all(";" not in d for _, d in a.kind.choices), a.name
            if isinstance(a.kind, schema.Text):
                docs.append(a.kind.syntax)
    for doc in docs:
        assert "\n" not in doc and "|" not in doc and not doc.endswith("."), doc
        assert doc.count("`") % 2 == 0, doc


def test_the_committed_documents_are_what_gen_metadata_writes() -> None:
    gen = gen_metadata()
    assert set(gen.OUTPUTS) == {REPO / "README.md", REPO / "docs" / "json.md",
                                REPO / "docs" / "schemas" / "metadata.schema.json"}
    stale = [str(p.relative_to(REPO)) for p, make in gen.OUTPUTS.items()
             if not p.exists() or p.read_text() != make()]
    assert stale == [], f"run scripts/gen-metadata: {stale} are out of date"


def test_the_readme_table_has_every_element_attribute_and_value() -> None:
    text = (REPO / "README.md").read_text()
    table = text.split("### Metadata reference", 1)[1].split("\n\n", 2)[2]
    rows = [ln for ln in table.split("\n\n", 1)[0].splitlines() if ln.startswith("| `")]
    names = [row.split("`")[1] for row in rows]
    want = []
    for el in schema.DOMAIN.walk():
        want += [f"<numahook:{el.name}>", *(a.name for a in el.attrs)]
    assert names == want
    for el in schema.DOMAIN.walk():
        for a in el.attrs:
            row = rows[names.index(a.name)]
            if isinstance(a.kind, schema.Choice):
                assert all(f"`{v}`" in row for v in a.kind.values), row
    assert "| `priority` | 1–99 |" in table and "| `false` |" in table


def test_the_json_schema_is_the_table() -> None:
    doc = json.loads((REPO / "docs" / "schemas" / "metadata.schema.json").read_text())
    assert doc["$id"] == "https://numahook.io/schemas/metadata.schema.json"
    cpu = doc["properties"]["cpu"]
    assert cpu["properties"]["threadPolicy"]["enum"] == ["prefer", "isolate", "require"]
    assert cpu["properties"]["realtime"]["properties"]["priority"] == {
        "description": "their SCHED_FIFO priority. Absent: 1.", "type": "integer",
        "minimum": 1, "maximum": 99, "default": 1}
    assert cpu["properties"]["numa"]["required"] == ["guestMappingPassthrough"]
    assert doc["properties"]["rendered"]["readOnly"] is True
    assert doc["properties"]["rendered"]["required"] == ["digest", "host"]
    assert doc["additionalProperties"] is False


def test_gen_metadata_checks_and_replaces_only_the_marked_part(tmp_path: Path) -> None:
    """--check passes on the committed tree; a write keeps what is outside the markers."""
    gen = gen_metadata()
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "gen-metadata"), "--check"],
                          capture_output=True, text=True, check=False)
    assert (proc.returncode, proc.stderr) == (0, "")
    readme = tmp_path / "README.md"
    readme.write_text("before\n" + gen.BEGIN + "| old |\n" + gen.END + "after\n")
    text = gen._replace_part(readme)(gen.readme_table())
    assert text.startswith("before\n" + gen.BEGIN + "| element / attribute |")
    assert text.endswith(gen.END + "after\n") and "| old |" not in text
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="lacks the markers"):
        gen._replace_part(readme)("x")
