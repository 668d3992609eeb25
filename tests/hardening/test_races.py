"""Races: N >= 8 domains start and stop at once through the real hook (issue 8, part 2).

Each round, every domain runs one randomized libvirt lifecycle in its own thread, calling
``libvirt-hooks/numahook`` as libvirtd does (``prepare begin -``, then ``started begin -``,
``stopped end -``, ``release end -``; a refused or failed start goes straight to
``stopped``/``release``; a retried start calls ``prepare`` twice). The hugepages are this
machine's real 2 MiB pages on node 0. Between ``prepare`` and ``started`` a stand-in for
QEMU maps and touches the domain's hugepages (MAP_HUGETLB, as QEMU's preallocation does)
and holds them until the VM stops; it exits before ``stopped`` runs, as QEMU does, so the
pages another start counts as free are really free, and the "stop window" (QEMU gone, the
claim not yet released) is part of every round.

The definitions are rendered beforehand as numahookd would (each pinned to CPUs of node
0), so they compete for the same CPUs: at ``prepare`` a domain whose CPUs are taken is
refused as stale, exactly as on a host.

Checked continuously by a monitor that takes the state lock (so no hook is half-way):
- no CPU is held by two claims;
- node 0's ``nr_hugepages`` is the baseline plus exactly what the claims say we added,
  and no write is pending;
- the pages promised to domains that have been admitted but not mapped yet are free;
and after every round: every admitted domain could map its pages, no claim is left, and
``nr_hugepages`` is back at its starting value.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from numahook.core import cpulist
from numahook.errors import NumahookError
from tests.support import claims

from .conftest import (
    FIGURES,
    LONG,
    PAGE_KIB,
    PY,
    Host,
    RealPool,
    domain_xml,
    make_host,
    prerender,
    scaled,
    skip_if_disturbed,
    uuid_of,
)

N_DOMAINS = 8
ROUNDS = scaled(10, 150)
POOL = (0, PAGE_KIB)

#: a stand-in for QEMU's guest RAM: map and touch ``n`` 2 MiB hugepages, hold them
STANDIN = r"""
import mmap, sys
n = int(sys.argv[1])
try:
    m = mmap.mmap(-1, n * 2097152, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x40000)
    for i in range(n):
        m[i * 2097152] = 1
except OSError as exc:
    print("fail", exc.errno, flush=True)
else:
    print("ok", flush=True)
sys.stdin.read()
"""


@dataclass
class Dom:
    name: str
    uuid: str
    xml: str
    cpus: frozenset[int]
    pages: int


@dataclass
class RoundLog:
    admitted: int = 0
    refused: int = 0
    calls: int = 0
    mapped: int = 0
    #: domains whose stand-in QEMU maps (or may map) their pages right now
    mapping: set[str] = field(default_factory=set)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, text: str) -> None:
        with self.lock:
            self.failures.append(text)


def node0_cpus() -> frozenset[int]:
    return cpulist.parse(Path("/sys/devices/system/node/node0/cpulist").read_text())


def make_domains(host: Host, rng: random.Random) -> list[Dom]:
    """N domains of 1 or 2 CPUs and 1-4 pages, each rendered onto some node-0 CPUs."""
    cfg = host.cfg()
    cpus = sorted(node0_cpus() & cpulist.parse(Path("/sys/devices/system/cpu/online")
                                               .read_text()))
    out = []
    for i in range(N_DOMAINS):
        if i < len(cpus):  # one single-CPU domain per CPU, so several can hold CPUs at once
            shape, pick = "one", frozenset({cpus[i]})
        else:
            shape = rng.choice(["one", "one", "one", "two", "isolated"] if len(cpus) > 1
                               else ["one"])
            pick = frozenset(rng.sample(cpus, 1 if shape == "one" else 2))
        pages = rng.randint(1, 4)
        name = f"race{i}"
        xml = domain_xml(name, uuid_of(100 + i), pages=pages, vcpus=2 if shape == "two" else 1,
                         isolate=shape == "isolated")
        rendered = prerender(cfg, xml, pick)
        out.append(Dom(name, uuid_of(100 + i), rendered, pick, pages))
    return out


class Monitor(threading.Thread):
    """Checks the invariants under the state lock while the round runs."""

    def __init__(self, host: Host, pool: RealPool, log: RoundLog) -> None:
        super().__init__(daemon=True)
        self.host, self.pool, self.log = host, pool, log
        self.stop = threading.Event()
        self.snapshots = 0
        self.max_claims = 0

    def check(self) -> None:
        sd = self.host.statedir()
        sd.ensure()
        with sd.lock(60):
            held = sd.list_claims()
            nr, free = self.pool.nr(), self.pool.free()
            with self.log.lock:
                mapping = set(self.log.mapping)
        self.snapshots += 1
        self.max_claims = max(self.max_claims, len(held))
        seen: dict[int, str] = {}
        for c in held:
            for cpu in c.cpus:
                if cpu in seen:
                    self.log.fail(f"CPU {cpu} held by {seen[cpu]} and {c.name}")
                seen[cpu] = c.name
            if claims.pending(c):
                self.log.fail(f"{c.name} has a pending hugepage write under the lock")
        added = sum(claims.added(c).get(POOL, 0) for c in held)
        if nr != self.pool.baseline + added:
            # pages "given back" while another domain's QEMU used them stay as surplus
            surplus = self.pool.surplus()
            self.log.fail(f"nr_hugepages {nr} != baseline {self.pool.baseline} + {added} "
                          f"added by {[(c.name, claims.added(c)) for c in held]} "
                          f"(surplus {surplus})")
        promised = sum(claims.needed(c).get(POOL, 0) for c in held
                       if c.phase in ("claimed", "reserved") and c.uuid not in mapping)
        if free < promised:
            self.log.fail(f"{free} pages free but {promised} promised to admitted domains")

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.check()
            except (NumahookError, OSError, ValueError) as exc:  # report it in the test
                self.log.fail(f"monitor: {type(exc).__name__}: {exc}")
            self.stop.wait(0.02)


def hook(host: Host, dom: Dom, op: str, subop: str, log: RoundLog) -> int:
    proc = host.hook(dom.xml, dom.name, op, subop)
    with log.lock:
        log.calls += 1
    if "Traceback" in proc.stderr or proc.stderr.count("\n") > 1:
        log.fail(f"{dom.name} {op}: {proc.stderr[-500:]}")
    if proc.returncode == 1 and not proc.stderr.startswith("numahook: "):
        log.fail(f"{dom.name} {op} exit 1 without a message: {proc.stderr!r}")
    if op in ("stopped", "release") and proc.returncode != 0:
        log.fail(f"{dom.name} {op} exited {proc.returncode}")
    return proc.returncode


def lifecycle(host: Host, dom: Dom, rng: random.Random, log: RoundLog) -> None:
    """One randomized start/stop of ``dom``, in libvirt's order."""
    kind = rng.choice(["start", "start", "start", "start", "failed-start", "retried-start"])
    time.sleep(rng.uniform(0, 0.05))
    rc = hook(host, dom, "prepare", "begin", log)
    if kind == "retried-start":  # the first attempt died before release; libvirt retries
        time.sleep(rng.uniform(0, 0.02))
        rc = hook(host, dom, "prepare", "begin", log)
    claim = host.statedir().load(dom.uuid)
    if rc != 0:
        with log.lock:
            log.refused += 1
        if claim is not None:
            log.fail(f"{dom.name} was refused but left a claim: {claim}")
    else:
        with log.lock:
            log.admitted += 1
        if claim is None or claim.cpus != dom.cpus:
            log.fail(f"{dom.name} was admitted but holds {claim}")
    standin = None
    try:
        if rc == 0 and kind != "failed-start":
            # QEMU launches and preallocates the guest RAM, then libvirt runs "started"
            time.sleep(rng.uniform(0, 0.03))
            with log.lock:
                log.mapping.add(dom.uuid)
            standin = subprocess.Popen([PY, "-c", STANDIN, str(dom.pages)],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            assert standin.stdout is not None
            got = standin.stdout.readline().strip()
            if got != "ok":
                log.fail(f"{dom.name} was admitted but could not map its {dom.pages} "
                         f"hugepages: {got}")
            else:
                with log.lock:
                    log.mapped += dom.pages
            if hook(host, dom, "started", "begin", log) != 0:
                log.fail(f"{dom.name}: started failed")
            time.sleep(rng.uniform(0, 0.05))
    finally:
        if standin is not None:  # the VM stops: QEMU exits first ...
            standin.kill()
            standin.wait()
        with log.lock:
            log.mapping.discard(dom.uuid)
    time.sleep(rng.uniform(0, 0.03))  # ... and libvirt runs the hooks a moment later
    hook(host, dom, "stopped", "end", log)
    hook(host, dom, "release", "end", log)


@pytest.fixture
def race_host(tmp_path: Path, real_pool: RealPool) -> Host:
    return make_host(tmp_path / "host", sysfs="real")


def test_parallel_starts_never_double_book_and_always_balance(race_host: Host,
                                                              real_pool: RealPool) -> None:
    seed = int(os.environ.get("NUMAHOOK_RACE_SEED", "0")) or (
        random.randrange(1 << 30) if LONG else 8)
    print(f"race seed {seed} (NUMAHOOK_RACE_SEED={seed} repeats this run)")
    rng = random.Random(seed)
    doms = make_domains(race_host, rng)
    assert len(doms) >= 8
    totals = RoundLog()
    snapshots = max_claims = 0
    for rnd in range(ROUNDS):
        log = RoundLog()
        monitor = Monitor(race_host, real_pool, log)
        monitor.start()
        threads = [threading.Thread(target=lifecycle,
                                    args=(race_host, d, random.Random(seed * 1000 + rnd * 50 + i),
                                          log))
                   for i, d in enumerate(doms)]
        try:
            for t in threads:
                t.start()
            for t in threads:
                t.join(600)
        finally:
            monitor.stop.set()
            monitor.join(120)
        monitor.check()  # once more, at rest
        snapshots += monitor.snapshots
        max_claims = max(max_claims, monitor.max_claims)
        leftover = race_host.claim_files()
        if log.failures or leftover or real_pool.nr() != real_pool.baseline:
            skip_if_disturbed(f"round {rnd}")
        FIGURES.add("races", "rounds")
        FIGURES.add("races", "hook-calls", log.calls)
        FIGURES.add("races", "starts-admitted", log.admitted)
        FIGURES.add("races", "starts-refused", log.refused)
        FIGURES.add("races", "hugepages-mapped", log.mapped)
        FIGURES.add("races", "invariant-checks", monitor.snapshots + 1)
        FIGURES.add("races", "violations", len(log.failures))
        FIGURES.add("races", "claims-left", len(leftover))
        FIGURES.add("races", "pages-leaked", abs(real_pool.nr() - real_pool.baseline))
        FIGURES.maximum("races", "domains", len(doms))
        FIGURES.maximum("races", "max-concurrent-claims", monitor.max_claims)
        assert log.failures == [], f"round {rnd} (seed {seed}): {log.failures[:5]}"
        assert leftover == [], f"round {rnd}: claims left {leftover}"
        assert real_pool.nr() == real_pool.baseline, f"round {rnd}: pages not given back"
        assert real_pool.free() == real_pool.nr()
        totals.admitted += log.admitted
        totals.refused += log.refused
    # the rounds really raced: some starts won, some lost the CPUs to another domain
    assert totals.admitted > 0 and totals.refused > 0, (totals.admitted, totals.refused)
    assert max_claims >= 1


def test_pages_of_a_stopping_domain_are_not_promised_to_a_starting_one(
        race_host: Host, real_pool: RealPool) -> None:
    FIGURES.add("races", "stop-window-replays")
    cfg = race_host.cfg()
    cpus = sorted(node0_cpus())
    if len(cpus) < 2:
        pytest.skip("needs two CPUs on node 0")
    pages = real_pool.free() + 2  # every free page (the administrator's too) and 2 more
    x = Dom("stopping", uuid_of(150), prerender(cfg, domain_xml("stopping", uuid_of(150),
                                                                pages=pages), {cpus[0]}),
            frozenset({cpus[0]}), pages)
    y = Dom("starting", uuid_of(151), prerender(cfg, domain_xml("starting", uuid_of(151),
                                                                pages=pages), {cpus[1]}),
            frozenset({cpus[1]}), pages)
    log = RoundLog()
    assert hook(race_host, x, "prepare", "begin", log) == 0
    qemu_x = subprocess.Popen([PY, "-c", STANDIN, str(pages)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    qemu_y = None
    try:
        assert qemu_x.stdout is not None and qemu_x.stdout.readline().strip() == "ok"
        assert hook(race_host, x, "started", "begin", log) == 0
        qemu_x.kill()  # the guest shuts down: QEMU exits first ...
        qemu_x.wait()
        assert hook(race_host, y, "prepare", "begin", log) == 0  # ... another start runs ...
        assert hook(race_host, x, "stopped", "end", log) == 0  # ... then libvirt's hooks
        assert hook(race_host, x, "release", "end", log) == 0
        qemu_y = subprocess.Popen([PY, "-c", STANDIN, str(pages)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert qemu_y.stdout is not None
        got = qemu_y.stdout.readline().strip()
        assert got == "ok", f"the admitted domain's QEMU could not allocate its RAM: {got}"
    finally:
        for q in (qemu_x, qemu_y):
            if q is not None and q.poll() is None:
                q.kill()
                q.wait()
        race_host.hook(y.xml, y.name, "stopped", "end")
        race_host.hook(y.xml, y.name, "release", "end")
    assert log.failures == []
