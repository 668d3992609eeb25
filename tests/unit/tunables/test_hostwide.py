"""Host-wide tunables derive a shared file from every running claim (numahook/tunables/
hostwide.py), on a fixture file shaped like the workqueue cpumask.

The per-domain way, each domain restoring its own snapshot at stop, is shown too: it puts
a running domain's CPUs back in the mask as soon as the domains stop in start order.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from numahook import tunables
from numahook.config import Config
from numahook.core import cpulist
from numahook.records import replace
from numahook.state.claims import Claim
from numahook.state.recovery import settle_host
from numahook.state.statedir import ClaimJournal, StateDir
from numahook.tunables.hostwide import HostWide

HOST = "0-7"


class Mask(HostWide):
    """The workqueue cpumask's shape: the host's CPUs minus every running domain's."""

    name = "mask"

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writes = 0

    def read(self, cfg: Config) -> str:
        return self.path.read_text().strip()

    def write(self, cfg: Config, value: str) -> None:
        self.writes += 1
        self.path.write_text(value + "\n")

    def combine(self, original: str, entries: list[Any]) -> str:
        taken = set().union(*(e.cpus for e in entries))
        return cpulist.format(cpulist.parse(original, "mask") - taken)

    def decode(self, data: Any) -> Cpus:
        return Cpus(frozenset(data["cpus"]))


class Cpus:
    """The entry: the CPUs a domain wants kept out of the mask."""

    def __init__(self, cpus: frozenset[int]) -> None:
        self.cpus = cpus

    def to_json(self) -> dict[str, Any]:
        return {"cpus": sorted(self.cpus)}


def uuid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Mask, StateDir, Config]:
    (tmp_path / "cpumask").write_text(HOST + "\n")
    state = StateDir(str(tmp_path / "state"))
    state.ensure()
    mask = Mask(tmp_path / "cpumask")
    monkeypatch.setattr(tunables, "REGISTRY", (*tunables.REGISTRY, mask))  # claims decode it
    return mask, state, Config(state_dir=state.path)


def start(state: StateDir, cfg: Config, mask: Mask, n: int, cpus: set[int]) -> None:
    with state.lock(5):
        state.save(Claim(uuid=uuid(n), name=f"vm{n}", cpus=frozenset(cpus),
                         tunables={mask.name: Cpus(frozenset(cpus))}))
        settle_host(state, cfg, (mask,))


def stop(state: StateDir, cfg: Config, mask: Mask, n: int) -> None:
    with state.lock(5):
        state.remove(uuid(n))
        settle_host(state, cfg, (mask,))


@pytest.mark.parametrize("order", [(1, 2), (2, 1)], ids=["start order", "reverse order"])
def test_the_file_follows_the_union_of_running_claims(host: Any, order: tuple[int, int]) -> None:
    mask, state, cfg = host
    start(state, cfg, mask, 1, {2, 3})
    assert mask.read(cfg) == "0-1,4-7"
    start(state, cfg, mask, 2, {4, 5})
    assert mask.read(cfg) == "0-1,6-7"
    assert state.original("mask") == HOST  # saved once, before the first write
    first, second = order
    stop(state, cfg, mask, first)
    assert mask.read(cfg) == ("0-1,4-7" if first == 2 else "0-3,6-7")
    stop(state, cfg, mask, second)
    assert mask.read(cfg) == HOST  # the last claim gone: the host's own value back
    assert state.original("mask") is None


def test_snapshots_per_domain_would_corrupt_it(host: Any) -> None:
    """What the derived kind avoids: A saves the host's mask, B saves A's result, A stops and
    restores the host's mask while B runs, so B's CPUs take unbound work again."""
    mask, _state, cfg = host
    snap_a = mask.read(cfg)
    mask.write(cfg, "0-1,4-7")
    snap_b = mask.read(cfg)
    mask.write(cfg, "0-1,6-7")
    mask.write(cfg, snap_a)  # A stops first
    assert {4, 5} <= cpulist.parse(mask.read(cfg), "mask")  # B's CPUs are back: wrong
    mask.write(cfg, snap_b)  # B stops
    assert mask.read(cfg) != HOST  # and the host's own value is lost


def test_a_crash_after_the_first_write_keeps_the_hosts_value(host: Any) -> None:
    """The original is saved before the file is written, so a claim dropped by recovery
    after a crash still leads back to the host's value, and a second start does not save
    a changed file as the original."""
    mask, state, cfg = host
    start(state, cfg, mask, 1, {2, 3})
    start(state, cfg, mask, 2, {6})
    assert state.original("mask") == HOST
    with state.lock(5):  # numahook killed: recovery drops both claims
        state.remove(uuid(1))
        state.remove(uuid(2))
    stop(state, cfg, mask, 1)  # the next change to the claims settles the file
    assert mask.read(cfg) == HOST


def test_nothing_is_written_when_the_value_is_already_right(host: Any) -> None:
    mask, state, cfg = host
    start(state, cfg, mask, 1, {2})
    writes = mask.writes
    with state.lock(5):
        claim = state.load(uuid(1))
        assert claim is not None
        ClaimJournal(state, replace(claim, phase="running")).update()
        settle_host(state, cfg, (mask,))
    assert mask.writes == writes


def test_a_registry_without_host_wide_tunables_reads_no_claim(
        host: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Starts pay nothing for the kind while no registered tunable is host-wide."""
    _mask, state, cfg = host

    def refuse() -> list[Claim]:
        raise AssertionError("listed the claims")

    monkeypatch.setattr(state, "list_claims", refuse)
    settle_host(state, cfg)
