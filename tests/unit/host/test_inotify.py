"""inotify through libc, on a real directory: what numahookd's vCPU watch relies on."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from numahook.host import inotify


def test_mkdir_and_a_write_are_events(tmp_path: Path) -> None:
    ino = inotify.Inotify()
    try:
        top = ino.add(str(tmp_path), inotify.IN_CREATE | inotify.IN_ONLYDIR)
        assert ino.read() == []  # non-blocking: nothing queued
        (tmp_path / "vcpu0").mkdir()
        (tmp_path / "plain").write_text("")
        events = ino.read()
        assert (top, "vcpu0") in [(wd, n) for wd, m, n in events if m & inotify.IN_ISDIR]
        assert any(n == "plain" and not m & inotify.IN_ISDIR for _, m, n in events)
        sub = ino.add(str(tmp_path / "vcpu0"), inotify.IN_MODIFY | inotify.IN_ONLYDIR)
        (tmp_path / "vcpu0" / "tasks").write_text("4242\n")
        assert (sub, inotify.IN_MODIFY, "tasks") in ino.read()
        ino.remove(sub)
        assert any(wd == sub and m & inotify.IN_IGNORED for wd, m, _ in ino.read())
    finally:
        ino.close()


def test_watching_what_is_not_there_names_the_path(tmp_path: Path) -> None:
    ino = inotify.Inotify()
    try:
        with pytest.raises(FileNotFoundError, match="gone"):
            ino.add(str(tmp_path / "gone"), inotify.IN_CREATE)
        with pytest.raises(NotADirectoryError):
            (tmp_path / "f").write_text("")
            ino.add(str(tmp_path / "f"), inotify.IN_CREATE | inotify.IN_ONLYDIR)
    finally:
        ino.close()


def test_parse_keeps_whole_events_and_drops_a_torn_tail() -> None:
    one = struct.pack("iIII", 3, inotify.IN_CREATE | inotify.IN_ISDIR, 0, 16) + b"vcpu12".ljust(16,
                                                                                         b"\0")
    two = struct.pack("iIII", 4, inotify.IN_MODIFY, 0, 0)
    assert inotify.parse(one + two) == [(3, inotify.IN_CREATE | inotify.IN_ISDIR, "vcpu12"),
                                        (4, inotify.IN_MODIFY, "")]
    assert inotify.parse(one[:-4]) == []
    assert inotify.parse(one + two[:5]) == [(3, inotify.IN_CREATE | inotify.IN_ISDIR, "vcpu12")]
    assert inotify.parse(os.fsencode("")) == []
