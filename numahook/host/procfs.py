"""Threads, scheduling policy and cgroup membership of processes, read from /proc.

The hook may not call libvirt, so vCPU threads and their cgroups are found here; the
scheduler calls are the real syscalls, with errors that say what to change.
"""

from __future__ import annotations

import errno
import os
import re

from numahook.core import cpulist
from numahook.core.units import is_decimal
from numahook.errors import HostError, InputError
from numahook.host import fsutil, lean

#: QEMU names its vCPU threads "CPU <index>/<accelerator>"; KVM and TCG are the ones we run.
_VCPU_COMM = re.compile(r"^CPU ([0-9]{1,5})/(KVM|TCG)\Z")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
#: sched_getscheduler may OR this flag into the policy.
_RESET_ON_FORK = 0x40000000
_POLICY_NAMES = {
    os.SCHED_OTHER: "other",
    os.SCHED_FIFO: "fifo",
    os.SCHED_RR: "rr",
    os.SCHED_BATCH: "batch",
    os.SCHED_IDLE: "idle",
    6: "deadline",  # SCHED_DEADLINE; Python's os module has no constant for it
}

NO_BUDGET_HINT = (
    "the thread's cgroup has no real-time budget (cpu.rt_runtime_us is 0); set "
    "kernel.sched_rt_runtime_us to -1 or enable budget delegation in "
    "/etc/numahook/numahook.conf"
)


def threads(pid: int, proc_root: str = "/proc") -> list[int]:
    """Thread ids of process ``pid``, ascending."""
    task = fsutil.under(proc_root, str(int(pid)), "task")
    try:
        names = os.listdir(task)
    except OSError as exc:
        raise HostError(
            f"listing the threads of process {pid} failed: {exc.strerror}; "
            "check that the domain is still running"
        ) from None
    return sorted(int(n) for n in names if is_decimal(n))


def comm_of(tid: int, proc_root: str = "/proc") -> str | None:
    """The thread's name, or None when it has exited meanwhile."""
    try:
        return fsutil.read_text(fsutil.under(proc_root, str(int(tid)), "comm"), 4096).rstrip("\n")
    except InputError:
        return None


def start_time(pid: int, proc_root: str = "/proc") -> int | None:
    """When process ``pid`` started (clock ticks after boot, the 22nd field of its stat);
    None when it is gone. With the pid it names one process: a reused pid starts later."""
    try:
        text = fsutil.read_text(fsutil.under(proc_root, str(int(pid)), "stat"), 4096)
    except InputError:
        return None
    fields = text.rpartition(")")[2].split()  # the command name may hold spaces and ')'
    return int(fields[19]) if len(fields) > 19 and is_decimal(fields[19]) else None


def vcpu_threads_from_proc(pid: int, proc_root: str = "/proc") -> dict[int, int]:
    """Map vCPU id to thread id by QEMU's thread names (fallback for the status XML)."""
    out: dict[int, int] = {}
    for tid in threads(pid, proc_root):
        comm = comm_of(tid, proc_root)
        m = _VCPU_COMM.match(comm or "")
        if m:
            out[int(m.group(1))] = tid
    return out


def kvm_pit_thread(qemu_pid: int, proc_root: str = "/proc") -> int | None:
    """The ``kvm-pit/<pid>`` kernel thread KVM runs for QEMU ``qemu_pid``'s in-kernel PIT.

    KVM names the worker after the pid of the process that created the PIT, as that
    process sees it (libvirt gives QEMU no pid namespace of its own). It is a kernel
    thread, a child of kthreadd, not a thread of QEMU, so every process is looked at.
    None: there is none (TCG, or the PIT is off or emulated in QEMU).
    """
    try:
        return lean.find_comm(proc_root, f"kvm-pit/{int(qemu_pid)}")
    except OSError as exc:
        raise HostError(f"listing {proc_root} failed: {exc.strerror}; is procfs mounted?") \
            from None


def affinity_of(tid: int) -> frozenset[int]:
    """The CPUs ``tid`` may run on."""
    try:
        return frozenset(os.sched_getaffinity(tid))
    except OSError as exc:
        raise HostError(f"reading the CPU affinity of thread {tid} failed: {exc.strerror}; "
                        "check that it still exists") from None


def set_affinity(tid: int, cpus: frozenset[int]) -> None:
    """Let ``tid`` run on ``cpus`` only."""
    try:
        os.sched_setaffinity(tid, cpus)
    except OSError as exc:
        hint = ("run numahook as root" if exc.errno == errno.EPERM else
                "the thread has exited" if exc.errno == errno.ESRCH else
                "the kernel keeps this thread bound (PF_NO_SETAFFINITY), or a CPU is offline")
        raise HostError(f"setting the CPU affinity of thread {tid} to CPUs "
                        f"{cpulist.format(cpus)} failed: {exc.strerror}; {hint}") from None


def thread_group(tid: int, proc_root: str = "/proc") -> int | None:
    """The process (``Tgid``) a thread belongs to, None when it has exited meanwhile."""
    try:
        text = fsutil.read_text(fsutil.under(proc_root, str(int(tid)), "status"), 1 << 16)
    except InputError:
        return None
    for line in text.splitlines():
        if line.startswith("Tgid:"):
            value = line[5:].strip()
            return int(value) if is_decimal(value) and len(value) <= 10 else None
    return None


def qemu_uuid(pid: int, proc_root: str = "/proc") -> str | None:
    """The domain UUID libvirt passes QEMU as ``-uuid``; None for any other process."""
    try:
        raw = fsutil.read_text(fsutil.under(proc_root, str(int(pid)), "cmdline"), 1 << 20)
    except InputError:
        return None
    args = raw.split("\0")
    for i, arg in enumerate(args[:-1]):
        if arg == "-uuid":
            value = args[i + 1].strip().lower()
            return value if _UUID.match(value) else None
    return None


def sched_of(tid: int) -> tuple[str, int]:
    """The thread's policy name ("fifo", "other", ...) and real-time priority."""
    try:
        policy = os.sched_getscheduler(tid) & ~_RESET_ON_FORK
        prio = os.sched_getparam(tid).sched_priority
    except OSError as exc:
        raise HostError(
            f"reading the scheduling policy of thread {tid} failed: {exc.strerror}; "
            "check that the domain is still running"
        ) from None
    return _POLICY_NAMES.get(policy, f"policy{policy}"), prio


def set_fifo(tid: int, priority: int, reset_on_fork: bool = True) -> None:
    """Make ``tid`` SCHED_FIFO at ``priority``.

    With ``reset_on_fork`` (the default) threads it creates later start as SCHED_OTHER:
    QEMU's main thread creates hot-plugged vCPUs and I/O workers, and libvirt cannot move
    an RT thread into a cgroup without RT budget, nor should a worker inherit real-time.
    """
    if not 1 <= priority <= 99:
        raise InputError(f"real-time priority {priority} is outside 1-99; pick one in that range")
    policy = os.SCHED_FIFO | (_RESET_ON_FORK if reset_on_fork else 0)
    try:
        os.sched_setscheduler(tid, policy, os.sched_param(priority))
    except OSError as exc:
        if exc.errno == errno.EPERM and os.geteuid() != 0:
            hint = "run numahook as root"
        elif exc.errno == errno.EPERM:
            hint = NO_BUDGET_HINT
        elif exc.errno == errno.ESRCH:
            hint = "the thread has exited; check that the domain is still running"
        else:
            hint = "check the kernel log (dmesg)"
        raise HostError(
            f"setting SCHED_FIFO priority {priority} on thread {tid} failed: "
            f"{exc.strerror}; {hint}"
        ) from None


def set_other(tid: int) -> bool:
    """Make ``tid`` SCHED_OTHER; False when the thread no longer exists (nothing to undo)."""
    try:
        os.sched_setscheduler(tid, os.SCHED_OTHER, os.sched_param(0))
    except OSError as exc:
        if exc.errno == errno.ESRCH:
            return False
        hint = "run numahook as root" if exc.errno == errno.EPERM else "check the kernel log"
        raise HostError(
            f"setting SCHED_OTHER on thread {tid} failed: {exc.strerror}; {hint}"
        ) from None
    return True


def parse_cgroup_file(text: str, controller: str) -> str | None:
    """Pick ``controller``'s path from /proc/TID/cgroup text.

    A cgroup v1 line (``4:cpu,cpuacct:/machine/...``) naming the controller wins; on a
    hybrid host the thread also sits in the unused v2 tree, which must not be mistaken for
    it. Only without any v1 line for the controller does the v2 line (``0::/...``) count.
    """
    v2: str | None = None
    for line in text.splitlines():
        fields = line.split(":", 2)
        if len(fields) != 3:
            continue
        hier, controllers, path = fields
        if hier == "0" and controllers == "":
            v2 = path
        elif controller in controllers.split(","):
            return path
    return v2


def cgroup_of(tid: int, controller: str, proc_root: str = "/proc") -> str:
    """The cgroup path (``/machine/qemu-1-x.libvirt-qemu/vcpu0``) of ``tid`` for ``controller``."""
    path = fsutil.under(proc_root, str(int(tid)), "cgroup")
    try:
        text = fsutil.read_text(path, 65536)
    except InputError:
        raise HostError(
            f"reading the cgroups of thread {tid} failed; check that the domain is still running"
        ) from None
    found = parse_cgroup_file(text, controller)
    if found is None:
        raise HostError(
            f"thread {tid} is in no cgroup of the {controller} controller; "
            f"mount the {controller} controller"
        )
    return found


#: where libvirt's QEMU daemons write their pid (monolithic libvirtd, modular virtqemud)
_LIBVIRT_PIDFILES = ("/run/libvirtd.pid", "/run/virtqemud.pid")


def capabilities(pid: int | str, proc_root: str = "/proc") -> int | None:
    """The effective capability mask of ``pid`` (``self`` works), or None if unreadable."""
    try:
        text = fsutil.read_text(fsutil.under(proc_root, str(pid), "status"), 1 << 16)
    except (InputError, HostError):
        return None
    m = re.search(r"^CapEff:\s+([0-9a-f]{1,16})\s*$", text, re.MULTILINE)
    return int(m.group(1), 16) if m else None


def libvirtd_has_capability(cap: int, proc_root: str = "/proc") -> bool:
    """Whether libvirt's daemon (else this process, whose caps the hook inherits) has ``cap``.

    Unknown counts as yes: a stock host's root daemon has every capability.
    """
    for pidfile in _LIBVIRT_PIDFILES:
        try:
            pid = int(fsutil.read_text(pidfile, 64).strip())
        except (InputError, HostError, ValueError):
            continue
        mask = capabilities(pid, proc_root)
        if mask is not None:
            return bool(mask >> cap & 1)
    mask = capabilities("self", proc_root)
    return True if mask is None else bool(mask >> cap & 1)
