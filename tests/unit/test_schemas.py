"""Every --json output and node.json against the JSON Schema documents in docs/schemas/.

Real output: the CLI's own ``main`` on fixture hosts and on this machine, and
numahookd's status document. The e2e tests validate node.json as a real numahookd wrote
it and ``numahook status --json`` with a running domain (tests/e2e).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import numahook
from numahook import SCHEMA_DIR, cli
from numahook.node import model as node
from numahook.node import publish
from numahook.state.claims import Claim
from numahook.state.statedir import StateDir
from tests.fixtures.hosts import HOSTS, host_roots
from tests.support.cli import ADVISED, RT, cli_args, domain, run_cli, write
from tests.support.nodes import DAEMON, DOMAIN, NOW, capability
from tests.support.schemas import SCHEMAS, documents, errors, validate

DOCS = Path(__file__).resolve().parents[2] / "docs"


@pytest.fixture(scope="module")
def single_v1(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return host_roots(tmp_path_factory.mktemp("single-v1"), "single", 1)


def test_the_schemas_are_valid_and_name_their_files() -> None:
    names = {uri.rsplit("/", 1)[1] for uri in documents()}
    assert names == {"check.schema.json", "node.schema.json", "node-status.schema.json",
                     "status.schema.json"}


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
    state.save(Claim(uuid="c7a5fdbd-cdaf-9455-926a-d65c16db1809", name="gone",
                     cpus=frozenset({1, 2}), hugepages={(0, 2048): 4}, need={(0, 2048): 4}))
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
