"""prepare and stopped for a hugepage domain without passthrough (issue 25, item 2): its
pages are reserved on the node of its dedicated CPUs and given back, on a fixture host
whose hugepage pools behave like the kernel's."""

from __future__ import annotations

from pathlib import Path

import pytest

from numahook.config import Config
from numahook.core import render
from numahook.errors import Refusal
from numahook.ops import hostinputs, lifecycle
from numahook.records import replace
from numahook.state.claims import boot_id
from numahook.state.statedir import StateDir
from numahook.xml import safe
from tests.fixtures.hosts import host_roots
from tests.golden.cases import DATA
from tests.support import claims
from tests.support.kernel import FakeKernel

#: the golden input: 6 vCPUs, an isolated emulator, 2 GiB on 2 MiB pages, no passthrough
SOURCE = (DATA / "hugepages-dedicated-in.xml").read_text()
POOL = (1, 2048)
UUID = "5e1b1a5e-0000-4000-8000-000000000025"


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Config, FakeKernel]:
    """intel-2s-ht with the machine partition on node 1; 512 of node 1's 2 MiB pages are
    free (the fixture's pool) and the kernel can find 2000 more."""
    roots = host_roots(tmp_path, "intel-2s-ht", 1, {"": "0-79", "machine": "20-39,60-79"})
    (tmp_path / "run").mkdir()
    cfg = replace(Config(), sysfs_root=str(roots["sysfs"]), cgroup_root=str(roots["cgroup"]),
                  proc_root=str(roots["proc"]), libvirt_run=str(tmp_path / "run"),
                  state_dir=str(tmp_path / "state"))
    kernel = FakeKernel(tmp_path, monkeypatch)
    kernel.capacity[POOL] = 2000
    return cfg, kernel


def rendered(cfg: Config) -> str:
    doc = render.parse(SOURCE)
    inp, _ = hostinputs.gather(cfg, doc.facts.partition, doc.facts.uuid)
    return render.render_parsed(doc, inp).xml


def test_admit_reserves_the_pages_on_its_node_and_release_gives_back_what_it_added(
        host: tuple[Config, FakeKernel]) -> None:
    cfg, kernel = host
    state = StateDir(cfg.state_dir)
    before = kernel.read(POOL), kernel.read(POOL, "free")
    assert before == (512, 512)
    admission = lifecycle.admit(rendered(cfg), cfg, state)
    assert admission is not None
    assert admission.plan.memory_node == 1
    # 1024 pages needed, 512 already free: only the deficit is added, and journalled
    assert claims.needed(admission.claim) == {POOL: 1024}
    assert claims.added(admission.claim) == {POOL: 512}
    assert kernel.read(POOL) == 1024 and kernel.read(POOL, "free") == 1024
    assert kernel.read((0, 2048)) == 512  # the other node is not touched
    assert lifecycle.release(UUID, "hugepinned", cfg, state)
    assert (kernel.read(POOL), kernel.read(POOL, "free")) == before
    assert state.load(UUID) is None


def test_a_node_that_cannot_give_the_pages_refuses_and_keeps_nothing(
        host: tuple[Config, FakeKernel]) -> None:
    cfg, kernel = host
    kernel.capacity[POOL] = 100
    state = StateDir(cfg.state_dir)
    with pytest.raises(Refusal) as exc:
        lifecycle.admit(rendered(cfg), cfg, state)
    assert exc.value.check == "hugepages"
    assert "node 1 needs 1024 and has 612 free" in str(exc.value)
    assert kernel.read(POOL) == 512
    assert state.load(UUID) is None


def test_a_shortage_at_prepare_names_the_domains_holding_pages_there(
        host: tuple[Config, FakeKernel]) -> None:
    """Issue 31: the refusal at start names whose pages fill the node, from their claims
    (a domain elsewhere is not named), so the operator knows which one to stop."""
    cfg, kernel = host
    kernel.capacity[POOL] = 100
    state = StateDir(cfg.state_dir)
    state.ensure()
    state.save(claims.make(uuid="5e1b1a5e-0000-4000-8000-0000000000c1", name="db",
                           need={POOL: 300}, phase="running"))
    state.save(claims.make(uuid="5e1b1a5e-0000-4000-8000-0000000000c2", name="elsewhere",
                           need={(0, 2048): 64}, phase="running"))
    with pytest.raises(Refusal) as exc:
        lifecycle.admit(rendered(cfg), cfg, state)
    assert str(exc.value).endswith(
        "node 1 needs 1024 and has 612 free (the kernel gave 100 of 512 asked), while db "
        "takes 300 pages there; free memory on node 1, stop db, or lower the domain's memory")


def daemon_pid_file(cfg: Config, state: StateDir, start: int, now: int = 777) -> None:
    """numahookd's pid file for pid 4242, which began at ``start``; the process with that
    pid in the fixture's procfs began at ``now`` (it differs when the pid was reused)."""
    proc = Path(cfg.proc_root, "4242")
    proc.mkdir(parents=True, exist_ok=True)
    (proc / "stat").write_text("4242 (numahookd) S " + " ".join(["0"] * 18) + f" {now} 0 0\n")
    state.ensure()
    Path(state.daemon_file).write_text(f"4242 {start} {boot_id()}\n")


@pytest.mark.parametrize("daemon, fix", [
    (None, "numahookd is not running, so nothing renders definitions; run `systemctl start "
           "numahookd` (it renders hugepinned at once), then start again"),
    (778, "numahookd is not running, so nothing renders definitions; run `systemctl start "
          "numahookd` (it renders hugepinned at once), then start again"),
    (777, "numahookd is running but has not rendered it yet; run `numahook apply hugepinned`, "
          "then start again")], ids=["no-pid-file", "pid-reused", "running"])
def test_a_definition_without_the_binding_is_refused_at_prepare(
        host: tuple[Config, FakeKernel], daemon: int | None, fix: str) -> None:
    """The fix names the one command: numahookd renders it, once it runs (issue 31)."""
    cfg, kernel = host
    root = safe.parse(rendered(cfg))
    tune = root.find("numatune")
    tune.getparent().remove(tune)
    state = StateDir(cfg.state_dir)
    if daemon is not None:
        daemon_pid_file(cfg, state, daemon)
    with pytest.raises(Refusal) as exc:
        lifecycle.admit(safe.tostring(root), cfg, state)
    assert exc.value.check == "stale-definition"
    assert "its memory is not bound strict to host node 1" in str(exc.value)
    assert str(exc.value).endswith(fix)
    assert kernel.read(POOL) == 512 and state.load(UUID) is None
