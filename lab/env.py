"""Bring the lab's host side up and take it down again, undoing exactly what was changed.

Everything the lab changes is written to its record (:mod:`lab.record`,
``/run/numahook-lab/state.json``) before (or right after) it is changed: daemons it
started (:mod:`lab.daemons`), mounts and directories it made, files it replaced, values it
wrote, and a snapshot of the values others may change while the lab is up. :func:`down`
restores from that record only (:mod:`lab.undo`).

Several users can share one lab: ``scripts/lab up`` holds it as ``cli``, each pytest
session as ``pytest:<pid>:<start>``. :func:`release` tears down when the last live holder
lets go; ``scripts/lab down`` tears down whoever holds it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

from lab import REPO, WORK_DIR, LabError, apt, read_value, run, say, write_value
from lab.daemons import (
    alive,
    connect,
    daemon_ours,
    find_process,
    pidfile_pid,
    proc_stat,
    start_numahookd,
    start_pidfile_daemon,
    stop,
)
from lab.record import (
    NODE_ROOT,
    STATE,
    hugepage_files,
    load,
    locked,
    mutate,
    new_state,
    save,
    sysctl_path,
)
from lab.undo import remove_cgroups, remove_domains, restore_files, restore_values

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


def holder_for_this_process() -> str:
    """A holder name for the current process: ``pytest:<pid>:<start>``."""
    st = proc_stat(os.getpid())
    return f"pytest:{os.getpid()}:{st[1] if st else '0'}"


def holder_alive(holder: str) -> bool:
    """Whether a holder still runs: a pytest or bench holder by its pid and start time;
    ``cli`` (``scripts/lab up``) holds until ``down``."""
    parts = holder.split(":")
    if len(parts) == 3 and parts[1].isdigit():
        return alive(int(parts[1]), parts[2])
    return True  # "cli" holds until `down`


def record_domain(name: str) -> None:
    """Remember a domain the lab defined, so that ``down`` removes it whatever happens."""

    def add(state: dict[str, Any]) -> None:
        if name not in state["domains"]:
            state["domains"].append(name)

    with contextlib.suppress(LabError):
        mutate(add)


def forget_domain(name: str) -> None:
    """The lab removed ``name`` itself."""

    def drop(state: dict[str, Any]) -> None:
        if name in state["domains"]:
            state["domains"].remove(name)

    with contextlib.suppress(LabError):
        mutate(drop)


def set_value(path: str | Path, value: str) -> None:
    """Write a sysctl/cgroup/sysfs file, remembering its first original value for ``down``.

    A sysctl may be named as ``kernel.sched_rt_runtime_us``.
    """
    p = Path(path) if str(path).startswith("/") else sysctl_path(str(path))

    def remember(state: dict[str, Any]) -> None:
        if str(p) not in state["written"]:
            old = read_value(p)
            if old is None:
                raise LabError(f"{p} cannot be read, so it would not be restored; not writing")
            state["written"][str(p)] = old

    mutate(remember)
    write_value(p, value)


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

    mutate(remember)
    path.write_text(data)


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
    if read_value(stamp) == digest and Path("/usr/local/bin/numahook").exists():
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
    for line in (read_value(Path("/proc/mounts")) or "").splitlines():
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
        "running" if find_process("numahookd") else "not running",
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
            state = new_state()
            save(state)
        if install:
            _install_numahook(state)
        _mount_hugetlbfs(state)
        _kvm(state)
        hook_changed = _install_hook(state) if install else False
        start_pidfile_daemon(state, "virtlogd")
        was_running = pidfile_pid(Path("/run/libvirtd.pid"), "libvirtd")
        pid = start_pidfile_daemon(state, "libvirtd")
        if hook_changed and was_running:
            # libvirtd was already running: it reads qemu.d only at start or on SIGHUP.
            os.kill(pid, signal.SIGHUP)
            say("sent SIGHUP to libvirtd (pid %d) so that it sees the new hook", pid)
        connect().close()
        if daemon:
            start_numahookd(state)
        _report_pieces()
        if holder not in state["holders"]:
            state["holders"].append(holder)
        save(state)
    if build_probe:
        from lab import probe

        p = probe.build()
        say("guest probe %s: %s + %s", p.key, p.kernel, p.initrd)
    return state


def leftovers() -> list[str]:
    """What of the lab's kind still runs or is reserved (for `down` and `status`)."""
    out = []
    for name in ("qemu-system-x86_64", "numahookd"):
        for pid in find_process(name):
            out.append(f"{name} is running (pid {pid})")
    for f in hugepage_files():
        if (read_value(f) or "0") != "0":
            out.append(f"{f} is {read_value(f)}")
    return out


def down() -> list[str]:
    """Tear the lab down, whoever holds it; returns what could not be undone."""
    problems: list[str] = []
    with locked():
        state = load()
        if state is None:
            say("the lab is not up; nothing to undo")
            return []
        live = [h for h in state["holders"] if h != "cli" and holder_alive(h)]
        if live:
            say("tearing down although %s still hold the lab", ", ".join(live))
        owned = daemon_ours(state, "libvirtd") is not None
        remove_domains(state, problems)
        save(state)
        for name in ("numahookd", "libvirtd", "virtlogd"):
            stop(state, name, problems)
        restore_values(state, problems, owned)
        remove_cgroups(state, problems)
        restore_files(state, problems)
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
        state["holders"] = [h for h in state["holders"] if holder_alive(h)]
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
        pid = pidfile_pid(Path(f"/run/{name}.pid"), name)
        ours = bool(state and daemon_ours(state, name))
        daemons[name] = {"pid": pid, "started_by_lab": ours}
    nh = find_process("numahookd")
    daemons["numahookd"] = {
        "pid": nh[0] if nh else None,
        "started_by_lab": bool(state and daemon_ours(state, "numahookd")),
    }
    out["daemons"] = daemons
    out["hugetlbfs"] = _hugetlbfs_mounted()
    out["hugepages"] = {str(f.relative_to(NODE_ROOT)): read_value(f) for f in hugepage_files()}
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
