"""Threads numahook makes real-time do not hand SCHED_FIFO to the threads they create."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from numahook.errors import HostError
from numahook.host import procfs

CHILD = r"""
import os, sys
sys.stdin.readline()            # wait until the parent test made us SCHED_FIFO
pid = os.fork()
if pid == 0:
    os._exit(0 if os.sched_getscheduler(0) == os.SCHED_OTHER else 1)
_, status = os.waitpid(pid, 0)
print(os.waitstatus_to_exitcode(status), flush=True)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="setting SCHED_FIFO needs root")
def test_children_of_a_fifo_thread_start_as_sched_other() -> None:
    proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        try:
            procfs.set_fifo(proc.pid, 1)
        except HostError as exc:  # no RT budget where this test runs
            pytest.skip(f"cannot make a test process SCHED_FIFO here: {exc}")
        assert procfs.sched_of(proc.pid) == ("fifo", 1)
        assert os.sched_getscheduler(proc.pid) & procfs._RESET_ON_FORK
        out, _ = proc.communicate("go\n", timeout=30)
        assert out.strip() == "0", "the forked child inherited SCHED_FIFO"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
