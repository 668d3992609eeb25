"""In-process render time of a big passthrough domain on the bench-8n-256 fixture host.

Run from the repository root::

    /usr/bin/python3 bench/render.py            # human-readable lines
    /usr/bin/python3 bench/render.py --json     # one JSON object
    /usr/bin/python3 bench/render.py --profile  # also print where the time goes

The fixture tree (8 nodes, 2 sockets, 256 CPUs with SMT) is built once and the topology
read once, as the daemon does; each timed run is ``render.render(xml, inputs)`` on a fresh
copy of the domain text, which is what the hook does at ``prepare`` for a domain that is
not rendered yet. The re-render of an already rendered domain (the usual hook path, which
keeps the pinning) is timed as well. When the median of the big case exceeds the target,
the script profiles it with cProfile and prints the top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from numahook import NAMESPACE, config  # noqa: E402
from numahook.core import render  # noqa: E402
from numahook.core.plan import Inputs  # noqa: E402
from numahook.core.topology import Topology  # noqa: E402
from numahook.host import sysfs  # noqa: E402
from tests.fixtures.hosts import HOSTS, build_sysfs  # noqa: E402

HOST = "bench-8n-256"
TARGET_MS = 10.0


def domain_xml(vcpus: int, threads: int, memory_gib: int, realtime: bool) -> str:
    """A libvirt-style domain asking for dedicated CPUs, passthrough and an isolated emulator."""
    rt = "<numahook:realtime mask='^0'/>" if realtime else ""
    return f"""<domain type='kvm'>
  <name>bench-{vcpus}</name>
  <uuid>5e1b1a5e-0000-4000-8000-{vcpus:012d}</uuid>
  <metadata>
    <numahook:domain xmlns:numahook="{NAMESPACE}">
      <numahook:cpu dedicatedCpuPlacement="true" isolateEmulatorThread="true"
                    ioThreadsPolicy="auto">
        <numahook:numa><numahook:guestMappingPassthrough/></numahook:numa>{rt}
      </numahook:cpu>
    </numahook:domain>
  </metadata>
  <memory unit='GiB'>{memory_gib}</memory>
  <memoryBacking>
    <hugepages>
      <page size='2048' unit='KiB'/>
    </hugepages>
  </memoryBacking>
  <vcpu placement='static'>{vcpus}</vcpu>
  <iothreads>2</iothreads>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
  </os>
  <features>
    <acpi/>
    <apic/>
  </features>
  <cpu mode='host-passthrough'>
    <topology sockets='1' dies='1' cores='{vcpus // threads}' threads='{threads}'/>
    <feature policy='require' name='tsc-deadline'/>
  </cpu>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='/var/lib/libvirt/images/bench.qcow2'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'/>
    <memballoon model='none'/>
  </devices>
</domain>
"""


def percentile(samples: list[float], p: float) -> float:
    ordered = sorted(samples)
    k = (len(ordered) - 1) * p
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def timed(fn: Callable[[], object], runs: int, warmup: int = 5) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        fn()
        samples.append((time.perf_counter_ns() - t0) / 1e6)
    return {"median_ms": statistics.median(samples), "p10_ms": percentile(samples, 0.10),
            "p90_ms": percentile(samples, 0.90), "min_ms": min(samples),
            "max_ms": max(samples), "runs": runs}


def profile(fn: Callable[[], object], runs: int, top: int = 15) -> str:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(runs):
        fn()
    prof.disable()
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.strip_dirs().sort_stats("cumulative").print_stats(top)
    stats.sort_stats("tottime").print_stats(top)
    return out.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--profile", action="store_true",
                    help="profile the big case even when it is within the target")
    args = ap.parse_args(argv)

    spec = HOSTS[HOST]
    with tempfile.TemporaryDirectory(prefix="numahook-bench-") as tmp:
        t0 = time.perf_counter()
        root = build_sysfs(Path(tmp) / "sys", spec)
        build_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        topo: Topology = sysfs.read_topology(root)
        read_ms = (time.perf_counter() - t0) * 1e3
    inputs = Inputs(topology=topo, available=frozenset(topo.cpus), config=config.Config(),
                    emit_vcpusched=True, default_page_kib=2048)
    n_nodes, n_cpus = len(topo.nodes), len(topo.cpus)

    cases = [
        ("render", 240, 2, 240, False),
        ("render", 240, 2, 240, True),
        ("render", 4, 1, 4, False),
    ]
    results = []
    big_fn: Callable[[], object] | None = None
    for kind, vcpus, threads, mem, rt in cases:
        xml = domain_xml(vcpus, threads, mem, rt)
        first = render.render(xml, inputs)  # also proves the case renders at all
        assert len(first.plan.vcpu_pins) == vcpus

        def fresh(xml: str = xml) -> object:
            return render.render(xml, inputs)

        def again(xml: str = first.xml) -> object:
            return render.render(xml, inputs)

        for label, fn in (("fresh", fresh), ("re-render", again)):
            stats = timed(fn, args.runs)
            results.append({
                "case": f"{kind} {vcpus} vCPUs" + (" realtime" if rt else ""),
                "path": label, "vcpus": vcpus, "threads": threads, "realtime": rt,
                "cells": len(first.plan.cells), "nodes": n_nodes, "cpus": n_cpus,
                "target_ms": TARGET_MS if vcpus == 240 else None, **stats,
            })
        if vcpus == 240 and not rt:
            big_fn = fresh

    big = results[0]
    over = big["median_ms"] > TARGET_MS
    prof_text = profile(big_fn, max(20, args.runs // 10)) if (over or args.profile) and \
        big_fn else ""

    if args.json:
        json.dump({"host": HOST, "nodes": n_nodes, "cpus": n_cpus, "python": sys.version.split()[0],
                   "fixture_build_s": round(build_s, 3), "topology_read_ms": round(read_ms, 3),
                   "target_ms": TARGET_MS, "within_target": not over, "results": results,
                   "profile": prof_text or None}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 0

    print(f"host {HOST}: {n_nodes} nodes, {n_cpus} CPUs (fixture built in {build_s:.1f} s, "
          f"topology read in {read_ms:.1f} ms); {args.runs} runs each, Python "
          f"{sys.version.split()[0]}")
    for r in results:
        line = (f"{r['case']:<24} ({r['path']:<9}) / {r['cells']} cells / {n_nodes} nodes / "
                f"{n_cpus} CPUs: median {r['median_ms']:.2f} ms (p10 {r['p10_ms']:.2f}, "
                f"p90 {r['p90_ms']:.2f})")
        if r["target_ms"]:
            line += f", target <= {r['target_ms']:g} ms"
        print(line)
    print(f"render 240 vCPUs / {n_nodes} nodes / {n_cpus} CPUs: median {big['median_ms']:.1f} ms "
          f"(p10 {big['p10_ms']:.1f}, p90 {big['p90_ms']:.1f}), target <= {TARGET_MS:g} ms: "
          + ("OVER TARGET" if over else "ok"))
    if prof_text:
        print("\nprofile of the 240-vCPU fresh render:")
        print(prof_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
