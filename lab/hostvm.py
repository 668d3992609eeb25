"""The host VM lab: a multi-node Debian 12 host under systemd, in a TCG VM on this machine.

``scripts/lab host up|exec|status|down``. The VM runs on a throw-away qcow2 overlay of the
image (:mod:`lab.hostimage`), so every ``up`` starts from the same fresh host, and gets the
checkout's .deb installed with apt. ``exec`` is ssh to the VM's forwarded port: stdin,
stdout and stderr pass through and its exit status is the command's (255: ssh itself
failed). QEMU's user network is ``restrict=on``: the VM reaches nothing outside it.

State lives in ``<cache>/host/run/`` (vm.json, the overlay, the QMP socket, the console);
``down`` kills the QEMU whose pid and start time it recorded, and removes that directory.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from lab import REPO, LabError, hostimage, run, say
from lab.hostshape import SHAPES, Shape

QEMU = "qemu-system-x86_64"
#: Bounds of every wait, in seconds (TCG on two host cores is slow, and CI shares them).
BOOT_TIMEOUT = 420.0
SYSTEMD_TIMEOUT = 240.0
INSTALL_TIMEOUT = 300.0
STOP_TIMEOUT = 30.0
SSH_CONNECT = 5


def run_dir() -> Path:
    return hostimage.host_dir() / "run"


def _state_file() -> Path:
    return run_dir() / "vm.json"


def load() -> dict[str, Any] | None:
    try:
        data = json.loads(_state_file().read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _proc_start(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(state: dict[str, Any]) -> bool:
    pid = int(state.get("pid") or 0)
    return bool(pid) and _proc_start(pid) == state.get("start")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ssh_argv(state: dict[str, Any]) -> list[str]:
    """ssh to the VM as root, its host key pinned to the image's."""
    return ["ssh", "-q", "-T", "-i", state["key"], "-p", str(state["port"]),
            "-o", "BatchMode=yes", "-o", f"ConnectTimeout={SSH_CONNECT}",
            "-o", "HostKeyAlias=numahook-hostlab",
            "-o", f"UserKnownHostsFile={state['known_hosts']}",
            "-o", "StrictHostKeyChecking=yes", "-o", "ServerAliveInterval=15",
            "-o", "ServerAliveCountMax=8", "root@127.0.0.1"]  # fmt: skip


def remote(state: dict[str, Any], command: str, *, timeout: float, stdin: bytes | None = None,
           check: bool = True) -> subprocess.CompletedProcess[bytes]:
    """Run a shell command line in the VM, bounded; LabError with its stderr on failure."""
    try:
        proc = subprocess.run([*ssh_argv(state), "--", command], input=stdin, timeout=timeout,
                              capture_output=True, check=False)
    except subprocess.TimeoutExpired:
        raise LabError(f"host lab: `{command}` did not finish within {timeout:.0f} s") from None
    if check and proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines()[-5:]
        raise LabError(f"host lab: `{command}` exited {proc.returncode}: " + " / ".join(err))
    return proc


def _ssh_ok(state: dict[str, Any]) -> bool:
    if not _alive(state):
        raise LabError(f"host lab: QEMU exited during boot; the console ends with:\n"
                       f"{console_tail()}")
    try:
        return remote(state, "true", timeout=SSH_CONNECT + 10, check=False).returncode == 0
    except LabError:
        return False  # sshd is not up yet, or the guest is too busy booting to answer


def console_tail(lines: int = 15) -> str:
    try:
        text = (run_dir() / "console.log").read_text(errors="replace")
    except OSError:
        return "(no console log)"
    return "\n".join(text.strip().splitlines()[-lines:]) or "(empty console)"


def _cpu(shape: Shape) -> str:
    """``-cpu max`` (pdpe1gb: 1 GiB pages); Intel's vendor string for SMT shapes, since
    TCG's max CPU is AMD-like without topoext, where the guest kernel finds no thread
    siblings; with GenuineIntel it reads them from CPUID leaf 0xB."""
    return "max,vendor=GenuineIntel" if shape.threads > 1 else "max"


def _qemu_argv(img: hostimage.Image, shape: Shape, port: int, rd: Path) -> list[str]:
    return [QEMU, "-name", "numahook-hostlab", "-M", "q35", "-accel", "tcg,thread=multi",
            "-cpu", _cpu(shape), "-m", f"{shape.mib}M", *shape.qemu_args(),
            "-kernel", str(img.kernel), "-initrd", str(img.initrd),
            "-append", f"root=/dev/vda rw console=ttyS0 systemd.show_status=0 {shape.cmdline}"
                       .strip(),
            "-drive", f"file={rd / 'overlay.qcow2'},if=none,id=disk0,format=qcow2,cache=unsafe",
            "-netdev", f"user,id=n0,restrict=on,hostfwd=tcp:127.0.0.1:{port}-:22",
            # on pcie.0 by name, in if=virtio's order (its disk came after -device's)
            "-device", "virtio-net-pci,netdev=n0,bus=pcie.0",
            "-device", "virtio-blk-pci,drive=disk0,bus=pcie.0", "-display", "none",
            "-serial", f"file:{rd / 'console.log'}",
            "-qmp", f"unix:{rd / 'qmp.sock'},server=on,wait=off",
            "-pidfile", str(rd / "qemu.pid"), "-daemonize", *shape.late_devices]  # fmt: skip


def _wait(what: str, timeout: float, probe: Any) -> float:
    t0 = time.monotonic()
    while not probe():
        if time.monotonic() - t0 > timeout:
            raise LabError(f"host lab: {what} not within {timeout:.0f} s; the console ends "
                           f"with:\n{console_tail()}")
        time.sleep(1.0)
    return time.monotonic() - t0


def build_deb() -> Path:
    """The checkout's .deb, built by scripts/build-deb (its last stdout line is the path)."""
    proc = run([str(REPO / "scripts" / "build-deb"), "--nocheck"], timeout=900)
    path = Path(proc.stdout.strip().splitlines()[-1])
    if not path.is_file():
        raise LabError(f"scripts/build-deb printed no .deb path (got {path})")
    return path


def install_deb(state: dict[str, Any], deb: Path) -> float:
    """Copy a .deb into the VM and install it with apt, as an operator would."""
    t0 = time.monotonic()
    target = f"/root/{deb.name}"
    remote(state, f"cat > {shlex.quote(target)}", stdin=deb.read_bytes(), timeout=60)
    remote(state, f"DEBIAN_FRONTEND=noninteractive apt-get install -y -q "
                  f"{shlex.quote(target)}", timeout=INSTALL_TIMEOUT)  # fmt: skip
    return time.monotonic() - t0


def up(shape_name: str = "default", deb: Path | None = None) -> dict[str, Any]:
    """Boot the VM (building the image once) and install the .deb; idempotent per shape."""
    if shape_name not in SHAPES:
        raise LabError(f"unknown host lab shape {shape_name!r}: one of {', '.join(SHAPES)}")
    state = load()
    if state and _alive(state):
        if state["shape"] == shape_name:
            say("host lab: the VM (%s) already runs, pid %s", shape_name, state["pid"])
            return state
        raise LabError(f"host lab: a VM of shape {state['shape']} runs; "
                       "`scripts/lab host down` first")
    down(quiet=True)
    if shutil.which(QEMU) is None:
        raise LabError(f"{QEMU} is missing: apt-get install qemu-system-x86")
    shape = SHAPES[shape_name]
    times: dict[str, float] = {}
    t0 = time.monotonic()
    img = hostimage.build()
    hostimage.prune(img.directory.name)
    times["image"] = time.monotonic() - t0
    t = time.monotonic()
    deb = deb or build_deb()
    times["deb"] = time.monotonic() - t
    rd = run_dir()
    rd.mkdir(parents=True, exist_ok=True)
    run(["qemu-img", "create", "-q", "-f", "qcow2", "-F", "raw", "-b", str(img.disk),
         str(rd / "overlay.qcow2")])
    (rd / "known_hosts").write_text(f"numahook-hostlab {img.known_hosts_key}\n")
    port = _free_port()
    t = time.monotonic()
    run(_qemu_argv(img, shape, port, rd), timeout=60)
    pid = int((rd / "qemu.pid").read_text().strip())
    state = {"pid": pid, "start": _proc_start(pid), "shape": shape_name, "port": port,
             "key": str(img.key), "known_hosts": str(rd / "known_hosts"),
             "qmp": str(rd / "qmp.sock"), "console": str(rd / "console.log"),
             "image": img.directory.name, "times": times}
    _state_file().write_text(json.dumps(state, indent=2) + "\n")
    try:
        times["ssh"] = _wait("ssh answering", BOOT_TIMEOUT, lambda: _ssh_ok(state))
        t = time.monotonic()
        out = remote(state, f"timeout {int(SYSTEMD_TIMEOUT)} systemctl is-system-running --wait",
                     timeout=SYSTEMD_TIMEOUT + 10, check=False)
        verdict = out.stdout.decode().strip()
        if verdict != "running":
            failed = remote(state, "systemctl --failed --no-legend --plain", timeout=30,
                            check=False).stdout.decode().strip()
            raise LabError(f"host lab: systemd says {verdict or 'nothing'}; failed: {failed}")
        times["systemd"] = time.monotonic() - t
        times["install"] = install_deb(state, deb)
    except LabError:
        down(quiet=True)
        raise
    times["up"] = time.monotonic() - t0
    state["times"] = {k: round(v, 1) for k, v in times.items()}
    _state_file().write_text(json.dumps(state, indent=2) + "\n")
    say("host lab: %s up in %.0f s (image %.0f, deb %.0f, boot to ssh %.0f, systemd %.0f, "
        "install %.0f)", shape.summary, times["up"], times["image"], times["deb"],
        times["ssh"], times["systemd"], times["install"])
    return state


def exec_argv(argv: list[str]) -> list[str]:
    """The ssh command line of ``scripts/lab host exec -- CMD ARGS...``."""
    state = load()
    if not state or not _alive(state):
        raise LabError("host lab: no VM runs; `scripts/lab host up` first")
    if not argv:
        raise LabError("host lab exec: no command given (scripts/lab host exec -- CMD ARGS...)")
    return [*ssh_argv(state), "--", shlex.join(argv)]


def status() -> dict[str, Any]:
    state = load()
    if not state:
        return {"state": "down"}
    out = dict(state)
    out["state"] = "running" if _alive(state) else "dead (stale record; `down` removes it)"
    if _alive(state):
        probe = remote(state, "systemctl is-system-running; uptime", timeout=20, check=False)
        out["inside"] = probe.stdout.decode(errors="replace").strip().splitlines()
    return out


def down(quiet: bool = False) -> None:
    """Stop the VM (QMP quit, then SIGKILL, both bounded) and remove its run directory."""
    state = load()
    if state and _alive(state):
        pid = int(state["pid"])
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + STOP_TIMEOUT
        while _alive(state) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _alive(state):
            os.kill(pid, signal.SIGKILL)
            while _alive(state) and time.monotonic() < deadline + 10:
                time.sleep(0.2)
        if _alive(state):
            raise LabError(f"host lab: QEMU pid {pid} survives SIGKILL")
        if not quiet:
            say("host lab: VM stopped (pid %d)", pid)
    shutil.rmtree(run_dir(), ignore_errors=True)
    if not quiet and not state:
        say("host lab: no VM was running")
