"""fsutil: bounded reads, atomic writes, knob writes and root-confined paths."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import pytest

from numahook.errors import HostError, InputError, StateError
from numahook.host import fsutil
from tests.support.mounts import read_only_tmpfs

ROOT = os.geteuid() == 0
NR_2M = Path("/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages")


def test_read_text_roundtrip_and_bound(tmp_path: Path) -> None:
    f = tmp_path / "knob"
    f.write_text("950000\n")
    assert fsutil.read_text(f) == "950000\n"
    assert fsutil.read_int(f) == 950000
    f.write_bytes(b"x" * 101)
    with pytest.raises(InputError, match="larger than 100 bytes"):
        fsutil.read_text(f, limit=100)
    assert fsutil.read_text(f, limit=101) == "x" * 101


def test_read_text_missing_names_path(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=str(tmp_path / "nope")):
        fsutil.read_text(tmp_path / "nope")


def test_read_int_refuses_garbage(tmp_path: Path) -> None:
    f = tmp_path / "knob"
    f.write_text("max\n")
    with pytest.raises(InputError, match="not an integer"):
        fsutil.read_int(f)


def test_read_text_keeps_non_utf8_bytes(tmp_path: Path) -> None:
    f = tmp_path / "bin"
    f.write_bytes(b"a\xffb")
    assert fsutil.read_text(f).encode("utf-8", "surrogateescape") == b"a\xffb"


def test_atomic_write_creates_private_parents_and_file(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "claim.json"
    fsutil.atomic_write(target, "one")
    assert target.read_text() == "one"
    assert target.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "a").stat().st_mode & 0o777 == 0o700
    fsutil.atomic_write(target, b"two", mode=0o640)
    assert target.read_text() == "two"
    assert target.stat().st_mode & 0o777 == 0o640
    assert os.listdir(target.parent) == ["claim.json"]


def test_atomic_write_takes_another_name_when_the_temporary_one_exists(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "claim.json"
    clash = tmp_path / f".claim.json.{os.getpid()}-00000000.tmp"
    clash.write_text("someone else's")
    draws = iter([b"\0" * 4, b"\1" * 4])
    monkeypatch.setattr(fsutil.os, "urandom", lambda n: next(draws))
    fsutil.atomic_write(target, "one")
    assert target.read_text() == "one"
    assert clash.read_text() == "someone else's", "an existing file is never opened"
    assert sorted(os.listdir(tmp_path)) == [clash.name, "claim.json"]


def test_atomic_write_gives_up_after_bounded_clashes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "claim.json"
    (tmp_path / f".claim.json.{os.getpid()}-00000000.tmp").write_text("")
    monkeypatch.setattr(fsutil.os, "urandom", lambda n: b"\0" * n)
    with pytest.raises(StateError, match="no free temporary file name"):
        fsutil.atomic_write(target, "one")
    assert not target.exists()


def test_atomic_write_failure_removes_the_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "claim.json"
    fsutil.atomic_write(target, "old")

    def broken(fd: int) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(fsutil.os, "fsync", broken)
    with pytest.raises(StateError, match="Input/output error"):
        fsutil.atomic_write(target, "new")
    assert os.listdir(tmp_path) == ["claim.json"]
    assert target.read_text() == "old"


@pytest.mark.skipif(not ROOT, reason="mounting a tmpfs needs root")
def test_atomic_write_on_full_filesystem_keeps_old_file(tmp_path: Path) -> None:
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16k", "tmpfs", str(mnt)], check=True)
    try:
        target = mnt / "claim.json"
        fsutil.atomic_write(target, "old")
        with pytest.raises(StateError, match="No space left on device; free space in"):
            fsutil.atomic_write(target, "x" * (64 * 1024))
        assert target.read_text() == "old"
        assert os.listdir(mnt) == ["claim.json"], "the temporary file must be removed"
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a read-only mount: writes there fail with EROFS."""
    with read_only_tmpfs(tmp_path) as mnt:
        yield mnt


def test_atomic_write_on_a_read_only_mount_says_so(read_only_dir: Path) -> None:
    """It used to advise "free space … or fix its permissions" for every error."""
    with pytest.raises(StateError) as info:
        fsutil.atomic_write(read_only_dir / "numahook.prom", "x")
    assert str(info.value) == (f"writing {read_only_dir}/numahook.prom failed: Read-only file "
                               f"system; {read_only_dir} is on a read-only file system; "
                               "remount it read-write")


def test_atomic_write_takes_the_callers_advice(read_only_dir: Path) -> None:
    with pytest.raises(StateError, match=r"Read-only file system; restart it$"):
        fsutil.atomic_write(read_only_dir / "f", "x", hint={errno.EROFS: "restart it"})


def test_write_knob_replaces_value(tmp_path: Path) -> None:
    f = tmp_path / "nr_hugepages"
    f.write_text("64\n")
    fsutil.write_knob(f, "4")
    assert f.read_text() == "4"


def test_write_knob_missing_file_is_host_error(tmp_path: Path) -> None:
    with pytest.raises(HostError, match=r"writing 4 to .*nope failed: No such file") as info:
        fsutil.write_knob(tmp_path / "nope", "4")
    assert info.value.errno == errno.ENOENT


@pytest.mark.parametrize(
    ("err", "advice"),
    [
        (errno.EPERM, "run numahook as root"),
        (errno.EINVAL, "the kernel rejected the value"),
        (errno.EBUSY, "the resource is in use"),
        (errno.ENOSPC, "the kernel has no room"),
    ],
)
def test_write_knob_errno_hints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, err: int, advice: str
) -> None:
    f = tmp_path / "knob"
    f.write_text("0\n")

    def refuse(fd: int, data: bytes) -> int:
        raise OSError(err, os.strerror(err))

    monkeypatch.setattr(fsutil.os, "write", refuse)
    with pytest.raises(fsutil.KnobWriteError) as info:
        fsutil.write_knob(f, "7")
    msg = str(info.value)
    assert msg.startswith(f"writing 7 to {f} failed: {os.strerror(err)}; {advice}")
    assert info.value.errno == err
    monkeypatch.undo()
    assert f.read_text() in ("", "0\n")  # O_TRUNC on a plain file; a kernel knob keeps its value


def test_write_knob_custom_hint(tmp_path: Path) -> None:
    with pytest.raises(HostError, match=r"; do the other thing$"):
        fsutil.write_knob(tmp_path / "nope", "1", hint="do the other thing")
    with pytest.raises(HostError, match=r"; create it$"):
        fsutil.write_knob(tmp_path / "nope", "1", hint={errno.ENOENT: "create it"})
    with pytest.raises(HostError, match=r"; the kernel does not offer this file"):
        fsutil.write_knob(tmp_path / "nope", "1", hint={errno.EBUSY: "not this one"})


@pytest.mark.skipif(not ROOT or not NR_2M.exists(), reason="needs root and 2 MiB hugepages")
def test_write_knob_real_kernel_rejects_garbage() -> None:
    before = NR_2M.read_text()
    with pytest.raises(fsutil.KnobWriteError, match="Invalid argument") as info:
        fsutil.write_knob(NR_2M, "banana")
    assert info.value.errno == errno.EINVAL
    assert NR_2M.read_text() == before


@pytest.mark.parametrize("text", ["", ".", "./", "/", "//", "///", "//a", "///a/", "a", "a/",
                                  "./a/./b//", "/a//b/.", "/a/../b", "a/..", "..", "/."])
def test_paths_are_spelled_and_walked_up_as_pathlib_does(text: str) -> None:
    """Messages and records name paths as they did when these were pathlib.Path objects."""
    want = PurePosixPath(text)
    assert fsutil.clean(text) == str(want)
    assert fsutil.clean(want) == str(want)
    assert fsutil.parent(fsutil.clean(text)) == str(want.parent)


def test_path_tests_answer_as_pathlib_does(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    (tmp_path / "d").mkdir()
    (tmp_path / "link").symlink_to("d")
    (tmp_path / "loop").symlink_to("loop")
    for name in ("f", "d", "link", "loop", "missing", "f/under-a-file", "nul\0byte"):
        path = tmp_path / name
        assert fsutil.exists(str(path)) == path.exists(), name
        assert fsutil.is_dir(str(path)) == path.is_dir(), name
        assert fsutil.is_file(str(path)) == path.is_file(), name
        assert fsutil.is_link(str(path)) == path.is_symlink(), name


def test_under_joins_and_confines(tmp_path: Path) -> None:
    (tmp_path / "devices" / "system").mkdir(parents=True)
    assert fsutil.under(tmp_path, "devices/system", "node") == str(
        tmp_path / "devices/system/node")
    assert fsutil.under(tmp_path, "./a//b") == str(tmp_path / "a" / "b")
    assert fsutil.under(f"{tmp_path}//./", "a") == str(tmp_path / "a")
    for bad in ("..", "a/../..", "/etc", "a\0b", ""):
        with pytest.raises(InputError):
            fsutil.under(tmp_path, bad)


def test_under_refuses_symlink_escape(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "inside").mkdir()
    (root / "ok").symlink_to("inside")
    (root / "evil").symlink_to(tmp_path)
    assert fsutil.under(root, "ok") == str(root / "ok")
    with pytest.raises(InputError, match="outside"):
        fsutil.under(root, "evil", "x")


def test_under_root_prefix_is_not_enough(tmp_path: Path) -> None:
    root = tmp_path / "run"
    root.mkdir()
    (tmp_path / "run2").mkdir()
    (root / "sneaky").symlink_to(tmp_path / "run2")
    with pytest.raises(InputError, match="outside"):
        fsutil.under(root, "sneaky")
