#!/usr/bin/env python3
"""Guest timer latency (cyclictest in the lab's probe guest) with and without numahook.

Three configurations of the same 1-vCPU probe guest, on the same machine, in one run:

* ``A``: plain libvirt: no pinning, no real-time;
* ``B``: libvirt's own real-time, written by hand as numahook would lay it out: vCPU 0 on
  CPU 0, the emulator on CPU 1, and ``<vcpusched scheduler='fifo'>`` for vCPU 0. On a
  cgroup v1 kernel with RT_GROUP_SCHED and RT throttling on, libvirt cannot start it
  ("Operation not permitted"): that refusal is B's result. ``B-pin`` is B without the
  ``<vcpusched>`` (what such a host is left with: pinning, no real-time), so that B's row
  has numbers too;
* ``C``: numahook: dedicatedCpuPlacement, isolateEmulatorThread, guestMappingPassthrough
  and ``<numahook:realtime mask='0'/>``, rendered by ``numahook render`` (the same CPUs
  as B) and started through the real hook with ``throttled = delegate``.

Each runs on an idle host and under a CPU hog (``stress-ng --cpu N --taskset 0-1``: every
host CPU, so the vCPU's and the emulator's CPUs alike), started before the domain and
stopped after it. All use the same 2 MiB hugepage backing, so pinning and scheduling are
the only differences. Runs are interleaved in a shuffled order per repetition so that a
noisy neighbour hurts every configuration alike; ``--reps`` sets how often.

The guest runs under TCG (nested KVM cannot run a guest kernel here): the vCPU is one
host thread and QEMU's main loop (the emulator thread) delivers its timer interrupts, so
the host's scheduling of both threads is what is measured. The guest's own code runs
emulated, tens of times slower than on KVM, so absolute latencies are far above a KVM
guest's. The ratios are the result.

The machine's own noise is measured too, so that a report can tell a slow or shared machine
from a result: first ``cyclictest`` on the idle host itself (``--floor-seconds``), and
again under the hog (what a FIFO thread meets on this machine under that load), then, in
every run, the host's CPU steal time and load average from ``/proc/stat`` and
``/proc/loadavg``, and how long the vCPU and emulator threads waited while runnable
(``/proc/PID/task/TID/schedstat``: for a FIFO thread alone on its CPU, RT throttling or a
higher class), beside the RT budget of their cgroups.

Usage: /usr/bin/python3 bench/latency.py [--reps N] [--duration S] [--hist-us US] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
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

from bench.histogram import percentile, summarize, thread_hist  # noqa: E402
from lab import LabError, env, guest  # noqa: E402
from lab import report as rep  # noqa: E402
from lab.session import hook_config, lab_held  # noqa: E402

NR_2M = Path("/sys/devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages")
PREFIX = "nhbench-lat"
VCPUS = 1
MEMORY_MIB = 128
META = ("<metadata><numahook:domain xmlns:numahook='https://numahook.io/xmlns/domain/1'>"
        "<numahook:cpu dedicatedCpuPlacement='true' isolateEmulatorThread='true'>"
        "<numahook:numa><numahook:guestMappingPassthrough/></numahook:numa>"
        "<numahook:realtime mask='0'/></numahook:cpu></numahook:domain></metadata>")
#: what numahook renders for C on a 2-CPU host, written by hand for B and B-pin
PIN = "<vcpupin vcpu='0' cpuset='0'/><emulatorpin cpuset='1'/>"
CONFIGS = {
    "A": "plain libvirt: no pinning, no real-time",
    "B": "libvirt <vcpupin>, <emulatorpin> + <vcpusched fifo> on vCPU 0",
    "B-pin": "libvirt <vcpupin>, <emulatorpin> (B without the <vcpusched> it cannot start "
             "with)",
    "C": "numahook: dedicated CPUs, isolated emulator, passthrough, realtime mask=0, "
         "throttled=delegate",
}
MEASURED = ("A", "B-pin", "C")


@contextlib.contextmanager
def hog(workers: int, cpus: str | None) -> Iterator[subprocess.Popen[bytes] | None]:
    """``stress-ng --cpu workers --taskset cpus`` for the duration of the block."""
    if not workers:
        yield None
        return
    argv = ["stress-ng", "--cpu", str(workers), "--cpu-method", "matrixprod", "--quiet"]
    if cpus:
        argv += ["--taskset", cpus]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        time.sleep(0.5)  # let the workers fork and spin up
        if proc.poll() is not None:
            raise LabError(f"stress-ng exited at once with code {proc.returncode}")
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@contextlib.contextmanager
def extra_hugepages(pages: int) -> Iterator[None]:
    """Add ``pages`` 2 MiB pages on node 0 for one plain-libvirt guest, then take them back.

    Relative, never absolute: whatever others reserved meanwhile stays theirs. (C's pages
    come from numahook's hook, which reserves and returns its own.)
    """
    env.set_value(NR_2M, NR_2M.read_text().strip())  # remembered for the lab's teardown
    before = int(NR_2M.read_text())
    NR_2M.write_text(str(before + pages))
    got = int(NR_2M.read_text()) - before
    try:
        if got < pages:
            raise LabError(f"the kernel gave {got} of {pages} 2 MiB pages on node 0")
        yield
    finally:
        now = int(NR_2M.read_text())
        NR_2M.write_text(str(max(0, now - got)))


def render(xml: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "numahook.cli", "render", "-"],
                          input=xml.encode(), capture_output=True, check=False,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    if proc.returncode != 0:
        raise LabError(f"numahook render failed: {proc.stderr.decode().strip()}")
    return proc.stdout.decode()


def domain_xml(config: str, name: str, cmdline: str) -> str:
    extra = {"A": "", "B": f"<cputune>{PIN}<vcpusched vcpus='0' scheduler='fifo' "
             "priority='1'/></cputune>", "B-pin": f"<cputune>{PIN}</cputune>", "C": META}[config]
    xml = guest.probe_domain_xml(name, vcpus=VCPUS, memory_mib=MEMORY_MIB, hugepage_kib=2048,
                                 cmdline=cmdline, extra=extra)
    if config != "C":
        return xml
    out = render(xml)
    for want in ("vcpupin vcpu='0' cpuset='0'", "emulatorpin cpuset='1'"):
        if want not in out:
            raise LabError(f"numahook rendered C without {want}, unlike B: compare them")
    return out


def cpu_ticks(pid: int | None, tid: int) -> int:
    """utime+stime of one thread (the process's main thread too, not the whole process)."""
    try:
        fields = Path(f"/proc/{pid or tid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return 0


def schedstat(pid: int | None, tid: int) -> tuple[int, int]:
    """(ns on CPU, ns runnable but waiting) of one thread, from its schedstat."""
    try:
        f = Path(f"/proc/{pid or tid}/task/{tid}/schedstat").read_text().split()
        return int(f[0]), int(f[1])
    except (OSError, IndexError, ValueError):
        return 0, 0


#: /proc/stat's cpu line, in its order
STAT_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


def proc_stat() -> dict[str, int]:
    """The host's aggregate CPU time so far (USER_HZ ticks), by kind."""
    with open("/proc/stat") as f:
        vals = f.readline().split()[1:1 + len(STAT_FIELDS)]
    return dict(zip(STAT_FIELDS, (int(v) for v in vals)))


def steal_between(a: dict[str, int], b: dict[str, int]) -> dict[str, float]:
    """Steal and busy time between two /proc/stat readings, in % of all CPU time."""
    total = sum(b[k] - a[k] for k in STAT_FIELDS) or 1
    idle = (b["idle"] - a["idle"]) + (b["iowait"] - a["iowait"])
    return {"steal_pct": round(100 * (b["steal"] - a["steal"]) / total, 2),
            "busy_pct": round(100 * (total - idle) / total, 1)}


def rt_budget(pid: int | None, tid: int) -> dict[str, Any]:
    """cpu.rt_runtime_us / rt_period_us of a thread's cpu cgroup (v1) and of its parents."""
    try:
        lines = Path(f"/proc/{pid or tid}/task/{tid}/cgroup").read_text().splitlines()
    except OSError:
        return {}
    rel = next((ln.split(":", 2)[2] for ln in lines
                if "cpu" in ln.split(":", 2)[1].split(",")), None)
    if rel is None:
        return {}
    chain = []
    d = Path("/sys/fs/cgroup/cpu") / rel.lstrip("/")
    root = Path("/sys/fs/cgroup/cpu")
    while True:
        try:
            chain.append({"group": "/" + str(d.relative_to(root)).lstrip("."),
                          "rt_runtime_us": int((d / "cpu.rt_runtime_us").read_text()),
                          "rt_period_us": int((d / "cpu.rt_period_us").read_text())})
        except (OSError, ValueError):
            pass
        if d == root:
            break
        d = d.parent
    return {"group": "/" + rel.lstrip("/"), "chain": chain,
            "rt_runtime_us": chain[0]["rt_runtime_us"] if chain else None}


def parse_cyclictest(text: str) -> dict[str, Any]:
    """min/avg/max/overflows and the histogram (rows with a sample) of cyclictest -q -h."""
    out: dict[str, Any] = {"hist": {}}
    keys = {"# Min Latencies:": "min_us", "# Avg Latencies:": "avg_us",
            "# Max Latencies:": "max_us", "# Histogram Overflows:": "overflows",
            "# Total:": "total"}
    for line in text.splitlines():
        for head, key in keys.items():
            if line.startswith(head):
                out[key] = [int(v) for v in line[len(head):].split()]
        if line[:1].isdigit():
            f = line.split()
            vals = [int(v) for v in f[1:]]
            if any(vals):
                out["hist"][str(int(f[0]))] = vals
    return out


def host_floor(seconds: int, hist_us: int) -> dict[str, Any]:
    """cyclictest on the idle host itself, one FIFO thread per CPU: the machine's own floor.

    Before any guest runs: what a SCHED_FIFO thread on this machine meets with nothing
    competing on it, that is the kernel's and the outer hypervisor's noise (steal). A
    guest's figures cannot be judged below it. Called inside :func:`hog` it gives the
    same for a FIFO thread among the load the guests meet: the best a real-time vCPU,
    which is one such thread, could do on this machine under that load.
    """
    ncpu = os.cpu_count() or 1
    s0, t0 = proc_stat(), time.monotonic()
    proc = subprocess.run(["cyclictest", "-q", "-m", "-t", str(ncpu), "-a", "-p", "1",
                           "-i", "1000", "-D", str(seconds), "-h", str(hist_us)],
                          capture_output=True, text=True, check=False,
                          timeout=seconds + 60)
    s1 = proc_stat()
    if proc.returncode != 0:
        return {"error": proc.stderr.strip() or f"cyclictest exited {proc.returncode}"}
    parsed = parse_cyclictest(proc.stdout)
    per_cpu = []
    for t in range(ncpu):
        h, over = thread_hist(parsed, t)
        per_cpu.append({"cpu": t, "samples": sum(h.values()) + over,
                        "median_us": percentile(h, over, 0.5),
                        "p99_us": percentile(h, over, 0.99),
                        "p999_us": percentile(h, over, 0.999),
                        "max_us": parsed["max_us"][t]})
    worst = {k: (None if any(c[k] is None for c in per_cpu) else max(c[k] for c in per_cpu))
             for k in ("median_us", "p99_us", "p999_us", "max_us")}
    return {"seconds": seconds, "wall_s": round(time.monotonic() - t0, 1), "hist_us": hist_us,
            "argv": f"cyclictest -q -m -t {ncpu} -a -p 1 -i 1000 -D {seconds} -h {hist_us}",
            "per_cpu": per_cpu, **worst, **steal_between(s0, s1),
            "loadavg_1m": round(os.getloadavg()[0], 2)}


def thread_view(name: str) -> dict[str, Any]:
    """Policy and affinity of the vCPU threads and of QEMU's main (emulator) thread."""
    pid, tids = guest.vcpu_threads(name)
    out: dict[str, Any] = {"vcpus": {}}
    for v, t in sorted(tids.items()):
        try:
            out["vcpus"][str(v)] = {
                "tid": t, "policy": (os.sched_getscheduler(t) & ~os.SCHED_RESET_ON_FORK),
                "priority": os.sched_getparam(t).sched_priority,
                "cpus": sorted(os.sched_getaffinity(t))}
        except OSError:
            pass
    if pid:
        with contextlib.suppress(OSError):
            out["emulator_cpus"] = sorted(os.sched_getaffinity(pid))
    return out


#: a wait longer than this between two 0.25 s samples counts as a stall (see window_noise)
STALL_NS = 20_000_000


def window_noise(sched: list[tuple[float, dict[str, tuple[int, int]]]],
                 stats_: list[tuple[float, dict[str, int]]]) -> dict[str, Any]:
    """Steal time, and each thread's waits and busiest second, over cyclictest's window.

    ``wait_ms`` is the time a thread was runnable but not running. A SCHED_FIFO vCPU alone
    on its CPU waits only when its group is RT-throttled (it used its ``rt_runtime_us`` in
    the period) or a higher class runs; ``max_wait_ms_per_s`` is the worst such second.
    ``max_run_ms_per_s`` is its busiest second, against the 1 s period's RT budget.
    ``stalls`` counts the sample intervals in which it waited more than ``STALL_NS``.
    """
    out: dict[str, Any] = {}
    if len(stats_) >= 2:
        out.update(steal_between(stats_[0][1], stats_[-1][1]))
    if len(sched) < 2:
        return out
    threads: dict[str, Any] = {}
    for k in sched[0][1]:
        a, b = sched[0][1], sched[-1][1]
        worst_wait = worst_run = 0.0
        j = 0
        for i in range(len(sched)):  # every span of >= 1 s that starts at a sample
            while j < len(sched) and sched[j][0] - sched[i][0] < 1.0:
                j += 1
            if j >= len(sched):
                break
            dt = sched[j][0] - sched[i][0]
            worst_run = max(worst_run, (sched[j][1][k][0] - sched[i][1][k][0]) / 1e6 / dt)
            worst_wait = max(worst_wait, (sched[j][1][k][1] - sched[i][1][k][1]) / 1e6 / dt)
        # a FIFO thread alone on its CPU kept off it this long between two samples was
        # throttled (or a higher class ran): count those spells
        stalls = sum(1 for (_, p0), (_, p1) in zip(sched, sched[1:])
                     if p1[k][1] - p0[k][1] > STALL_NS)
        threads[k] = {"wait_ms": round((b[k][1] - a[k][1]) / 1e6, 1), "stalls": stalls,
                      "max_wait_ms_per_s": round(worst_wait, 1),
                      "max_run_ms_per_s": round(worst_run, 1)}
    out["threads"] = threads
    return out


def run_once(conn: Any, config: str, load: bool, duration: int, workers: int,
             seq: int, settle: int = 0, hist_us: int = 2000) -> dict[str, Any]:
    """Boot one probe guest in ``config`` and return its latency block (or its failure)."""
    import libvirt

    name = f"{PREFIX}-{config.lower()}-{os.getpid()}-{seq}"
    cmdline = (f"numahook.latency={duration} numahook.hist={hist_us}"
               + (f" numahook.settle={settle}" if settle else ""))
    xml = domain_xml(config, name, cmdline)
    dom = guest.define(conn, xml)
    result: dict[str, Any] = {"config": config, "load": load, "name": name}
    pages = contextlib.nullcontext() if config == "C" else extra_hugepages(MEMORY_MIB // 2)
    try:
        with pages, hog(workers if load else 0, "0-1"):
            t0 = time.monotonic()
            try:
                guest.start(dom)
            except LabError as exc:
                result["error"] = str(exc).split(": ", 1)[-1]
                return result
            time.sleep(1.0)
            result["host"] = thread_view(name)
            pid = guest.vcpu_threads(name)[0]
            threads = {f"vcpu{v}": d["tid"] for v, d in result["host"]["vcpus"].items()}
            if pid:
                threads["emulator"] = pid
            result["rt_budget"] = {k: rt_budget(pid, t) for k, t in threads.items()}
            hz = os.sysconf("SC_CLK_TCK")
            # CPU used per second of wall time by the vCPU and the emulator thread while
            # cyclictest runs: how close each comes to its delegated RT budget; the time
            # each waited while runnable; and the host's steal time
            series: list[tuple[float, dict[str, int]]] = []
            sched: list[tuple[float, dict[str, tuple[int, int]]]] = []
            stats_: list[tuple[float, dict[str, int]]] = []
            stop = threading.Event()

            def sample() -> None:
                while not stop.is_set():
                    now = {k: cpu_ticks(pid, t) for k, t in threads.items()}
                    if not all(now.values()):
                        return  # QEMU is gone
                    t_now = time.monotonic()
                    series.append((t_now, now))
                    sched.append((t_now, {k: schedstat(pid, t) for k, t in threads.items()}))
                    stats_.append((t_now, proc_stat()))
                    stop.wait(0.25)

            guest.wait_for_report(dom, until_off=False, timeout=240)  # booted
            begin = time.monotonic() + settle
            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            try:
                text = guest.wait_for_report(dom, until_off=True, latency=True,
                                             timeout=settle + duration + 180)
            finally:
                stop.set()
                sampler.join(timeout=5)
            window = [(t, v) for t, v in series if begin <= t <= begin + duration]
            if len(window) >= 2:
                (ta, a), (tb, b) = window[0], window[-1]
                result["cpu_share"] = {k: round((b[k] - a[k]) / hz / (tb - ta), 3)
                                       for k in threads}
            result.update(window_noise(
                [(t, v) for t, v in sched if begin <= t <= begin + duration],
                [(t, v) for t, v in stats_ if begin <= t <= begin + duration]))
            result["loadavg_1m"] = round(os.getloadavg()[0], 2)
            result["seconds"] = round(time.monotonic() - t0, 1)
        report = rep.parse(text)
        lat = report.latency
        if lat is None:
            raise LabError(f"{name}: the guest printed no latency block")
        result.update(exit=lat.exit_code, min_us=list(lat.min_us), avg_us=list(lat.avg_us),
                      max_us=list(lat.max_us), overflows=list(lat.overflows),
                      total=list(lat.total), stderr=list(lat.stderr), hist_us=lat.hist_us,
                      hist={str(k): list(v) for k, v in sorted(lat.histogram.items())})
        return result
    finally:
        try:
            guest.remove(conn, name)
        except (LabError, libvirt.libvirtError) as exc:
            print(f"warning: removing {name}: {exc}", file=sys.stderr)


def progress(r: dict[str, Any], seq: int, total: int, reps: int) -> None:
    """One line per run on stderr (bench/run's stdout carries only the JSON)."""
    where = "load" if r["load"] else "idle"
    rep = f"rep {r['rep'] + 1}/{reps}" if "rep" in r else "attempt"
    if "hist" not in r:
        what = f"{r.get('error', 'no result')}"
    else:
        h, over = thread_hist(r, 0)
        p99, p999 = percentile(h, over, 0.99), percentile(h, over, 0.999)
        edge = r.get("hist_us", 2000)
        def us(v: float | None) -> str:
            return f"> {edge}" if v is None else f"{v:.0f}"

        what = f"p99 {us(p99)} µs, p99.9 {us(p999)} µs, max {r['max_us'][0]} µs"
    vcpu = r.get("threads", {}).get("vcpu0", {})
    print(f"latency {r['config']} {where} {rep} ({seq}/{total}): {what} (steal "
          f"{r.get('steal_pct', '?')} %, load {r.get('loadavg_1m', '?')}, vCPU waited "
          f"{vcpu.get('wait_ms', '?')} ms, {vcpu.get('stalls', '?')} stalls)", file=sys.stderr,
          flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5, help="runs per configuration and load")
    ap.add_argument("--duration", type=int, default=10, help="cyclictest seconds per run")
    ap.add_argument("--settle", type=int, default=3,
                    help="seconds the guest idles after boot before cyclictest starts")
    ap.add_argument("--workers", type=int, default=4,
                    help="stress-ng --cpu workers on the 2 host CPUs under load")
    ap.add_argument("--configs", default=",".join(MEASURED))
    ap.add_argument("--loads", default="idle,load")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--hist-us", type=int, default=50000,
                    help="cyclictest's histogram width in µs, in the guest and on the host "
                    "(beyond it only a count is known)")
    ap.add_argument("--floor-seconds", type=int, default=10,
                    help="cyclictest on the idle host first, for this long (0: skip)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    result_stream = sys.stdout
    if args.json:  # only the JSON goes to stdout; anything else said meanwhile to stderr
        sys.stdout = sys.stderr
    if os.geteuid() != 0:
        raise SystemExit("bench/latency.py needs root: it runs libvirtd and guests")

    configs = [c for c in args.configs.split(",") if c]
    loads = [x == "load" for x in args.loads.split(",") if x]
    rng = random.Random(args.seed)
    runs: list[dict[str, Any]] = []
    b_attempts: list[dict[str, Any]] = []
    t_start = time.monotonic()
    load1 = os.getloadavg()
    from lab import apt

    apt.install(["stress-ng", "rt-tests"])  # bench/run installs them too; alone, do it here
    floor: dict[str, Any] = {}
    floor_load: dict[str, Any] = {}
    with lab_held(), hook_config("[realtime]\nthrottled = delegate\n"):
        if args.floor_seconds:
            print(f"latency: the idle host's own floor: cyclictest for {args.floor_seconds} s",
                  file=sys.stderr, flush=True)
            floor = host_floor(args.floor_seconds, args.hist_us)
            print(f"latency: idle host floor: p99 {floor.get('p99_us')} µs, p99.9 "
                  f"{floor.get('p999_us')} µs, max {floor.get('max_us')} µs, steal "
                  f"{floor.get('steal_pct')} %" if "error" not in floor else
                  f"latency: the host floor probe failed: {floor['error']}",
                  file=sys.stderr, flush=True)
            if any(loads):
                with hog(args.workers, "0-1"):
                    floor_load = host_floor(args.floor_seconds, args.hist_us)
                print(f"latency: the host's own FIFO thread under the same load: p99 "
                      f"{floor_load.get('p99_us')} µs, max {floor_load.get('max_us')} µs"
                      if "error" not in floor_load else
                      f"latency: the loaded host floor probe failed: {floor_load['error']}",
                      file=sys.stderr, flush=True)
        conn = env.connect()
        total_runs = len(loads) * (1 + args.reps * len(configs))
        try:
            seq = 0
            for load in loads:
                # B as a user would write it: libvirt must refuse it on this kernel
                seq += 1
                b = run_once(conn, "B", load, args.duration, args.workers, seq, args.settle,
                             args.hist_us)
                progress(b, seq, total_runs, args.reps)
                b_attempts.append({k: b.get(k) for k in ("load", "error", "exit")})
                if "error" not in b:
                    runs.append(b)
                for i in range(args.reps):
                    order = list(configs)
                    rng.shuffle(order)
                    for config in order:
                        seq += 1
                        r = run_once(conn, config, load, args.duration, args.workers, seq,
                                     args.settle, args.hist_us)
                        r["rep"] = i
                        runs.append(r)
                        progress(r, seq, total_runs, args.reps)
        finally:
            conn.close()

    summary = summarize(runs, configs, loads)
    elapsed = time.monotonic() - t_start
    out = {
        "configs": {k: CONFIGS[k] for k in ["A", "B", *configs] if k in CONFIGS},
        "vcpus": VCPUS, "memory_mib": MEMORY_MIB, "duration_s": args.duration,
        "settle_s": args.settle,
        "reps": args.reps, "hog": f"stress-ng --cpu {args.workers} --taskset 0-1",
        "thread": 0, "tcg": guest.TCG_NOTE,
        "hist_us": args.hist_us, "floor": floor, "floor_load": floor_load,
        "b_vcpusched": b_attempts, "summary": summary,
        "loadavg_before": [round(x, 2) for x in load1],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "elapsed_s": round(elapsed, 1),
        "runs": [{k: v for k, v in r.items() if k != "hist"} for r in runs],
    }
    if args.json:
        json.dump(out, result_stream, indent=2)
        result_stream.write("\n")
        return 0
    for b in b_attempts:
        print(f"B ({'load' if b['load'] else 'idle'}): "
              + (f"refused: {b['error']}" if b.get("error") else "started (not refused)"))
    for key, per in summary.items():
        print(f"{key}:")
        for config in configs:
            s = per[config]
            if not s.get("runs"):
                print(f"  {config:<5} no runs")
                continue
            print(f"  {config:<5} min {s['min_us']} median {s['median_us']} p99 {s['p99_us']} "
                  f"p99.9 {s['p999_us']} max {s['max_us']} us ({s['runs']} runs, "
                  f"{s['samples']} samples; per-run p99 {s.get('p99_us_spread')}, max "
                  f"{s.get('max_us_spread')})")
        print(f"  A/C: {per['ratio_A_over_C']}")
    print(f"{elapsed:.0f} s; load average before {load1[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
