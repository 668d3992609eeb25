"""libvirtstatus: status XML of running domains (sample captured from libvirt 9.0 here)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from numahook.errors import InputError
from numahook.host import libvirtstatus
from tests.fixtures.status import REAL_STATUS


def write(root: Path, name: str, text: str) -> Path:
    path = root / f"{name}.xml"
    path.write_text(text)
    return path


def test_parse_real_status_file(tmp_path: Path) -> None:
    write(tmp_path, "nh-status-probe", REAL_STATUS)
    dom = libvirtstatus.status_of("nh-status-probe", str(tmp_path))
    assert dom is not None
    assert dom.name == "nh-status-probe"
    assert dom.uuid == "37458bd7-b570-4007-8934-5a9194048470"
    assert dom.pid == 7475
    assert dom.state == "running"
    assert dom.vcpu_tids == {0: 7482, 1: 7483}
    assert dom.pinned_cpus == frozenset({0, 1})
    assert dom.domain.tag == "domain"
    assert dom.domain.findtext("resource/partition") == "/machine"


def test_pinned_cpus_union(tmp_path: Path) -> None:
    text = REAL_STATUS.replace(
        "<emulatorpin cpuset='0-1'/>", "<emulatorpin cpuset='4'/>"
    ).replace("<iothreadpin iothread='1' cpuset='1'/>", "<iothreadpin iothread='1' cpuset='8-9'/>")
    dom = libvirtstatus.parse_status(text)
    assert dom.pinned_cpus == frozenset({0, 1, 4, 8, 9})


def test_status_without_pid_or_vcpus_yet() -> None:
    text = REAL_STATUS.replace(" pid='7475'", "")
    text = text[: text.index("  <vcpus>")] + text[text.index("</vcpus>") + len("</vcpus>") :]
    dom = libvirtstatus.parse_status(text)
    assert dom.pid is None
    assert dom.vcpu_tids == {}


def test_running_domains_skips_corrupt_and_unreadable(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write(tmp_path, "good", REAL_STATUS)
    other = REAL_STATUS.replace("nh-status-probe</name>", "aaa</name>").replace(
        "37458bd7-b570-4007-8934-5a9194048470", "00000000-0000-0000-0000-000000000001"
    )
    write(tmp_path, "aaa", other)
    write(tmp_path, "torn", REAL_STATUS[: len(REAL_STATUS) // 2])
    write(tmp_path, "evil", '<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/shadow">]><domstatus/>')
    write(tmp_path, "badpin", REAL_STATUS.replace("cpuset='0-1'", "cpuset='1-0'"))
    write(tmp_path, "nodom", "<domstatus state='running'/>")
    (tmp_path / "dir.xml").mkdir()
    (tmp_path / "notes.txt").write_text("ignored")
    doms = libvirtstatus.running_domains(str(tmp_path))
    assert [d.name for d in doms] == ["aaa", "nh-status-probe"]
    warned = " ".join(r.getMessage() for r in caplog.records)
    for name in ("torn", "evil", "badpin", "nodom", "dir"):
        assert f"{name}.xml" in warned


def test_running_domains_without_directory(tmp_path: Path) -> None:
    assert libvirtstatus.running_domains(str(tmp_path / "missing")) == []


def test_status_of_missing_and_bad_names(tmp_path: Path) -> None:
    assert libvirtstatus.status_of("nope", str(tmp_path)) is None
    for bad in ("../etc/passwd", "a/b"):
        with pytest.raises(InputError):
            libvirtstatus.status_of(bad, str(tmp_path))
    write(tmp_path, "torn", "<domstatus")
    with pytest.raises(InputError, match="not well-formed"):
        libvirtstatus.status_of("torn", str(tmp_path))


@pytest.mark.skipif(
    not os.access(libvirtstatus.DEFAULT_ROOT, os.R_OK), reason="no libvirt status directory"
)
def test_running_domains_on_this_host_does_not_fail() -> None:
    for dom in libvirtstatus.running_domains():
        assert dom.uuid and dom.name


def test_an_unchanged_status_file_is_parsed_once(tmp_path: Path) -> None:
    """numahookd lists the running domains several times per pass: parse only what changed."""
    one = tmp_path / "one.xml"
    one.write_text(REAL_STATUS)
    first = libvirtstatus.running_domains(str(tmp_path))
    assert libvirtstatus.running_domains(str(tmp_path))[0] is first[0]
    new = tmp_path / "one.new"  # as libvirt saves: a new file renamed over the old one
    new.write_text(REAL_STATUS.replace("pid='7483'", "pid='7484'"))
    os.replace(new, one)
    again = libvirtstatus.running_domains(str(tmp_path))
    assert again[0] is not first[0] and again[0].vcpu_tids[1] == 7484
    one.unlink()
    assert libvirtstatus.running_domains(str(tmp_path)) == []
    assert not [p for p in libvirtstatus._seen if p.startswith(str(tmp_path))]
