#!/usr/bin/env python3
"""numahookd's footprint and reconcile time with 20 and 50 managed domains defined.

Targets: idle RSS <= 40 MB, idle CPU <= 0.5 % of one CPU, one reconcile pass <= 50 ms for
50 domains. Every domain is a small rendered probe guest (1 vCPU, 128 MiB of 2 MiB pages,
dedicated CPUs, passthrough, realtime). This host has 2 CPUs, so with dedicated pinning
only 2 of them can run at once (1 with isolateEmulatorThread); those 2 run (TCG guests
that sleep, ``numahook.hold``), the rest stay defined, rendered for CPU 0 and refused a
re-rendering because no CPU is free: what a full host looks like.

For each size: numahookd (``python -m numahook.daemon.main``, reconcile_interval = 5,
throttled = delegate) is started, left to settle, and then sampled for ``--sample``
seconds: RSS from /proc/PID/status (VmRSS), CPU time from /proc/PID/stat (utime+stime),
and the ``last_pass_seconds`` it publishes in /run/numahook/node.json after each pass.
After it stops, a :class:`numahook.daemon.reconcile.Reconciler` in this process times
``pass_(conn)`` directly: the first pass (which re-renders every inactive definition, as
after a change of inputs) and the steady passes after it.

Usage: /usr/bin/python3 bench/daemon.py [--sample S] [--sizes 20,50] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from lab import LabError, env, guest  # noqa: E402
from lab.session import hook_config, lab_held  # noqa: E402

NODE_JSON = Path("/run/numahook/node.json")
PREFIX = "nhbench-d"
RUNNING = 2
TARGETS = {"rss_mb": 40.0, "cpu_percent": 0.5, "pass_ms_50": 50.0}
META = ("<metadata><numahook:domain xmlns:numahook='https://numahook.io/xmlns/domain/1'>"
        "<numahook:cpu dedicatedCpuPlacement='true'>"
        "<numahook:numa><numahook:guestMappingPassthrough/></numahook:numa>"
        "<numahook:realtime/></numahook:cpu></numahook:domain></metadata>")


def cli(*args: str, stdin: str | None = None) -> str:
    proc = subprocess.run([sys.executable, "-m", "numahook.cli", *args],
                          input=stdin.encode() if stdin is not None else None,
                          capture_output=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise LabError(f"numahook {args[0]} failed: {proc.stderr.decode().strip()}")
    return proc.stdout.decode()


def rerender(conn: Any, name: str) -> None:
    """What ``numahook apply NAME`` does: render for the CPUs free now, redefine."""
    from numahook import config
    from numahook.ops import redefine
    from numahook.state.statedir import StateDir

    cfg = config.load()
    out = redefine.apply(conn, conn.lookupByName(name), cfg, StateDir(cfg.state_dir))
    if out is None or out.refused:
        raise LabError(f"re-rendering {name} failed: {out.refused if out else 'not managed'}")


def proc_sample(pid: int) -> tuple[int, int]:
    """(VmRSS KiB, utime+stime ticks) of ``pid``."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return rss, int(fields[11]) + int(fields[12])


def daemon_counters() -> tuple[int, float] | None:
    """(reconcile_passes, last_pass_seconds) from node.json, if it says."""
    try:
        d = json.loads(NODE_JSON.read_text()).get("daemon", {})
        return int(d["reconcile_passes"]), float(d["last_pass_seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class Numahookd:
    def __init__(self, tmp: Path) -> None:
        for d in ("nfd", "prom"):
            (tmp / d).mkdir(exist_ok=True)
        self.conf = tmp / "numahookd.conf"
        self.conf.write_text(
            "[realtime]\nthrottled = delegate\n[daemon]\nreconcile_interval = 5\n"
            f"probe_interval = 60\nnfd_dir = {tmp / 'nfd'}\ntextfile_dir = {tmp / 'prom'}\n")
        self.log = tmp / "numahookd.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        mark = self.log.stat().st_size if self.log.exists() else 0
        environ = {k: v for k, v in os.environ.items() if not k.startswith("NOTIFY")}
        environ["PYTHONPATH"] = str(REPO)
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "numahook.daemon.main", "--config", str(self.conf),
                 "--log-file", str(self.log)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=environ)
        deadline = time.monotonic() + timeout
        while " ready" not in self.log.read_bytes()[mark:].decode(errors="replace"):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise LabError(f"numahookd did not get ready; see {self.log}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


BASELINE = """
import sys, time
import libvirt, lxml.etree
conn = libvirt.open("qemu:///system")
conn.listAllDomains()
print("ready", flush=True)
sys.stdin.read()
"""


def baseline_rss() -> float:
    """RSS (MB) of the floor numahookd stands on: python3 with libvirt and lxml, connected."""
    proc = subprocess.Popen([sys.executable, "-c", BASELINE], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(0.5)
        return round(proc_sample(proc.pid)[0] / 1024, 1)
    finally:
        proc.communicate("", timeout=30)


def libvirtd_pid() -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/run/libvirtd.pid").read_text().strip())
    return None


def list_with_xml_ms(runs: int = 5) -> float:
    """The libvirt floor of any pass that looks at every domain: list them, read each XML."""
    import libvirt

    conn = env.connect()
    try:
        times = []
        for _ in range(runs):
            t0 = time.perf_counter()
            for dom in conn.listAllDomains():
                dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
            times.append((time.perf_counter() - t0) * 1e3)
        return round(statistics.median(times), 2)
    finally:
        conn.close()


def sample_daemon(d: Numahookd, settle: float, seconds: float) -> dict[str, Any]:
    assert d.proc is not None
    pid = d.proc.pid
    time.sleep(settle)
    hz = os.sysconf("SC_CLK_TCK")
    rss0, cpu0 = proc_sample(pid)
    lpid = libvirtd_pid()
    lcpu0 = proc_sample(lpid)[1] if lpid else 0
    t0 = time.monotonic()
    rss = [rss0]
    passes: dict[int, float] = {}
    while time.monotonic() - t0 < seconds:
        time.sleep(1.0)
        rss.append(proc_sample(pid)[0])
        c = daemon_counters()
        if c is not None:
            passes[c[0]] = c[1]
    rss1, cpu1 = proc_sample(pid)
    rss.append(rss1)
    wall = time.monotonic() - t0
    lcpu = round((proc_sample(lpid)[1] - lcpu0) / hz / wall * 100, 3) if lpid else None
    pass_ms = [v * 1e3 for v in passes.values()]
    return {
        "pid": pid,
        "rss_mb": round(max(rss) / 1024, 1),
        "rss_mb_median": round(statistics.median(rss) / 1024, 1),
        "cpu_percent": round((cpu1 - cpu0) / hz / wall * 100, 3),
        "cpu_seconds": round((cpu1 - cpu0) / hz, 2),
        "window_s": round(wall, 1),
        "libvirtd_cpu_percent": lcpu,
        "published_pass_ms": {"median": round(statistics.median(pass_ms), 2),
                              "max": round(max(pass_ms), 2), "passes": len(pass_ms)}
        if pass_ms else None,
    }


def in_process_passes(conf: Path, steady: int) -> dict[str, Any]:
    """Time Reconciler.pass_ against this host: the first (full) pass, then steady ones."""
    import logging

    from numahook import config
    from numahook.daemon.reconcile import Reconciler
    from numahook.state.statedir import StateDir

    # the refusals of the inactive domains (no CPU is free) are expected: keep them quiet
    logging.getLogger("numahook").setLevel(logging.ERROR)
    cfg = config.load(str(conf))
    rec = Reconciler(cfg, StateDir(cfg.state_dir))
    conn = env.connect()
    try:
        t0 = time.perf_counter()
        rec.pass_(conn)
        first = (time.perf_counter() - t0) * 1e3
        times = []
        for _ in range(steady):
            t0 = time.perf_counter()
            rec.pass_(conn)
            times.append((time.perf_counter() - t0) * 1e3)
        forced = []
        for _ in range(3):
            t0 = time.perf_counter()
            rec.rerender_inactive(conn, force=True)
            forced.append((time.perf_counter() - t0) * 1e3)
    finally:
        conn.close()
    return {"first_pass_ms": round(first, 2),
            "steady_pass_ms": {"median": round(statistics.median(times), 2),
                               "min": round(min(times), 2), "max": round(max(times), 2),
                               "passes": len(times)},
            "forced_rerender_ms": round(statistics.median(forced), 2),
            "refused": len(rec.stats.refused), "redefined": rec.stats.redefined}


def profile_idle_minute(conf: Path, top: int = 30) -> None:
    """cProfile of what an idle minute asks of numahookd, to stderr: the timers' callbacks
    (12 reconcile passes with their publish, 120 realtime-watch ticks, one probe)."""
    import cProfile
    import logging
    import pstats

    from numahook import config
    from numahook.daemon.main import Daemon

    logging.getLogger("numahook").setLevel(logging.ERROR)
    d = Daemon(config.load(str(conf)), str(conf))
    d.conn.open()  # in a thread: run the loop until it is connected
    if not d.loop.run_until(lambda: d.conn.up, timeout=30):
        raise SystemExit("numahookd could not connect to libvirt within 30 s")
    d.probe_and_publish()
    d._reconcile()  # the first pass lists the definitions
    prof = cProfile.Profile()
    prof.enable()
    for i in range(120):
        d.reconciler.watch()
        if i % 10 == 0:
            d._reconcile()
    d.probe_and_publish()
    prof.disable()
    d.conn.close()
    pstats.Stats(prof, stream=sys.stderr).sort_stats("cumulative").print_stats(top)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="20,50")
    ap.add_argument("--sample", type=float, default=60.0, help="idle sampling window, s")
    ap.add_argument("--settle", type=float, default=12.0)
    ap.add_argument("--steady", type=int, default=20, help="in-process steady passes")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--profile", action="store_true",
                    help="also print a cProfile of an idle minute's work per size (stderr)")
    args = ap.parse_args(argv)
    result_stream = sys.stdout
    if args.json:  # only the JSON goes to stdout; anything else said meanwhile to stderr
        sys.stdout = sys.stderr
    if os.geteuid() != 0:
        raise SystemExit("bench/daemon.py needs root")
    sizes = sorted(int(s) for s in args.sizes.split(","))
    pid = os.getpid()
    names = [f"{PREFIX}-{pid}-{i:02d}" for i in range(max(sizes))]
    out: dict[str, Any] = {"targets": TARGETS, "running": RUNNING, "sizes": {},
                           "loadavg": [round(x, 2) for x in os.getloadavg()],
                           "note": "2 host CPUs: with dedicated pinning only 2 managed "
                                   "1-vCPU domains can run at once (1 with "
                                   "isolateEmulatorThread); the others stay defined"}
    with lab_held(), hook_config("[realtime]\nthrottled = delegate\n"), \
            tempfile.TemporaryDirectory(prefix="numahook-bench-daemon-") as tmp:
        conn = env.connect()
        out["baseline"] = {"rss_mb": baseline_rss()}
        daemon = Numahookd(Path(tmp))
        defined: list[str] = []
        try:
            # render every definition while nothing runs: each gets CPU 0, as a host
            # operator's domains defined over time would have been rendered then
            xmls = [cli("render", "-", stdin=guest.probe_domain_xml(
                n, vcpus=1, memory_mib=128, hugepage_kib=2048, cmdline="numahook.hold=900",
                extra=META)) for n in names]
            for size in sizes:
                for n, xml in zip(names[len(defined):size], xmls[len(defined):size]):
                    guest.define(conn, xml)
                    defined.append(n)
                running = [n for n in defined if conn.lookupByName(n).isActive()]
                for n in defined[:RUNNING]:
                    if n in running:
                        continue
                    rerender(conn, n)  # for the CPUs left free by the others
                    guest.start(conn.lookupByName(n))
                    running.append(n)
                daemon.start()
                try:
                    sample = sample_daemon(daemon, args.settle, args.sample)
                finally:
                    daemon.stop()
                passes = in_process_passes(daemon.conf, args.steady)
                if args.profile:
                    profile_idle_minute(daemon.conf)
                passes["list_xml_ms"] = list_with_xml_ms()
                out["sizes"][str(size)] = {"defined": len(defined), "running": len(running),
                                           **sample, "in_process": passes}
                if not args.json:
                    print(f"{size} domains ({len(running)} running): RSS {sample['rss_mb']} MB, "
                          f"CPU {sample['cpu_percent']} % over {sample['window_s']} s, "
                          f"published pass {sample['published_pass_ms']}, in-process "
                          f"{passes}", file=sys.stderr, flush=True)
        finally:
            daemon.stop()
            for n in reversed(defined):
                try:
                    guest.remove(conn, n)
                except LabError as exc:
                    print(f"warning: {exc}", file=sys.stderr)
            conn.close()
    big = out["sizes"].get(str(max(sizes)), {})
    out["within_targets"] = {
        "rss": all(s["rss_mb"] <= TARGETS["rss_mb"] for s in out["sizes"].values()),
        "cpu": all(s["cpu_percent"] <= TARGETS["cpu_percent"] for s in out["sizes"].values()),
        "pass": bool(big) and big["in_process"]["steady_pass_ms"]["median"]
        <= TARGETS["pass_ms_50"],
    }
    if args.json:
        json.dump(out, result_stream, indent=2)
        result_stream.write("\n")
        return 0
    for size, s in out["sizes"].items():
        pub = s["published_pass_ms"] or {}
        ip = s["in_process"]
        print(f"{size} managed domains ({s['running']} running): RSS {s['rss_mb']} MB "
              f"(target <= {TARGETS['rss_mb']:g}), CPU {s['cpu_percent']:.2f} % of one CPU over "
              f"{s['window_s']:.0f} s (target <= {TARGETS['cpu_percent']:g}), reconcile pass "
              f"median {pub.get('median')} ms as published, {ip['steady_pass_ms']['median']} ms "
              f"in-process (first pass {ip['first_pass_ms']} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
