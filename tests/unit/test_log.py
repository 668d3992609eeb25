"""numahook.log: stdlib logging for the daemon, CLI and tests; syslog(3) for the hook."""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import pytest

from numahook import log as logmod

REPO = Path(__file__).resolve().parents[2]


class FakeSyslog:
    def __init__(self) -> None:
        self.lines: list[tuple[int, str]] = []

    def syslog(self, priority: int, text: str) -> None:
        if "\0" in text:
            raise ValueError("embedded null character")
        text.encode("utf-8")  # what the C module does: lone surrogates raise
        self.lines.append((priority, text))


@pytest.fixture
def syslog(monkeypatch: pytest.MonkeyPatch) -> FakeSyslog:
    fake = FakeSyslog()
    monkeypatch.setattr(logmod, "_syslog", fake)
    monkeypatch.setattr(logmod, "_threshold", logmod.INFO)
    return fake


def caller_line(log: logmod.Logger) -> int:
    log.warning("from %s", "here")
    return sys._getframe().f_lineno - 1


def test_forwards_to_stdlib_logging_as_the_caller(caplog: pytest.LogCaptureFixture) -> None:
    log = logmod.get("numahook.testmod")
    with caplog.at_level(logging.DEBUG, logger="numahook.testmod"):
        line = caller_line(log)
        log.debug("d %d", 1)
        log.info("i")
        log.error("e %s=%s", "k", "v")
        log.critical("c")
    assert [(r.name, r.levelno, r.getMessage()) for r in caplog.records] == [
        ("numahook.testmod", logging.WARNING, "from here"),
        ("numahook.testmod", logging.DEBUG, "d 1"),
        ("numahook.testmod", logging.INFO, "i"),
        ("numahook.testmod", logging.ERROR, "e k=v"),
        ("numahook.testmod", logging.CRITICAL, "c"),
    ]
    first = caplog.records[0]
    assert (first.funcName, first.lineno) == ("caller_line", line)
    assert first.filename == Path(__file__).name


def test_stdlib_levels_and_handlers_still_decide(caplog: pytest.LogCaptureFixture) -> None:
    log = logmod.get("numahook.quiet")
    with caplog.at_level(logging.WARNING, logger="numahook.quiet"):
        log.info("dropped")
        log.warning("kept")
    assert [r.getMessage() for r in caplog.records] == ["kept"]


def test_exception_forwards_the_traceback(caplog: pytest.LogCaptureFixture) -> None:
    log = logmod.get("numahook.testmod")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("failed on %s", "x")
    (record,) = caplog.records
    assert record.levelno == logging.ERROR and record.getMessage() == "failed on x"
    assert record.exc_info is not None and record.exc_info[0] is RuntimeError


def test_syslog_priorities_and_threshold(syslog: FakeSyslog) -> None:
    log = logmod.get("numahook.hook")
    log.debug("not at INFO")
    log.info("domain=%s op=%s admitted", "d", "prepare")
    log.warning("w")
    log.error("e")
    log.critical("c")
    assert syslog.lines == [(6, "domain=d op=prepare admitted"), (4, "w"), (3, "e"), (2, "c")]


def test_syslog_formats_like_logging(syslog: FakeSyslog) -> None:
    log = logmod.get("numahook.hook")
    log.info("%(a)s and %(b)s", {"a": 1, "b": 2})  # logging's lone-mapping rule
    log.info("100% literal")  # no args: the message is not %-formatted
    log.info("%d", "not a number")  # a bad format is logged, not raised
    assert [t for _, t in syslog.lines] == [
        "1 and 2", "100% literal", "%d (unformattable arguments: ('not a number',))"]


def test_syslog_exception_appends_the_traceback(syslog: FakeSyslog) -> None:
    log = logmod.get("numahook.hook")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        log.exception("hook crashed on %s", "d prepare")
    ((priority, text),) = syslog.lines
    assert priority == 3
    head, _, trace = text.partition("\n")
    assert head == "hook crashed on d prepare"
    assert trace.startswith("Traceback (most recent call last):")
    assert trace.endswith("RuntimeError: boom")


def test_syslog_escapes_what_syslog_refuses(syslog: FakeSyslog) -> None:
    logmod.get("numahook.hook").warning("name %s", "a\0b\udcffc")
    assert syslog.lines == [(4, "name a\\x00b\\udcffc")]


def test_to_syslog_never_imports_logging(tmp_path: Path) -> None:
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from numahook import log; "
            "log.to_syslog('numahook-test'); l = log.get('numahook.test'); "
            "l.debug('below the threshold: nothing reaches the host syslog'); "
            "print('logging' in sys.modules)")
    out = subprocess.run([sys.executable, "-I", "-c", code, str(REPO)], capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_syslog_mode_is_per_process() -> None:
    assert logmod._syslog is None, "a test left the process in syslog mode"
