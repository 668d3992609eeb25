"""``numahook check`` on the hugepages a start would reserve (issue 25, item 2): the need
per node, what the node has free and can add, and a refusal with those numbers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.fixtures.hosts import host_roots
from tests.support.cli import cli_args, domain, run_cli, write

BACKING = ("<memoryBacking><hugepages><page size='2048' unit='KiB'/></hugepages>"
           "</memoryBacking>")


def bound(memory: str) -> str:
    """Dedicated, 2 MiB pages, no passthrough."""
    return domain(numa=False, vcpus=2, memory=memory, backing=BACKING)


@pytest.fixture
def single(tmp_path: Path) -> dict[str, Path]:
    """One node of 16 GiB with 128 free 2 MiB pages."""
    return host_roots(tmp_path / "host", "single", 1)


def memfree_pages(roots: dict[str, Path]) -> int:
    text = (roots["sysfs"] / "devices/system/node/node0/meminfo").read_text()
    m = re.search(r"MemFree:\s+([0-9]+) kB", text)
    assert m is not None
    return int(m.group(1)) // 2048


def test_check_shows_the_need_per_node_and_the_binding(
        capsys: pytest.CaptureFixture[str], single: dict[str, Path], tmp_path: Path) -> None:
    args = cli_args(single, tmp_path)
    rc, out, _ = run_cli(capsys, "check", *args,
                         write(tmp_path, bound("<memory unit='MiB'>512</memory>")))
    assert rc == 0
    assert "  memory: bound strict to host node 0, 256 pages of 2 MiB\n" in out
    assert (f"  ok   hugepages-available: 256 pages of 2 MiB on node 0: 128 already free, "
            f"128 to add, room for {memfree_pages(single)}\n") in out
    rc, out, _ = run_cli(capsys, "check", "--json", *args,
                         write(tmp_path, bound("<memory unit='MiB'>512</memory>")))
    doc = json.loads(out)
    assert rc == 0 and doc["memory_node"] == 0 and doc["page_kib"] == 2048
    assert doc["hugepages"] == [{"node": 0, "size_kib": 2048, "pages": 256}]
    assert doc["cells"] == []


def test_check_refuses_pages_the_node_cannot_give_with_the_numbers(
        capsys: pytest.CaptureFixture[str], single: dict[str, Path], tmp_path: Path) -> None:
    rc, out, _ = run_cli(capsys, "check", "--json", *cli_args(single, tmp_path),
                         write(tmp_path, bound("<memory unit='GiB'>32</memory>")))
    assert rc == 1
    failed = [p for p in json.loads(out)["preconditions"] if p["ok"] is False]
    assert [p["name"] for p in failed] == ["hugepages-available"]
    assert failed[0]["reason"] == (
        f"not enough hugepages: need 16384 pages of 2 MiB on node 0, 128 free and at most "
        f"{memfree_pages(single)} can be added from its free memory; free memory on node 0 "
        "or lower the domain's memory")


def test_check_shows_the_cells_pages_of_a_passthrough_domain_too(
        capsys: pytest.CaptureFixture[str], single: dict[str, Path], tmp_path: Path) -> None:
    rc, out, _ = run_cli(capsys, "check", "--json", *cli_args(single, tmp_path),
                         write(tmp_path, domain()))
    doc = json.loads(out)
    assert rc == 0 and doc["memory_node"] is None
    assert doc["hugepages"] == [{"node": 0, "size_kib": 2048, "pages": 32}]
    assert [p["ok"] for p in doc["preconditions"] if p["name"] == "hugepages-available"] == [True]


def test_check_shows_the_shared_set_and_puts_a_shared_emulator_there(
        capsys: pytest.CaptureFixture[str], single: dict[str, Path], tmp_path: Path) -> None:
    conf = tmp_path / "numahook.conf"
    conf.write_text("[cpus]\nshared = 0\n")
    xml = domain('dedicatedCpuPlacement="true" emulatorThreadPolicy="share"', vcpus=2)
    rc, out, _ = run_cli(capsys, "check", *cli_args(single, tmp_path), "--config", str(conf),
                         write(tmp_path, xml))
    assert rc == 0, out
    assert ("  ok   shared-cpus: the emulator uses the shared CPU 0 ([cpus] shared)\n" in out)
    assert "0 is the shared set ([cpus] shared), never dedicated" in out
    assert "; emulator 0 (the shared set)\n" in out
    rc, out, _ = run_cli(capsys, "check", "--json", *cli_args(single, tmp_path),
                         "--config", str(conf), write(tmp_path, xml))
    doc = json.loads(out)
    assert rc == 0 and doc["pinning"]["emulator"] == [0] and "0" not in doc["cpus"]


def test_check_refuses_share_without_the_key(
        capsys: pytest.CaptureFixture[str], single: dict[str, Path], tmp_path: Path) -> None:
    xml = domain('dedicatedCpuPlacement="true" emulatorThreadPolicy="share"', vcpus=2)
    rc, out, _ = run_cli(capsys, "check", *cli_args(single, tmp_path), write(tmp_path, xml))
    assert rc == 1
    assert "set shared = <cpulist> under [cpus] in" in out


def test_a_shared_emulator_s_pin_is_not_called_held() -> None:
    """A running share domain pins its emulator to [cpus] shared; that CPU is used, not
    held by it, and the host line must not say another dedicated domain holds it."""
    from numahook.ops.hostinputs import CpuSource

    view = CpuSource("/machine", "/sys/fs/cgroup/cpuset/machine", frozenset({0, 1, 2, 3}),
                     {"rt": frozenset({0, 2})}, frozenset({2}), frozenset({0}))
    assert view.describe() == (
        "partition /machine (/sys/fs/cgroup/cpuset/machine) has CPUs 0-3, of which 2 is held "
        "by other dedicated domains; 0 is the shared set ([cpus] shared), never dedicated")


def test_check_names_the_domains_whose_pages_fill_the_node(
        capsys: pytest.CaptureFixture[str], single: dict[str, Path], tmp_path: Path) -> None:
    """Issue 31: a shortage names who holds the pages, as their claims say, most first;
    the domain's own claim (it may run, and be checked by name) is not one of them."""
    from numahook.state.statedir import StateDir
    from tests.support import claims

    args = cli_args(single, tmp_path)
    state = StateDir(args[args.index("--state-dir") + 1])
    state.ensure()
    state.save(claims.make(uuid="5e1b1a5e-0000-4000-8000-0000000000c1", name="db",
                           need={(0, 2048): 512}, phase="running"))
    state.save(claims.make(uuid="5e1b1a5e-0000-4000-8000-0000000000c2", name="web",
                           need={(0, 2048): 2048, (1, 2048): 8}, phase="running"))
    state.save(claims.make(uuid="5e1b1a5e-0000-4000-8000-0000000000aa", name="vm",
                           need={(0, 2048): 99}, phase="running"))  # its own
    rc, out, _ = run_cli(capsys, "check", "--json", *args,
                         write(tmp_path, bound("<memory unit='GiB'>32</memory>")))
    assert rc == 1
    (failed,) = [p for p in json.loads(out)["preconditions"] if p["ok"] is False]
    assert failed["reason"] == (
        f"not enough hugepages: need 16384 pages of 2 MiB on node 0, 128 free and at most "
        f"{memfree_pages(single)} can be added from its free memory, while web takes 2048 "
        "pages there and db 512; free memory on node 0, stop web or db, or lower the "
        "domain's memory")


def test_gather_knows_who_holds_each_cpu_of_the_cpuset(tmp_path: Path) -> None:
    """Running domains by their live pins, then claims of starts; only the partition's
    CPUs (a holder elsewhere freed nothing this domain could use), never its own claim."""
    from numahook.config import Config
    from numahook.ops import hostinputs
    from numahook.records import replace
    from numahook.state.claims import Claim
    from numahook.state.statedir import StateDir
    from tests.fixtures.status import MANAGED_STATUS

    roots = host_roots(tmp_path / "host", "single", 1, {"": "0-3", "machine": "0-2"})
    run = tmp_path / "run"
    run.mkdir()
    (run / "other.xml").write_text(MANAGED_STATUS)  # "other", vCPUs on CPUs 0 and 1
    cfg = replace(Config(), sysfs_root=str(roots["sysfs"]), cgroup_root=str(roots["cgroup"]),
                  proc_root=str(roots["proc"]), libvirt_run=str(run),
                  state_dir=str(tmp_path / "state"))
    state = StateDir(cfg.state_dir)
    state.ensure()
    own = "5e1b1a5e-0000-4000-8000-0000000000aa"
    state.save(Claim(uuid="5e1b1a5e-0000-4000-8000-0000000000cc", name="starting",
                     cpus=frozenset({1, 2, 3})))
    state.save(Claim(uuid=own, name="vm", cpus=frozenset({0})))
    inputs, source = hostinputs.gather(cfg, None, own, state=state)
    assert inputs.holders == {0: "other", 1: "other", 2: "starting"}
    assert inputs.available == frozenset()
    assert source.describe().endswith("of which 0-2 are held by other dedicated domains "
                                      "(other holds 0-1 and starting holds 2)")


def test_no_one_holds_a_shared_cpu_whoever_pins_to_it(tmp_path: Path) -> None:
    """[cpus] shared is used by many and held by none: a refusal must not name the domain
    whose shared emulator or floating vCPUs happen to be pinned there."""
    from numahook.config import Config
    from numahook.ops import hostinputs
    from numahook.records import replace
    from tests.fixtures.status import MANAGED_STATUS

    roots = host_roots(tmp_path / "host", "single", 1)
    run = tmp_path / "run"
    run.mkdir()
    (run / "other.xml").write_text(MANAGED_STATUS)  # "other", vCPUs on CPUs 0 and 1
    cfg = replace(Config(), sysfs_root=str(roots["sysfs"]), cgroup_root=str(roots["cgroup"]),
                  proc_root=str(roots["proc"]), libvirt_run=str(run),
                  state_dir=str(tmp_path / "state"), shared_cpus=frozenset({1}))
    inputs, _ = hostinputs.gather(cfg, None, None)
    assert inputs.holders == {0: "other"}
