"""Every --json output and node.json against the JSON Schema documents in docs/schemas/.

Real output: the CLI's own ``main`` on fixture hosts and on this machine, and
numahookd's status document. The e2e tests validate node.json as a real numahookd wrote
it and ``numahook status --json`` with a running domain (tests/e2e). The one input,
the metadata's JSON form, is held to the parser: the schema accepts what it accepts.
"""

from __future__ import annotations

import functools
import json
import re
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

import jsonschema
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from lxml import etree

import numahook
from numahook import NAMESPACE, SCHEMA_DIR, cli
from numahook.core import metadata, request, schema
from numahook.errors import InputError
from numahook.node import model as node
from numahook.node import publish
from numahook.state.statedir import StateDir
from tests.fixtures.hosts import HOSTS, host_roots
from tests.support import claims
from tests.support.cli import ADVISED, RT, cli_args, domain, run_cli, write
from tests.support.nodes import DAEMON, DOMAIN, NOW, capability
from tests.support.schemas import BASE, SCHEMAS, documents, errors, validate

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def single_v1(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return host_roots(tmp_path_factory.mktemp("single-v1"), "single", 1)


def test_the_schemas_are_valid_and_name_their_files() -> None:
    names = {uri.rsplit("/", 1)[1] for uri in documents()}
    assert names == {"check.schema.json", "metadata.schema.json", "node.schema.json",
                     "node-status.schema.json", "status.schema.json"}


#: 2 MiB pages without passthrough: memory bound to one node (issue 25)
HUGE = "<memoryBacking><hugepages><page size='2048' unit='KiB'/></hugepages></memoryBacking>"


@pytest.mark.parametrize("xml", [
    domain(realtime=RT), ADVISED, domain(numa=False), domain(backing=""),
    domain(numa=False, backing=HUGE),
    domain(numa=False, backing=HUGE, memory="<memory unit='GiB'>32</memory>"),
], ids=["realtime", "advised", "no-numa", "refused", "hugepages-one-node", "pages-short"])
def test_check_json(capsys: pytest.CaptureFixture[str], single_v1: dict[str, Path],
                    tmp_path: Path, xml: str) -> None:
    rc, out, err = run_cli(capsys, "check", "--json", *cli_args(single_v1, tmp_path),
                           write(tmp_path, xml))
    assert rc in (0, 1), err
    doc = json.loads(out)
    assert doc["schema_version"] == numahook.SCHEMA_VERSION
    assert doc["ok"] is (rc == 0)
    validate("check", doc)


@pytest.mark.parametrize("name, version", [*((n, 1) for n in sorted(HOSTS)),
                                           ("epyc-nps4", 2), ("intel-2s-ht-rt", 2)])
def test_node_json_on_fixture_hosts(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                    name: str, version: int) -> None:
    roots = host_roots(tmp_path, name, version)
    rc = cli.main(["node", "--json", "--no-libvirt", "--config", "/dev/null",
                   "--sysfs-root", str(roots["sysfs"]), "--cgroup-root", str(roots["cgroup"]),
                   "--proc-root", str(roots["proc"])])
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema_version"] == numahook.SCHEMA_VERSION
    validate("node", doc)


def test_node_json_on_this_machine(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["node", "--json", "--no-libvirt", "--config", "/dev/null"]) == 0
    validate("node", json.loads(capsys.readouterr().out))


def test_status_json_with_an_orphan_claim(capsys: pytest.CaptureFixture[str],
                                          single_v1: dict[str, Path], tmp_path: Path) -> None:
    args = cli_args(single_v1, tmp_path)
    state = StateDir(args[args.index("--state-dir") + 1])
    state.ensure()
    state.save(claims.make(uuid="c7a5fdbd-cdaf-9455-926a-d65c16db1809", name="gone",
                     cpus=frozenset({1, 2}), hugepages_added={(0, 2048): 4}, need={(0, 2048): 4}))
    rc, out, err = run_cli(capsys, "status", "--json", "--uri", "test:///nowhere", *args)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["schema_version"] == numahook.SCHEMA_VERSION
    assert [c["name"] for c in doc["orphan_claims"]] == ["gone"]
    validate("status", doc)


def test_node_status_document(tmp_path: Path) -> None:
    cap = capability(tmp_path)
    doc = publish.status_document(cap, {"domains": [DOMAIN, {"name": "off", "uuid": "u",
                                                            "state": "shut off"}],
                                        "daemon": DAEMON}, NOW)
    validate("node-status", doc)
    validate("node-status", publish.status_document(cap))  # the CLI's view: no daemon parts
    # the domain entries of node.json are numahook status's
    validate("status", {"schema_version": 1, "running": [DOMAIN], "inactive": [],
                        "orphan_claims": []})


def test_the_doc_example_is_valid() -> None:
    text = (DOCS / "status-schema.md").read_text()
    example = json.loads(re.search(r"```json\n(.*?)\n```", text, re.DOTALL).group(1))
    validate("node-status", example)


def test_validation_is_strict_enough_to_tell(tmp_path: Path) -> None:
    """Without this, a schema that accepted anything would pass every test above."""
    doc = {"schema_version": 1, **node.NodeCapability.to_json(capability(tmp_path))}
    assert errors("node", doc) == []
    assert errors("node", {**doc, "surprise": 1}) != []
    assert errors("node", {**doc, "surprise": 1}, strict=False) == []  # operators' view
    assert errors("node", {k: v for k, v in doc.items() if k != "schema_version"}) != []
    assert errors("node", {**doc, "schema_version": 2}) != []
    bad = json.loads(json.dumps(doc))
    bad["numa_nodes"][0]["cpus"] = "0-3,x"
    assert any("numa_nodes/0/cpus" in e for e in errors("node", bad))


def _properties(node_: object) -> set[str]:
    out: set[str] = set()
    if isinstance(node_, dict):
        out |= set(node_.get("properties", {}))
        for value in node_.values():
            out |= _properties(value)
    elif isinstance(node_, list):
        for value in node_:
            out |= _properties(value)
    return out


def test_docs_describe_every_key_of_every_schema() -> None:
    text = (DOCS / "json.md").read_text() + (DOCS / "status-schema.md").read_text()
    for path in sorted(SCHEMAS.glob("*.schema.json")):
        assert f"schemas/{path.name}" in text, f"docs/json.md does not link {path.name}"
        missing = sorted(k for k in _properties(json.loads(path.read_text()))
                         if f"`{k}`" not in text)
        assert missing == [], f"docs/json.md does not describe {missing} of {path.name}"


def test_every_json_option_names_its_schema_and_is_validated_above() -> None:
    """A new --json output fails here until it has a schema, docs and a test above."""
    sub = next(a for a in cli.parser()._actions if a.dest == "command")
    named = {}
    for command, parser in sub.choices.items():
        for action in parser._actions:
            if "--json" in action.option_strings:
                # the installed path: an operator has the package, not the source tree
                m = re.search(rf"{SCHEMA_DIR}/([a-z-]+)\.schema\.json", action.help or "")
                assert m, f"numahook {command} --json: its help names no {SCHEMA_DIR} file"
                assert (SCHEMAS / f"{m.group(1)}.schema.json").is_file(), m.group(0)
                named[command] = m.group(1)
    # the outputs the tests above validate, each against its own schema
    assert named == {"check": "check", "node": "node", "status": "status"}


# --------------------------------------------------------------------------- the metadata


def to_xml(doc: dict[str, Any], name: str = "domain") -> str:
    """The metadata's JSON form as our XML: an object is an element, a scalar an attribute."""
    def text(value: object) -> str:
        return ("true" if value else "false") if isinstance(value, bool) else str(value)

    ns = f" xmlns:numahook={quoteattr(NAMESPACE)}" if name == "domain" else ""
    attrs = "".join(f" {k}={quoteattr(text(v))}" for k, v in doc.items()
                    if not isinstance(v, dict))
    kids = "".join(to_xml(v, k) for k, v in doc.items() if isinstance(v, dict))
    return f"<numahook:{name}{ns}{attrs}>{kids}</numahook:{name}>"


def parsed(doc: dict[str, Any]) -> request.Request | str:
    """What the parser makes of the document's XML: the request, or its refusal."""
    try:
        return request.from_raw(metadata.parse(etree.fromstring(to_xml(doc))))
    except InputError as exc:
        return str(exc)


def _value(attr: schema.Attr) -> st.SearchStrategy[Any]:
    """Good values of the attribute's JSON type."""
    kind = attr.kind
    if isinstance(kind, schema.Bool):
        return st.booleans()
    if isinstance(kind, schema.Choice):
        words = st.sampled_from(kind.values)
        if kind.number is None:
            return words
        span = kind.number[0]
        return words | st.integers(span.lo, span.hi)
    if isinstance(kind, schema.Int):
        return st.integers(kind.lo, kind.hi)
    return st.text("0123456789-^,", max_size=12) | st.just("x" * schema.MAX_ATTR)


def _element(el: schema.Element) -> st.SearchStrategy[dict[str, Any]]:
    """Good documents for ``el``: any of its keys (``numa`` may still come empty)."""
    keys: dict[str, st.SearchStrategy[Any]] = {a.name: _value(a) for a in el.attrs}
    keys.update({c.name: _element(c) for c in el.children if not c.written})
    return st.fixed_dictionaries({}, optional=keys)


def _mistake(el: schema.Element) -> st.SearchStrategy[tuple[str, Any]]:
    """One key for ``el``'s object that is wrong there: a bad value of its JSON type (a
    value of another type has no XML of its own: ``"true"`` and ``true`` are one text
    there), another element's attribute or element, or an unknown key."""
    bad: list[tuple[str, Any]] = [("bogus", True), ("bogus", {}), ("numa", True),
                                  ("dedicatedCpuPlacement", {})]
    if el is not schema.DOMAIN:  # where it belongs, the parser leaves numahook's record be
        bad.append(("rendered", {}))
    bad += [(a.name, "0") for e in schema.ELEMENTS for a in e.attrs if e is not el]
    for a in el.attrs:
        kind = a.kind
        if isinstance(kind, schema.Choice):
            bad += [(a.name, v) for v in ("", "x", kind.values[0].upper())]
            if kind.number is not None:
                span = kind.number[0]
                bad += [(a.name, v) for v in (span.lo - 1, span.hi + 1, -1)]
        elif isinstance(kind, schema.Int):
            bad += [(a.name, v) for v in (kind.lo - 1, kind.hi + 1, -(10**6), 10**6)]
        elif isinstance(kind, schema.Text):
            bad.append((a.name, "x" * (schema.MAX_ATTR + 1)))
    return st.sampled_from(bad)


def _place(doc: dict[str, Any], el: schema.Element) -> dict[str, Any]:
    """``el``'s object in ``doc``, made where missing (a ``numa`` made with its one child)."""
    node, spec = doc, schema.DOMAIN
    for name in _path(el):
        spec = next(c for c in spec.children if c.name == name)
        node = node.setdefault(name, {})
        if spec.exactly:
            for c in spec.children:
                node.setdefault(c.name, {})
    return node


@functools.cache
def _metadata_validator() -> Any:
    """One validator for the many examples below (errors() reads every schema each call)."""
    return jsonschema.Draft202012Validator(documents()[BASE + "metadata.schema.json"])


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_the_metadata_schema_accepts_what_the_parser_accepts(data: st.DataObject) -> None:
    doc = data.draw(_element(schema.DOMAIN), label="good document")
    if data.draw(st.booleans(), label="one mistake"):
        el = data.draw(st.sampled_from(schema.ELEMENTS))
        key, value = data.draw(_mistake(el))
        _place(doc, el)[key] = value
    got = parsed(doc)
    problems = [e.message for e in _metadata_validator().iter_errors(doc)]
    assert isinstance(got, str) == bool(problems), (to_xml(doc), got, problems)
    event("refused" if problems else "accepted")
    if isinstance(got, str):
        return
    # and reads it as the JSON says: each value into its field, each flag element present
    want: dict[str, Any] = {}
    for el in schema.ELEMENTS:
        node: Any = doc
        for part in _path(el):
            node = node.get(part) if isinstance(node, dict) else None
        if el.flag is not None:
            want[el.flag] = isinstance(node, dict)
        for a in el.attrs:
            if isinstance(node, dict) and a.name in node:
                want[a.field] = node[a.name]
    assert {k: getattr(got, k) for k in want} == want


def _path(el: schema.Element) -> list[str]:
    def down(node: schema.Element, path: list[str]) -> list[str] | None:
        if node is el:
            return path
        return next((p for c in node.children
                     if (p := down(c, [*path, c.name])) is not None), None)

    return down(schema.DOMAIN, []) or []


def test_the_metadata_schema_refuses_what_the_json_form_cannot_say() -> None:
    """Strings for booleans and numbers, and padding: the JSON form has one spelling."""
    docs: list[Any] = [{"cpu": {"dedicatedCpuPlacement": "true"}},
                       {"cpu": {"realtime": {"priority": "5"}}},
                       {"cpu": {"ioThreadsPolicy": " auto "}},
                       {"cpu": {"numa": {}}}, {"cpu": []}, {"schema_version": 1}]
    for doc in docs:
        assert errors("metadata", doc, strict=False) != [], doc
    assert errors("metadata", {}) == []  # the element alone opts in


def test_the_metadata_examples_are_valid_and_mean_what_their_xml_means() -> None:
    text = (DOCS / "json.md").read_text().split("## The metadata as JSON", 1)[1]
    found = re.search(r"```json\n(.*?)\n```", text, re.DOTALL)
    assert found, "docs/json.md has no JSON example of the metadata"
    example = json.loads(found.group(1))
    validate("metadata", example)
    assert parsed(example) == request.Request(dedicated=True, passthrough=True,
                                              realtime=True, realtime_mask="0-3,^1")
    # numahook's own record, read back from a rendering, is valid as the read-only part
    el = etree.fromstring(to_xml({}))
    metadata.set_rendered(el, metadata.Rendered("sha256:" + "0" * 32, "f" * 16, held="4-5"))
    rendered = el.find(f"{{{NAMESPACE}}}rendered")
    assert rendered is not None
    validate("metadata", {"rendered": dict(rendered.attrib)})
