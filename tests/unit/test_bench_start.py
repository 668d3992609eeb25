"""bench/start.py's arithmetic: pairs of starts, their ratio, the trace cut at the hook
calls, and the unmanaged twin that differs from the managed domain only by its metadata.

The lab is not needed: runs are synthetic, as ``virsh_start`` records them.
"""

from __future__ import annotations

from typing import Any

import pytest

from bench import start


def run(rep: int, side: str, wall: float, **kw: Any) -> dict[str, Any]:
    cpu = {f"{k}_ms": 1.0 for k in start.CPU_KEYS}
    return {"rep": rep, "side": side, "wall_ms": wall, "fifo_at_return": None, **cpu, **kw}


def test_the_ratio_is_the_median_of_the_pairs_and_the_warm_up_is_not_counted() -> None:
    runs = [run(-1, "managed", 5000.0), run(-1, "unmanaged", 100.0),
            run(0, "unmanaged", 500.0), run(0, "managed", 600.0),
            run(1, "managed", 560.0), run(1, "unmanaged", 400.0),
            run(2, "managed", 990.0), run(2, "unmanaged", 900.0)]
    got = start.paired(runs)
    assert got["pairs"] == 3
    assert got["ratio"] == 1.2 and got["ratio_spread"] == [1.1, 1.4]
    assert got["managed"] == {"median_ms": 600.0, "min_ms": 560.0, "max_ms": 990.0, "runs": 3}
    assert got["unmanaged"]["median_ms"] == 500.0
    assert got["extra_ms"] == 100.0
    assert "fifo_at_return" not in got


def test_a_pair_missing_one_side_is_left_out() -> None:
    got = start.paired([run(0, "managed", 600.0), run(1, "managed", 600.0),
                        run(1, "unmanaged", 500.0)])
    assert got["pairs"] == 1
    assert start.paired([run(0, "managed", 600.0)]) == {"pairs": 0}


def test_fifo_at_return_counts_the_managed_starts() -> None:
    runs = [run(0, "managed", 600.0, fifo_at_return=True), run(0, "unmanaged", 500.0),
            run(1, "managed", 600.0, fifo_at_return=False), run(1, "unmanaged", 500.0)]
    assert start.paired(runs)["fifo_at_return"] == [1, 2]


def test_the_trace_cuts_a_start_at_its_hook_calls() -> None:
    t0 = 1_000_000_000_000  # ns
    stamps = {("prepare", "begin"): 1_000_020_000, ("prepare", "end"): 1_000_060_000,
              ("start", "begin"): 1_000_070_000, ("start", "end"): 1_000_100_000,
              ("started", "begin"): 1_000_600_000, ("started", "end"): 1_000_640_000}  # µs
    seg = start.segments({"name": "d", "t0_ns": t0, "t1_ns": t0 + 650_000_000}, stamps)
    assert list(seg) == list(start.SEGMENTS)
    assert seg == {"to_prepare": 20.0, "prepare": 40.0, "prepare_to_start": 10.0, "start": 30.0,
                   "start_to_started": 500.0, "started": 40.0, "after_started": 10.0}
    del stamps[("start", "end")]
    with pytest.raises(start.LabError, match="missed start"):
        start.segments({"name": "d", "t0_ns": t0, "t1_ns": t0}, stamps)


RENDERED = f"""<domain type='qemu'>
  <name>nhbench-vs-x-m-1</name>
  <uuid>5e1b1a5e-0000-4000-8000-000000000001</uuid>
  <metadata>
    <other:x xmlns:other='urn:other'/>
    <numahook:domain xmlns:numahook='{start.NS}'><numahook:cpu dedicatedCpuPlacement='true'/>
      <numahook:rendered digest='abc'/></numahook:domain>
  </metadata>
  <cputune><vcpupin vcpu='0' cpuset='0'/></cputune>
  <devices><serial type='file'><source path='{start.guest.serial_path("nhbench-vs-x-m-1")}'/>
  </serial></devices>
</domain>"""


def test_the_unmanaged_twin_is_the_rendering_without_numahook() -> None:
    twin = start.unmanaged_twin(RENDERED, "nhbench-vs-x-m-1", "nhbench-vs-x-u-1")
    assert start.NS not in twin and "<uuid>" not in twin
    assert "<name>nhbench-vs-x-u-1</name>" in twin
    assert str(start.guest.serial_path("nhbench-vs-x-u-1")) in twin
    assert "<other:x" in twin and "vcpupin vcpu=\"0\" cpuset=\"0\"" in twin
    # what libvirt would store for both compares equal: only name, uuid, metadata differ
    assert start.comparable(twin) == start.comparable(RENDERED)


def test_a_start_reads_only_its_own_hook_calls(tmp_path: Any) -> None:
    """The same domain starts once per pair; its stop's calls come after virsh returned."""
    log = tmp_path / "ts.log"
    log.write_text("d prepare begin 1000\nd prepare end 1040\n"  # the previous start
                   "d stopped begin 1500\n"
                   "d prepare begin 2000\nd prepare end 2030\ne prepare begin 2010\n"
                   "d release begin 2600\n")
    got = start.read_stamps(log, {"name": "d", "t0_ns": 1_990_000, "t1_ns": 2_500_000})
    assert got == {("prepare", "begin"): 2000, ("prepare", "end"): 2030}


def test_a_state_dir_replaced_under_a_managed_start_gives_the_pages_back_and_says_so(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """A package purge (rm -rf /run/numahook) takes the claim along: release then gives
    nothing back, which is no figure of numahook's; the pair is measured again."""
    pool = tmp_path / "hugepages-2048kB"
    pool.mkdir()
    (pool / "nr_hugepages").write_text("0")
    (pool / "free_hugepages").write_text("0")
    state = tmp_path / "numahook"
    state.mkdir()

    def started_and_purged(*_: Any) -> dict[str, Any]:
        (pool / "nr_hugepages").write_text(str(start.PAGES))  # prepare's reservation
        state.rename(tmp_path / "gone")
        state.mkdir()  # numahookd or the next hook makes it again
        return {"wall_ms": 1.0}

    monkeypatch.setattr(start, "NR_2M", pool / "nr_hugepages")
    monkeypatch.setattr(start, "STATE_DIR", state)
    monkeypatch.setattr(start, "virsh_start", started_and_purged)
    monkeypatch.setattr(start, "wait_pages", lambda want: (int(start.NR_2M.read_text()), 1.0))
    with pytest.raises(start.StateLost, match="was removed while d ran"):
        start.one(None, "managed", "d", 1, False, 0, 0.0)
    assert (pool / "nr_hugepages").read_text() == "0"
