"""Helpers shared by the e2e tests of the hook and the daemon."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.session import hook_config
from numahook.config import Config
from numahook.core import render
from numahook.ops import hostinputs
from numahook.state.statedir import StateDir

CLAIMS = Path("/run/numahook/claims")
MACHINE_CPUSET = Path("/sys/fs/cgroup/cpuset/machine/cpuset.cpus")
HOLD = "numahook.hold=600"


def metadata(*, passthrough: bool = True, mask: str | None = None, realtime: bool = False,
             isolate: bool = False) -> str:
    rt = ""
    if realtime or mask is not None:
        rt = f"<numahook:realtime mask='{mask}'/>" if mask is not None else "<numahook:realtime/>"
    numa = ("<numahook:numa><numahook:guestMappingPassthrough/></numahook:numa>"
            if passthrough else "")
    iso = " isolateEmulatorThread='true'" if isolate else ""
    return ("<metadata><numahook:domain xmlns:numahook='https://numahook.io/xmlns/domain/1'>"
            f"<numahook:cpu dedicatedCpuPlacement='true'{iso}>{numa}{rt}</numahook:cpu>"
            "</numahook:domain></metadata>")


def render_here(xml: str) -> str:
    """Render for this host as an operator's ``numahook render`` would."""
    doc = render.parse(xml)
    cfg = Config()
    inputs, _ = hostinputs.gather(cfg, doc.facts.partition, doc.facts.uuid or None,
                                  state=StateDir(cfg.state_dir), devices=doc.facts.bdfs)
    return render.render_parsed(doc, inputs).xml


@pytest.fixture
def delegate_config() -> Iterator[None]:
    """This machine throttles RT (950000) with RT_GROUP_SCHED: opt in to delegation."""
    with hook_config("[realtime]\nthrottled = delegate\n"):
        yield


def claim_files() -> list[Path]:
    return sorted(CLAIMS.glob("*.json")) if CLAIMS.exists() else []


def hugepages_2m() -> int:
    return int(Path("/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages")
               .read_text())


def wait_until(pred: Any, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


_STARTED_PROBE = """#!/bin/sh
# test hook (removed after the test): the vCPU policies at the moment `started` begins
[ "$2" = started ] && [ "$3" = begin ] || exit 0
cat >/dev/null
for pair in $(sed -n "s/.*<vcpu id='\\([0-9]*\\)' pid='\\([0-9]*\\)'.*/\\1:\\2/p" \\
        "/run/libvirt/qemu/$1.xml"); do
    policy=$(chrt -p "${{pair#*:}}" | sed -n 's/.*policy: *//p')
    echo "$1 vcpu${{pair%%:*}} $policy $(date +%T.%N)" >>{log}
done
exit 0
"""


@contextlib.contextmanager
def started_probe(log: Path) -> Iterator[Path]:
    """A qemu.d hook that runs before numahook's (``00-`` sorts first) and writes each
    vCPU's policy as ``started`` begins: what was done before the hook ran.

    libvirt lists ``qemu.d`` at every hook call; only whether any qemu hook exists at all
    is cached until SIGHUP, and numahook's own is installed. So the file takes effect at
    the next call, with nothing to wait for.
    """
    hook = Path("/etc/libvirt/hooks/qemu.d/00-nhtest-started-probe")
    assert any(p.name != hook.name for p in hook.parent.iterdir()), "numahook's hook is missing"
    log.write_text("")
    hook.write_text(_STARTED_PROBE.format(log=log))
    hook.chmod(0o755)
    try:
        yield log
    finally:
        hook.unlink(missing_ok=True)
