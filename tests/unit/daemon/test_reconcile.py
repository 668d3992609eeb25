"""The daemon re-reads a running domain's status XML only when libvirt rewrote it.

Re-parsing every status file twice a second was most of numahookd's idle CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

from numahook.config import Config
from numahook.daemon.reconcile import Reconciler
from numahook.state.statedir import StateDir
from tests.fixtures.status import REAL_STATUS

META = ("<metadata><numahook:domain xmlns:numahook='https://numahook.io/xmlns/domain/1'>"
        "<numahook:cpu dedicatedCpuPlacement='true'><numahook:realtime mask='0'/></numahook:cpu>"
        "</numahook:domain></metadata>")


def managed(name: str, vcpu1_tid: int = 7483) -> str:
    return (REAL_STATUS.replace("nh-status-probe", name)
            .replace("<vcpu id='1' pid='7483'/>", f"<vcpu id='1' pid='{vcpu1_tid}'/>")
            .replace("<memory unit='KiB'>", META + "<memory unit='KiB'>", 1))


def rewrite(path: Path, text: str) -> None:
    """As libvirt does: a new file renamed over the old one."""
    tmp = path.with_suffix(".new")
    tmp.write_text(text)
    os.replace(tmp, path)


def reconciler(tmp_path: Path) -> Reconciler:
    run = tmp_path / "run"
    run.mkdir()
    cfg = Config(libvirt_run=str(run), state_dir=str(tmp_path / "state"))
    return Reconciler(cfg, StateDir(cfg.state_dir))


def test_an_unchanged_status_file_is_not_parsed_again(tmp_path: Path) -> None:
    rec = reconciler(tmp_path)
    (tmp_path / "run" / "vm1.xml").write_text(managed("vm1"))
    (tmp_path / "run" / "plain.xml").write_text(REAL_STATUS.replace("nh-status-probe", "plain"))
    first = rec.running_managed()
    assert [d.name for d in first] == ["vm1"]  # the unmanaged one is not listed
    assert first[0].rt_vcpus == frozenset({0})
    again = rec.running_managed()
    assert again[0].facts is first[0].facts  # the view is new, the parse is not


def test_a_rewritten_or_removed_status_file_is_read_again(tmp_path: Path) -> None:
    rec = reconciler(tmp_path)
    path = tmp_path / "run" / "vm1.xml"
    path.write_text(managed("vm1"))
    first = rec.running_managed()[0]
    rewrite(path, managed("vm1", vcpu1_tid=9999))
    second = rec.running_managed()[0]
    assert second.facts is not first.facts and second.tids[1] == 9999
    (tmp_path / "run" / "vm2.xml").write_text(managed("vm2"))
    assert [d.name for d in rec.running_managed()] == ["vm1", "vm2"]
    path.unlink()
    assert [d.name for d in rec.running_managed()] == ["vm2"]
