"""numahookd's publisher: the fix it gives when its sandbox refuses a write, and how often."""

from __future__ import annotations

import errno
import logging
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from numahook.daemon import publisher
from numahook.daemon.publisher import UNIT_PATHS, Publisher, read_only_hint
from numahook.errors import StateError
from numahook.node import metrics, publish
from tests.support.mounts import read_only_tmpfs
from tests.support.nodes import capability

TEXTFILE = "/var/lib/prometheus/node-exporter"
UNDER_SYSTEMD = {"INVOCATION_ID": "0123456789abcdef0123456789abcdef"}


def test_the_unit_paths_are_the_units_read_write_paths() -> None:
    unit = Path(__file__).resolve().parents[3] / "systemd" / "numahookd.service"
    line = next(t for t in unit.read_text().splitlines() if t.startswith("ReadWritePaths="))
    listed = {p.lstrip("-") for p in line.split("=", 1)[1].split()}
    assert listed - {"/run/numahook"} == UNIT_PATHS
    assert TEXTFILE in UNIT_PATHS


def test_a_unit_directory_created_after_the_start_needs_a_restart() -> None:
    """The operator's case: mkdir after numahookd started, then a reload."""
    hint = read_only_hint(TEXTFILE, frozenset(), UNDER_SYSTEMD)
    assert hint == {errno.EROFS: f"{TEXTFILE} was created after numahookd started; run "
                                 "`systemctl restart numahookd` so its sandbox can write "
                                 "there (a reload cannot)"}


def test_a_directory_the_unit_does_not_list_must_be_added_to_it() -> None:
    hint = read_only_hint("/srv/metrics", frozenset({"/srv/metrics"}), UNDER_SYSTEMD)
    assert hint is not None
    assert "add /srv/metrics there (`systemctl edit numahookd`)" in hint[errno.EROFS]


@pytest.mark.parametrize(("at_start", "environ"), [
    (frozenset({TEXTFILE}), UNDER_SYSTEMD),  # bound writable at start: the mount is read-only
    (frozenset(), {}),  # not under systemd: no sandbox
])
def test_otherwise_the_file_system_is_read_only(at_start: frozenset[str],
                                                environ: dict[str, str]) -> None:
    assert read_only_hint(TEXTFILE, at_start, environ) is None


def test_existing_keeps_the_directories_there_now(tmp_path: Path) -> None:
    assert publisher.existing([str(tmp_path), str(tmp_path / "not-yet")]) == {str(tmp_path)}


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory on a read-only mount: writes there fail with EROFS."""
    with read_only_tmpfs(tmp_path) as mnt:
        yield mnt


def test_the_metrics_write_names_the_restart_not_free_space(tmp_path: Path,
                                                           read_only_dir: Path) -> None:
    """What the issue saw: EROFS reported as "free space … or fix its permissions"."""
    cap = capability(tmp_path)
    hint = read_only_hint(TEXTFILE, frozenset(), UNDER_SYSTEMD)
    with pytest.raises(StateError) as info:
        metrics.write_metrics(cap, read_only_dir, hint=hint)
    assert str(info.value).endswith("Read-only file system; " + hint[errno.EROFS])
    with pytest.raises(StateError) as info:
        publish.write_nfd(cap, read_only_dir, hint=hint)
    assert "free space" not in str(info.value)
    assert "`systemctl restart numahookd`" in str(info.value)


def test_a_lasting_failure_is_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    """numahookd publishes every reconcile pass (5 s); the same failure is said once, and
    its end is said too."""
    caplog.set_level(logging.INFO, logger=publisher.__name__)
    pub = Publisher()

    def fail() -> None:
        raise StateError("writing x failed: Read-only file system; restart")

    try:
        for _ in range(3):
            done = threading.Event()
            pub.submit([("metrics", fail), ("sync", done.set)])
            assert done.wait(10), "the publisher thread did not run the set"
        pub.submit([("metrics", lambda: None)])
    finally:
        assert pub.close()
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["publishing the metrics file failed: writing x failed: Read-only file "
                     "system; restart (said once until it changes)",
                     "publishing the metrics file works again"]
