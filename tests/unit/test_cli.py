"""``numahook config check``: the check numahookd.service runs before each reload (issue 25)."""

from __future__ import annotations

from pathlib import Path

import pytest

from numahook import config
from tests.support.cli import CONF, run_cli


@pytest.fixture(autouse=True)
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NUMAHOOK_CONFIG", raising=False)


def test_a_good_file_is_one_ok_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "config", "check", str(CONF)) == (0, f"{CONF}: ok\n", "")


def test_a_bad_file_is_one_line_with_the_file_the_line_and_the_fix(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "numahook.conf"
    bad.write_text(CONF.read_text().replace("throttled = refuse", "throttled = delgate"))
    line = CONF.read_text().splitlines().index("throttled = refuse") + 1
    assert run_cli(capsys, "config", "check", str(bad)) == (
        2, "", f"numahook: {bad}:{line}: [realtime] throttled: 'delgate' is not valid; set it "
        "to refuse or delegate\n")


def test_without_file_it_checks_what_the_hook_reads(capsys: pytest.CaptureFixture[str],
                                                    monkeypatch: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    default = tmp_path / "numahook.conf"
    monkeypatch.setattr(config, "DEFAULT_PATH", str(default))
    assert run_cli(capsys, "config", "check") == (
        0, f"{default}: ok (no file: the defaults apply)\n", "")
    default.write_text("[features]\nNUMA = maybe\n")
    rc, out, err = run_cli(capsys, "config", "check")
    assert (rc, out) == (2, "") and err.startswith(f"numahook: {default}:2: [features] numa")
    monkeypatch.setenv("NUMAHOOK_CONFIG", str(CONF))
    assert run_cli(capsys, "config", "check") == (0, f"{CONF}: ok\n", "")


def test_a_missing_named_file_is_an_error(capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    rc, _, err = run_cli(capsys, "config", "check", str(tmp_path / "none.conf"))
    assert rc == 2 and "no such file; create it" in err

