"""Opting in with libvirt's own tools, and naming a domain to the CLI (issue 31, items 1-2).

The three ways the README and numahook(8) show: `virsh metadata --set` on a defined domain,
`virt-install --xml` XPath edits for a new one, and `virsh edit`. numahookd renders each.
Then `check`, `render` and `status` take the domain's name or UUID, as `apply` does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from numahook import NAMESPACE, cli
from numahook.config import Config
from numahook.state.statedir import StateDir
from tests.e2e.daemonharness import Daemon, running
from tests.e2e.helpers import HOLD, metadata, render_here, wait_until

#: what the README gives to `virsh metadata … --key numahook --set`: libvirt puts the
#: whole element in the namespace given with --uri
OPT_IN = "<domain><cpu dedicatedCpuPlacement='true'/></domain>"
#: the bound the issue sets from `virsh metadata --set`'s return to the rendered definition
RENDER_BOUND = 1.0


@pytest.fixture
def numahookd(lab: Any, tmp_path: Path) -> Iterator[Daemon]:
    with running(tmp_path) as d:
        yield d


def persistent(conn: Any, name: str) -> str:
    import libvirt

    return str(conn.lookupByName(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))


def test_virsh_metadata_set_is_rendered_within_a_second(numahookd: Daemon, domains: Any,
                                                        conn: Any) -> None:
    dom = domains.define(domains.probe_xml("vmeta", vcpus=2))
    name = dom.name()
    subprocess.run(["virsh", "-q", "metadata", name, "--config", "--uri", NAMESPACE,
                    "--key", "numahook", "--set", OPT_IN], check=True, capture_output=True,
                   timeout=30)
    returned = time.monotonic()
    deadline = returned + RENDER_BOUND
    while "vcpupin" not in persistent(conn, name) and time.monotonic() < deadline:
        time.sleep(0.01)
    latency = time.monotonic() - returned
    print(f"\nrendered {latency * 1000:.0f} ms after virsh metadata --set returned",
          file=sys.stderr)
    assert "vcpupin" in persistent(conn, name), \
        f"not rendered within {RENDER_BOUND:g} s of virsh metadata --set"
    # numahookd logs "redefined" after defineXML returns, so libvirt can show the rendered
    # definition to this process before that line is written: wait for the line itself
    wait_until(lambda: "redefined" in numahookd.logtext(), timeout=5,
               what="numahookd's line for the redefinition")


def test_virt_install_xml_opts_a_new_domain_in(numahookd: Daemon, domains: Any,
                                               conn: Any) -> None:
    """virt-install's XPath knows no numahook: prefix, so the README sets the namespace
    as a default one, with an xmlns attribute that libvirt then reads as one."""
    assert shutil.which("virt-install"), "the lab installs virtinst"
    name = domains.name("vinst")
    out = subprocess.run(
        ["virt-install", "--connect", "qemu:///system", "--print-xml", "--name", name,
         "--memory", "128", "--vcpus", "2", "--disk", "none", "--import", "--network", "none",
         "--graphics", "none", "--osinfo", "detect=off,require=off",
         "--xml", f"./metadata/domain/@xmlns={NAMESPACE}",
         "--xml", "./metadata/domain/cpu/@dedicatedCpuPlacement=true"],
        check=True, capture_output=True, text=True, timeout=120).stdout
    domains.define(out)
    wait_until(lambda: "vcpupin" in persistent(conn, name), timeout=5,
               what="numahookd to render the virt-install domain")


def test_virsh_edit_opts_a_domain_in(numahookd: Daemon, domains: Any, conn: Any,
                                     tmp_path: Path) -> None:
    name = domains.define(domains.probe_xml("vedit", vcpus=2)).name()
    editor = tmp_path / "editor"  # what an operator types in $EDITOR
    editor.write_text("#!/bin/sh\nsed -i 's|</domain>|<metadata><numahook:domain "
                      f"xmlns:numahook=\"{NAMESPACE}\"><numahook:cpu dedicatedCpuPlacement="
                      "\"true\"/></numahook:domain></metadata></domain>|' \"$1\"\n")
    editor.chmod(0o755)
    subprocess.run(["virsh", "edit", name], check=True, capture_output=True, timeout=30,
                   env={**os.environ, "EDITOR": str(editor), "VISUAL": str(editor)})
    wait_until(lambda: "vcpupin" in persistent(conn, name), timeout=5,
               what="numahookd to render the edited definition")


def test_the_hook_can_tell_whether_numahookd_runs(lab: Any, tmp_path: Path) -> None:
    """From its pid file alone: what the stale-definition refusal says (ops/lifecycle.py)."""
    state = StateDir(Config().state_dir)
    with running(tmp_path):
        assert state.daemon_running()
    assert not state.daemon_running() and not Path(state.daemon_file).exists()


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def test_check_render_and_status_take_a_name_or_uuid(
        domains: Any, capsys: pytest.CaptureFixture[str], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    xml = render_here(domains.probe_xml("names", vcpus=1, cmdline=HOLD,
                                        extra=metadata(passthrough=False)))
    dom = domains.define(xml)
    name, uuid = dom.name(), dom.UUIDString()
    for key in (name, uuid, uuid.upper()):
        rc, out, err = run_cli(capsys, "check", key)
        assert (rc, err) == (0, ""), err
        assert out.startswith(name), out
        rc, out, err = run_cli(capsys, "render", "--diff", key)
        assert (rc, out, err) == (0, "", ""), "a rendered definition renders the same"
    rc, out, err = run_cli(capsys, "status", name)
    assert (rc, out.strip(), err) == (0, f"{name}  shut off", "")
    domains.start(dom)
    for key in (name, uuid):
        rc, out, err = run_cli(capsys, "status", "--json", key)
        assert (rc, err) == (0, "")
        doc = json.loads(out)
        assert [d["name"] for d in doc["running"]] == [name]
        assert doc["inactive"] == [] and doc["orphan_claims"] == []
    # a file of the same name wins over the domain, as --help says
    monkeypatch.chdir(tmp_path)
    Path(name).write_text(xml.replace(f"<name>{name}</name>", "<name>from-the-file</name>"))
    rc, out, _ = run_cli(capsys, "check", name)
    assert out.startswith("from-the-file"), out
    rc, out, err = run_cli(capsys, "status", "nhlab-no-such-domain")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "virsh list --all" in err, err
