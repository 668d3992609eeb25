"""The hook with a bad numahook.conf (issue 25): starts are refused with the error's one
line, and stopped/release/reconnect still give back or adopt what the claim records."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from numahook import NAMESPACE, config
from numahook.core import render
from numahook.hook import main as hook
from numahook.ops import hostinputs, lifecycle
from numahook.state.claims import Claim
from numahook.state.statedir import StateDir
from tests.fixtures.hosts import CpuSpec, HostSpec, NodeSpec, build_cgroup, build_proc, build_sysfs

UUID = "00000000-0000-4000-8000-000000000025"
POOL = "devices/system/node/node0/hugepages/hugepages-2048kB"
BAD = "[realtime]\nthrottled = delgate\n"


class Host:
    """A one-node fixture host whose 2 MiB pool delivers what is asked (nothing maps it)."""

    def __init__(self, tmp: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        spec = HostSpec("idle", [CpuSpec(i, 0, 0, 0, i) for i in range(4)],
                        [NodeSpec(0, [0, 1, 2, 3], 16 << 20, {2048: (0, 0, 0)})], [[10]])
        self.sysfs = build_sysfs(tmp / "sys", spec)
        (self.sysfs / POOL / "free_hugepages").unlink()
        os.symlink("nr_hugepages", self.sysfs / POOL / "free_hugepages")
        cgroup = build_cgroup(tmp / "cgroup", 1, {"": "0-3", "machine": "0-3"})
        proc = build_proc(tmp / "proc", spec)
        (tmp / "run").mkdir()
        self.state = tmp / "state"
        self.conf = tmp / "numahook.conf"
        self.good = (f"[paths]\nstate_dir = {self.state}\nsysfs_root = {self.sysfs}\n"
                     f"cgroup_root = {cgroup}\nproc_root = {proc}\nlibvirt_run = {tmp / 'run'}\n")
        self.conf.write_text(self.good)
        monkeypatch.setenv("NUMAHOOK_CONFIG", str(self.conf))
        doc = render.parse(
            f"<domain type='kvm'><name>vm</name><uuid>{UUID}</uuid><metadata>"
            f"<numahook:domain xmlns:numahook='{NAMESPACE}'><numahook:cpu "
            "dedicatedCpuPlacement='true'><numahook:numa><numahook:guestMappingPassthrough/>"
            "</numahook:numa></numahook:cpu></numahook:domain></metadata>"
            "<memory unit='KiB'>8192</memory><memoryBacking><hugepages><page size='2048' "
            "unit='KiB'/></hugepages></memoryBacking><vcpu placement='static'>1</vcpu>"
            "<os><type arch='x86_64' machine='q35'>hvm</type></os></domain>")
        inputs, _ = hostinputs.gather(config.load(), doc.facts.partition, UUID,
                                      devices=doc.facts.bdfs)
        self.xml = render.render_parsed(doc, inputs).xml

    def pages(self) -> int:
        return int((self.sysfs / POOL / "nr_hugepages").read_text())

    def claim(self) -> Claim | None:
        return StateDir(str(self.state)).load(UUID)

    def hook(self, op: str, subop: str) -> int:
        return hook.run(["vm", op, subop, "-"], self.xml)


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Host:
    return Host(tmp_path, monkeypatch)


def started_then_broken(host: Host) -> None:
    assert host.hook("prepare", "begin") == 0
    assert host.pages() == 4 and host.claim() is not None
    host.conf.write_text(host.good + BAD)


@pytest.mark.parametrize("op", ["stopped", "release"])
def test_stop_gives_everything_back_whatever_the_file_says(
        host: Host, op: str, caplog: pytest.LogCaptureFixture,
        capsys: pytest.CaptureFixture[str]) -> None:
    started_then_broken(host)
    with caplog.at_level(logging.ERROR):
        assert host.hook(op, "end") == 0
    assert host.claim() is None and host.pages() == 0
    assert capsys.readouterr().err == ""  # libvirt ignores it; the journal has the error
    assert [r.getMessage() for r in caplog.records] == [
        f"domain=vm op={op}: {host.conf}:8: [realtime] throttled: 'delgate' is not valid; "
        "set it to refuse or delegate (went on with the built-in default for it)"]


def test_a_file_that_does_not_parse_still_releases_at_the_default_paths(
        host: Host, monkeypatch: pytest.MonkeyPatch) -> None:
    """The built-in defaults name the real /run/numahook, which this test may not touch:
    what matters is that the call goes on to release with them, not that it finds the
    fixture's claim."""
    started_then_broken(host)
    host.conf.write_text("[features\n")
    seen: list[tuple[str, config.Config]] = []
    monkeypatch.setattr(lifecycle, "release",
                        lambda uuid, name, cfg, state: seen.append((uuid, cfg)) or True)
    assert host.hook("release", "end") == 0
    assert seen == [(UUID, config.Config())]


def test_reconnect_adopts_whatever_the_file_says(host: Host) -> None:
    started_then_broken(host)
    assert host.hook("reconnect", "begin") == 0
    claim = host.claim()
    assert claim is not None and claim.phase == "running"


def test_prepare_refuses_with_the_errors_one_line(host: Host,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    host.conf.write_text(host.good + BAD)
    assert host.hook("prepare", "begin") == 1
    assert capsys.readouterr().err == (f"numahook: {host.conf}:8: [realtime] throttled: "
                                       "'delgate' is not valid; set it to refuse or delegate\n")
    assert host.claim() is None and host.pages() == 0
