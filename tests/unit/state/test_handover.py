"""A stopping domain's pages go to the domain counting on them, not back to the pool."""

from __future__ import annotations

from pathlib import Path

import pytest

from numahook.config import Config
from numahook.state.claims import Claim
from numahook.state.recovery import rollback
from numahook.state.statedir import ClaimJournal, StateDir
from tests.support import claims

POOL = (0, 2048)


def pool_tree(tmp: Path, nr: int, free: int) -> Path:
    d = tmp / "sys/devices/system/node/node0/hugepages/hugepages-2048kB"
    d.mkdir(parents=True)
    (d / "nr_hugepages").write_text(f"{nr}\n")
    (d / "free_hugepages").write_text(f"{free}\n")
    (d / "surplus_hugepages").write_text("0\n")
    return tmp / "sys"


def uuid(n: int) -> str:
    return f"5e1b1a5e-0000-4000-8000-{n:012d}"


@pytest.mark.parametrize("taker_phase,free", [("reserved", 32), ("running", 0)],
                         ids=["starting, not mapped yet", "already mapped"])
def test_pages_a_starting_domain_counts_on_are_handed_over(tmp_path: Path, taker_phase: str,
                                                           free: int) -> None:
    sysfs = pool_tree(tmp_path, nr=32, free=free)
    state = StateDir(str(tmp_path / "state"))
    state.ensure()
    stopping = claims.make(uuid=uuid(1), name="stopping", hugepages_added={POOL: 32},
                           need={POOL: 32}, phase="running", created=1.0)
    starting = claims.make(uuid=uuid(2), name="starting", need={POOL: 32}, phase=taker_phase,
                           created=2.0)
    state.save(stopping)
    state.save(starting)
    with state.lock(5):
        assert rollback(ClaimJournal(state, stopping), Config(sysfs_root=str(sysfs)))
    knob = sysfs / "devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages"
    assert knob.read_text().strip() == "32"  # nothing taken from under the starting domain
    assert state.load(uuid(1)) is None
    taker = state.load(uuid(2))
    assert taker is not None and claims.added(taker) == {POOL: 32}  # it gives them back later


def test_without_anyone_waiting_every_added_page_goes_back(tmp_path: Path) -> None:
    sysfs = pool_tree(tmp_path, nr=40, free=40)
    state = StateDir(str(tmp_path / "state"))
    state.ensure()
    stopping = claims.make(uuid=uuid(1), name="stopping", hugepages_added={POOL: 32},
                           need={POOL: 32}, phase="running")
    state.save(stopping)
    with state.lock(5):
        assert rollback(ClaimJournal(state, stopping), Config(sysfs_root=str(sysfs)))
    knob = sysfs / "devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages"
    assert knob.read_text().strip() == "8"


def test_a_claim_from_an_earlier_boot_gives_nothing_back(tmp_path: Path) -> None:
    """/run on disk kept the record over a reboot; the pages it added went with the boot,
    and these 40 are the new boot's (the administrator's)."""
    sysfs = pool_tree(tmp_path, nr=40, free=40)
    state = StateDir(str(tmp_path / "state"))
    state.ensure()
    old = claims.make(uuid=uuid(1), name="before-reboot", hugepages_added={POOL: 32},
                      need={POOL: 32}, phase="running",
                      boot="00000000-0000-4000-8000-000000000000")
    other = claims.make(uuid=uuid(2), name="also-before", hugepages_added={POOL: 8},
                        phase="running", boot="00000000-0000-4000-8000-000000000000")
    legacy = Claim(uuid=uuid(3), name="numahook-0.1.0", phase="reserved", boot="")
    for c in (old, other, legacy):
        state.save(c)
    assert old.from_earlier_boot() and not legacy.from_earlier_boot()
    assert not Claim(uuid=uuid(4), name="now").from_earlier_boot()  # this boot by default
    with state.lock(5):
        assert rollback(ClaimJournal(state, old), Config(sysfs_root=str(sysfs)))
    knob = sysfs / "devices/system/node/node0/hugepages/hugepages-2048kB/nr_hugepages"
    assert knob.read_text().strip() == "40"
    assert state.load(uuid(1)) is None and state.load(uuid(2)) is None  # both dropped
    assert state.load(uuid(3)) == legacy  # a record without a boot id is kept
