"""Bring the lab's host side up and take it down again, undoing exactly what was changed.

Everything the lab changes is written to ``/run/numahook-lab/state.json`` before (or right
after) it is changed: daemons it started (pid and start time, so a recycled pid is never
signalled), mounts and directories it made, files it replaced, values it wrote, and a
snapshot of the values others may change while the lab is up (the RT sysctls, hugepages
per node, libvirt's /machine cgroups). :func:`down` restores from that record only.

Several users can share one lab: ``scripts/lab up`` holds it as ``cli``, each pytest
session as ``pytest:<pid>:<start>``. :func:`release` tears down when the last live holder
lets go; ``scripts/lab down`` tears down whoever holds it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from lab import DOMAIN_PREFIX, LOG_DIR, REPO, STATE_DIR, URI, WORK_DIR, LabError, apt, log, run, say

STATE = STATE_DIR / "state.json"
LOCK = STATE_DIR / "lock"
PYTHON = "/usr/bin/python3"

#: Debian packages the lab needs (docs/architecture.md, "The lab"; plus what installing
#: numahook and the probe's tools need). numahook's own runtime dependencies come from
#: Debian too, because the checkout is installed with --no-deps.
PACKAGES = [
    "libvirt-daemon-system",
    "libvirt-daemon-driver-qemu",
    "qemu-system-x86",
    "libvirt-clients",
    "python3-libvirt",
    "python3-lxml",
    "python3-pip",
    "python3-setuptools",
    "python3-pytest",
    "python3-daemon",
    "libxml2-utils",
    "libnuma1",
    "virtinst",  # virt-install: the README's way to opt a new domain in (tests/e2e)
]

HOOK_SOURCE = REPO / "libvirt-hooks" / "numahook"
HOOK_DIR = Path("/etc/libvirt/hooks/qemu.d")
HOOK_DEST = HOOK_DIR / "numahook"
HUGETLBFS = {"2048": Path("/dev/hugepages"), "1048576": Path("/dev/hugepages1G")}
SYSCTLS = ("kernel.sched_rt_runtime_us", "kernel.sched_rt_period_us")
CGROUP_ROOT = Path("/sys/fs/cgroup")
#: cgroup v1 files of libvirt's partition that numahook (or a test) may write.
CGROUP_FILES = ("cpu.rt_runtime_us", "cpuset.cpus", "cpuset.mems")
NODE_ROOT = Path("/sys/devices/system/node")
DAEMON_WAIT = 30.0
#: Daemons get the environment an init system would give them, not the caller's (whose
#: PATH, PYTHONPATH or virtualenv would leak into libvirtd and from there into the hook).
DAEMON_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}


# --- small host helpers ----------------------------------------------------------------


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value + "\n")
    except OSError as exc:
        raise LabError(f"cannot write {value!r} to {path}: {exc.strerror}") from None


def _sysctl_path(name: str) -> Path:
    return Path("/proc/sys") / name.replace(".", "/")


def _proc_stat(pid: int) -> tuple[str, str] | None:
    """(state, start time in ticks) of ``pid``, or None when there is no such process."""
    text = _read(Path(f"/proc/{pid}/stat"))
    if text is None:
        return None
    rest = text.rsplit(")", 1)[-1].split()
    return rest[0], rest[19]


def _alive(pid: int, start: str | None = None) -> bool:
    """Is ``pid`` running (not a zombie), and the same process if ``start`` is given?"""
    st = _proc_stat(pid)
    if st is None or st[0] in ("Z", "X"):
        return False
    return start is None or st[1] == start


def _comm(pid: int) -> str:
    return _read(Path(f"/proc/{pid}/comm")) or ""


def _pidfile_pid(pidfile: Path, comm: str) -> int | None:
    """The live ``comm`` process named by ``pidfile``, if any."""
    text = _read(pidfile)
    if not text or not text.isdigit():
        return None
    pid = int(text)
    return pid if _alive(pid) and _comm(pid) == comm else None


def _find_process(needle: str) -> list[int]:
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
            _alive(int(d.name))
        ):
            pids.append(int(d.name))
    return pids


def holder_for_this_process() -> str:
    """A holder name for the current process: ``pytest:<pid>:<start>``."""
    st = _proc_stat(os.getpid())
    return f"pytest:{os.getpid()}:{st[1] if st else '0'}"


def _holder_alive(holder: str) -> bool:
    parts = holder.split(":")
    if len(parts) == 3 and parts[1].isdigit():
        return _alive(int(parts[1]), parts[2])
    return True  # "cli" holds until `down`


# --- the record --------------------------------------------------------------------------


@contextlib.contextmanager
def locked(timeout: float = 300.0) -> Iterator[None]:
    """Serialise lab changes between processes (bounded wait)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "a+") as fh:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise
                if time.monotonic() > deadline:
                    raise LabError(
                        f"another lab command has held {LOCK} for {timeout:.0f} s"
                    ) from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def load() -> dict[str, Any] | None:
    """The record, or None when the lab is not up."""
    try:
        return json.loads(STATE.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise LabError(f"{STATE} is unreadable ({exc}); remove it after checking by hand") from None


def save(state: dict[str, Any]) -> None:
    """Write the record atomically."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = STATE.with_name(STATE.name + ".tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    tmp.replace(STATE)


def _hugepage_files() -> list[Path]:
    return sorted(NODE_ROOT.glob("node[0-9]*/hugepages/hugepages-*kB/nr_hugepages"))


def _machine_cgroups() -> list[Path]:
    """libvirt's default partition in every cgroup v1 controller (and v2, if mounted)."""
    out = []
    for ctl in sorted(CGROUP_ROOT.iterdir()) if CGROUP_ROOT.is_dir() else []:
        if ctl.is_dir() and not ctl.is_symlink():
            out.append(ctl / "machine")
    if (CGROUP_ROOT / "cgroup.controllers").exists():
        out.append(CGROUP_ROOT / "machine.slice")
    return out


def _snapshot() -> dict[str, Any]:
    """Values that the lab, numahook or a test may change while the lab is up."""
    values: dict[str, str] = {}
    for name in SYSCTLS:
        v = _read(_sysctl_path(name))
        if v is not None:
            values[str(_sysctl_path(name))] = v
    for f in _hugepage_files():
        values[str(f)] = _read(f) or "0"
    absent = []
    for cg in _machine_cgroups():
        if cg.is_dir():
            for name in CGROUP_FILES:
                v = _read(cg / name)
                if v is not None:
                    values[str(cg / name)] = v
        else:
            absent.append(str(cg))
    return {"values": values, "cgroups_absent": absent}


def _new_state() -> dict[str, Any]:
    return {
        "holders": [],
        "snapshot": _snapshot(),
        "daemons": {},
        "mounts": [],
        "dirs": [],
        "files": {},
        "modes": {},
        "written": {},
        "domains": [],
        "created": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _mutate(fn: Any) -> Any:
    """Run ``fn(state)`` under the lock and save; LabError when the lab is not up."""
    with locked():
        state = load()
        if state is None:
            raise LabError("the lab is not up: run scripts/lab up")
        out = fn(state)
        save(state)
        return out


def record_domain(name: str) -> None:
    """Remember a domain the lab defined, so that ``down`` removes it whatever happens."""

    def add(state: dict[str, Any]) -> None:
        if name not in state["domains"]:
            state["domains"].append(name)

    with contextlib.suppress(LabError):
        _mutate(add)


def forget_domain(name: str) -> None:
    """The lab removed ``name`` itself."""

    def drop(state: dict[str, Any]) -> None:
        if name in state["domains"]:
            state["domains"].remove(name)

    with contextlib.suppress(LabError):
        _mutate(drop)


def set_value(path: str | Path, value: str) -> None:
    """Write a sysctl/cgroup/sysfs file, remembering its first original value for ``down``.

    A sysctl may be named as ``kernel.sched_rt_runtime_us``.
    """
    p = Path(path) if str(path).startswith("/") else _sysctl_path(str(path))

    def remember(state: dict[str, Any]) -> None:
        if str(p) not in state["written"]:
            old = _read(p)
            if old is None:
                raise LabError(f"{p} cannot be read, so it would not be restored; not writing")
            state["written"][str(p)] = old

    _mutate(remember)
    _write(p, value)


def write_file(path: Path, data: str) -> None:
    """Write a file under /etc, remembering what was there for ``down``.

    A test killed before it puts the file back leaves it to the lab's teardown, so no
    config of ours outlives the lab (a package install refuses an unowned conffile).
    """

    def remember(state: dict[str, Any]) -> None:
        if not path.parent.exists():
            path.parent.mkdir(parents=True)
            state["dirs"].append(str(path.parent))
        if str(path) not in state["files"]:
            state["files"][str(path)] = path.read_bytes().hex() if path.exists() else None

    _mutate(remember)
    path.write_text(data)


# --- steps of `up` ---------------------------------------------------------------------


def _install_numahook(state: dict[str, Any]) -> None:
    """pip-install the checkout (skipped when the sources did not change since last time)."""
    h = hashlib.sha256()
    files = [REPO / "pyproject.toml", *sorted((REPO / "numahook").rglob("*.py"))]
    for extra in ("setup.cfg", "setup.py", "README.md"):
        if (REPO / extra).exists():
            files.append(REPO / extra)
    for f in files:
        h.update(str(f.relative_to(REPO)).encode() + b"\0" + f.read_bytes())
    digest = h.hexdigest()
    stamp = WORK_DIR / "numahook-installed.sha256"
    if _read(stamp) == digest and Path("/usr/local/bin/numahook").exists():
        say("numahook from this checkout is already installed")
        return
    say("installing numahook from %s (pip --no-deps)", REPO)
    with tempfile.TemporaryDirectory(prefix="numahook-src-") as tmp:
        # Build from a copy: pip and setuptools write build/ and *.egg-info into the source
        # tree, and others are working in this checkout.
        src = Path(tmp) / "src"
        shutil.copytree(
            REPO,
            src,
            ignore=shutil.ignore_patterns(
                ".git", "build", "dist", "*.egg-info", "__pycache__", ".venv", ".ruff_cache",
                ".pytest_cache",
            ),
        )  # fmt: skip
        if not (src / "README.md").exists():
            say("README.md is not in the checkout yet; installing with an empty one")
            (src / "README.md").write_text("numahook\n")
        run(
            [PYTHON, "-m", "pip", "install", "--break-system-packages", "--no-deps",
             "--no-build-isolation", "--no-input", "--disable-pip-version-check", "-q", str(src)],
            timeout=600,
        )  # fmt: skip
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    stamp.write_text(digest + "\n")
    state["numahook_installed"] = digest


def _hugetlbfs_mounted() -> dict[str, str]:
    """pagesize KiB -> mount point of every hugetlbfs mount."""
    out: dict[str, str] = {}
    for line in (_read(Path("/proc/mounts")) or "").splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "hugetlbfs":
            size = "2048"
            for opt in parts[3].split(","):
                if opt.startswith("pagesize="):
                    v = opt.split("=", 1)[1].upper()
                    size = {"2M": "2048", "1G": "1048576", "1024M": "1048576"}.get(v, v)
            out.setdefault(size, parts[1])
    return out


def _mount_hugetlbfs(state: dict[str, Any]) -> None:
    mounted = _hugetlbfs_mounted()
    for size, where in HUGETLBFS.items():
        if not Path(f"/sys/kernel/mm/hugepages/hugepages-{size}kB").is_dir():
            say("this host has no %s KiB hugepages; no hugetlbfs for them", size)
            continue
        if size in mounted:
            say("hugetlbfs for %s KiB pages is at %s", size, mounted[size])
            continue
        if not where.exists():
            where.mkdir(parents=True)
            state["dirs"].append(str(where))
        opts = [] if size == "2048" else ["-o", "pagesize=1G"]
        run(["mount", "-t", "hugetlbfs", *opts, "hugetlbfs", str(where)])
        state["mounts"].append(str(where))
        save(state)
        say("mounted hugetlbfs (%s KiB pages) at %s; reserved no pages", size, where)


def _kvm(state: dict[str, Any]) -> None:
    kvm = Path("/dev/kvm")
    if not kvm.exists():
        say("/dev/kvm is missing: type='kvm' domains cannot start here (TCG still works)")
        return
    mode = kvm.stat().st_mode & 0o777
    if mode & 0o006 == 0o006:
        return
    state["modes"].setdefault(str(kvm), mode)
    save(state)
    kvm.chmod(0o666)
    say("/dev/kvm was mode %o; made it 0666 for QEMU's unprivileged user (restored by down)", mode)


def _install_hook(state: dict[str, Any]) -> bool:
    """Copy the hook front into qemu.d; True when the installed file changed."""
    if not HOOK_SOURCE.exists():
        say("%s is not in this checkout yet: no numahook hook installed", HOOK_SOURCE)
        return False
    new = HOOK_SOURCE.read_bytes()
    if HOOK_DEST.exists() and HOOK_DEST.read_bytes() == new:
        say("the hook at %s is current", HOOK_DEST)
        return False
    if not HOOK_DIR.exists():
        HOOK_DIR.mkdir(parents=True)
        state["dirs"].append(str(HOOK_DIR))
    if str(HOOK_DEST) not in state["files"]:
        old = HOOK_DEST.read_bytes().hex() if HOOK_DEST.exists() else None
        state["files"][str(HOOK_DEST)] = old
        save(state)
    tmp = HOOK_DEST.with_name(".numahook.tmp")
    tmp.write_bytes(new)
    tmp.chmod(0o755)
    tmp.replace(HOOK_DEST)
    say("installed the hook at %s", HOOK_DEST)
    return True


def _daemon_ours(state: dict[str, Any], name: str) -> int | None:
    rec = state["daemons"].get(name)
    if rec and _alive(rec["pid"], rec["start"]):
        return int(rec["pid"])
    return None


def _start_pidfile_daemon(state: dict[str, Any], name: str) -> int:
    """Start ``name -d`` (virtlogd, libvirtd) unless one runs; record it when we start it."""
    pidfile = Path(f"/run/{name}.pid")
    pid = _daemon_ours(state, name)
    if pid:
        say("%s is running (pid %d, started by the lab)", name, pid)
        return pid
    pid = _pidfile_pid(pidfile, name)
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
    while (pid := _pidfile_pid(pidfile, name)) is None:
        if time.monotonic() > deadline:
            raise LabError(f"{name} wrote no live pid to {pidfile} within {DAEMON_WAIT:.0f} s")
        time.sleep(0.1)
    st = _proc_stat(pid)
    state["daemons"][name] = {"pid": pid, "start": st[1] if st else None}
    save(state)
    say("started %s (pid %d)", name, pid)
    return pid


def stop_daemon(name: str) -> bool:
    """Stop a daemon the lab started (e.g. numahookd before hook-only tests)."""
    with locked():
        state = load()
        if state is None or _daemon_ours(state, name) is None:
            return False
        problems: list[str] = []
        _stop(state, name, problems)
        if problems:
            raise LabError("; ".join(problems))
        del state["daemons"][name]
        save(state)
        return True


def restart_daemon(name: str) -> int:
    """Stop and start a daemon the lab owns (libvirtd, virtlogd); return the new pid.

    For tests of what survives a restart (libvirtd's ``reconnect`` hook calls). Only a
    daemon the lab started is restarted, so a host's own libvirtd is never touched.
    """
    with locked():
        state = load() or _new_state()
        if _daemon_ours(state, name) is None:
            raise LabError(f"{name} was not started by the lab, so the lab will not restart it")
        problems: list[str] = []
        _stop(state, name, problems)
        if problems:
            raise LabError("; ".join(problems))
        del state["daemons"][name]
        save(state)
        return _start_pidfile_daemon(state, name)


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


def _start_numahookd(state: dict[str, Any]) -> None:
    pid = _daemon_ours(state, "numahookd")
    if pid:
        say("numahookd is running (pid %d, started by the lab)", pid)
        return
    others = _find_process("numahookd")
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
    st = _proc_stat(proc.pid)
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
        tail = (_read(logfile) or "").splitlines()[-3:]
        say("numahookd exited at once with code %s (%s); the lab runs without it", code,
            " / ".join(tail) or f"see {logfile}")  # fmt: skip
        return
    say("started numahookd --foreground (pid %d, log %s)", proc.pid, logfile)


def hook_usable() -> str | None:
    """None when the installed hook can run; otherwise why it cannot."""
    if not HOOK_DEST.exists():
        return f"no hook is installed at {HOOK_DEST}"
    proc = run([PYTHON, "-I", "-c", "import numahook.hook.main"], check=False, timeout=60)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return f"the installed numahook cannot load its hook ({last})"
    return None


def _report_pieces() -> None:
    """Say which parts of numahook this lab runs with (others may still be in the works)."""
    cli = shutil.which("numahook", path="/usr/local/bin:/usr/bin") is not None
    hook = hook_usable()
    say(
        "numahook pieces: CLI %s, hook %s, numahookd %s",
        "installed" if cli else "MISSING",
        "ready" if hook is None else f"NOT READY ({hook})",
        "running" if _find_process("numahookd") else "not running",
    )


def up(
    holder: str = "cli", *, build_probe: bool = True, daemon: bool = True, install: bool = True
) -> dict[str, Any]:
    """Bring the lab up (idempotent) and register ``holder``; returns the record.

    ``daemon=False`` leaves numahookd out: tests of the hook alone must not have a daemon
    re-rendering definitions under them, and daemon tests start their own.
    ``install=False`` neither pip-installs the checkout nor copies its hook: the installed
    .deb's numahook and hook are tested (scripts/package-test).
    """
    if os.geteuid() != 0:
        raise LabError("the lab needs root (it installs packages and starts libvirtd)")
    apt.install(PACKAGES)
    with locked():
        state = load()
        if state is None:
            state = _new_state()
            save(state)
        if install:
            _install_numahook(state)
        _mount_hugetlbfs(state)
        _kvm(state)
        hook_changed = _install_hook(state) if install else False
        _start_pidfile_daemon(state, "virtlogd")
        was_running = _pidfile_pid(Path("/run/libvirtd.pid"), "libvirtd")
        pid = _start_pidfile_daemon(state, "libvirtd")
        if hook_changed and was_running:
            # libvirtd was already running: it reads qemu.d only at start or on SIGHUP.
            os.kill(pid, signal.SIGHUP)
            say("sent SIGHUP to libvirtd (pid %d) so that it sees the new hook", pid)
        connect().close()
        if daemon:
            _start_numahookd(state)
        _report_pieces()
        if holder not in state["holders"]:
            state["holders"].append(holder)
        save(state)
    if build_probe:
        from lab import probe

        p = probe.build()
        say("guest probe %s: %s + %s", p.key, p.kernel, p.initrd)
    return state


# --- teardown ----------------------------------------------------------------------------


def _stop(state: dict[str, Any], name: str, problems: list[str]) -> None:
    rec = state["daemons"].get(name)
    if not rec:
        return
    pid, start = int(rec["pid"]), rec.get("start")
    if not _alive(pid, start):
        say("%s (pid %d) had already exited", name, pid)
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + DAEMON_WAIT
    while _alive(pid, start) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid, start):
        log.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", name, pid, DAEMON_WAIT)
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while _alive(pid, start) and time.monotonic() < deadline:
            time.sleep(0.05)
    if _alive(pid, start):
        problems.append(f"{name} (pid {pid}) is still running")
    else:
        say("stopped %s (pid %d)", name, pid)


def _remove_domains(state: dict[str, Any], problems: list[str]) -> None:
    if _pidfile_pid(Path("/run/libvirtd.pid"), "libvirtd") is None:
        if state["domains"]:
            problems.append(
                f"libvirtd is not running, so the domains {state['domains']} cannot be removed"
            )
        return
    import libvirt

    conn = connect()
    try:
        ours_libvirtd = _daemon_ours(state, "libvirtd") is not None
        for dom in conn.listAllDomains():
            name = dom.name()
            lab_domain = name in state["domains"] or name.startswith(DOMAIN_PREFIX)
            if not lab_domain and not (ours_libvirtd and dom.isActive()):
                continue
            try:
                if dom.isActive():
                    dom.destroy()
                    say("destroyed domain %s", name)
                if lab_domain and dom.isPersistent():
                    dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
                    say("undefined domain %s", name)
            except libvirt.libvirtError as exc:
                problems.append(f"domain {name}: {exc}")
        state["domains"] = []
        if ours_libvirtd:
            # A network started by our libvirtd leaves a dnsmasq behind when libvirtd stops.
            for net in conn.listAllNetworks(libvirt.VIR_CONNECT_LIST_NETWORKS_ACTIVE):
                try:
                    net.destroy()
                    say("stopped network %s (started by the lab's libvirtd)", net.name())
                except libvirt.libvirtError as exc:
                    problems.append(f"network {net.name()}: {exc}")
    finally:
        conn.close()


def _restore_values(state: dict[str, Any], problems: list[str], owned: bool) -> None:
    """Write back what the lab (or a test through set_value) wrote, newest first.

    When the lab started libvirtd (``owned``), everything that happened on the host went
    through the lab's daemons, so values of the snapshot that changed meanwhile (numahook's
    hugepage reservations or RT budgets) are restored too. Under someone else's libvirtd
    they are only reported: their domains may still need them.
    """
    todo = list(reversed(list(state["written"].items())))
    snap = state["snapshot"]["values"] if owned else {}
    for path, old in state["snapshot"]["values"].items():
        now = _read(Path(path))
        if not owned and now is not None and now != old and path not in state["written"]:
            say("note: %s is %s (was %s); libvirtd is not the lab's, so it is left", path, now,
                old)  # fmt: skip
    # hugepages last: freeing them works once nothing maps them; cgroup files before sysctls
    # (a child's RT budget must shrink before the parent's).
    order = sorted(snap.items(), key=lambda kv: (("nr_hugepages" in kv[0]), "/proc/" in kv[0]))
    todo += [(p, v) for p, v in order if p not in state["written"]]
    for path, old in todo:
        p = Path(path)
        now = _read(p)
        if now is None or now == old:
            continue
        try:
            _write(p, old)
        except LabError as exc:
            problems.append(str(exc))
            continue
        back = _read(p)
        if back != old:
            problems.append(f"{p} is {back} after writing {old} back")
        else:
            say("restored %s: %s -> %s", p, now, old)


def _rmdir_cgroup(path: Path, problems: list[str]) -> None:
    if not path.is_dir():
        return
    for child in sorted((c for c in path.iterdir() if c.is_dir()), reverse=True):
        _rmdir_cgroup(child, problems)
    try:
        path.rmdir()
    except OSError as exc:
        problems.append(f"cannot remove cgroup {path}: {exc.strerror}")


def _remove_cgroups(state: dict[str, Any], problems: list[str]) -> None:
    """Remove the /machine cgroups that appeared while the lab was up (libvirtd made them)."""
    if _pidfile_pid(Path("/run/libvirtd.pid"), "libvirtd") is not None:
        return  # someone else's libvirtd owns them now
    removed = []
    for cg in state["snapshot"].get("cgroups_absent", []):
        if Path(cg).is_dir():
            _rmdir_cgroup(Path(cg), problems)
            if not Path(cg).exists():
                removed.append(cg)
    if removed:
        say("removed the cgroups libvirtd created: %s", ", ".join(removed))


def _restore_files(state: dict[str, Any], problems: list[str]) -> None:
    for path, old in state["files"].items():
        p = Path(path)
        try:
            if old is None:
                p.unlink(missing_ok=True)
                say("removed %s", p)
            else:
                p.write_bytes(bytes.fromhex(old))
                say("restored %s", p)
        except OSError as exc:
            problems.append(f"cannot restore {p}: {exc.strerror}")
    for path, mode in state["modes"].items():
        try:
            os.chmod(path, int(mode))
            say("restored mode %o of %s", int(mode), path)
        except OSError as exc:
            problems.append(f"cannot restore the mode of {path}: {exc.strerror}")
    for where in reversed(state["mounts"]):
        proc = run(["umount", where], check=False)
        if proc.returncode != 0:
            problems.append(f"cannot unmount {where}: {proc.stderr.strip()}")
        else:
            say("unmounted %s", where)
    for d in reversed(state["dirs"]):
        try:
            Path(d).rmdir()
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(f"cannot remove {d}: {exc.strerror}")


def leftovers() -> list[str]:
    """What of the lab's kind still runs or is reserved (for `down` and `status`)."""
    out = []
    for name in ("qemu-system-x86_64", "numahookd"):
        for pid in _find_process(name):
            out.append(f"{name} is running (pid {pid})")
    for f in _hugepage_files():
        if (_read(f) or "0") != "0":
            out.append(f"{f} is {_read(f)}")
    return out


def down() -> list[str]:
    """Tear the lab down, whoever holds it; returns what could not be undone."""
    problems: list[str] = []
    with locked():
        state = load()
        if state is None:
            say("the lab is not up; nothing to undo")
            return []
        live = [h for h in state["holders"] if h != "cli" and _holder_alive(h)]
        if live:
            say("tearing down although %s still hold the lab", ", ".join(live))
        owned = _daemon_ours(state, "libvirtd") is not None
        _remove_domains(state, problems)
        save(state)
        for name in ("numahookd", "libvirtd", "virtlogd"):
            _stop(state, name, problems)
        _restore_values(state, problems, owned)
        _remove_cgroups(state, problems)
        _restore_files(state, problems)
        if problems:
            state["problems"] = problems
            save(state)
        else:
            STATE.unlink(missing_ok=True)
    for what in leftovers():
        say("note: %s", what)
    return problems


def release(holder: str) -> list[str]:
    """``holder`` is done: tear down if no other live holder remains."""
    with locked():
        state = load()
        if state is None:
            return []
        if holder in state["holders"]:
            state["holders"].remove(holder)
        state["holders"] = [h for h in state["holders"] if _holder_alive(h)]
        save(state)
        if state["holders"]:
            say("the lab stays up for %s", ", ".join(state["holders"]))
            return []
    return down()


def status() -> dict[str, Any]:
    """What is up, whose it is, and what is reserved."""
    state = load()
    out: dict[str, Any] = {"up": state is not None}
    daemons = {}
    for name in ("virtlogd", "libvirtd"):
        pid = _pidfile_pid(Path(f"/run/{name}.pid"), name)
        ours = bool(state and _daemon_ours(state, name))
        daemons[name] = {"pid": pid, "started_by_lab": ours}
    nh = _find_process("numahookd")
    daemons["numahookd"] = {
        "pid": nh[0] if nh else None,
        "started_by_lab": bool(state and _daemon_ours(state, "numahookd")),
    }
    out["daemons"] = daemons
    out["hugetlbfs"] = _hugetlbfs_mounted()
    out["hugepages"] = {str(f.relative_to(NODE_ROOT)): _read(f) for f in _hugepage_files()}
    out["hook"] = str(HOOK_DEST) if HOOK_DEST.exists() else None
    kvm = Path("/dev/kvm")
    out["kvm_mode"] = oct(kvm.stat().st_mode & 0o777) if kvm.exists() else None
    if state:
        out["holders"] = state["holders"]
        out["domains"] = state["domains"]
        out["changed"] = {
            "mounts": state["mounts"],
            "files": list(state["files"]),
            "modes": state["modes"],
            "written": state["written"],
        }
    return out
