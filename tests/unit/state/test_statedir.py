"""state: claim records, the bounded global lock, corrupt records, crash rollback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from numahook.config import Config
from numahook.core.rtbudget import BudgetRecord
from numahook.errors import InputError, StateError
from numahook.host import fsutil, hugepages
from numahook.host.hugepages import Pending
from numahook.state import recovery
from numahook.state.claims import Claim
from numahook.state.statedir import ClaimJournal, StateDir
from numahook.tunables import hugepages as hugepages_tunable
from numahook.tunables import realtime
from numahook.tunables.realtime import Intent
from tests.support import claims

ROOT = os.geteuid() == 0
U1 = "37458bd7-b570-4007-8934-5a9194048470"
U2 = "00000000-0000-0000-0000-000000000002"
REAL_POOL = Path("/sys/devices/system/node/node0/hugepages/hugepages-2048kB")


@pytest.fixture
def sd(tmp_path: Path) -> StateDir:
    return StateDir(str(tmp_path / "run" / "numahook"))


def full_claim() -> Claim:
    return claims.make(
        uuid=U1.upper(),
        name="rt-vm",
        cpus=frozenset({2, 3}),
        hugepages_added={(0, 2048): 64, (1, 1048576): 1},
        pending={(1, 2048): Pending(10, 8)},
        rt_budget=(BudgetRecord("/sys/fs/cgroup/cpu/machine/cpu.rt_runtime_us", 0, 950000, True),),
        phase="reserved",
        created=1700000000.5,
        qemu_pid=1234,
        intent=Intent((0, 1), 10, emulator=True),
    )


def test_save_load_roundtrip_and_modes(sd: StateDir) -> None:
    claim = full_claim()
    assert claim.uuid == U1  # normalised
    sd.save(claim)
    assert sd.load(U1) == claim
    assert sd.load(U1.upper()) == claim
    f = Path(sd.claims_dir) / f"{U1}.json"
    assert f.stat().st_mode & 0o777 == 0o600
    assert os.stat(sd.path).st_mode & 0o777 == 0o700
    assert os.stat(sd.claims_dir).st_mode & 0o777 == 0o700
    data = json.loads(f.read_text())
    assert data["tunables"]["hugepages"]["added"] == {"0:2048": 64, "1:1048576": 1}
    assert data["tunables"]["realtime"]["budget"][0][1:] == [0, 950000, True]
    assert sd.load(U2) is None


def test_list_held_cpus_and_remove(sd: StateDir) -> None:
    sd.save(full_claim())
    sd.save(Claim(uuid=U2, name="other", cpus=frozenset({5})))
    assert [c.name for c in sd.list_claims()] == ["other", "rt-vm"]
    assert sd.held_cpus() == frozenset({2, 3, 5})
    assert sd.held_cpus(exclude_uuid=U1) == frozenset({5})
    sd.remove(U1)
    sd.remove(U1)  # already gone is fine
    assert sd.held_cpus() == frozenset({5})


def test_bad_names_and_phases_are_refused(sd: StateDir) -> None:
    for bad in ("../../etc/passwd", "x", ""):
        with pytest.raises(InputError, match="not a domain UUID"):
            sd.load(bad)
    with pytest.raises(InputError):
        sd.remove("../lock")
    with pytest.raises(InputError, match="phase 'booting'"):
        Claim(uuid=U1, name="x", phase="booting")


@pytest.mark.parametrize(
    "content",
    [
        "{not json",
        "[]",
        json.dumps({**full_claim().to_json(), "version": 99}),
        json.dumps({**full_claim().to_json(), "cpus": ["2"]}),
        json.dumps({**full_claim().to_json(), "phase": "weird"}),
        json.dumps({**full_claim().to_json(), "uuid": U2}),
        json.dumps({k: v for k, v in full_claim().to_json().items() if k != "tunables"}),
        "\xff\xfe garbage",
    ],
)
def test_corrupt_record_is_an_orphan_not_a_crash(
    sd: StateDir, content: str, caplog: pytest.LogCaptureFixture
) -> None:
    sd.save(Claim(uuid=U2, name="fine", cpus=frozenset({7})))
    (Path(sd.claims_dir) / f"{U1}.json").write_text(content)
    (Path(sd.claims_dir) / "junk.json").write_text("")
    (Path(sd.claims_dir) / f".{U1}.json.abc.tmp").write_text("half")  # killed atomic_write
    assert [c.name for c in sd.list_claims()] == ["fine"]
    assert sd.load(U1) is None
    assert sd.held_cpus() == frozenset({7})
    assert sorted(sd.corrupt_records()) == sorted([U1, "junk"])
    assert "corrupt claim record" in caplog.text
    for stem in sd.corrupt_records():
        sd.remove(stem)
    assert sd.corrupt_records() == []


def test_ensure_tightens_and_refuses_foreign_dirs(tmp_path: Path) -> None:
    d = tmp_path / "nh"
    (d / "claims").mkdir(parents=True)
    d.chmod(0o777)
    StateDir(str(d)).ensure()
    assert d.stat().st_mode & 0o777 == 0o700
    if ROOT:
        os.chown(d / "claims", 65534, 65534)
        with pytest.raises(StateError, match="not a directory owned by uid 0; remove it"):
            StateDir(str(d)).ensure()


_HOLDER = r"""
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)
fcntl.flock(fd, fcntl.LOCK_EX)
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def held_lock(sd: StateDir) -> Iterator[subprocess.Popen[str]]:
    sd.ensure()
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, os.path.join(sd.path, "lock")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "locked\n"
        yield child
    finally:
        child.kill()
        child.wait()


def test_lock_held_by_another_process_times_out(
    sd: StateDir, held_lock: subprocess.Popen[str]
) -> None:
    start = time.monotonic()
    with pytest.raises(StateError) as info, sd.lock(timeout=0.4):
        pass
    elapsed = time.monotonic() - start
    assert 0.4 <= elapsed < 1.5
    assert str(info.value) == (
        "another numahook call held the state lock for more than 0.4 s; "
        "check for a hung numahook process"
    )
    held_lock.kill()
    held_lock.wait()
    with sd.lock(timeout=2):
        sd.save(Claim(uuid=U1, name="x"))
    assert sd.load(U1) is not None


def test_lock_is_released_on_error(sd: StateDir) -> None:
    with pytest.raises(RuntimeError), sd.lock(timeout=1):
        raise RuntimeError("boom")
    with sd.lock(timeout=0.1):
        pass


@pytest.mark.skipif(not ROOT, reason="mounting a tmpfs needs root")
def test_full_filesystem_keeps_the_old_record(tmp_path: Path) -> None:
    mnt = tmp_path / "run"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12k", "tmpfs", str(mnt)], check=True)
    try:
        sd = StateDir(str(mnt / "numahook"))
        sd.save(Claim(uuid=U1, name="small", cpus=frozenset({1})))
        big = Claim(uuid=U1, name="big", cpus=frozenset(range(0, 8000, 2)))
        with pytest.raises(StateError, match=r"No space left on device; free space in"):
            sd.save(big)
        assert sd.load(U1) == Claim(
            uuid=U1, name="small", cpus=frozenset({1}), created=sd.load(U1).created  # type: ignore[union-attr]
        )
        assert sd.corrupt_records() == []
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_claim_journal_saves_every_change(sd: StateDir) -> None:
    j = ClaimJournal(sd, Claim(uuid=U1, name="x"))
    j.put("hugepages", hugepages_tunable.Entry(pending={(0, 2048): Pending(0, 4)}))
    first = sd.load(U1)
    assert first is not None and claims.pending(first) == {(0, 2048): Pending(0, 4)}
    j.put("realtime", realtime.Entry(budget=(BudgetRecord("/x", 0, 1, False),)))
    loaded = sd.load(U1)
    assert loaded is not None and claims.budget(loaded) == (BudgetRecord("/x", 0, 1, False),)
    assert claims.pending(loaded) == {(0, 2048): Pending(0, 4)}
    assert loaded == j.claim


def _cgroup_file(tmp_path: Path, name: str, value: int) -> Path:
    d = tmp_path / "cpu" / name
    d.mkdir(parents=True)
    (d / "cpu.rt_period_us").write_text("1000000\n")
    (d / "cpu.rt_runtime_us").write_text(f"{value}\n")
    return d / "cpu.rt_runtime_us"


def test_rollback_returns_budget_and_drops_claim(sd: StateDir, tmp_path: Path) -> None:
    f = _cgroup_file(tmp_path, "machine", 60000)
    claim = claims.make(uuid=U1, name="x", rt_budget=(BudgetRecord(str(f), 10000, 60000, True),))
    sd.save(claim)
    assert recovery.rollback(ClaimJournal(sd, claim),
                             Config(sysfs_root=str(tmp_path / "sys"))) is True
    assert f.read_text().strip() == "10000"
    assert sd.load(U1) is None


def test_rollback_failure_keeps_what_is_still_held(
    sd: StateDir, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok = _cgroup_file(tmp_path, "a", 500)
    stuck = _cgroup_file(tmp_path, "stuck", 900)
    real_write = fsutil.write_knob

    def refuse_stuck(path: fsutil.PathLike, value: str, hint: object = None) -> None:
        if Path(path) == stuck:
            raise fsutil.KnobWriteError("writing 0 failed: Device or resource busy; x", "", 16)
        real_write(path, value, hint)  # type: ignore[arg-type]

    monkeypatch.setattr(fsutil, "write_knob", refuse_stuck)
    records = (BudgetRecord(str(stuck), 0, 900, True), BudgetRecord(str(ok), 0, 500, True))
    claim = claims.make(uuid=U1, name="x", rt_budget=records)
    sd.save(claim)
    assert recovery.rollback(ClaimJournal(sd, claim),
                             Config(sysfs_root=str(tmp_path / "sys"))) is False
    kept = sd.load(U1)
    assert kept is not None and claims.budget(kept) == (records[0],)
    assert ok.read_text().strip() == "0"


class Killed(BaseException):
    """Stands for SIGKILL between the write and the journalled outcome."""


@pytest.fixture
def real_pool() -> Iterator[int]:
    if not ROOT or not REAL_POOL.is_dir():
        pytest.skip("needs root and 2048 kB hugepages on node 0")
    original = int((REAL_POOL / "nr_hugepages").read_text())
    try:
        yield original
    finally:
        if int((REAL_POOL / "nr_hugepages").read_text()) != original:
            (REAL_POOL / "nr_hugepages").write_text(str(original))


def test_real_crash_after_raising_nr_hugepages_is_rolled_back(
    sd: StateDir, real_pool: int
) -> None:
    """Killed after the kernel gave pages but before the outcome was saved: the next call
    finds the intent in the claim, counts what the kernel really gave, and gives it back."""
    free = int((REAL_POOL / "free_hugepages").read_text())
    j = ClaimJournal(sd, Claim(uuid=U1, name="crashy"))
    sd.save(j.claim)
    saves = 0

    def journal(added: dict[hugepages.PoolKey, int],
                pending: dict[hugepages.PoolKey, Pending]) -> None:
        nonlocal saves
        saves += 1
        if saves == 2:
            raise Killed()
        j.put("hugepages", hugepages_tunable.Entry(added=added, pending=pending))

    with pytest.raises(Killed):
        hugepages.reserve({(0, 2048): free + 3}, journal=journal)
    assert int((REAL_POOL / "nr_hugepages").read_text()) == real_pool + 3
    on_disk = StateDir(sd.path).load(U1)  # what the next process sees
    assert on_disk is not None
    assert claims.added(on_disk) == {}
    assert claims.pending(on_disk) == {(0, 2048): Pending(real_pool, 3)}
    assert recovery.rollback(ClaimJournal(sd, on_disk), Config()) is True
    assert int((REAL_POOL / "nr_hugepages").read_text()) == real_pool
    assert sd.load(U1) is None


def test_realtime_intent_round_trips_and_old_records_still_load(sd: StateDir) -> None:
    claim = full_claim()
    sd.save(claim)
    data = json.loads((Path(sd.claims_dir) / f"{U1}.json").read_text())
    assert data["tunables"]["realtime"]["intent"] == {"vcpus": [0, 1], "priority": 10,
                                                      "emulator": True}
    assert Claim.from_json(data) == claim


@pytest.mark.parametrize("bad", [
    [], "0-1", {"vcpus": [], "priority": 1, "emulator": False},
    {"vcpus": [0], "priority": 0, "emulator": False},
    {"vcpus": [0], "priority": 100, "emulator": False},
    {"vcpus": [-1], "priority": 1, "emulator": False},
    {"vcpus": [True], "priority": 1, "emulator": False},
    {"vcpus": [0], "priority": 1, "emulator": "yes"},
    {"vcpus": [0], "priority": 1},
])
def test_a_malformed_realtime_intent_makes_the_record_malformed(bad: object) -> None:
    data = full_claim().to_json()
    data["tunables"]["realtime"]["intent"] = bad
    with pytest.raises(InputError, match="malformed"):
        Claim.from_json(data)


def test_temporaries_of_a_killed_writer_are_removed_under_the_lock(sd: StateDir) -> None:
    sd.save(full_claim())
    stale = Path(sd.claims_dir) / f".{U1}.json.4242-deadbeef.tmp"
    stale.write_text("{half a record")
    with sd.lock(5):
        assert sd.remove_temporaries() == [stale.name]
    assert not stale.exists() and sd.load(U1) == full_claim()
    assert sd.remove_temporaries() == []


def test_the_daemon_pid_file_says_whether_numahookd_runs(sd: StateDir) -> None:
    """What the hook reads to word a stale definition's refusal (ops/lifecycle.py)."""
    sd.ensure()
    assert not sd.daemon_running()
    sd.mark_daemon()
    assert sd.daemon_running()
    pid, start, boot = Path(sd.daemon_file).read_text().split()
    Path(sd.daemon_file).write_text(f"{pid} {int(start) + 1} {boot}\n")  # the pid was reused
    assert not sd.daemon_running()
    sd.unmark_daemon()  # not this process's file any more: left alone
    assert Path(sd.daemon_file).exists()
    sd.mark_daemon()
    sd.unmark_daemon()
    assert not Path(sd.daemon_file).exists() and not sd.daemon_running()
