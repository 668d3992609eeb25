"""Validate numahook's JSON against the JSON Schema documents it ships in docs/schemas/.

Strict by default: every object the schema describes may carry only the keys it declares,
so a key added to an output but not to its schema (and docs) fails here. Operators
validate without that (the documents let unknown keys through: docs/json.md).
Works with bookworm's jsonschema 4.10 (RefResolver) and with 4.18+ (referencing). An
older jsonschema has no draft 2020-12 validator: the tests that validate then skip and say
so (the package builds' %check may meet one; scripts/test installs bookworm's).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest

if not hasattr(jsonschema, "Draft202012Validator"):  # added in jsonschema 4.0
    pytest.skip("this jsonschema has no draft 2020-12 validator (needs 4.0 or later)",
                allow_module_level=True)

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"
BASE = "https://numahook.io/schemas/"


def documents(strict: bool = True) -> dict[str, dict[str, Any]]:
    """``$id`` -> schema, for every file in docs/schemas."""
    out = {}
    for path in sorted(SCHEMAS.glob("*.schema.json")):
        schema = json.loads(path.read_text())
        assert schema["$id"] == BASE + path.name, f"{path.name}: $id {schema['$id']}"
        jsonschema.Draft202012Validator.check_schema(schema)
        out[schema["$id"]] = _closed(copy.deepcopy(schema)) if strict else schema
    return out


def _closed(node: Any) -> Any:
    if isinstance(node, dict):
        if "properties" in node and "additionalProperties" not in node:
            node["additionalProperties"] = False
        for value in node.values():
            _closed(value)
    elif isinstance(node, list):
        for value in node:
            _closed(value)
    return node


def errors(name: str, doc: Any, strict: bool = True) -> list[str]:
    """Every violation of ``docs/schemas/<name>.schema.json`` by ``doc``, one line each."""
    docs = documents(strict)
    schema = docs[BASE + f"{name}.schema.json"]
    cls = jsonschema.Draft202012Validator
    try:
        from referencing import Registry, Resource
    except ImportError:  # jsonschema < 4.18, as in Debian 12
        resolver = jsonschema.RefResolver.from_schema(schema, store=docs)
        validator = cls(schema, resolver=resolver)
    else:
        registry = Registry().with_resources(
            (uri, Resource.from_contents(s)) for uri, s in docs.items())
        validator = cls(schema, registry=registry)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
                  for e in validator.iter_errors(doc))


def validate(name: str, doc: Any, strict: bool = True) -> None:
    problems = errors(name, doc, strict)
    assert not problems, (f"not valid against docs/schemas/{name}.schema.json (add new keys "
                          "there and to docs/): " + "; ".join(problems[:10]))
