#!/usr/bin/env python3
"""From libvirt's ``started`` hook call to the last masked vCPU at SCHED_FIFO (target <= 10 ms).

On a normal start libvirt resumes the vCPUs *before* it runs the ``started`` hooks, so on
a throttled RT_GROUP_SCHED node (where numahook delegates RT budget and sets FIFO from
that hook) the vCPUs run as SCHED_OTHER for a while. This measures that while, for real:

* two tiny timestamp hooks are put beside numahook's in ``/etc/libvirt/hooks/qemu.d``;
  libvirt runs them in alphabetical order, so ``00-nhbench-ts`` notes when numahook's
  ``started`` call begins and ``zz-nhbench-ts`` when it has ended (``date +%s%N``);
* a poller reads the vCPU thread ids from libvirt's status XML as soon as it shows them
  and then polls each masked thread's policy every ``--poll-ms`` until all are FIFO.

The figure is ``last masked vCPU seen FIFO - started hook begins``; the hook's own wall
time is ``zz - 00``. Both paths are measured: ``delegate`` (``kernel.sched_rt_runtime_us``
950000, ``throttled = delegate``) and ``vcpusched`` (the sysctl set to -1 for the run and
restored: numahook renders ``<vcpusched>``, libvirt sets FIFO before the vCPUs ever run,
so the delay is zero by construction and the poller only confirms it). ``daemon`` is
``delegate`` with numahookd running: it sees libvirt put each vCPU thread in its cgroup
(inotify) and applies the budget and FIFO then, racing libvirt to the ``started`` hook;
its audit line's time gives the margin by which it won (or lost).

Usage: /usr/bin/python3 bench/started.py [--reps N] [--json]
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lab import LabError, env, guest  # noqa: E402
from lab.session import hook_config, lab_held  # noqa: E402

HOOK_DIR = Path("/etc/libvirt/hooks/qemu.d")
TS_DIR = Path("/run/numahook-bench")
SYSCTL = Path("/proc/sys/kernel/sched_rt_runtime_us")
PREFIX = "nhbench-st"
#: 1 vCPU leaves CPU 1 to libvirtd and the hook, as housekeeping CPUs do on a real host;
#: 2 make the hook compete with the booting guest's vCPUs for both CPUs
LAYOUTS = (1, 2)
TARGET_MS = 10.0


def meta(mask: str | None) -> str:
    rt = f"<numahook:realtime mask='{mask}'/>" if mask else "<numahook:realtime/>"
    return ("<metadata><numahook:domain xmlns:numahook='https://numahook.io/xmlns/domain/1'>"
            "<numahook:cpu dedicatedCpuPlacement='true'>"
            "<numahook:numa><numahook:guestMappingPassthrough/></numahook:numa>"
            f"{rt}</numahook:cpu></numahook:domain></metadata>")


#: libvirt stores <vcpusched vcpus='0-1'> as one element per vCPU; a numahook that compares
#: them as written refuses its own rendering at prepare (found by this benchmark)
VCPUSCHED_SPLIT = "the <vcpusched> real-time settings differ"
#: ``when`` is "end" for the first hook (after it read its stdin) and "start" for the last
TS_HOOK = """#!/bin/sh
# numahook benchmark (bench/started.py): timestamp the started call of {prefix}* domains
{early}
case "$1" in {prefix}*) ;; *) cat >/dev/null; exit 0 ;; esac
[ "$2" = started ] || {{ cat >/dev/null; exit 0; }}
cat >/dev/null
{late}
echo "$1 {tag} $t" >> {log}
exit 0
"""


@contextlib.contextmanager
def ts_hooks() -> Iterator[Path]:
    """The two timestamp hooks around numahook's; removed afterwards."""
    TS_DIR.mkdir(parents=True, exist_ok=True)
    log = TS_DIR / f"started-{os.getpid()}.log"
    log.write_text("")
    first, last = HOOK_DIR / "00-nhbench-ts", HOOK_DIR / "zz-nhbench-ts"
    first.write_text(TS_HOOK.format(prefix=PREFIX, tag="begin", log=log, early="",
                                    late="t=$(date +%s%N)"))
    last.write_text(TS_HOOK.format(prefix=PREFIX, tag="end", log=log,
                                   early="t=$(date +%s%N)", late=""))
    for p in (first, last):
        p.chmod(0o755)
    pid = Path("/run/libvirtd.pid").read_text().strip()
    os.kill(int(pid), 1)  # SIGHUP: libvirtd looks at qemu.d again
    time.sleep(1.0)
    try:
        yield log
    finally:
        for p in (first, last):
            p.unlink(missing_ok=True)
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(Path("/run/libvirtd.pid").read_text().strip()), 1)
        log.unlink(missing_ok=True)


def render(xml: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "numahook.cli", "render", "-"],
                          input=xml.encode(), capture_output=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise LabError(f"numahook render failed: {proc.stderr.decode().strip()}")
    return proc.stdout.decode()


class Poller(threading.Thread):
    """Watch the status XML for vCPU thread ids, then their policies until all are FIFO."""

    def __init__(self, name: str, vcpus: int, masked: int, poll_s: float,
                 timeout: float = 60.0) -> None:
        super().__init__(daemon=True)
        self.status = Path(f"/run/libvirt/qemu/{name}.xml")
        self.vcpus = vcpus
        self.masked = masked
        self.poll_s = poll_s
        self.timeout = timeout
        self.tids_seen_ns: int | None = None
        self.fifo_at_first_sight = False
        self.fifo_ns: dict[int, int] = {}
        self.polls = 0
        self.error = ""
        self.tids: dict[int, int] = {}
        self.stop = threading.Event()

    def _tids(self) -> dict[int, int]:
        try:
            text = self.status.read_text()
        except OSError:
            return {}
        out = {}
        for m in re.finditer(r"<vcpu id='(\d+)' pid='(\d+)'", text):
            out[int(m.group(1))] = int(m.group(2))
        return out if len(out) == self.vcpus else {}

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout
        tids: dict[int, int] = {}
        while not tids and not self.stop.is_set() and time.monotonic() < deadline:
            tids = self._tids()
            if not tids:
                time.sleep(self.poll_s)
        if not tids:
            return
        tids = {v: t for v, t in tids.items() if v < self.masked}
        self.tids = tids
        self.tids_seen_ns = time.time_ns()
        first = True
        while len(self.fifo_ns) < len(tids) and time.monotonic() < deadline:
            for v, tid in tids.items():
                if v in self.fifo_ns:
                    continue
                try:
                    fifo = (os.sched_getscheduler(tid) & ~os.SCHED_RESET_ON_FORK) == os.SCHED_FIFO
                except OSError as exc:
                    self.error = f"thread {tid}: {exc}"
                    return
                self.polls += 1
                if fifo:
                    self.fifo_ns[v] = time.time_ns()
            if first:
                self.fifo_at_first_sight = len(self.fifo_ns) == len(tids)
                first = False
            if len(self.fifo_ns) < len(tids):
                time.sleep(self.poll_s)


def read_ts(log: Path, name: str) -> dict[str, int]:
    out = {}
    for line in log.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[0] == name:
            out[parts[1]] = int(parts[2])
    return out


@contextlib.contextmanager
def numahookd(log: Path) -> Iterator[Path]:
    """numahookd with the hook's config (/etc/numahook/numahook.conf), stopped after."""
    log.write_text("")
    proc = subprocess.Popen([sys.executable, "-m", "numahook.daemon.main", "-v", "--log-file",
                             str(log)], env={**os.environ, "PYTHONPATH": str(REPO)},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while " ready" not in log.read_text():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"numahookd did not get ready: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def early_ns(daemon_log: Path | None, name: str) -> int | None:
    """When numahookd logged applying realtime early for ``name`` (ms resolution)."""
    if daemon_log is None:
        return None
    for line in daemon_log.read_text().splitlines():
        if f"domain={name} action=realtime-early" in line:
            stamp, ms = line[:23].split(",")
            secs = calendar.timegm(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))
            return (secs * 1000 + int(ms)) * 1_000_000
    return None


def one_start(conn: Any, xml: str, name: str, log: Path, poll_s: float, vcpus: int,
              masked: int, daemon_log: Path | None = None) -> dict[str, Any]:
    dom = guest.define(conn, xml)
    try:
        poller = Poller(name, vcpus, masked, poll_s)
        poller.start()
        t0 = time.time_ns()
        guest.start(dom)
        t_ret = time.time_ns()
        poller.join(timeout=30)
        poller.stop.set()
        ts = read_ts(log, name)
        if "begin" not in ts or "end" not in ts:
            raise LabError(f"the timestamp hooks did not run for {name}: {ts}")
        begin, end = ts["begin"], ts["end"]
        if len(poller.fifo_ns) < masked:
            now = {}
            for v, t in poller.tids.items():
                try:
                    now[v] = (os.sched_getscheduler(t) & ~os.SCHED_RESET_ON_FORK)
                except OSError as exc:
                    now[v] = str(exc)
            raise LabError(f"{name}: not every masked vCPU became SCHED_FIFO (threads "
                           f"{poller.tids}, policies now {now}, FIFO seen {poller.fifo_ns}, "
                           f"{poller.polls} polls, error {poller.error!r}, poller alive "
                           f"{poller.is_alive()})")
        last = max(poller.fifo_ns.values())
        early = early_ns(daemon_log, name)
        return {
            "early_before_started_ms": None if early is None else (begin - early) / 1e6,
            "create_ms": (t_ret - t0) / 1e6,
            "hook_wall_ms": (end - begin) / 1e6,
            "delay_ms": max(0.0, (last - begin) / 1e6) if not poller.fifo_at_first_sight
            else 0.0,
            "raw_last_fifo_minus_started_ms": (last - begin) / 1e6,
            "tids_seen_before_started_ms": ((begin - poller.tids_seen_ns) / 1e6
                                            if poller.tids_seen_ns else None),
            "fifo_at_first_sight": poller.fifo_at_first_sight,
            "polls": poller.polls,
        }
    finally:
        import libvirt

        try:
            guest.remove(conn, name)
        except (LabError, libvirt.libvirtError) as exc:
            print(f"warning: removing {name}: {exc}", file=sys.stderr)


def summary(samples: list[float]) -> dict[str, float]:
    s = sorted(samples)
    return {"median_ms": round(statistics.median(s), 2), "min_ms": round(s[0], 2),
            "p90_ms": round(s[(len(s) * 9) // 10 if len(s) > 1 else 0], 2),
            "max_ms": round(s[-1], 2), "runs": len(s)}


def measure(conn: Any, path: str, vcpus: int, reps: int, log: Path,
            poll_s: float, daemon_log: Path | None = None) -> dict[str, Any]:
    runs = []
    mask: str | None = None  # every vCPU is real-time
    problem = None
    i = 0
    while len(runs) < reps:
        i += 1
        name = f"{PREFIX}-{path}-{vcpus}-{os.getpid()}-{i}"
        xml = render(guest.probe_domain_xml(name, vcpus=vcpus, memory_mib=128,
                                            hugepage_kib=2048, cmdline="numahook.hold=120",
                                            extra=meta(mask)))
        has_vcpusched = "<vcpusched" in xml
        if has_vcpusched != (path == "vcpusched"):
            raise LabError(f"{path}: the rendering {'has' if has_vcpusched else 'lacks'} "
                           "<vcpusched>, not what this path needs")
        try:
            runs.append(one_start(conn, xml, name, log, poll_s, vcpus,
                                  vcpus if mask is None else 1, daemon_log))
        except LabError as exc:
            if mask is not None or VCPUSCHED_SPLIT not in str(exc):
                raise
            problem = str(exc).split(": numahook: ", 1)[-1].strip()
            mask = "0"
            print(f"warning: numahook refused its own {vcpus}-vCPU <vcpusched> rendering "
                  f"({problem}); measuring with realtime mask='0' instead", file=sys.stderr)
    return {
        "vcpus": vcpus,
        "mask": mask or f"0-{vcpus - 1}",
        "problem": problem,
        "runs": runs,
        "delay": summary([r["delay_ms"] for r in runs]),
        "hook_wall": summary([r["hook_wall_ms"] for r in runs]),
        "create": summary([r["create_ms"] for r in runs]),
        "fifo_at_first_sight": sum(r["fifo_at_first_sight"] for r in runs),
        "early": [r["early_before_started_ms"] for r in runs],
    }


def floors(runs: int = 10) -> dict[str, Any]:
    """What any Python hook pays before its work: the interpreter, then numahook's imports."""
    def timed(code: str) -> float:
        t0 = time.perf_counter()
        subprocess.run(["/usr/bin/python3", "-I", "-c", code], check=True)
        return (time.perf_counter() - t0) * 1e3

    bare = [timed("pass") for _ in range(runs)]
    imports = [timed("import numahook.hook.main, numahook.ops.lifecycle, numahook.host.rtsched")
               for _ in range(runs)]
    return {"python_start": summary(bare), "python_with_hook_imports": summary(imports)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--poll-ms", type=float, default=0.5)
    ap.add_argument("--paths", default="delegate,daemon,vcpusched")
    ap.add_argument("--vcpus", default=",".join(map(str, LAYOUTS)),
                    help="guest sizes to measure (all vCPUs masked real-time)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    result_stream = sys.stdout
    if args.json:  # only the JSON goes to stdout; anything else said meanwhile to stderr
        sys.stdout = sys.stderr
    if os.geteuid() != 0:
        raise SystemExit("bench/started.py needs root")
    poll_s = args.poll_ms / 1000
    layouts = [int(v) for v in args.vcpus.split(",")]
    out: dict[str, Any] = {"target_ms": TARGET_MS, "poll_ms": args.poll_ms,
                           "loadavg": [round(x, 2) for x in os.getloadavg()]}
    with lab_held(), hook_config("[realtime]\nthrottled = delegate\n"), ts_hooks() as log:
        conn = env.connect()
        out["floors"] = floors()
        original = SYSCTL.read_text().strip()
        try:
            for path in args.paths.split(","):
                if path == "vcpusched":
                    env.set_value("kernel.sched_rt_runtime_us", "-1")
                try:
                    if path == "daemon":
                        with numahookd(TS_DIR / f"numahookd-{os.getpid()}.log") as dlog:
                            out[path] = {str(v): measure(conn, path, v, args.reps, log, poll_s,
                                                         dlog) for v in layouts}
                        dlog.unlink(missing_ok=True)
                    else:
                        out[path] = {str(v): measure(conn, path, v, args.reps, log, poll_s)
                                     for v in layouts}
                finally:
                    # every domain is gone by now: no FIFO thread is left in a zero-budget
                    # group when throttling comes back on
                    if SYSCTL.read_text().strip() != original:
                        SYSCTL.write_text(original)
        finally:
            conn.close()
    if args.json:
        json.dump(out, result_stream, indent=2)
        result_stream.write("\n")
        return 0
    bare = out["floors"]["python_start"]["median_ms"]
    print(f"baseline: python3 -I -c pass median {bare:.1f} ms (this run)")
    for path in args.paths.split(","):
        for v in layouts:
            r = out[path][str(v)]
            d, h = r["delay"], r["hook_wall"]
            print(f"{path}, {v} vCPU(s), mask {r['mask']}: started -> last masked vCPU FIFO "
                  f"median {d['median_ms']:.1f} ms = {d['median_ms'] / bare:.2f}x bare (max "
                  f"{d['max_ms']:.1f}, target <= {TARGET_MS:g}); started hook wall time median "
                  f"{h['median_ms']:.1f} ms = {h['median_ms'] / bare:.2f}x bare; "
                  f"FIFO already at first sight in {r['fifo_at_first_sight']}/{d['runs']} "
                  "starts" + (f"; {r['problem']}" if r["problem"] else ""))
            early = [e for e in r["early"] if e is not None]
            if path == "daemon":
                print(f"    numahookd logged applying it before started began in "
                      f"{sum(e > 0 for e in early)}/{d['runs']} starts (margin median "
                      f"{statistics.median(early) if early else float('nan'):.1f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
