"""hugepages: per-node reservation, read-back, compaction retry, rollback, crash recovery."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from numahook.errors import HostError, Refusal, StateError
from numahook.host import hugepages
from numahook.host.hugepages import Pending, PoolKey
from tests.support.kernel import FakeKernel

ROOT = os.geteuid() == 0
REAL_POOL = Path("/sys/devices/system/node/node0/hugepages/hugepages-2048kB")


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
    k = FakeKernel(tmp_path, monkeypatch)
    k.add(0, 2048, nr=16, free=10)
    k.add(0, 1048576)
    k.add(1, 2048, nr=0)
    return k


def reserve(k: FakeKernel, need: dict[PoolKey, int], journal: hugepages.Journal | None = None
            ) -> dict[PoolKey, int]:
    return hugepages.reserve(need, str(k.sys), str(k.proc), journal)


def test_supported_sizes_and_counts(kernel: FakeKernel) -> None:
    assert hugepages.supported_sizes(str(kernel.sys), 0) == [2048, 1048576]
    assert hugepages.counts(str(kernel.sys), (0, 2048)) == (16, 10, 0)


def test_reserve_adds_only_the_deficit_and_release_gives_it_back(kernel: FakeKernel) -> None:
    added = reserve(kernel, {(0, 2048): 64, (1, 2048): 8, (0, 1048576): 0})
    assert added == {(0, 2048): 54, (1, 2048): 8}
    assert kernel.read((0, 2048)) == 70 and kernel.read((0, 2048), "free") == 64
    hugepages.release(added, str(kernel.sys))
    assert kernel.read((0, 2048)) == 16 and kernel.read((1, 2048)) == 0


def test_reserve_nothing_when_enough_is_free(kernel: FakeKernel) -> None:
    assert reserve(kernel, {(0, 2048): 10}) == {}
    assert kernel.writes == []


def test_release_never_goes_below_zero_or_touches_admin_pages(kernel: FakeKernel) -> None:
    hugepages.release({(0, 2048): 4}, str(kernel.sys))
    assert kernel.read((0, 2048)) == 12  # exactly 4 less, the admin's 12 stay
    hugepages.release({(1, 2048): 5}, str(kernel.sys))
    assert kernel.read((1, 2048)) == 0


def test_short_kernel_compacts_retries_once_and_succeeds(kernel: FakeKernel) -> None:
    kernel.capacity[(0, 2048)] = 20
    kernel.after_compaction[(0, 2048)] = 40
    added = reserve(kernel, {(0, 2048): 64})
    assert added == {(0, 2048): 54}
    assert kernel.compactions == 1
    assert kernel.writes == [((0, 2048), 70), ((0, 2048), 70)]


def test_compaction_can_be_switched_off(kernel: FakeKernel) -> None:
    kernel.capacity[(0, 2048)] = 20
    kernel.after_compaction[(0, 2048)] = 40
    with pytest.raises(Refusal, match="has 30 free"):
        hugepages.reserve({(0, 2048): 64}, str(kernel.sys), str(kernel.proc), compact=False)
    assert kernel.compactions == 0
    assert kernel.read((0, 2048)) == 16


def test_still_short_gives_back_everything_and_explains(kernel: FakeKernel) -> None:
    kernel.capacity[(0, 2048)] = 0
    with pytest.raises(Refusal) as info:
        reserve(kernel, {(1, 2048): 8, (0, 2048): 64})
    assert str(info.value) == (
        "not enough 2048 kB hugepages: node 0 needs 64 and has 10 free (the kernel gave 0 of "
        "54 asked); free memory on node 0 or lower the domain's memory"
    )
    assert info.value.check == "hugepages"
    assert kernel.compactions == 1
    assert kernel.read((0, 2048)) == 16 and kernel.read((1, 2048)) == 0, "node 1 given back"


def test_shortage_message_counts_what_the_kernel_gave(kernel: FakeKernel) -> None:
    kernel.capacity[(0, 2048)] = 10
    kernel.capacity[(1, 2048)] = 3
    with pytest.raises(Refusal) as info:
        reserve(kernel, {(0, 2048): 64, (1, 2048): 8})
    assert str(info.value) == (
        "not enough 2048 kB hugepages: node 0 needs 64 and has 20 free (the kernel gave 10 of "
        "54 asked), node 1 needs 8 and has 3 free (the kernel gave 3 of 8 asked); free memory "
        "on nodes 0, 1 or lower the domain's memory"
    )
    assert kernel.read((0, 2048)) == 16 and kernel.read((1, 2048)) == 0


def test_shortage_names_the_domains_whose_pages_are_there(kernel: FakeKernel) -> None:
    kernel.capacity[(0, 2048)] = 10
    kernel.capacity[(1, 2048)] = 3
    held = {(0, 2048): {"web": 8, "db": 40, "a": 1, "b": 1, "c": 1}, (1, 1048576): {"gig": 1}}
    with pytest.raises(Refusal) as info:
        hugepages.reserve({(0, 2048): 64, (1, 2048): 8}, str(kernel.sys), str(kernel.proc),
                          held=held)
    assert str(info.value) == (
        "not enough 2048 kB hugepages: node 0 needs 64 and has 20 free (the kernel gave 10 of "
        "54 asked), while db takes 40 pages there, web 8, a 1, b 1 and 1 more domain 1, "
        "node 1 needs 8 and has 3 free (the kernel gave 3 of 8 asked); free memory on nodes "
        "0, 1, stop db, web, a, b or another, or lower the domain's memory"
    )


def test_unknown_page_size_names_supported_sizes(kernel: FakeKernel) -> None:
    with pytest.raises(Refusal, match=r"node 0 has no 4096 kB hugepages; this host supports "
                       r"2048 kB and 1048576 kB") as info:
        reserve(kernel, {(0, 2048): 1, (0, 4096): 1})
    assert info.value.check == "hugepage-size"
    assert kernel.writes == [], "nothing is touched before every pool is known"
    with pytest.raises(Refusal, match="NUMA node 7 does not exist"):
        reserve(kernel, {(7, 2048): 1})


def test_refused_write_rolls_back_other_pools(kernel: FakeKernel) -> None:
    kernel.refuse.add((1, 2048))
    with pytest.raises(HostError, match="No such file"):
        reserve(kernel, {(0, 2048): 64, (1, 2048): 8})
    assert kernel.read((0, 2048)) == 16


def test_journal_is_written_ahead_and_after(kernel: FakeKernel) -> None:
    seen: list[tuple[dict[PoolKey, int], dict[PoolKey, Pending]]] = []

    def journal(added: dict[PoolKey, int], pending: dict[PoolKey, Pending]) -> None:
        # the intent is on record while sysfs still shows the old value
        if pending:
            assert kernel.read((0, 2048)) == pending[(0, 2048)].before
        seen.append((added, pending))

    added = reserve(kernel, {(0, 2048): 64}, journal)
    assert seen == [({}, {(0, 2048): Pending(16, 54)}), ({(0, 2048): 54}, {})]
    seen.clear()
    hugepages.release(added, str(kernel.sys), journal)
    assert seen == [({(0, 2048): 54}, {(0, 2048): Pending(70, -54)}), ({}, {})]


def test_failing_journal_touches_nothing(kernel: FakeKernel) -> None:
    def full(added: dict[PoolKey, int], pending: dict[PoolKey, Pending]) -> None:
        raise StateError("writing the claim failed: No space left on device; free space")

    with pytest.raises(StateError):
        reserve(kernel, {(0, 2048): 64}, full)
    assert kernel.writes == []


class Killed(BaseException):
    """Stands for SIGKILL: nothing in numahook may catch it."""


@pytest.mark.parametrize("kill_at", [1, 2, 3])
def test_crash_between_intent_and_outcome_can_be_rolled_back(
    kernel: FakeKernel, kill_at: int
) -> None:
    kernel.capacity[(1, 2048)] = 5  # the kernel delivers fewer on node 1
    kernel.after_compaction[(1, 2048)] = 0
    persisted: list[tuple[dict[PoolKey, int], dict[PoolKey, Pending]]] = [({}, {})]

    def journal(added: dict[PoolKey, int], pending: dict[PoolKey, Pending]) -> None:
        if len(persisted) == kill_at + 1:
            raise Killed()
        persisted.append((added, pending))

    with pytest.raises(Killed):
        reserve(kernel, {(0, 2048): 64, (1, 2048): 8}, journal)
    added, pending = persisted[-1]
    hugepages.release(hugepages.settle(added, pending, str(kernel.sys)), str(kernel.sys))
    assert kernel.read((0, 2048)) == 16 and kernel.read((1, 2048)) == 0


def test_settle_after_crash_during_release_keeps_admin_pages(kernel: FakeKernel) -> None:
    kernel.set_nr((0, 2048), 70)  # we had added 54; the lowering ran, its outcome was lost
    kernel.set_nr((0, 2048), 16)
    settled = hugepages.settle({(0, 2048): 54}, {(0, 2048): Pending(70, -54)}, str(kernel.sys))
    assert settled == {}
    # the lowering never ran: everything is still ours to give back
    kernel.set_nr((1, 2048), 8)
    assert hugepages.settle({(1, 2048): 8}, {(1, 2048): Pending(8, -8)}, str(kernel.sys)) == {
        (1, 2048): 8
    }


@pytest.fixture
def real_pool() -> Iterator[int]:
    if not ROOT or not REAL_POOL.is_dir():
        pytest.skip("needs root and 2048 kB hugepages on node 0")
    original = int((REAL_POOL / "nr_hugepages").read_text())
    try:
        yield original
    finally:
        if int((REAL_POOL / "nr_hugepages").read_text()) != original:
            (REAL_POOL / "nr_hugepages").write_text(str(original))


def test_real_node0_reserve_and_release(real_pool: int) -> None:
    free = int((REAL_POOL / "free_hugepages").read_text())
    journal: list[dict[PoolKey, int]] = []
    added = hugepages.reserve({(0, 2048): free + 4}, journal=lambda a, p: journal.append(a))
    assert added == {(0, 2048): 4}
    assert int((REAL_POOL / "nr_hugepages").read_text()) == real_pool + 4
    assert int((REAL_POOL / "free_hugepages").read_text()) == free + 4
    assert journal[-1] == {(0, 2048): 4}
    hugepages.release(added)
    assert int((REAL_POOL / "nr_hugepages").read_text()) == real_pool


def test_pools_are_described_in_words_not_as_python() -> None:
    """Logs and `numahook status` showed {(0, 2048): 64} and {'node0:2048kB': 64}."""
    assert hugepages.describe({(1, 1048576): 2, (0, 2048): 64, (0, 4): 0}) == (
        "64 pages of 2 MiB on node 0, 2 pages of 1 GiB on node 1")
    assert hugepages.describe({(0, 2048): 1}) == "1 page of 2 MiB on node 0"
    assert hugepages.describe({}) == "no pages"
    assert hugepages.pool_name((1, 2048)) == "the 2 MiB pool of node 1"
