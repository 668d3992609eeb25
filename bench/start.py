#!/usr/bin/env python3
"""``virsh start`` to running: a managed domain against the same definition unmanaged.

Users feel a whole start, not one hook call, so this times ``virsh start NAME`` until it
returns (libvirt has run the ``prepare``, ``start`` and ``started`` hooks and the domain
runs), as a ratio to the same start without numahook (target <= 1.1x):

* **managed**: a probe domain with ``<numahook:domain>`` metadata, rendered by
  ``numahook render``, with numahookd running as the lab starts it (the installed
  ``numahookd --foreground``, as systemd's unit does, with ``throttled = delegate`` in
  numahook.conf). Its hugepages are not reserved beforehand: the hook's ``prepare``
  reserves them and ``release`` gives them back, as on a host that leaves the pool to
  numahook.
* **unmanaged**: the very definition numahook rendered (pinning, guest cells, hugepages,
  locked memory), without the numahook metadata, under another name. libvirt does the
  same work for it and numahook's sh front leaves at once, so the difference is
  numahook's share. Its hugepages are reserved before the start and given back after it,
  outside the timed window, as a host without numahook reserves them at boot.

Each repetition starts the two in a shuffled order and destroys each right after its
start, with ``--settle`` seconds between starts, so that machine drift hits both; a
first pair warms the caches and is not counted. The figure is the median over the pairs
of managed / unmanaged. Each start also records the CPU time numahookd, libvirtd and
the hook processes (libvirtd's reaped children) used while it ran.

Then ``--trace-reps`` more pairs run with two timestamp hooks beside numahook's in
``/etc/libvirt/hooks/qemu.d`` (``00-`` and ``zz-``, which libvirt runs before and after
it): where a start's time goes, hook call by hook call and the libvirt work between them.
Those extra hooks cost both sides alike, so the traced starts are not in the ratio.

Usage: /usr/bin/python3 bench/start.py [--reps N] [--trace-reps N] [--variants ...] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.latency import NR_2M, extra_hugepages, render  # noqa: E402
from lab import URI, LabError, daemons, env, guest, record  # noqa: E402
from lab.session import holder, hook_config, lab_held  # noqa: E402

NS = "https://numahook.io/xmlns/domain/1"
PREFIX = "nhbench-vs"
CONFIG = "[realtime]\nthrottled = delegate\n"
VCPUS = 1
MEMORY_MIB = 128
PAGES = MEMORY_MIB // 2
TARGET = 1.1
#: what libvirt runs around a start, in this order; each is timed in the trace
OPS = ("prepare", "start", "started")
#: the trace's segments of one start, in order: hook calls and the work between them
SEGMENTS = ("to_prepare", "prepare", "prepare_to_start", "start", "start_to_started",
            "started", "after_started")


def meta(realtime: bool) -> str:
    iso = " isolateEmulatorThread='true'" if realtime else ""
    rt = "<numahook:realtime/>" if realtime else ""
    return (f"<metadata><numahook:domain xmlns:numahook='{NS}'>"
            f"<numahook:cpu dedicatedCpuPlacement='true'{iso}>"
            "<numahook:numa><numahook:guestMappingPassthrough/></numahook:numa>"
            f"{rt}</numahook:cpu></numahook:domain></metadata>")


#: name -> (what it is, its metadata, whether its vCPU must be SCHED_FIFO when virsh returns)
VARIANTS: dict[str, tuple[str, str, bool]] = {
    "dedicated": (f"{VCPUS} dedicated vCPU, passthrough, {PAGES} × 2 MiB", meta(False), False),
    "realtime": (f"{VCPUS} dedicated real-time vCPU (FIFO by delegation), isolated emulator, "
                 f"passthrough, {PAGES} × 2 MiB", meta(True), True),
}


# --- the two definitions -----------------------------------------------------------------

def unmanaged_twin(xml: str, name: str, new_name: str) -> str:
    """``xml`` without numahook's metadata, renamed (its serial log too); nothing else."""
    from lxml import etree

    root = etree.fromstring(xml.encode())
    for tag in ("name", "uuid"):
        el = root.find(tag)
        if el is not None and tag == "uuid":
            root.remove(el)
        elif el is not None:
            el.text = new_name
    md = root.find("metadata")
    if md is not None:
        for el in list(md):
            if etree.QName(el).namespace == NS:
                md.remove(el)
        if not len(md):
            root.remove(md)
    text = etree.tostring(root, encoding="unicode")
    text = text.replace(str(guest.serial_path(name)), str(guest.serial_path(new_name)))
    if NS in text:
        raise LabError(f"the unmanaged twin of {name} still names numahook's namespace")
    return text


def comparable(xml: str) -> list[str]:
    """A stored definition without what may differ between the twins: name, uuid, metadata
    and the serial log's path."""
    from lxml import etree

    root = etree.fromstring(xml.encode())
    name = root.findtext("name") or ""
    for tag in ("name", "uuid", "metadata"):
        for el in root.findall(tag):
            root.remove(el)
    text = etree.tostring(root, encoding="unicode").replace(str(guest.serial_path(name)), "SERIAL")
    return text.splitlines()


def same_definition(conn: Any, managed: str, unmanaged: str) -> None:
    """LabError unless libvirt stores the two domains alike but for name and metadata."""
    import libvirt

    flags = libvirt.VIR_DOMAIN_XML_INACTIVE
    a = comparable(conn.lookupByName(managed).XMLDesc(flags))
    b = comparable(conn.lookupByName(unmanaged).XMLDesc(flags))
    if a != b:
        diff = "\n".join(difflib.unified_diff(a, b, managed, unmanaged, lineterm="", n=1))
        raise LabError(f"{managed} and {unmanaged} differ beyond the metadata:\n{diff}")


# --- what one start costs whom -----------------------------------------------------------

CLK_TCK = os.sysconf("SC_CLK_TCK")


def task_ns(pid: int | None) -> tuple[int, int]:
    """(time on a CPU, time runnable but waiting for one) of every live thread of ``pid``,
    from schedstat, in ns; the wait says whether the CPUs were taken when it had work."""
    run = wait = 0
    if not pid:
        return 0, 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = (task / "schedstat").read_text().split()
            run, wait = run + int(fields[0]), wait + int(fields[1])
    return run, wait


def children_ms(pid: int | None) -> float:
    """CPU time of ``pid``'s reaped children (cutime + cstime): for libvirtd, its hooks.

    QEMU is daemonized, so it is not among them; clock ticks, 10 ms each.
    """
    if not pid:
        return 0.0
    try:
        rest = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(rest[13]) + int(rest[14])) * 1000 / CLK_TCK


def libvirtd_pid() -> int:
    return int(Path("/run/libvirtd.pid").read_text().strip())


def numahookd_pid() -> int:
    """The lab's numahookd; LabError when it is not the one running."""
    state = record.load() or {}
    rec = (state.get("daemons") or {}).get("numahookd")
    if not rec:
        raise LabError("numahookd is not running as the lab's (see "
                       "/var/log/numahook-lab/numahookd.log, or another numahookd runs)")
    return int(rec["pid"])


def fifo_now(name: str) -> bool:
    """Every vCPU thread of ``name`` is SCHED_FIFO right now."""
    _, tids = guest.vcpu_threads(name)
    try:
        return bool(tids) and all(
            os.sched_getscheduler(t) & ~os.SCHED_RESET_ON_FORK == os.SCHED_FIFO
            for t in tids.values())
    except OSError:
        return False


def wait_pages(want: int, timeout: float = 30.0) -> tuple[int, float]:
    """Wait (bounded) until node 0 has ``want`` 2 MiB pages again: (what it has, ms waited).

    The hook's ``release`` gives them back before ``destroy`` returns, unless it could
    not (its lock timeout is 10 s); numahookd's orphan pass would then, later.
    """
    t0 = time.monotonic()
    while (have := int(NR_2M.read_text())) != want and time.monotonic() < t0 + timeout:
        time.sleep(0.05)
    return have, round((time.monotonic() - t0) * 1000, 1)


def virsh_start(conn: Any, name: str, daemon: int, fifo: bool) -> dict[str, Any]:
    """``virsh start name``, timed; then destroyed. Runs a started domain down whatever."""
    lv = libvirtd_pid()
    before = (*task_ns(daemon), *task_ns(lv), children_ms(lv))
    t0 = time.time_ns()
    p0 = time.perf_counter()
    proc = subprocess.run(["virsh", "-q", "-c", URI, "start", name], capture_output=True,
                          text=True, check=False, stdin=subprocess.DEVNULL)
    wall = (time.perf_counter() - p0) * 1000
    t1 = time.time_ns()
    after = (*task_ns(daemon), *task_ns(lv), children_ms(lv))
    dom = conn.lookupByName(name)
    try:
        if proc.returncode != 0:
            raise LabError(f"virsh start {name} failed: {proc.stderr.strip()}")
        if not dom.isActive():
            raise LabError(f"virsh start {name} returned, and the domain is not running")
        run = {"wall_ms": round(wall, 2), "t0_ns": t0, "t1_ns": t1,
               "numahookd_cpu_ms": round((after[0] - before[0]) / 1e6, 2),
               "numahookd_wait_ms": round((after[1] - before[1]) / 1e6, 2),
               "libvirtd_cpu_ms": round((after[2] - before[2]) / 1e6, 2),
               "libvirtd_wait_ms": round((after[3] - before[3]) / 1e6, 2),
               "hooks_cpu_ms": round(after[4] - before[4], 1),
               "fifo_at_return": fifo_now(name) if fifo else None}
        d0 = time.perf_counter()
        dom.destroy()
        run["destroy_ms"] = round((time.perf_counter() - d0) * 1000, 1)
        return run
    finally:
        if dom.isActive():
            dom.destroy()


STATE_DIR = Path("/run/numahook")


class StateLost(LabError):
    """numahook's state directory was replaced while a managed domain ran, so its claim
    went with it and ``release`` had nothing to give back; the pair says nothing."""


def _inode(path: Path) -> int | None:
    try:
        return path.stat().st_ino
    except OSError:
        return None


def one(conn: Any, side: str, name: str, daemon: int, fifo: bool, base_pages: int,
        settle: float) -> dict[str, Any]:
    """One timed start of ``side`` with its hugepages as that side's host would have them."""
    free = int(NR_2M.with_name("free_hugepages").read_text())
    if side == "unmanaged":
        with extra_hugepages(PAGES):
            run = virsh_start(conn, name, daemon, fifo)
    else:
        state = _inode(STATE_DIR)
        run = virsh_start(conn, name, daemon, fifo)
        left, run["pages_back_ms"] = wait_pages(base_pages)  # what prepare added
        if left != base_pages and _inode(STATE_DIR) != state:
            NR_2M.write_text(str(max(base_pages, left - PAGES)))
            raise StateLost(f"{STATE_DIR} was removed while {name} ran (a package purge?), "
                            "its claim with it, so numahook gave back no pages; gave them "
                            "back and measuring this pair again")
        if left != base_pages:
            raise LabError(f"{name}: node 0 has {left} 2 MiB pages 30 s after the stop, not "
                           f"{base_pages}: numahook did not give them back")
    run.update(side=side, free_pages_before=free)
    time.sleep(settle)
    return run


def spread(xs: list[float]) -> dict[str, Any]:
    s = sorted(xs)
    return {"median_ms": round(statistics.median(s), 2), "min_ms": round(s[0], 2),
            "max_ms": round(s[-1], 2), "runs": len(s)}


def pairs(runs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(managed, unmanaged) of each counted repetition, in order."""
    by: dict[int, dict[str, dict[str, Any]]] = {}
    for r in runs:
        if r["rep"] >= 0:
            by.setdefault(r["rep"], {})[r["side"]] = r
    return [(p["managed"], p["unmanaged"]) for _, p in sorted(by.items())
            if "managed" in p and "unmanaged" in p]


#: per start, in ``cpu_ms`` (means): numahookd's and libvirtd's CPU time and run-queue wait,
#: and the hook processes' CPU time
CPU_KEYS = ("numahookd_cpu", "numahookd_wait", "libvirtd_cpu", "libvirtd_wait", "hooks_cpu")


def paired(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Both sides' spread, the ratio (median of the pairs' ratios) and the CPU per start."""
    ps = pairs(runs)
    if not ps:
        return {"pairs": 0}
    ratios = [m["wall_ms"] / u["wall_ms"] for m, u in ps]
    out: dict[str, Any] = {
        "pairs": len(ps),
        "managed": spread([m["wall_ms"] for m, _ in ps]),
        "unmanaged": spread([u["wall_ms"] for _, u in ps]),
        "ratio": round(statistics.median(ratios), 3),
        "ratio_spread": [round(min(ratios), 3), round(max(ratios), 3)],
        "extra_ms": round(statistics.median(m["wall_ms"] - u["wall_ms"] for m, u in ps), 2),
        "cpu_ms": {side: {k: round(statistics.mean(r[f"{k}_ms"] for r in rs), 2)
                          for k in CPU_KEYS}
                   for side, rs in (("managed", [m for m, _ in ps]),
                                    ("unmanaged", [u for _, u in ps]))},
    }
    fifo = [m["fifo_at_return"] for m, _ in ps if m.get("fifo_at_return") is not None]
    if fifo:
        out["fifo_at_return"] = [sum(fifo), len(fifo)]
    return out


# --- the trace ---------------------------------------------------------------------------

HOOK_DIR = Path("/etc/libvirt/hooks/qemu.d")
TS_DIR = Path("/run/numahook-bench")
#: bash for $EPOCHREALTIME (no fork for the clock); the first hook stamps after reading
#: its stdin (libvirt's write ends there), the last one before
TS_HOOK = """#!/bin/bash
# numahook benchmark (bench/start.py): timestamp the hook calls of {prefix}* domains
{early}
case "$1" in {prefix}*) ;; *) cat >/dev/null; exit 0 ;; esac
cat >/dev/null
{late}
echo "$1 $2 {tag} ${{t/./}}" >> {log}
exit 0
"""


@contextlib.contextmanager
def ts_hooks() -> Iterator[Path]:
    """The two timestamp hooks around numahook's, removed afterwards (libvirtd told)."""
    TS_DIR.mkdir(parents=True, exist_ok=True)
    log = TS_DIR / f"start-{os.getpid()}.log"
    log.write_text("")
    first, last = HOOK_DIR / "00-nhbench-start-ts", HOOK_DIR / "zz-nhbench-start-ts"
    first.write_text(TS_HOOK.format(prefix=PREFIX, tag="begin", log=log, early="",
                                    late="t=$EPOCHREALTIME"))
    last.write_text(TS_HOOK.format(prefix=PREFIX, tag="end", log=log,
                                   early="t=$EPOCHREALTIME", late=""))
    for p in (first, last):
        p.chmod(0o755)
    os.kill(libvirtd_pid(), 1)  # SIGHUP: libvirtd looks at qemu.d again
    time.sleep(1.0)
    try:
        yield log
    finally:
        for p in (first, last):
            p.unlink(missing_ok=True)
        with contextlib.suppress(OSError, ValueError):
            os.kill(libvirtd_pid(), 1)
        log.unlink(missing_ok=True)


def segments(run: dict[str, Any], stamps: dict[tuple[str, str], int]) -> dict[str, float]:
    """One traced start cut at the hook calls (ms); stamps are (op, begin|end) -> µs."""
    points = [run["t0_ns"] / 1000]
    for op in OPS:
        if (op, "begin") not in stamps or (op, "end") not in stamps:
            raise LabError(f"the timestamp hooks missed {op} of {run['name']}: {stamps}")
        points += [stamps[(op, "begin")], stamps[(op, "end")]]
    points.append(run["t1_ns"] / 1000)
    return {k: round((b - a) / 1000, 2) for k, a, b in zip(SEGMENTS, points, points[1:])}


def read_stamps(log: Path, run: dict[str, Any]) -> dict[tuple[str, str], int]:
    """(op, begin|end) -> µs of the hook calls within one start (the same domain starts
    again in the next pair, and its stop's calls come after it)."""
    lo, hi = run["t0_ns"] // 1000, run["t1_ns"] // 1000
    out = {}
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == run["name"] and lo <= int(parts[3]) <= hi:
            out[(parts[1], parts[2])] = int(parts[3])
    return out


def trace_summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per segment: each side's median and the median of the pairs' differences."""
    ps = pairs(runs)
    if not ps:
        return {"pairs": 0}
    return {"pairs": len(ps), **paired(runs), "segments": {
        k: {"managed_ms": round(statistics.median(m["segments"][k] for m, _ in ps), 2),
            "unmanaged_ms": round(statistics.median(u["segments"][k] for _, u in ps), 2),
            "extra_ms": round(statistics.median(m["segments"][k] - u["segments"][k]
                                                for m, u in ps), 2)}
        for k in SEGMENTS}}


# --- the run -----------------------------------------------------------------------------

def measure(conn: Any, variant: str, reps: int, trace_reps: int, settle: float,
            rng: random.Random) -> dict[str, Any]:
    label, metadata, fifo = VARIANTS[variant]
    names = {"managed": f"{PREFIX}-{variant}-m-{os.getpid()}",
             "unmanaged": f"{PREFIX}-{variant}-u-{os.getpid()}"}
    xml = render(guest.probe_domain_xml(names["managed"], vcpus=VCPUS, memory_mib=MEMORY_MIB,
                                        hugepage_kib=2048, cmdline="numahook.hold=600",
                                        extra=metadata))
    twin = unmanaged_twin(xml, names["managed"], names["unmanaged"])
    daemon = numahookd_pid()
    base = int(NR_2M.read_text())
    guest.define(conn, xml)
    guest.define(conn, twin)
    try:
        time.sleep(2.0)  # numahookd handles the DEFINED event (and renders nothing new)
        same_definition(conn, names["managed"], names["unmanaged"])
        runs: list[dict[str, Any]] = []
        lost: list[str] = []  # pairs measured again: numahook's state vanished under them

        def rep(i: int, traced: list[dict[str, Any]] | None = None, tries: int = 3) -> None:
            order = ["managed", "unmanaged"]
            rng.shuffle(order)
            pair = []
            for k, side in enumerate(order):
                try:
                    r = one(conn, side, names[side], daemon, fifo and side == "managed",
                            base, settle)
                except StateLost as exc:
                    if tries <= 1:
                        raise
                    print(f"start: {variant}: {exc}", file=sys.stderr, flush=True)
                    lost.append(f"{'trace ' if traced is not None else ''}{i}")
                    rep(i, traced, tries - 1)
                    return
                r.update(rep=i, order=k, name=names[side])
                pair.append(r)
            (traced if traced is not None else runs).extend(pair)
            print(f"start: {variant} {'trace ' if traced is not None else ''}rep {i + 1}: "
                  + ", ".join(f"{r['side']} {r['wall_ms']:.0f} ms"
                              for r in (traced if traced is not None else runs)[-2:]),
                  file=sys.stderr, flush=True)

        rep(-1)  # warm-up: not counted
        for i in range(reps):
            rep(i)
        out: dict[str, Any] = {"label": label, "metadata": metadata, "vcpus": VCPUS,
                               "memory_mib": MEMORY_MIB, "hugepages_2m": PAGES,
                               "same_definition": True, **paired(runs), "runs": runs,
                               "state_lost": lost}
        if trace_reps:
            traced: list[dict[str, Any]] = []
            with ts_hooks() as log:
                for i in range(trace_reps):
                    rep(i, traced)
                for r in traced:
                    r["segments"] = segments(r, read_stamps(log, r))
            out["trace"] = {**trace_summary(traced), "runs": traced}
        return out
    finally:
        for name in names.values():
            guest.remove(conn, name)


@contextlib.contextmanager
def numahookd() -> Iterator[None]:
    """numahookd as the lab starts it (``numahookd --foreground``), stopped afterwards."""
    with contextlib.redirect_stdout(sys.stderr):
        env.up(holder(), build_probe=False, daemon=True)
    try:
        yield
    finally:
        with contextlib.redirect_stdout(sys.stderr):
            daemons.stop_daemon("numahookd")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10, help="timed pairs per variant")
    ap.add_argument("--trace-reps", type=int, default=5,
                    help="pairs per variant with the timestamp hooks (0: none)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--settle", type=float, default=2.0, help="seconds after each stop")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    result_stream = sys.stdout
    if args.json:  # only the JSON goes to stdout; anything else said meanwhile to stderr
        sys.stdout = sys.stderr
    if os.geteuid() != 0:
        raise SystemExit("bench/start.py needs root: it runs libvirtd, numahookd and guests")
    rng = random.Random(args.seed)
    out: dict[str, Any] = {"target": TARGET, "reps": args.reps, "trace_reps": args.trace_reps,
                           "settle_s": args.settle, "config": CONFIG,
                           "loadavg_before": [round(v, 2) for v in os.getloadavg()],
                           "variants": {}}
    with lab_held(), hook_config(CONFIG), numahookd():
        out["numahookd"] = {"pid": numahookd_pid(), "argv": Path(
            f"/proc/{numahookd_pid()}/cmdline").read_text().replace("\0", " ").strip()}
        conn = daemons.connect()
        try:
            for v in args.variants.split(","):
                out["variants"][v] = measure(conn, v, args.reps, args.trace_reps,
                                             args.settle, rng)
        finally:
            conn.close()
    out["loadavg_after"] = [round(v, 2) for v in os.getloadavg()]
    if args.json:
        json.dump(out, result_stream, indent=1)
        result_stream.write("\n")
        return 0
    for v, r in out["variants"].items():
        m, u = r["managed"], r["unmanaged"]
        print(f"{v} ({r['label']}), {r['pairs']} pairs: managed median {m['median_ms']:.0f} ms "
              f"({m['min_ms']:.0f} – {m['max_ms']:.0f}), unmanaged {u['median_ms']:.0f} ms "
              f"({u['min_ms']:.0f} – {u['max_ms']:.0f}); managed / unmanaged {r['ratio']:.2f}x "
              f"(pairs {r['ratio_spread'][0]:.2f} – {r['ratio_spread'][1]:.2f}; target <= "
              f"{TARGET:g}x); CPU per start {r['cpu_ms']}")
        for k, s in (r.get("trace") or {}).get("segments", {}).items():
            print(f"    {k:<18} managed {s['managed_ms']:7.1f} ms  unmanaged "
                  f"{s['unmanaged_ms']:7.1f} ms  extra {s['extra_ms']:+7.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
