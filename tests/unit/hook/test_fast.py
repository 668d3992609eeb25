"""The started hook's fast path (numahook/hook/fast.py): verify numahookd's work, or decline.

The "vCPU threads" are real processes of this test (a process is a thread to the
scheduler), so the policies verified are the kernel's own; setting one FIFO needs root
with RT budget in this cgroup, which the lab machine and CI have. The claim is written by
the real StateDir, the status file is libvirt's (tests/fixtures/status.py) with our pids.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from numahook import NAMESPACE
from numahook.hook import fast, main
from numahook.records import replace
from numahook.state.statedir import StateDir
from numahook.tunables import realtime
from numahook.tunables.realtime import Intent
from numahook.xml import safe
from tests.fixtures.status import REAL_STATUS
from tests.support import claims

REPO = Path(__file__).resolve().parents[3]
UUID = "37458bd7-b570-4007-8934-5a9194048470"
NAME = "nh-status-probe"
#: the domain XML libvirt passes the hook (the status file's <domain>, under TCG)
XML = REAL_STATUS[REAL_STATUS.index("  <domain type="):REAL_STATUS.index("</domstatus>")].replace(
    "type='kvm'", "type='qemu'", 1)


@pytest.fixture
def threads() -> Iterator[list[int]]:
    """QEMU, vCPU 0 and vCPU 1: three sleeping processes of ours."""
    procs = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait()


def fifo(pid: int, priority: int = 1) -> None:
    try:
        os.sched_setscheduler(pid, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError:
        pytest.skip("setting SCHED_FIFO needs root and RT budget in this cgroup")


@pytest.fixture
def host(tmp_path: Path, threads: list[int]) -> dict[str, object]:
    """A config, a status file and the claim numahookd leaves after tune_early."""
    qemu, v0, v1 = threads
    (tmp_path / "run").mkdir()
    status = (REAL_STATUS.replace("pid='7475'", f"pid='{qemu}'")
              .replace("pid='7482'", f"pid='{v0}'").replace("pid='7483'", f"pid='{v1}'"))
    (tmp_path / "run" / f"{NAME}.xml").write_text(status)
    conf = tmp_path / "numahook.conf"
    conf.write_text(f"# a comment\n[realtime]\nthrottled = delegate\n\n[paths]\n"
                    f"state_dir = {tmp_path / 'state'}\nlibvirt_run = {tmp_path / 'run'}\n")
    state = StateDir(str(tmp_path / "state"))
    state.ensure()
    claim = claims.make(uuid=UUID, name=NAME, cpus=frozenset({0}), phase="reserved",
                  intent=Intent((0,), 1), qemu_pid=qemu, verified_pid=qemu)
    state.save(claim)
    return {"env": {"NUMAHOOK_CONFIG": str(conf)}, "state": state, "claim": claim,
            "qemu": qemu, "v0": v0, "v1": v1, "conf": conf}


def test_verified_by_numahookd_is_only_verified(host: dict) -> None:
    fifo(host["v0"])
    assert fast.started(NAME, XML, host["env"])
    after = host["state"].load(UUID)
    assert after == replace(host["claim"], phase="running")
    assert os.sched_getscheduler(host["v1"]) == os.SCHED_OTHER  # nothing was changed


@pytest.mark.parametrize("spoil", [
    "masked vCPU not FIFO", "wrong priority", "unmasked vCPU FIFO", "emulator not FIFO",
    "not verified", "another QEMU", "already running", "name differs", "vCPU 1 offline",
])
def test_anything_unconfirmed_declines_and_changes_nothing(host: dict, spoil: str) -> None:
    state, claim = host["state"], host["claim"]
    if spoil != "masked vCPU not FIFO":
        fifo(host["v0"], 2 if spoil == "wrong priority" else 1)
    if spoil == "unmasked vCPU FIFO":
        fifo(host["v1"])
    if spoil == "emulator not FIFO":
        emulated = Intent((0,), 1, emulator=True)
        state.save(replace(claim, tunables={"realtime": realtime.Entry(emulated)},
                           fast={"realtime": claims.fast_realtime(emulated)}))
    if spoil == "not verified":
        state.save(replace(claim, verified_pid=None))
    if spoil == "another QEMU":
        state.save(replace(claim, verified_pid=claim.qemu_pid + 1,
                           qemu_pid=claim.qemu_pid + 1))
    if spoil == "vCPU 1 offline":  # vCPUs 0 and 2 online: the mask may hold 2, the intent not
        status = host["conf"].parent / "run" / f"{NAME}.xml"
        status.write_text(status.read_text().replace("<vcpu id='1'", "<vcpu id='2'"))
    if spoil == "already running":
        state.save(replace(claim, phase="running"))
    before = (Path(state.path) / "claims" / f"{UUID}.json").read_text()
    name = "other" if spoil == "name differs" else NAME
    assert not fast.started(name, XML, host["env"])
    assert (Path(state.path) / "claims" / f"{UUID}.json").read_text() == before


@pytest.mark.parametrize("conf", [
    "[paths]\n  state_dir = /elsewhere\n",  # a continuation line
    "[paths]\nstate_dir = /a\nstate_dir = /b\n",  # configparser refuses duplicates
    "state_dir = /a\n",  # a key outside a section
    "[paths]\nstate_dir = relative\n",
    "[paths]\n[hook]\n[paths]\n",  # configparser refuses a section twice
])
def test_config_it_does_not_fully_understand_declines(host: dict, conf: str) -> None:
    fifo(host["v0"])
    host["conf"].write_text(conf)
    with pytest.raises(fast._Decline):
        fast.settings(host["env"])
    assert not fast.started(NAME, XML, host["env"])


def test_the_claim_it_writes_is_what_statedir_writes(host: dict) -> None:
    data = host["claim"].to_json()
    assert json.loads(fast._dump_json(data)) == data
    assert fast._load_json(json.dumps(data, indent=1, sort_keys=True)) == data


def test_hook_main_reads_no_more_than_safe_allows() -> None:
    assert main._MAX_STDIN == safe.MAX_XML_BYTES


#: everything the fast path may load beyond a bare interpreter (-I): our three modules,
#: __future__, the C half of json, fcntl for the lock (syslog is replaced by a file here),
#: and host/lean.py, the readers and writers it shares with the full path. No tunable: they
#: declare their checks as data at prepare (numahook/tunables/base.py, fast_checks)
FAST_PATH_MODULES = {"__future__", "_json", "fcntl", "numahook", "numahook.hook",
                     "numahook.hook.fast", "numahook.hook.main", "numahook.ini", "numahook.log",
                     "numahook.host", "numahook.host.lean"}

_RUN = """
import io, sys
sys.path.insert(0, sys.argv[1])
bare = set(sys.modules)
from numahook.hook.main import main
sys.stdin = io.StringIO(sys.argv[2])
rc = main([sys.argv[3], "started", "begin", "-"])
print(rc, " ".join(sorted(set(sys.modules) - bare)))
"""


def test_the_fast_path_imports_only_its_own_modules(host: dict, tmp_path: Path) -> None:
    fifo(host["v0"])
    env = {**host["env"], "NUMAHOOK_HOOK_LOG": str(tmp_path / "hook.log")}
    proc = subprocess.run([sys.executable, "-I", "-c", _RUN, str(REPO), XML, NAME],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    rc, _, loaded = proc.stdout.strip().partition(" ")
    assert rc == "0"
    assert set(loaded.split()) == FAST_PATH_MODULES
    assert host["state"].load(UUID).phase == "running"
    assert f"domain={NAME} action=realtime vcpus=0 priority=1" in (
        tmp_path / "hook.log").read_text()


def test_declined_fast_path_runs_the_full_path(host: dict, tmp_path: Path) -> None:
    """vCPU 0 is not FIFO (numahookd lost it, say): main goes on to the full path, which
    tests/e2e/test_hook.py shows applying FIFO on the lab's libvirt."""
    env = {**host["env"], "NUMAHOOK_HOOK_LOG": str(tmp_path / "hook.log")}
    proc = subprocess.run([sys.executable, "-I", "-c", _RUN, str(REPO), XML, NAME],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 0, proc.stderr
    rc, _, loaded = proc.stdout.strip().partition(" ")
    assert rc == "0"
    assert "numahook.ops.lifecycle" in loaded.split()
    assert "action=realtime vcpus=0" not in (tmp_path / "hook.log").read_text()


def test_an_emulator_not_yet_narrowed_declines(host: dict) -> None:
    """numahook/tunables/emulator.py: while QEMU's main thread still runs on the start set, the
    full path must run and narrow it; once on its own CPUs alone, the fast path verifies."""
    fifo(host["v0"])
    cpu = min(os.sched_getaffinity(0))
    claim = replace(host["claim"], fast={**host["claim"].fast, "emulator": {"affinity": [cpu]}})
    host["state"].save(claim)
    if len(os.sched_getaffinity(host["qemu"])) > 1:
        assert not fast.started(NAME, XML, host["env"])
        assert host["state"].load(UUID) == claim
    os.sched_setaffinity(host["qemu"], {cpu})
    assert fast.started(NAME, XML, host["env"])
    assert host["state"].load(UUID).phase == "running"


@pytest.mark.parametrize("checks", [None, {"affinity": ["3-x"]}, {"unheard-of": True}],
                         ids=["declared none", "unreadable", "unknown kind"])
def test_a_check_it_cannot_make_declines(host: dict, checks: object) -> None:
    fifo(host["v0"])
    host["state"].save(replace(host["claim"], fast={**host["claim"].fast, "x": checks}))
    assert not fast.started(NAME, XML, host["env"])


def test_a_claim_with_nothing_declared_declines(host: dict) -> None:
    fifo(host["v0"])
    host["state"].save(replace(host["claim"], fast={"hugepages": {}}))
    assert not fast.started(NAME, XML, host["env"])


@pytest.mark.parametrize("state_of_threads", [
    "as applied", "masked vCPU not FIFO", "wrong priority", "unmasked vCPU FIFO",
    "emulator not FIFO", "emulator FIFO as asked",
])
def test_the_fast_path_and_the_full_path_judge_alike(host: dict, state_of_threads: str) -> None:
    """Parity: where the threads are as the claim's intent says, both paths accept; where
    one is off, the fast path declines and the full path's tunables say what is wrong
    (numahook/tunables/base.py: the checks ``fast_checks`` declares against ``verify``)."""
    from numahook.config import Config
    from numahook.core import render
    from numahook.host import libvirtstatus
    from numahook.tunables import REGISTRY
    from numahook.tunables.view import of

    state, claim = host["state"], host["claim"]
    emulator = state_of_threads.startswith("emulator")
    if state_of_threads != "masked vCPU not FIFO":
        fifo(host["v0"], 2 if state_of_threads == "wrong priority" else 1)
    if state_of_threads == "unmasked vCPU FIFO":
        fifo(host["v1"])
    if emulator:
        emulated = Intent((0,), 1, emulator=True)
        state.save(replace(claim, tunables={"realtime": realtime.Entry(emulated)},
                           fast={"realtime": claims.fast_realtime(emulated)}))
    if state_of_threads == "emulator FIFO as asked":
        fifo(host["qemu"])
    # the same domain as the full path reads it: the mask and the emulator from its XML
    extra = " isolateEmulatorThread='true'" if emulator else ""
    live = XML.replace("</uuid>", f"</uuid><metadata><numahook:domain xmlns:numahook="
                       f"'{NAMESPACE}'><numahook:cpu dedicatedCpuPlacement='true'{extra}>"
                       "<numahook:realtime mask='0'/></numahook:cpu></numahook:domain>"
                       "</metadata>", 1)
    doc = render.parse(live, readonly=True)
    assert doc.request is not None and doc.request.realtime
    status = libvirtstatus.status_of(NAME, str(host["conf"].parent / "run"))
    seen = of(doc, status, "/proc")
    # what the full path's tune would apply: the started step's (prepare's, such as the
    # CPU power, were applied under the lock before QEMU ran, and neither path redoes them)
    full = [p for t in REGISTRY if t.step == "started" and t.wanted(seen)
            and (p := t.verify(Config(), seen))]
    assert fast.started(NAME, live, host["env"]) == (not full), full
    assert (state_of_threads in ("as applied", "emulator FIFO as asked")) == (not full)
