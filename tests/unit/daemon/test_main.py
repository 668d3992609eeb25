"""numahookd's start on a bad numahook.conf: EX_CONFIG, and at err priority in the journal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
# numahookd imports libvirt (python3-libvirt; the Python 3.9 run of scripts/test has none)
pytest.importorskip("libvirt")


def start(conf: Path, stderr: Path, journal: bool) -> tuple[int, str]:
    """numahookd --config CONF with stderr in a file that is, or is not, "the journal":
    systemd sets JOURNAL_STREAM to the device and inode of the stream it connected."""
    with open(stderr, "w") as fh:
        st = os.fstat(fh.fileno())
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        env.pop("JOURNAL_STREAM", None)
        if journal:
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        proc = subprocess.run([sys.executable, "-m", "numahook.daemon.main", "--config",
                               str(conf)], stdout=subprocess.DEVNULL, stderr=fh, env=env,
                              timeout=60, check=False)
    return proc.returncode, stderr.read_text()


@pytest.mark.parametrize("journal", [True, False])
def test_a_bad_file_at_start_exits_ex_config_with_one_err_line(tmp_path: Path,
                                                               journal: bool) -> None:
    """78 is in the unit's RestartPreventExitStatus= (tests/unit/test_unit.py); <3> makes
    journald file the line at err, so that journalctl -p err shows why numahookd is down."""
    conf = tmp_path / "numahook.conf"
    conf.write_text("[realtime]\nthrottled = delgate\n")
    rc, err = start(conf, tmp_path / "stderr", journal)
    assert rc == 78
    assert err.splitlines() == [("<3>" if journal else "") + f"numahookd: {conf}:2: [realtime] "
                                "throttled: 'delgate' is not valid; set it to refuse or delegate"]
