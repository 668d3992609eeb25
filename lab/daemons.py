"""The daemons the lab runs (virtlogd, libvirtd, numahookd): found, started and stopped by
pid and start time, never by name, so a recycled pid or someone else's daemon is never
signalled.

A daemon the lab starts goes into the record (:mod:`lab.record`) with its start time as
soon as its pid is known; one it finds running is used and left alone at ``down``.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from lab import LOG_DIR, URI, LabError, log, read_value, say
from lab.record import load, locked, new_state, save

DAEMON_WAIT = 30.0
#: Daemons get the environment an init system would give them, not the caller's (whose
#: PATH, PYTHONPATH or virtualenv would leak into libvirtd and from there into the hook).
DAEMON_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


def proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in ticks) of ``pid``, or None when there is no such process."""
    text = read_value(Path(f"/proc/{pid}/stat"))
    if text is None:
        return None
    rest = text.rsplit(")", 1)[-1].split()
    return rest[0], rest[19]


def alive(pid: int, start: str | None = None) -> bool:
    """Is ``pid`` running (not a zombie), and the same process if ``start`` is given?"""
    st = proc_stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    return start is None or st[1] == start


def _comm(pid: int) -> str:
    return read_value(Path(f"/proc/{pid}/comm")) or ""


def pidfile_pid(pidfile: Path, comm: str) -> int | None:
    """The live ``comm`` process named by ``pidfile``, if any."""
    text = read_value(pidfile)
    if not text or not text.isdigit():
        return None
    pid = int(text)
    return pid if alive(pid) and _comm(pid) == comm else None


def find_process(needle: str) -> list[int]:
    """Pids whose command line contains ``needle`` as a word (for reporting only)."""
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit() or int(d.name) == os.getpid():
            continue
        try:
            argv = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(os.path.basename(a.decode(errors="replace")) == needle for a in argv[:2]) and (
            alive(int(d.name))
        ):
            pids.append(int(d.name))
    return pids


def daemon_ours(state: dict[str, Any], name: str) -> int | None:
    """The pid of ``name`` if the lab started it and that very process still runs."""
    rec = state["daemons"].get(name)
    if rec and alive(rec["pid"], rec["start"]):
        return int(rec["pid"])
    return None


def start_pidfile_daemon(state: dict[str, Any], name: str) -> int:
    """Start ``name -d`` (virtlogd, libvirtd) unless one runs; record it when we start it."""
    pidfile = Path(f"/run/{name}.pid")
    pid = daemon_ours(state, name)
    if pid:
        say("%s is running (pid %d, started by the lab)", name, pid)
        return pid
    pid = pidfile_pid(pidfile, name)
    if pid:
        say("%s is running (pid %d, not started by the lab: it will be left running)", name, pid)
        return pid
    binary = shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if binary is None:
        raise LabError(f"{name} is not installed; apt-get install libvirt-daemon-system")
    Path("/run/libvirt").mkdir(parents=True, exist_ok=True)
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOG_DIR / f"{name}.log", "ab") as out:
        proc = subprocess.run(
            [binary, "-d"], stdin=subprocess.DEVNULL, stdout=out, stderr=out, timeout=60,
            check=False, env=DAEMON_ENV,
        )  # fmt: skip
    if proc.returncode != 0:
        raise LabError(f"{name} -d failed with exit code {proc.returncode}; see {LOG_DIR}")
    deadline = time.monotonic() + DAEMON_WAIT
    while (pid := pidfile_pid(pidfile, name)) is None:
        if time.monotonic() > deadline:
            raise LabError(f"{name} wrote no live pid to {pidfile} within {DAEMON_WAIT:.0f} s")
        time.sleep(0.1)
    st = proc_stat(pid)
    state["daemons"][name] = {"pid": pid, "start": st[1] if st else None}
    save(state)
    say("started %s (pid %d)", name, pid)
    return pid


def start_numahookd(state: dict[str, Any]) -> None:
    pid = daemon_ours(state, "numahookd")
    if pid:
        say("numahookd is running (pid %d, started by the lab)", pid)
        return
    others = find_process("numahookd")
    if others:
        say("numahookd is running (pid %s, not started by the lab)", others[0])
        return
    binary = shutil.which("numahookd", path="/usr/local/bin:/usr/bin")
    if binary is None:
        say("numahookd is not installed yet (no numahookd command): the lab runs without it")
        return
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    logfile = LOG_DIR / "numahookd.log"
    offset = logfile.stat().st_size if logfile.exists() else 0
    with open(logfile, "ab") as out:
        proc = subprocess.Popen(
            [binary, "--foreground"],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            env=DAEMON_ENV,
        )
    st = proc_stat(proc.pid)
    state["daemons"]["numahookd"] = {"pid": proc.pid, "start": st[1] if st else None}
    save(state)
    # numahookd logs "ready" once it has recovered, probed and published; or it exits
    deadline = time.monotonic() + DAEMON_WAIT
    while proc.poll() is None and time.monotonic() < deadline:
        with open(logfile, "rb") as f:
            f.seek(offset)
            if b" ready" in f.read():
                break
        time.sleep(0.1)
    code = proc.poll()
    if code is not None:
        del state["daemons"]["numahookd"]
        save(state)
        tail = (read_value(logfile) or "").splitlines()[-3:]
        say("numahookd exited at once with code %s (%s); the lab runs without it", code,
            " / ".join(tail) or f"see {logfile}")  # fmt: skip
        return
    say("started numahookd --foreground (pid %d, log %s)", proc.pid, logfile)


def stop(state: dict[str, Any], name: str, problems: list[str]) -> None:
    """SIGTERM a daemon the lab started, SIGKILL after a bounded wait; what still runs
    goes to ``problems``."""
    rec = state["daemons"].get(name)
    if not rec:
        return
    pid, start = int(rec["pid"]), rec.get("start")
    if not alive(pid, start):
        say("%s (pid %d) had already exited", name, pid)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + DAEMON_WAIT
    while alive(pid, start) and time.monotonic() < deadline:
        time.sleep(0.1)
    if alive(pid, start):
        log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", name, pid, DAEMON_WAIT)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while alive(pid, start) and time.monotonic() < deadline:
            time.sleep(0.05)
    if alive(pid, start):
        problems.append(f"{name} (pid {pid}) is still running")
    else:
        say("stopped %s (pid %d)", name, pid)


def stop_daemon(name: str) -> bool:
    """Stop a daemon the lab started (e.g. numahookd before hook-only tests)."""
    with locked():
        state = load()
        if state is None or daemon_ours(state, name) is None:
            return False
        _stop_and_forget(state, name)
        return True


def _stop_and_forget(state: dict[str, Any], name: str) -> None:
    """Stop a daemon the lab owns and drop it from the record; under the lab lock."""
    problems: list[str] = []
    stop(state, name, problems)
    if problems:
        raise LabError("; ".join(problems))
    del state["daemons"][name]
    save(state)


def restart_daemon(name: str) -> int:
    """Stop and start a daemon the lab owns (libvirtd, virtlogd); return the new pid.

    For tests of what survives a restart (libvirtd's ``reconnect`` hook calls). Only a
    daemon the lab started is restarted, so a host's own libvirtd is never touched.
    """
    with locked():
        state = load() or new_state()
        if daemon_ours(state, name) is None:
            raise LabError(f"{name} was not started by the lab, so the lab will not restart it")
        _stop_and_forget(state, name)
        return start_pidfile_daemon(state, name)


def connect(timeout: float = DAEMON_WAIT) -> Any:
    """A libvirt connection to qemu:///system, waiting (bounded) for libvirtd to answer."""
    import libvirt

    libvirt.registerErrorHandler(lambda _ctx, _err: None, None)
    deadline = time.monotonic() + timeout
    while True:
        try:
            return libvirt.open(URI)
        except libvirt.libvirtError as exc:
            if time.monotonic() > deadline:
                raise LabError(f"libvirtd does not answer on {URI}: {exc}") from None
            time.sleep(0.2)
