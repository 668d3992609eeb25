"""Who holds what, and what a next start changes, on the real lab (issue 31, items 3 and 6).

A running dedicated domain holds one of the lab's two CPUs; a second one that needs both
is refused at start and by `numahook check` with the holder's name, and so is a domain
whose hugepages the node cannot give. `numahook status` draws the map with the holder,
`numahook node` lists the free CPU, and after the realtime mask of a running domain is
edited, `status` says its next start differs and how, until the domain has restarted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.helpers import HOLD, delegate_config, metadata, render_here
from tests.support.schemas import validate

__all__ = ["delegate_config"]  # a fixture, used by name

REPO = Path(__file__).resolve().parents[2]


def numahook(*args: str) -> subprocess.CompletedProcess[str]:
    """The CLI as an operator runs it: a pipe, so plain text (no colour)."""
    return subprocess.run([sys.executable, "-m", "numahook.cli", *args],
                          env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                          text=True, timeout=120, check=False)


def holder(domains: Any) -> Any:
    """A running domain holding one dedicated CPU and 64 pages of 2 MiB on node 0."""
    dom = domains.define(render_here(domains.probe_xml(
        "holder", vcpus=1, memory_mib=128, hugepage_kib=2048, cmdline=HOLD,
        extra=metadata())))
    domains.start(dom)
    return dom


def test_refusals_name_the_domain_that_holds_the_cpus_and_pages(domains: Any,
                                                                 tmp_path: Path) -> None:
    import libvirt

    name = holder(domains).name()
    held = numahook("status", "--json")
    cpu = next(d for d in json.loads(held.stdout)["running"] if d["name"] == name)["cpus"]
    # unrendered (rendering would refuse too): the hook evaluates it at prepare
    wants_both = domains.define(domains.probe_xml("both", vcpus=2, memory_mib=128,
                                                  hugepage_kib=2048, extra=metadata()))
    with pytest.raises(libvirt.libvirtError) as err:
        wants_both.create()
    message = str(err.value)
    assert "not enough dedicated CPUs" in message
    assert f"as {name} holds {cpu};" in message, message
    assert f"stop another dedicated domain ({name})" in message, message
    check = numahook("check", wants_both.name())
    assert check.returncode == 1 and f"({name})" in check.stdout, check.stdout + check.stderr
    # pages: more than the node's memory holds; the holder's 64 pages are named
    huge = tmp_path / "huge.xml"
    huge.write_text(domains.probe_xml("huge", vcpus=1, memory_mib=1024 * 1024,
                                      hugepage_kib=2048, extra=metadata(passthrough=False)))
    check = numahook("check", "--json", str(huge))
    assert check.returncode == 1, check.stderr
    (pages,) = [p for p in json.loads(check.stdout)["preconditions"]
                if p["name"] == "hugepages-available"]
    assert pages["ok"] is False
    assert f"while {name} takes 64 pages there" in pages["reason"], pages["reason"]
    assert pages["reason"].endswith(f"stop {name}, or lower the domain's memory")


def test_status_draws_who_holds_each_cpu_and_node_lists_the_free_ones(domains: Any) -> None:
    name = holder(domains).name()
    status = numahook("status")
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    print("\n" + "\n".join(lines[:8]), file=sys.stderr)  # what the lab's map looks like
    assert lines[0].startswith("node 0 (") and "CPUs 0-1" in lines[0], lines[0]
    assert "\033[" not in status.stdout  # a pipe gets no colour
    key = next(line.split()[0] for line in lines if line.endswith(f"{name} (running)"))
    band = lines[1:lines.index(next(x for x in lines if x.startswith("  A ")))]
    assert sum(f"{key}0" in line.split() for line in band) == 1, band  # its vCPU 0
    doc = json.loads(numahook("status", "--json").stdout)
    validate("status", doc)
    mine = [c for n in doc["host"]["nodes"] for c in n["cpus"] if c["domain"] == name]
    assert [(c["state"], c["vcpu"]) for c in mine] == [("vcpu", 0)]
    node = numahook("node", "--no-libvirt")
    row = next(line for line in node.stdout.splitlines() if line.startswith("dedicated node0"))
    assert f"(1 of the 2 CPUs of /machine's cpuset here; {name} holds {mine[0]['cpu']})" in row
    nodejson = json.loads(numahook("node", "--json", "--no-libvirt").stdout)
    validate("node", nodejson)
    assert nodejson["dedicated"]["nodes"][0]["held"] == {name: str(mine[0]["cpu"])}


def test_status_says_what_the_next_start_of_an_edited_domain_changes(
        domains: Any, conn: Any, delegate_config: None) -> None:
    """The issue's case: the realtime mask of a running domain edited."""
    import libvirt

    dom = domains.define(render_here(domains.probe_xml(
        "nextrt", vcpus=2, memory_mib=128, hugepage_kib=2048, cmdline=HOLD,
        extra=metadata(mask="0"))))
    name = dom.name()
    domains.start(dom)
    assert "next start" not in numahook("status", name).stdout
    edited = dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE).replace('mask="0"', 'mask="0-1"')
    assert 'mask="0-1"' in edited
    conn.defineXML(edited)  # no numahookd runs here: the definition stays unrendered
    status = numahook("status", name)
    assert status.returncode == 0, status.stderr
    lines = status.stdout.splitlines()
    assert lines[0].endswith("[changes at its next start]"), lines[0]
    assert "    real-time vCPUs 0 -> 0-1" in lines
    doc = json.loads(numahook("status", "--json").stdout)
    validate("status", doc)
    (entry,) = [d for d in doc["running"] if d["name"] == name]
    assert "real-time vCPUs 0 -> 0-1" in entry["next_start"]["changes"]
    assert {h["name"]: h["note"] for h in doc["host"]["holders"]}[name] == \
        "changes at its next start"
    # the change happens at the next start, once rendered; then nothing is pending
    assert numahook("apply", name).returncode == 0
    domains.stop(dom)
    domains.start(dom)
    after = numahook("status", "--json")
    (entry,) = [d for d in json.loads(after.stdout)["running"] if d["name"] == name]
    assert [v["realtime"] for v in entry["vcpus"]] == [True, True]
    assert entry["next_start"] == {"changes": [], "refused": None, "rendered": True}
