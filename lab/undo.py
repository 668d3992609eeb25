"""The steps of ``down``: undo what the record says the lab changed, and only that.

Each step appends what it could not undo to ``problems`` and goes on, so one stuck mount
does not leave the rest of the host changed; ``down`` keeps the record while any remain.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from lab import DOMAIN_PREFIX, LabError, read_value, run, say, write_value
from lab.daemons import connect, daemon_ours, pidfile_pid


def remove_domains(state: dict[str, Any], problems: list[str]) -> None:
    if pidfile_pid(Path("/run/libvirtd.pid"), "libvirtd") is None:
        if state["domains"]:
            problems.append(
                f"libvirtd is not running, so the domains {state['domains']} cannot be removed"
            )
        return
    import libvirt

    conn = connect()
    try:
        ours_libvirtd = daemon_ours(state, "libvirtd") is not None
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


def restore_values(state: dict[str, Any], problems: list[str], owned: bool) -> None:
    """Write back what the lab (or a test through set_value) wrote, newest first.

    When the lab started libvirtd (``owned``), everything that happened on the host went
    through the lab's daemons, so values of the snapshot that changed meanwhile (numahook's
    hugepage reservations or RT budgets) are restored too. Under someone else's libvirtd
    they are only reported: their domains may still need them.
    """
    todo = list(reversed(list(state["written"].items())))
    snap = state["snapshot"]["values"] if owned else {}
    for path, old in state["snapshot"]["values"].items():
        now = read_value(Path(path))
        if not owned and now is not None and now != old and path not in state["written"]:
            say("note: %s is %s (was %s); libvirtd is not the lab's, so it is left", path, now,
                old)  # fmt: skip
    # hugepages last: freeing them works once nothing maps them; cgroup files before sysctls
    # (a child's RT budget must shrink before the parent's).
    order = sorted(snap.items(), key=lambda kv: (("nr_hugepages" in kv[0]), "/proc/" in kv[0]))
    todo += [(p, v) for p, v in order if p not in state["written"]]
    for path, old in todo:
        p = Path(path)
        now = read_value(p)
        if now is None or now == old:
            continue
        try:
            write_value(p, old)
        except LabError as exc:
            problems.append(str(exc))
            continue
        back = read_value(p)
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


def remove_cgroups(state: dict[str, Any], problems: list[str]) -> None:
    """Remove the /machine cgroups that appeared while the lab was up (libvirtd made them)."""
    if pidfile_pid(Path("/run/libvirtd.pid"), "libvirtd") is not None:
        return  # someone else's libvirtd owns them now
    removed = []
    for cg in state["snapshot"].get("cgroups_absent", []):
        if Path(cg).is_dir():
            _rmdir_cgroup(Path(cg), problems)
            if not Path(cg).exists():
                removed.append(cg)
    if removed:
        say("removed the cgroups libvirtd created: %s", ", ".join(removed))


def restore_files(state: dict[str, Any], problems: list[str]) -> None:
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
