"""Refusals counted across processes (ops/refusals.py): exact under concurrent hooks,
bounded, crash safe, never in the way of the refusal itself, and cheap to import."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from numahook.errors import ConfigError, HostError, InputError, NumahookError, Refusal
from numahook.ops import refusals
from tests.fixtures.hosts import host_roots
from tests.golden.cases import CASES, DATA

REPO = Path(__file__).resolve().parents[3]


def test_each_stage_and_check_counts_in_a_file_of_its_own(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    assert refusals.counts(state) == {}
    for stage, check in (("prepare", "hugepages"), ("prepare", "hugepages"),
                         ("started", "realtime-budget"), ("render", "dedicated-cpus")):
        assert refusals.count(state, stage, check)
    assert refusals.counts(state) == {("prepare", "hugepages"): 2,
                                      ("started", "realtime-budget"): 1,
                                      ("render", "dedicated-cpus"): 1}
    where = Path(refusals.directory(state))
    assert (where / "prepare.hugepages").read_text() == "2\n"
    assert where.stat().st_mode & 0o777 == 0o700
    assert (where / "prepare.hugepages").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(("exc", "check"), [
    (Refusal("no room", "dedicated-cpus"), "dedicated-cpus"),
    (Refusal("no room"), "refused"),
    (Refusal("odd", "Not A Check/../x"), "other"),
    (ConfigError("bad file"), "config-error"),
    (InputError("bad XML"), "input-error"),
    (HostError("sysfs refused"), "host-error"),
    (NumahookError("other"), "error"),
])
def test_the_hook_counts_a_refusal_under_its_check(tmp_path: Path, exc: NumahookError,
                                                   check: str) -> None:
    assert refusals.count_error(str(tmp_path), "prepare", exc)
    assert refusals.counts(str(tmp_path)) == {("prepare", check): 1}


@pytest.mark.parametrize("op", ["stopped", "release", "reconnect", "attach"])
def test_calls_that_cannot_refuse_are_not_counted(tmp_path: Path, op: str) -> None:
    assert not refusals.count_error(str(tmp_path), op, Refusal("x", "hugepages"))
    assert refusals.counts(str(tmp_path)) == {}


def test_a_stage_that_is_not_one_is_not_counted(tmp_path: Path) -> None:
    assert not refusals.count(str(tmp_path), "../etc", "hugepages")
    assert not (tmp_path / "refusals").exists()


def test_concurrent_hooks_lose_no_count(tmp_path: Path) -> None:
    """Hook processes refusing at once (a batch of starts on a full host)."""
    state = str(tmp_path)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from numahook.ops import refusals\n"
            "for _ in range(40): assert refusals.count(sys.argv[2], 'prepare', 'hugepages', "
            "timeout=30)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(REPO), state])
             for _ in range(6)]
    assert [p.wait(timeout=120) for p in procs] == [0] * 6
    assert refusals.counts(state) == {("prepare", "hugepages"): 240}


def test_a_writer_killed_half_way_leaves_the_count_and_no_litter(tmp_path: Path) -> None:
    state = str(tmp_path)
    refusals.count(state, "prepare", "hugepages")
    where = Path(refusals.directory(state))
    (where / ".prepare.hugepages.4242-deadbeef.tmp").write_text("9")  # atomic_write's name
    (where / "prepare.page-size").write_text("garbage\n")  # not a count: starts again
    assert refusals.counts(state) == {("prepare", "hugepages"): 1}
    refusals.count(state, "prepare", "page-size")
    assert sorted(os.listdir(where)) == ["prepare.hugepages", "prepare.page-size"]
    assert refusals.counts(state) == {("prepare", "hugepages"): 1, ("prepare", "page-size"): 1}


def test_the_files_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(refusals, "MAX_FILES", 3)
    state = str(tmp_path)
    for check in ("a", "b", "c", "d", "e", "a"):
        assert refusals.count(state, "prepare", check)
    assert refusals.counts(state) == {("prepare", "a"): 2, ("prepare", "b"): 1,
                                      ("prepare", "c"): 1}
    assert len(os.listdir(refusals.directory(state))) == 4  # and prepare.other, with 2
    assert (Path(refusals.directory(state)) / "prepare.other").read_text() == "2\n"


def test_a_held_lock_delays_the_refusal_only_as_long_as_the_bound(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    state = str(tmp_path)
    refusals.count(state, "prepare", "hugepages")
    fd = os.open(refusals.directory(state), os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another writer, hung
        start = time.monotonic()
        assert not refusals.count(state, "prepare", "hugepages", timeout=0.2)
        assert time.monotonic() - start < 2
    finally:
        os.close(fd)
    assert "held" in caplog.text
    assert refusals.counts(state) == {("prepare", "hugepages"): 1}


def test_an_unwritable_state_dir_is_logged_not_raised(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "file").write_text("")
    assert not refusals.count(str(tmp_path / "file"), "prepare", "hugepages")
    assert "cannot count a prepare refusal (hugepages)" in caplog.text


def test_reading_ignores_what_is_not_ours(tmp_path: Path) -> None:
    where = Path(refusals.directory(str(tmp_path)))
    where.mkdir()
    (where / "prepare.hugepages").write_text("3\n")
    (where / "nonsense.hugepages").write_text("5\n")
    (where / "prepare.UPPER").write_text("5\n")
    (where / "prepare.linked").symlink_to(where / "prepare.hugepages")
    assert refusals.counts(str(tmp_path)) == {("prepare", "hugepages"): 3}


def test_the_refusal_path_imports_nothing_the_hook_has_not_loaded(tmp_path: Path) -> None:
    """The hook's import budget (README): by the time a start is refused, the hook has
    loaded statedir; counting the refusal may add this module and nothing else."""
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "import numahook.state.statedir, numahook.ops\n"
            "before = set(sys.modules)\n"
            "import numahook.ops.refusals\n"
            "print(' '.join(sorted(set(sys.modules) - before)))\n")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, str(REPO)],
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["numahook.ops.refusals"]


def test_a_refused_prepare_is_counted_by_the_hook(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from numahook.hook import main as hook

    case = next(c for c in CASES if c.id == "intel-dedicated-partition")
    roots = host_roots(tmp_path, case.host, case.cgroup_version, case.cpusets)
    (tmp_path / "run").mkdir()
    conf = tmp_path / "numahook.conf"
    conf.write_text(f"[paths]\nstate_dir = {tmp_path / 'state'}\n"
                    f"sysfs_root = {roots['sysfs']}\ncgroup_root = {roots['cgroup']}\n"
                    f"proc_root = {roots['proc']}\nlibvirt_run = {tmp_path / 'run'}\n")
    monkeypatch.setenv("NUMAHOOK_CONFIG", str(conf))
    xml = (DATA / f"{case.id}-out.xml").read_text()
    stale = xml.replace("<vcpupin vcpu='0' cpuset='2'/>", "<vcpupin vcpu='0' cpuset='5'/>")
    assert stale != xml
    assert hook.run(["dedicated", "prepare", "begin", "-"], stale) == 1
    assert hook.run(["dedicated", "prepare", "begin", "-"], stale) == 1
    assert refusals.counts(str(tmp_path / "state")) == {("prepare", "stale-definition"): 2}
