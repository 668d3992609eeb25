"""CPU power per domain (numahook/tunables/power.py) on fixture sysfs trees.

The laptop-like ``single`` host (CPUs 0-3, cores 0/2 and 1/3) with each CPU's PM QoS file
and, where a test says so, cpufreq policies (tests/fixtures/power.py). The domain goes
through the real admission, release and numahookd's backstop; the kernel's own reading
of ``0`` and ``n/a`` is shown on this machine by tests/e2e/test_power.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from numahook import faults
from numahook.config import Config
from numahook.core import cpulist, render
from numahook.daemon.reconcile import Reconciler
from numahook.errors import Refusal
from numahook.host import cpupower, fsutil
from numahook.ops import hostinputs, lifecycle, status
from numahook.records import replace
from numahook.state import recovery
from numahook.state.statedir import ClaimJournal, StateDir
from numahook.tunables import power
from tests.fixtures import power as fixture
from tests.fixtures.hosts import host_roots
from tests.support.cli import cli_args, domain, run_cli, write
from tests.support.schemas import validate

UUID = "5e1b1a5e-0000-4000-8000-0000000000aa"  # tests/support/cli.py's domain
NAME = "vm"


@pytest.fixture
def roots(tmp_path: Path) -> dict[str, Path]:
    out = host_roots(tmp_path, "single")
    fixture.add_power(out["sysfs"], range(4))
    (tmp_path / "run").mkdir()
    return out


def config(roots: dict[str, Path], tmp_path: Path, **changes: object) -> Config:
    return replace(Config(), sysfs_root=str(roots["sysfs"]), cgroup_root=str(roots["cgroup"]),
                   proc_root=str(roots["proc"]), libvirt_run=str(tmp_path / "run"),
                   state_dir=str(tmp_path / "state"), **changes)


def xml(power_el: str = '<numahook:power idleStates="disable" governor="performance"/>',
        attrs: str = 'dedicatedCpuPlacement="true" isolateEmulatorThread="true"',
        vcpus: int = 2, realtime: str = "") -> str:
    return domain(attrs, realtime=realtime + power_el, vcpus=vcpus)


def rendered(cfg: Config, source: str) -> str:
    doc = render.parse(source)
    inp, _ = hostinputs.gather(cfg, doc.facts.partition, doc.facts.uuid)
    return render.render_parsed(doc, inp).xml


def latencies(roots: dict[str, Path]) -> list[str]:
    return [fixture.latency(roots["sysfs"], c) for c in range(4)]


def governors(roots: dict[str, Path]) -> list[str]:
    return [fixture.governor(roots["sysfs"], c) for c in range(4)]


def admit(cfg: Config, source: str) -> lifecycle.Admission:
    got = lifecycle.admit(rendered(cfg, source), cfg, StateDir(cfg.state_dir))
    assert got is not None
    return got


# --------------------------------------------------------------------------- the lifecycle


def test_prepare_sets_the_vcpu_and_emulator_cpus_and_stop_puts_them_back(
        roots: dict[str, Path], tmp_path: Path) -> None:
    fixture.add_cpufreq(roots["sysfs"], [[c] for c in range(4)])
    cfg = config(roots, tmp_path)
    got = admit(cfg, xml())
    cpus = sorted(got.plan.cpus)
    assert set(got.plan.emulator) - set(got.plan.vcpu_pins)  # the isolated emulator's CPU
    entry = got.claim.entry("power")
    assert entry.cpus == tuple(cpus)
    assert entry.saved_latency == dict.fromkeys(cpus, "0")
    assert entry.saved_governor == dict.fromkeys(cpus, "powersave")
    assert [latencies(roots)[c] for c in cpus] == ["n/a"] * len(cpus)
    assert [governors(roots)[c] for c in cpus] == ["performance"] * len(cpus)
    others = sorted(set(range(4)) - set(cpus))
    assert [latencies(roots)[c] for c in others] == ["0"] * len(others)  # not the domain's
    assert [governors(roots)[c] for c in others] == ["powersave"] * len(others)
    assert lifecycle.release(UUID, NAME, cfg, StateDir(cfg.state_dir))
    assert latencies(roots) == ["0"] * 4 and governors(roots) == ["powersave"] * 4
    assert StateDir(cfg.state_dir).load(UUID) is None


def test_the_held_siblings_of_threadpolicy_isolate_are_left_alone(
        roots: dict[str, Path], tmp_path: Path) -> None:
    """A held sibling runs nothing; polling there would take the core from the vCPU."""
    cfg = config(roots, tmp_path)
    got = admit(cfg, xml(attrs='dedicatedCpuPlacement="true" threadPolicy="isolate"',
                         vcpus=1))
    assert got.plan.held
    now = latencies(roots)
    assert [now[c] for c in got.plan.held] == ["0"]
    assert [now[c] for c in got.plan.vcpu_pins] == ["n/a"]
    assert lifecycle.release(UUID, NAME, cfg, StateDir(cfg.state_dir))
    assert latencies(roots) == ["0"] * 4


@pytest.mark.parametrize("attrs", [
    'dedicatedCpuPlacement="true" emulatorThreadPolicy="share"',
    'dedicatedCpuPlacement="true" emulatorThreadPolicy="share" dedicatedMask="0"'])
def test_the_shared_cpus_are_never_written(roots: dict[str, Path], tmp_path: Path,
                                           attrs: str) -> None:
    """A shared emulator and the floating vCPUs of a dedicatedMask run on [cpus] shared,
    which the host's housekeeping uses too: the domain does not hold them."""
    fixture.add_cpufreq(roots["sysfs"], [[c] for c in range(4)])
    cfg = config(roots, tmp_path, shared_cpus=frozenset({0}))
    got = admit(cfg, xml(attrs=attrs))
    assert 0 in got.plan.emulator and 0 not in got.plan.cpus
    assert fixture.latency(roots["sysfs"], 0) == "0"
    assert fixture.governor(roots["sysfs"], 0) == "powersave"
    assert {latencies(roots)[c] for c in got.plan.cpus} == {"n/a"}
    assert got.claim.entry("power").cpus == tuple(sorted(got.plan.cpus))
    live = rendered(cfg, xml(attrs=attrs))
    _running(cfg, live)  # numahookd reads the same CPUs from the running definition
    Reconciler(cfg, StateDir(cfg.state_dir)).backstop()
    (dom,) = status.collect(cfg)["running"]
    assert dom["power"]["cpus"] == cpulist.format(got.plan.cpus)
    assert fixture.latency(roots["sysfs"], 0) == "0" and dom["power"]["ok"]
    assert lifecycle.release(UUID, NAME, cfg, StateDir(cfg.state_dir))
    assert latencies(roots) == ["0"] * 4 and governors(roots) == ["powersave"] * 4


def test_a_latency_limit_is_written_in_decimal_and_enable_writes_nothing(
        roots: dict[str, Path], tmp_path: Path) -> None:
    cfg = config(roots, tmp_path)
    got = admit(cfg, xml('<numahook:power idleStates="020"/>'))
    assert {latencies(roots)[c] for c in got.plan.cpus} == {"20"}
    assert lifecycle.release(UUID, NAME, cfg, StateDir(cfg.state_dir))
    got = admit(cfg, xml('<numahook:power idleStates="enable"/>'))
    assert latencies(roots) == ["0"] * 4 and got.claim.entry("power").saved_latency == {}


@pytest.mark.parametrize(("setting", "want"), [
    (None, "n/a"), ("disable", "n/a"), ("enable", "0"), ("50", "50")])
def test_a_realtime_domain_gets_the_configured_default(
        roots: dict[str, Path], tmp_path: Path, setting: str | None, want: str) -> None:
    changes: dict[str, object] = {"rt_throttled": "delegate"}
    if setting is not None:
        changes["rt_idle_states"] = int(setting) if setting.isdigit() else setting
    cfg = config(roots, tmp_path, **changes)
    got = admit(cfg, xml("", realtime="<numahook:realtime/>", attrs='dedicatedCpuPlacement="true"'))
    assert {latencies(roots)[c] for c in got.plan.cpus} == {want}
    # the domain's own idleStates wins over the default
    assert lifecycle.release(UUID, NAME, cfg, StateDir(cfg.state_dir))
    got = admit(cfg, xml('<numahook:power idleStates="7"/>', realtime="<numahook:realtime/>",
                         attrs='dedicatedCpuPlacement="true"'))
    assert {latencies(roots)[c] for c in got.plan.cpus} == {"7"}


def test_a_governor_the_host_lacks_is_refused_with_its_list_and_nothing_is_kept(
        roots: dict[str, Path], tmp_path: Path) -> None:
    fixture.add_cpufreq(roots["sysfs"], [[c] for c in range(4)])
    cfg = config(roots, tmp_path)
    with pytest.raises(Refusal) as exc:
        admit(cfg, xml('<numahook:power idleStates="disable" governor="ondemand"/>'))
    assert exc.value.check == "cpu-power"
    assert str(exc.value).startswith("vm asks for governor 'ondemand', which CPU ")
    assert str(exc.value).endswith("cpufreq driver does not offer (it offers performance, "
                                   "powersave); set governor= on <numahook:power> to one of "
                                   "them, or remove it")
    assert latencies(roots) == ["0"] * 4 and governors(roots) == ["powersave"] * 4
    assert StateDir(cfg.state_dir).load(UUID) is None


def test_without_cpufreq_the_governor_is_an_advisory_and_idle_states_still_apply(
        roots: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    cfg = config(roots, tmp_path)
    with caplog.at_level(logging.WARNING):
        got = admit(cfg, xml())
    assert {latencies(roots)[c] for c in got.plan.cpus} == {"n/a"}
    assert got.claim.entry("power").saved_governor == {}
    assert "so governor performance is not set there" in caplog.text


def test_a_cpufreq_policy_reaching_a_cpu_the_domain_does_not_hold_is_left_alone(
        roots: dict[str, Path], tmp_path: Path) -> None:
    """Writing a governor through one CPU of a policy sets it on all of them: one that
    also governs a CPU outside the domain is not written."""
    cfg = config(roots, tmp_path)
    source = xml(attrs='dedicatedCpuPlacement="true"', vcpus=1)
    plan = lifecycle.admit(rendered(cfg, source), cfg, StateDir(cfg.state_dir))
    assert plan is not None
    (cpu,) = plan.plan.vcpu_pins
    assert lifecycle.release(UUID, NAME, cfg, StateDir(cfg.state_dir))
    other = next(c for c in range(4) if c != cpu)
    fixture.add_cpufreq(roots["sysfs"], [[cpu, other]] + [[c] for c in range(4)
                                                          if c not in (cpu, other)])
    w = power.plan_writes(cfg, (cpu,), "disable", "performance", False)
    assert w.governor_cpus == () and "also governs CPUs the domain does not hold" in w.notes[0]
    admit(cfg, source)
    assert governors(roots) == ["powersave"] * 4
    assert fixture.latency(roots["sysfs"], cpu) == "n/a"


def test_cpus_without_the_pm_qos_file_are_an_advisory(tmp_path: Path) -> None:
    roots = host_roots(tmp_path, "single")
    cfg = config(roots, tmp_path)
    w = power.plan_writes(cfg, (1, 3), "disable", None, False)
    assert w.latency_cpus == () and not w.refused
    assert w.notes == ("CPUs 1,3 have no pm_qos_resume_latency_us (a kernel without per-CPU "
                       "PM QoS), so their idle states stay as they are",)


# --------------------------------------------------------------------------- crash safety


class Killed(BaseException):
    """SIGKILL at a fault point: nothing runs after it, no except clause catches it."""


@pytest.mark.parametrize("point", ["power.saved", "power.latency-written",
                                   "power.governor-written"])
def test_a_crash_between_journal_and_write_is_undone_from_the_entry(
        roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        point: str) -> None:
    fixture.add_cpufreq(roots["sysfs"], [[c] for c in range(4)])
    cfg = config(roots, tmp_path)

    def die(name: str) -> None:
        if name == point:
            raise Killed(name)

    monkeypatch.setattr(faults, "point", die)
    with pytest.raises(Killed):
        admit(cfg, xml())
    state = StateDir(cfg.state_dir)
    claim = state.load(UUID)
    assert claim is not None
    entry = claim.entry("power")  # the old values were on disk before any write
    assert entry.saved_latency == dict.fromkeys(entry.cpus, "0")
    assert entry.saved_governor == dict.fromkeys(entry.cpus, "powersave")
    written = [c for c in entry.cpus if fixture.latency(roots["sysfs"], c) == "n/a"]
    assert len(written) == {"power.saved": 0}.get(point, 1 if point.startswith(
        "power.latency") else len(entry.cpus))
    monkeypatch.undo()
    assert recovery.rollback(ClaimJournal(state, claim), cfg)
    assert latencies(roots) == ["0"] * 4 and governors(roots) == ["powersave"] * 4
    assert state.load(UUID) is None


def test_undo_keeps_what_it_could_not_put_back_and_drops_a_file_that_is_gone(
        roots: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    cfg = config(roots, tmp_path)
    got = admit(cfg, xml('<numahook:power idleStates="disable"/>'))
    first, *rest = sorted(got.plan.cpus)
    real = cpupower.write

    def flaky(root: str, cpu: int, name: str, value: str) -> None:
        if cpu == first:
            raise fsutil.KnobWriteError("busy", "x", errno.EBUSY)
        real(root, cpu, name, value)

    monkeypatch.setattr(cpupower, "write", flaky)
    state = StateDir(cfg.state_dir)
    assert not lifecycle.release(UUID, NAME, cfg, state)
    kept = state.load(UUID)
    assert kept is not None and kept.entry("power").saved_latency == {first: "0"}
    assert [fixture.latency(roots["sysfs"], c) for c in rest] == ["0"] * len(rest)
    monkeypatch.setattr(cpupower, "write", real)
    (Path(roots["sysfs"]) / f"devices/system/cpu/cpu{first}/power/"
     "pm_qos_resume_latency_us").unlink()  # its CPU went away meanwhile
    assert lifecycle.release(UUID, NAME, cfg, state)
    assert state.load(UUID) is None


def test_the_entry_round_trips_and_a_foreign_one_is_refused() -> None:
    entry = power.Entry((2, 3), 20, "performance", True, {2: "0", 3: "n/a"}, {2: "powersave"})
    assert power.TUNABLE.decode(entry.to_json()) == entry
    for bad in ({**entry.to_json(), "idle": 0}, {**entry.to_json(), "cpus": [-1]},
                {**entry.to_json(), "saved_latency": {"x": "0"}},
                {**entry.to_json(), "realtime": "yes"}):
        with pytest.raises((ValueError, TypeError)):
            power.TUNABLE.decode(bad)


# --------------------------------------------------------------------------- running


def _running(cfg: Config, live: str) -> None:
    """libvirt's status file for the domain; its claim says the start is over."""
    Path(cfg.libvirt_run, f"{NAME}.xml").write_text(
        "<domstatus state='running' reason='booted' pid='999999'><vcpus>"
        "<vcpu id='0' pid='999990'/><vcpu id='1' pid='999991'/></vcpus>"
        f"{live}</domstatus>")
    state = StateDir(cfg.state_dir)
    claim = state.load(UUID)
    if claim is not None:
        ClaimJournal(state, claim).update(phase="running")


def test_numahookd_puts_back_a_value_that_changed_and_keeps_the_first_saved_one(
        roots: dict[str, Path], tmp_path: Path) -> None:
    cfg = config(roots, tmp_path)
    live = rendered(cfg, xml('<numahook:power idleStates="disable"/>'))
    got = lifecycle.admit(live, cfg, StateDir(cfg.state_dir))
    assert got is not None
    _running(cfg, live)
    cpu = min(got.plan.cpus)
    fsutil.write_knob(cpupower.path(cfg.sysfs_root, cpu, cpupower.LATENCY), "5")
    Reconciler(cfg, StateDir(cfg.state_dir)).backstop()
    assert fixture.latency(roots["sysfs"], cpu) == "n/a"
    assert StateDir(cfg.state_dir).load(UUID).entry("power").saved_latency[cpu] == "0"
    assert lifecycle.release(UUID, NAME, cfg, StateDir(cfg.state_dir))
    assert latencies(roots) == ["0"] * 4


def test_a_running_domain_without_a_claim_is_tuned_by_numahookd_and_put_back_later(
        roots: dict[str, Path], tmp_path: Path) -> None:
    """A domain that ran before this numahook (or lost its claim): the backstop applies
    it under the lock, journalling the host's values first."""
    cfg = config(roots, tmp_path)
    live = rendered(cfg, xml('<numahook:power idleStates="disable"/>'))
    _running(cfg, live)
    Reconciler(cfg, StateDir(cfg.state_dir)).backstop()
    claim = StateDir(cfg.state_dir).load(UUID)
    assert claim is not None and set(claim.entry("power").saved_latency.values()) == {"0"}
    assert "n/a" in latencies(roots)
    assert lifecycle.release(UUID, NAME, cfg, StateDir(cfg.state_dir))
    assert latencies(roots) == ["0"] * 4


def test_status_shows_each_cpus_files_and_what_the_claim_holds(
        roots: dict[str, Path], tmp_path: Path) -> None:
    cfg = config(roots, tmp_path)
    live = rendered(cfg, xml('<numahook:power idleStates="disable" governor="performance"/>'))
    got = lifecycle.admit(live, cfg, StateDir(cfg.state_dir))
    assert got is not None
    _running(cfg, live)
    doc = status.collect(cfg)
    validate("status", {"schema_version": 1, **doc})
    (dom,) = doc["running"]
    cpus = sorted(got.plan.cpus)
    assert dom["power"]["now"] == [{"cpu": c, "pm_qos_resume_latency_us": "n/a",
                                    "scaling_governor": None} for c in cpus]
    assert dom["power"]["ok"] and dom["claim"]["power_files"] == len(cpus)
    lines = status.text(doc).splitlines()
    span = ",".join(map(str, cpus)) if len(cpus) == 2 else f"{cpus[0]}-{cpus[-1]}"
    assert f"  power: CPUs {span}, idle states disable (pm_qos_resume_latency_us n/a on " \
           f"{span}), governor performance (scaling_governor absent on {span})" in lines
    assert any(ln.startswith("  power advisory: no cpufreq for") for ln in lines)
    assert f"  holds: {len(cpus)} CPU power files to put back at stop" in lines
    fsutil.write_knob(cpupower.path(cfg.sysfs_root, cpus[0], cpupower.LATENCY), "0")
    (dom,) = status.collect(cfg)["running"]
    assert dom["power"]["ok"] is False


# --------------------------------------------------------------------------- check


def test_check_says_what_the_cpus_get_and_refuses_what_prepare_refuses(
        capsys: pytest.CaptureFixture[str], roots: dict[str, Path], tmp_path: Path) -> None:
    fixture.add_cpufreq(roots["sysfs"], [[c] for c in range(4)])
    args = cli_args(roots, tmp_path)
    rc, out, _ = run_cli(capsys, "check", write(tmp_path, xml()), *args)
    assert rc == 0
    line = next(ln for ln in out.splitlines() if "cpu-power" in ln)
    assert line.startswith("  ok   cpu-power: CPUs ")
    assert "no idle state deeper than polling (pm_qos_resume_latency_us n/a on " in line
    assert "governor performance on " in line
    bad = xml('<numahook:power governor="schedutil"/>')
    rc, out, _ = run_cli(capsys, "check", write(tmp_path, bad), *args)
    assert rc == 1
    assert "FAIL cpu-power: vm asks for governor 'schedutil'" in out


def test_check_refuses_power_without_dedicated_cpus(
        capsys: pytest.CaptureFixture[str], roots: dict[str, Path], tmp_path: Path) -> None:
    alone = domain("", numa=False, realtime='<numahook:power idleStates="disable"/>')
    rc, out, _ = run_cli(capsys, "check", write(tmp_path, alone), *cli_args(roots, tmp_path))
    assert rc == 1
    assert ("FAIL dedicated-cpu-placement: <numahook:power> need dedicated CPUs; set "
            'dedicatedCpuPlacement="true" on <numahook:cpu>') in out


def test_only_dedicated_domains_that_ask_or_run_real_time_want_it() -> None:
    def wanted(source: str) -> bool:
        return power.TUNABLE.wanted(render.parse(source, readonly=True))

    assert wanted(xml())
    assert wanted(xml("", realtime="<numahook:realtime/>"))
    assert not wanted(xml(""))
    assert not wanted(xml(attrs=""))
