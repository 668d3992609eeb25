"""numahook's command line on fixture hosts: what its options promise, and text a human reads.

Every subcommand's tests are here (render, check, apply, node, status, config), with the
CLI's own ``main`` run in-process and every root pointed at fixture trees; what the
library computes is tested beside its module.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from numahook import cli, config
from numahook.config import Config
from numahook.core import domainxml, render
from numahook.core.plan import Inputs
from numahook.host import sysfs
from numahook.records import replace
from numahook.state.claims import Claim
from numahook.state.statedir import StateDir
from numahook.xml import safe
from tests.fixtures import devices as devfix
from tests.fixtures.hosts import host_roots
from tests.fixtures.status import MANAGED_STATUS
from tests.support import claims
from tests.support.cli import ADVISED, CONF, RT, cli_args, domain, only_requoted, run_cli, write
from tests.support.nodes import SYSCTL_FIX, make_host
from tests.support.schemas import validate


@pytest.fixture(scope="module")
def single_v1(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return host_roots(tmp_path_factory.mktemp("single-v1"), "single", 1)


@pytest.fixture(scope="module")
def epyc_v2(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return host_roots(tmp_path_factory.mktemp("epyc-v2"), "epyc-nps4", 2)


def _busy_host(roots: dict[str, Path], tmp_path: Path) -> list[str]:
    """The CLI's arguments for a host where a running domain holds CPUs 0-1 and a claim
    (a start in progress) holds CPU 2: of its 4 CPUs, only 3 is free."""
    args = cli_args(roots, tmp_path)
    (tmp_path / "libvirt-run" / "other.xml").write_text(MANAGED_STATUS)
    state = StateDir(args[args.index("--state-dir") + 1])
    state.ensure()
    state.save(Claim(uuid="5e1b1a5e-0000-4000-8000-0000000000cc", name="starting",
                     cpus=frozenset({2})))
    return args


def test_check_counts_what_running_domains_and_claims_hold(
        capsys: pytest.CaptureFixture[str], single_v1: dict[str, Path], tmp_path: Path) -> None:
    args = _busy_host(single_v1, tmp_path)
    rc, out, _ = run_cli(capsys, "check", "--json", *args, write(tmp_path, domain(vcpus=2)))
    assert rc == 1
    assert json.loads(out)["available_cpus"] == "3"


def test_no_state_checks_as_on_an_empty_host(
        capsys: pytest.CaptureFixture[str], single_v1: dict[str, Path], tmp_path: Path) -> None:
    """--help promises "as on an empty host": neither the running domain nor the claim
    may take CPUs away (it used to count the running domain's)."""
    args = _busy_host(single_v1, tmp_path)
    src = write(tmp_path, domain(vcpus=4))
    rc, out, err = run_cli(capsys, "check", "--json", "--no-state", *args, src)
    assert (rc, err) == (0, "")
    doc = json.loads(out)
    assert doc["available_cpus"] == "0-3"
    assert "held" not in doc["host"]
    rc, out, err = run_cli(capsys, "check", "--no-state", *args, src)
    assert (rc, err) == (0, "")
    assert "held by other dedicated domains" not in out


def test_a_refusal_for_lack_of_cpus_names_who_holds_them(
        capsys: pytest.CaptureFixture[str], single_v1: dict[str, Path], tmp_path: Path) -> None:
    """Issue 31: the refusal said "stop another dedicated domain" and left the operator to
    find which; the running domain's live pins and the claim of a start both know."""
    args = _busy_host(single_v1, tmp_path)
    rc, out, _ = run_cli(capsys, "check", *args, write(tmp_path, domain(vcpus=4)))
    assert rc == 1
    assert ("only 1 CPUs (3) are free in its cpuset, as other holds 0-1 and starting holds 2; "
            "widen the partition's cpuset or stop another dedicated domain (other or "
            "starting)") in out
    # the host line names them too
    assert ("of which 0-2 are held by other dedicated domains (other holds 0-1 and starting "
            "holds 2)") in out


@pytest.mark.parametrize("command", [["apply", "vm"], ["status"]])
@pytest.mark.parametrize("option", [["--no-state"], ["--cpuset", "0-1"]])
def test_apply_and_status_do_not_take_what_if_options(
        capsys: pytest.CaptureFixture[str], command: list[str], option: list[str]) -> None:
    """They act on or show the host as it is; they used to accept these and ignore them."""
    with pytest.raises(SystemExit) as exc:
        cli.parser().parse_args([command[0], *option, *command[1:]])
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


# --------------------------------------------------------------------------- render and check


def test_cli_render_prints_the_rendered_domain(capsys: pytest.CaptureFixture[str],
                                               single_v1: dict[str, Path],
                                               tmp_path: Path) -> None:
    rc, out, err = run_cli(capsys, "render", *cli_args(single_v1, tmp_path),
                           write(tmp_path, domain()))
    assert (rc, err) == (0, "")
    f = domainxml.read(safe.parse(out))
    assert sorted(f.vcpupin) == [0, 1, 2, 3]
    assert f.memnodes == {0: frozenset({0})}


def test_cli_render_diff(capsys: pytest.CaptureFixture[str], single_v1: dict[str, Path],
                         tmp_path: Path) -> None:
    src = write(tmp_path, domain())
    rc, out, err = run_cli(capsys, "render", "--diff", *cli_args(single_v1, tmp_path), src)
    # diff(1) and kubectl diff exit 1 when there are differences; scripts rely on it
    assert (rc, err) == (1, "")
    lines = out.splitlines()
    assert lines[0] == f"--- {src}"
    assert lines[1] == f"+++ {src} (rendered)"
    assert lines[2].startswith("@@ ")
    assert "+    <vcpupin vcpu='0' cpuset='0'/>" in lines
    assert "+    <memnode cellid='0' mode='strict' nodeset='0'/>" in lines
    assert "-      <page size='2048' unit='KiB'/>" in lines
    assert "+      <page size='2048' unit='KiB' nodeset='0'/>" in lines
    removed = [ln[1:] for ln in lines[2:] if ln.startswith("-")]
    added = [ln[1:] for ln in lines[2:] if ln.startswith("+")]
    assert [ln for ln in removed if not only_requoted(ln, added)] == [
        "      <page size='2048' unit='KiB'/>"]


def test_cli_render_diff_of_a_rendered_domain_is_empty(capsys: pytest.CaptureFixture[str],
                                                       single_v1: dict[str, Path],
                                                       tmp_path: Path) -> None:
    args = cli_args(single_v1, tmp_path)
    rc, rendered, _ = run_cli(capsys, "render", *args, write(tmp_path, domain()))
    assert rc == 0
    rc, out, err = run_cli(capsys, "render", "--diff", *args,
                           write(tmp_path, rendered, "rendered.xml"))
    assert (rc, out, err) == (0, "", "")


def test_cli_check_json(capsys: pytest.CaptureFixture[str], single_v1: dict[str, Path],
                        tmp_path: Path) -> None:
    rc, out, err = run_cli(capsys, "check", "--json", *cli_args(single_v1, tmp_path),
                           write(tmp_path, domain(realtime=RT)))
    assert (rc, err) == (0, "")
    doc = json.loads(out)
    for key in ("preconditions", "realtime_vcpus", "pinning", "cells", "advisories"):
        assert key in doc, key
    assert doc["ok"] is True
    assert doc["domain"] == "vm"
    assert doc["realtime_vcpus"] == [0, 2, 3]
    assert sorted(doc["pinning"]["vcpus"]) == ["0", "1", "2", "3"]
    assert sorted(doc["pinning"]["vcpus"].values()) == [0, 1, 2, 3]
    assert doc["cells"] == [{"id": 0, "host_node": 0, "vcpus": [0, 1, 2, 3],
                             "memory_kib": 65536, "pages": 32}]
    assert all(p["ok"] is True for p in doc["preconditions"])
    names = [p["name"] for p in doc["preconditions"]]
    assert names[:2] == ["feature-gate-numa", "feature-gate-realtime"]
    assert "dedicated-cpus" in names
    assert doc["available_cpus"] == "0-3"
    assert "partition /machine" in doc["host"]


def test_cli_check_json_advisories(capsys: pytest.CaptureFixture[str],
                                   single_v1: dict[str, Path], tmp_path: Path) -> None:
    rc, out, _ = run_cli(capsys, "check", "--json", *cli_args(single_v1, tmp_path),
                         write(tmp_path, ADVISED))
    assert rc == 0
    adv = json.loads(out)["advisories"]
    text = "\n".join(adv)
    assert "a graphics device is attached" in text
    assert "a memory balloon is present" in text
    assert "the CPU is not host-passthrough" in text
    assert "tsc-deadline is not required" in text
    assert "hyperthread siblings are shared: real-time vCPU" in text
    assert "the emulator thread shares CPUs with real-time vCPUs" in text
    assert 'set emulatorThreadPolicy="share" (with [cpus] shared' in text
    assert len(adv) == 6


def test_cli_check_json_no_advisories_for_a_tuned_domain(capsys: pytest.CaptureFixture[str],
                                                         single_v1: dict[str, Path],
                                                         tmp_path: Path) -> None:
    tuned = domain('dedicatedCpuPlacement="true" isolateEmulatorThread="true"',
                   realtime="<numahook:realtime/>", vcpus=2,
                   cpu="<cpu mode='host-passthrough'>\n    <topology sockets='1' dies='1' "
                       "cores='1' threads='2'/>\n    <feature policy='require' "
                       "name='tsc-deadline'/>\n  </cpu>")
    rc, out, _ = run_cli(capsys, "check", "--json", *cli_args(single_v1, tmp_path),
                         write(tmp_path, tuned))
    assert rc == 0
    assert json.loads(out)["advisories"] == []


def test_cli_check_json_refused(capsys: pytest.CaptureFixture[str],
                                single_v1: dict[str, Path], tmp_path: Path) -> None:
    rc, out, err = run_cli(capsys, "check", "--json", *cli_args(single_v1, tmp_path),
                           write(tmp_path, domain(vcpus=8)))
    assert rc == 1
    assert err == ""
    doc = json.loads(out)
    assert doc["ok"] is False
    assert doc["pinning"] is None and doc["cells"] == []
    failed = [p for p in doc["preconditions"] if p["ok"] is False]
    assert [p["name"] for p in failed] == ["dedicated-cpus"]
    assert "widen the partition's cpuset" in failed[0]["reason"]


def test_cli_check_text(capsys: pytest.CaptureFixture[str], single_v1: dict[str, Path],
                        tmp_path: Path) -> None:
    rc, out, _ = run_cli(capsys, "check", *cli_args(single_v1, tmp_path),
                         write(tmp_path, domain(realtime=RT)))
    assert rc == 0
    assert out.startswith("vm:\n")
    assert "  ok   dedicated-cpus: " in out
    assert "  realtime: vCPUs 0,2-3 SCHED_FIFO priority 1 via <vcpusched>" in out
    assert "  host: partition /machine" in out


def test_cli_render_refusal_is_one_line(capsys: pytest.CaptureFixture[str],
                                        single_v1: dict[str, Path], tmp_path: Path) -> None:
    rc, out, err = run_cli(capsys, "render", *cli_args(single_v1, tmp_path),
                           write(tmp_path, domain(vcpus=8)))
    assert rc == 1
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith("numahook: refused: not enough dedicated CPUs")


def test_cli_not_opted_in(capsys: pytest.CaptureFixture[str], single_v1: dict[str, Path],
                          tmp_path: Path) -> None:
    plain = "<domain type='kvm'><name>plain</name><memory>1024</memory></domain>"
    rc, out, err = run_cli(capsys, "check", *cli_args(single_v1, tmp_path),
                           write(tmp_path, plain))
    assert rc == 1
    assert out == ""
    assert err == ("numahook: plain has no <numahook:domain> metadata, so numahook leaves it "
                   "alone; add the metadata element to opt in (numahook(8), OPTING IN)\n")


def test_cli_cpuset_override(capsys: pytest.CaptureFixture[str], epyc_v2: dict[str, Path],
                             tmp_path: Path) -> None:
    rc, out, _ = run_cli(capsys, "check", "--json", "--cpuset", "20-23",
                         *cli_args(epyc_v2, tmp_path), write(tmp_path, domain()))
    assert rc == 0
    doc = json.loads(out)
    assert doc["available_cpus"] == "20-23"
    assert sorted(doc["pinning"]["vcpus"].values()) == [20, 21, 22, 23]
    assert doc["cells"][0]["host_node"] == 2


def test_cli_v2_emits_vcpusched(capsys: pytest.CaptureFixture[str], epyc_v2: dict[str, Path],
                                tmp_path: Path) -> None:
    rc, out, _ = run_cli(capsys, "render", *cli_args(epyc_v2, tmp_path),
                         write(tmp_path, domain(realtime=RT)))
    assert rc == 0
    assert "<vcpusched vcpus='0,2-3' scheduler='fifo' priority='1'/>" in out


def test_cli_throttled_v1_host_applies_fifo_after_start(capsys: pytest.CaptureFixture[str],
                                                        tmp_path: Path) -> None:
    roots = host_roots(tmp_path / "host", "single", 1)
    # the fixture's v1 cpu controller lacks cpu.shares; a real one has it, and RT
    # throttling is on (sched_rt_runtime_us = 950000), so libvirt's <vcpusched> would fail
    (roots["cgroup"] / "cpu,cpuacct" / "cpu.shares").write_text("1024\n")
    rc, out, _ = run_cli(capsys, "render", *cli_args(roots, tmp_path),
                         write(tmp_path, domain(realtime=RT)))
    assert rc == 0
    assert "vcpusched" not in out
    rc, out, _ = run_cli(capsys, "check", "--json", *cli_args(roots, tmp_path),
                         write(tmp_path, domain(realtime=RT)))
    assert json.loads(out)["vcpusched"] is False
    rc, out, _ = run_cli(capsys, "check", *cli_args(roots, tmp_path),
                         write(tmp_path, domain(realtime=RT)))
    assert "applied after start" in out


def test_cli_partition_cpuset_from_cgroups(capsys: pytest.CaptureFixture[str],
                                           tmp_path: Path) -> None:
    roots = host_roots(tmp_path / "host", "quad-nosmt", 1,
                       {"": "0-31", "machine": "0-31", "machine/rt.partition": "9-12"})
    dom = domain().replace("<os>", "<resource><partition>/machine/rt</partition></resource>\n"
                                   "  <os>")
    rc, out, _ = run_cli(capsys, "check", "--json", *cli_args(roots, tmp_path),
                         write(tmp_path, dom))
    assert rc == 0
    doc = json.loads(out)
    assert doc["available_cpus"] == "9-12"
    assert "machine/rt.partition" in doc["host"]
    assert sorted(doc["pinning"]["vcpus"].values()) == [9, 10, 11, 12]


def test_cli_gate_off_in_config(capsys: pytest.CaptureFixture[str], single_v1: dict[str, Path],
                                tmp_path: Path) -> None:
    conf = tmp_path / "gates.conf"
    conf.write_text("[features]\nNUMA = false\n")
    args = cli_args(single_v1, tmp_path)
    args[args.index("--config") + 1] = str(conf)
    rc, _, err = run_cli(capsys, "render", *args, write(tmp_path, domain()))
    assert rc == 1
    assert err.count("\n") == 1
    assert "NUMA feature gate is off" in err
    assert str(conf) in err


def test_cli_bad_config_is_exit_2(capsys: pytest.CaptureFixture[str],
                                  single_v1: dict[str, Path], tmp_path: Path) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text("[features]\nNUMA = perhaps\n")
    args = cli_args(single_v1, tmp_path)
    args[args.index("--config") + 1] = str(conf)
    rc, _, err = run_cli(capsys, "check", *args, write(tmp_path, domain()))
    assert rc == 2
    assert err == f"numahook: {conf}:2: [features] numa: 'perhaps' is not a boolean; set " \
                  "it to true or false (also yes/no, on/off, 1/0)\n"


def test_results_are_identical_through_library_and_cli(capsys: pytest.CaptureFixture[str],
                                                       single_v1: dict[str, Path],
                                                       tmp_path: Path) -> None:
    topo = sysfs.read_topology(single_v1["sysfs"])
    inputs = Inputs(topology=topo, available=frozenset(topo.cpus), config=config.Config(),
                    default_page_kib=2048)
    lib = render.render(domain(realtime=RT), inputs)
    rc, out, _ = run_cli(capsys, "render", *cli_args(single_v1, tmp_path),
                         write(tmp_path, domain(realtime=RT)))
    assert rc == 0
    assert out == lib.xml + "\n"


def test_every_documented_subcommand_is_registered() -> None:
    """The README and numahook(8) document these; an unregistered one is a silent gap."""
    sub = next(a for a in cli.parser()._actions if a.dest == "command")
    assert set(sub.choices) == {"render", "check", "apply", "node", "status", "config"}


# --------------------------------------------------------------------------- passthrough devices

# check (text and --json) and status show each passthrough device's host node, root complex
# and guest placement, and a dedicated KVM domain's kvm-pit thread, on the intel-2s-io
# fixture host; JSON validated against docs/schemas/ (tests/support/schemas.py)

NIC0, VF0, GPU1, NONODE = "0000:18:00.0", "0000:18:02.0", "0000:af:00.0", "0000:5e:00.0"
DEVICES = (devfix.hostdev(NIC0) + devfix.vf_interface(VF0) + devfix.hostdev(GPU1)
           + devfix.hostdev(NONODE) + devfix.hostdev("0000:3b:00.0", guest="0000:00:10.0"))


@pytest.fixture
def io_args(tmp_path: Path) -> list[str]:
    roots = host_roots(tmp_path, "intel-2s-io", 1)
    run = tmp_path / "libvirt-run"
    run.mkdir()
    return ["--config", "/dev/null", "--sysfs-root", str(roots["sysfs"]),
            "--cgroup-root", str(roots["cgroup"]), "--proc-root", str(roots["proc"]),
            "--libvirt-run", str(run), "--state-dir", str(tmp_path / "state")]


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """The exit code and stdout, and never a traceback on stderr, whatever the code."""
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, out


def test_check_json_lists_every_device(capsys: pytest.CaptureFixture[str], io_args: list[str],
                                       tmp_path: Path) -> None:
    path = tmp_path / "dom.xml"
    path.write_text(devfix.domain(DEVICES))
    rc, out = _run(capsys, "check", "--json", *io_args, str(path))
    assert rc == 0
    doc = json.loads(out)
    validate("check", doc)
    got = {d["bdf"]: (d["kind"], d["host_node"], d["root_complex"], d["placement"], d["cell"])
           for d in doc["devices"]}
    assert got == {
        NIC0: ("hostdev", 0, "pci0000:17", "expander-bus", 0),
        VF0: ("interface", 0, "pci0000:17", "expander-bus", 0),
        GPU1: ("hostdev", 1, "pci0000:ae", "pcie.0", None),  # no vCPU on node 1
        NONODE: ("hostdev", None, "pci0000:5d", "pcie.0", None),
        "0000:3b:00.0": ("hostdev", 0, "pci0000:3a", "kept", None),
    }
    nic = next(d for d in doc["devices"] if d["bdf"] == NIC0)
    assert (nic["bus"], nic["bus_nr"], nic["port"], nic["address"]) == (1, 253, 2, "0000:02:00.0")
    assert doc["pinning"]["held"] == []


def test_check_text_explains_each_device(capsys: pytest.CaptureFixture[str], io_args: list[str],
                                         tmp_path: Path) -> None:
    path = tmp_path / "dom.xml"
    path.write_text(devfix.domain(DEVICES, cpu_attrs=" threadPolicy='isolate'"))
    rc, out = _run(capsys, "check", *io_args, str(path))
    assert rc == 0
    lines = out.splitlines()
    assert "  device 0000:18:00.0 (hostdev): host node 0, root complex pci0000:17 -> guest " \
           "cell 0, pcie-expander-bus 1 (busNr 253), root port 2, address 0000:02:00.0" in lines
    assert "  device 0000:af:00.0 (hostdev): host node 1, root complex pci0000:ae -> pcie.0 " \
           "(no guest cell is on its host node 1)" in lines
    assert "  device 0000:5e:00.0 (hostdev): no host NUMA node, root complex pci0000:5d -> " \
           "pcie.0 (it has no host NUMA node)" in lines
    assert "  device 0000:3b:00.0 (hostdev): host node 0, root complex pci0000:3a -> kept at " \
           "0000:00:10.0 (its guest <address> is kept as written)" in lines
    assert "  pcie-expander-bus 1 (busNr 253): guest cell 0, host node 0, root complex " \
           "pci0000:17, 2 root ports" in lines
    assert any(line.startswith("  pinning: ") and "; siblings " in line and " held" in line
               for line in lines)
    assert any(line.startswith("  ok   thread-policy: threadPolicy='isolate'") for line in lines)


def test_status_shows_a_running_domains_devices_and_kvm_pit(
        capsys: pytest.CaptureFixture[str], io_args: list[str], tmp_path: Path) -> None:
    """A running domain as libvirt's status file has it: devices where the rendering put
    them; its kvm-pit thread (KVM, dedicated) is looked for in /proc (none here)."""
    cfg = devfix.host_config(tmp_path / "r", "intel-2s-io")
    xml = devfix.render_xml(cfg, devfix.domain(DEVICES)).xml.split("?>")[-1]
    run_dir = Path(io_args[io_args.index("--libvirt-run") + 1])
    (run_dir / "iovm.xml").write_text(
        "<domstatus state='running' reason='booted' pid='4242'><vcpus><vcpu id='0' "
        f"pid='4243'/></vcpus>{xml}</domstatus>")
    rc, out = _run(capsys, "status", "--json", "--uri", "test:///nowhere", *io_args)
    assert rc == 0
    doc = json.loads(out)
    validate("status", doc)
    (dom,) = doc["running"]
    assert [(d["bdf"], d["placement"], d["cell"]) for d in dom["devices"]] == [
        (NIC0, "expander-bus", 0), (VF0, "expander-bus", 0), (GPU1, "pcie.0", None),
        (NONODE, "pcie.0", None), ("0000:3b:00.0", "kept", None)]
    assert dom["kvm_pit"] == {"tid": None, "cpus": None, "vcpu0_cpus": "0"}
    rc, out = _run(capsys, "status", "--uri", "test:///nowhere", *io_args)
    assert "  device 0000:18:02.0 (interface): host node 0, root complex pci0000:17 -> guest " \
           "cell 0, pcie-expander-bus 1 (busNr 253), root port 3, address 0000:03:00.0" in \
           out.splitlines()
    assert "  kvm-pit: no thread (the PIT is off or emulated in QEMU)" in out.splitlines()


# --------------------------------------------------------------------------- human text

#: what Python's repr() of a dict, list, set, tuple or object looks like in text
REPR = re.compile(r"\{'|\['|\{\(|\{\d+: |\[\d+(, \d+)+\]|\[\d+\]|\(\d+, \d+\)|frozenset\(|"
                  r"\bset\(|\bdict\(|PosixPath\(|object at 0x|Namespace\(|\w+Error\(")
#: fixture hosts with one node, two sockets, SMT, NPS4, CPU-less nodes, devices
HUMAN_HOSTS = ("single", "intel-2s-ht-rt", "intel-2s-io", "epyc-nps4", "asym-cpuless")
#: a running managed domain's claim (MANAGED_STATUS), and one left by a domain that is gone
RUNNING_CLAIM = claims.make(uuid="5e1b1a5e-0000-4000-8000-0000000000bb", name="other",
                      cpus=frozenset({0, 1}), hugepages_added={(0, 2048): 64},
                      need={(0, 2048): 64, (1, 2048): 1}, phase="running")
ORPHAN_CLAIM = claims.make(uuid="c7a5fdbd-cdaf-9455-926a-d65c16db1809", name="gone",
                     cpus=frozenset({2}), hugepages_added={(0, 2048): 1}, need={(0, 2048): 1})


def _other_runs_and_gone_left_a_claim(roots: dict[str, Path], tmp_path: Path) -> list[str]:
    """The CLI's arguments for a host where `other` runs (MANAGED_STATUS, RUNNING_CLAIM)
    and `gone` left ORPHAN_CLAIM."""
    args = cli_args(roots, tmp_path)
    (tmp_path / "libvirt-run" / "other.xml").write_text(MANAGED_STATUS)
    state = StateDir(args[args.index("--state-dir") + 1])
    state.ensure()
    state.save(RUNNING_CLAIM)
    state.save(ORPHAN_CLAIM)
    return args


def _human_runs(roots: dict[str, Path], tmp_path: Path) -> list[tuple[str, ...]]:
    """Every command whose output is for a human, on this host."""
    args = _other_runs_and_gone_left_a_claim(roots, tmp_path)
    devices = "".join(devfix.hostdev(b) for b in ("0000:18:00.0", "0000:86:00.0",
                                                   "0000:5e:00.0"))
    domains = {"realtime": domain(realtime=RT), "advised": ADVISED,
               "no-numa": domain(numa=False), "refused": domain(backing=""),
               "one-vcpu": domain(vcpus=1, realtime=RT.replace("0-3,^1", "0")),
               "devices": devfix.domain(devices, vcpus=4)}
    runs: list[tuple[str, ...]] = [("check", *args, "--no-state", write(tmp_path, xml, f"{n}.xml"))
                                   for n, xml in domains.items()]
    runs.append(("check", *args, write(tmp_path, domain(vcpus=4), "busy.xml")))
    runs += [("node", "--no-libvirt", *args), ("node", "--check", "--no-libvirt", *args),
             ("status", "--uri", "test:///nowhere", *args)]
    return runs


@pytest.mark.parametrize("host", HUMAN_HOSTS)
def test_no_python_repr_reaches_a_human(capsys: pytest.CaptureFixture[str],
                                        caplog: pytest.LogCaptureFixture,
                                        tmp_path_factory: pytest.TempPathFactory,
                                        tmp_path: Path, host: str) -> None:
    """check, node, node --check and status text, their stderr and every log line they
    emit: `holds: hugepages added {'node0:2048kB': 64}` was one."""
    roots = host_roots(tmp_path_factory.mktemp(host), host, 1)
    caplog.set_level(logging.DEBUG)
    texts = []
    for argv in _human_runs(roots, tmp_path):
        rc, out, err = run_cli(capsys, *argv)
        assert rc in (0, 1, 3), (argv, err)
        texts.append((argv[0], out + err))
    texts += [("log", r.getMessage()) for r in caplog.records]
    found = [(what, m.group(0), text[max(0, m.start() - 60):m.end() + 60])
             for what, text in texts for m in REPR.finditer(text)]
    assert not found


def test_status_says_the_pages_a_domain_holds_in_words(
        capsys: pytest.CaptureFixture[str], single_v1: dict[str, Path], tmp_path: Path) -> None:
    args = cli_args(single_v1, tmp_path)
    (tmp_path / "libvirt-run" / "other.xml").write_text(MANAGED_STATUS)
    state = StateDir(args[args.index("--state-dir") + 1])
    state.ensure()
    state.save(RUNNING_CLAIM)
    rc, out, _ = run_cli(capsys, "status", "--uri", "test:///nowhere", *args)
    assert rc == 0
    assert ("  holds: hugepages added 64 pages of 2 MiB on node 0, needs 64 pages of 2 MiB on "
            "node 0, 1 page of 2 MiB on node 1") in out.splitlines()


def test_check_counts_in_the_singular_where_there_is_one(
        capsys: pytest.CaptureFixture[str], single_v1: dict[str, Path], tmp_path: Path) -> None:
    """It said "1 sockets, 1 dies, 4 cores, 1 threads"."""
    rc, out, _ = run_cli(capsys, "check", *cli_args(single_v1, tmp_path),
                         write(tmp_path, domain(vcpus=1)))
    assert rc == 0
    assert "1 vCPU as 1 socket, 1 die, 1 core, 1 thread" in out


# --------------------------------------------------------------------------- domain names

TEST_NS = "xmlns:test='http://libvirt.org/schemas/domain/test/1.0'"
#: domain()'s UUID
VM_UUID = "5e1b1a5e-0000-4000-8000-0000000000aa"


def libvirt_test_uri(tmp_path: Path, *xmls: str) -> str:
    """A URI of libvirt's in-process test driver holding these domains, shut off."""
    pytest.importorskip("libvirt")  # not in the Python 3.9 venv of scripts/test
    node = tmp_path / "node.xml"
    node.write_text("<node>" + "".join(
        x.replace("<domain type='kvm'>", f"<domain type='kvm' {TEST_NS}>", 1)
         .replace("</domain>", "<test:runstate>5</test:runstate></domain>") for x in xmls)
        + "</node>")
    return f"test://{node}"


@pytest.mark.parametrize("key", ["vm", VM_UUID, VM_UUID.upper()])
@pytest.mark.parametrize("command", [["check"], ["check", "--json"], ["render"]])
def test_check_and_render_take_a_defined_domains_name_or_uuid(
        capsys: pytest.CaptureFixture[str], single_v1: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, command: list[str], key: str) -> None:
    """As apply does; `numahook check rt3` used to say "cannot read rt3"."""
    uri = libvirt_test_uri(tmp_path, domain(vcpus=2))
    monkeypatch.chdir(tmp_path)
    by_name = run_cli(capsys, *command, "--uri", uri, *cli_args(single_v1, tmp_path), key)
    from_file = run_cli(capsys, *command, *cli_args(single_v1, tmp_path),
                        write(tmp_path, domain(vcpus=2), "vm.xml"))
    assert by_name[0] == 0 and by_name[2] == ""
    # the same answer as for the file: libvirt's formatting aside, the same domain
    if command == ["render"]:
        assert "<vcpupin vcpu='1'" in by_name[1] and "<vcpupin vcpu='1'" in from_file[1]
    else:
        assert by_name[1] == from_file[1]


def test_a_file_wins_over_a_domain_of_the_same_name(
        capsys: pytest.CaptureFixture[str], single_v1: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    uri = libvirt_test_uri(tmp_path, domain(vcpus=2))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "vm").write_text(domain(vcpus=2).replace("<name>vm</name>",
                                                         "<name>from-the-file</name>"))
    rc, out, _ = run_cli(capsys, "check", "--uri", uri, *cli_args(single_v1, tmp_path), "vm")
    assert rc == 0 and out.startswith("from-the-file")


@pytest.mark.parametrize("command", [["check"], ["render", "--diff"]])
def test_an_unknown_name_is_one_line_with_the_fix(
        capsys: pytest.CaptureFixture[str], single_v1: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch, command: list[str]) -> None:
    uri = libvirt_test_uri(tmp_path, domain(vcpus=2))
    monkeypatch.chdir(tmp_path)
    rc, out, err = run_cli(capsys, *command, "--uri", uri, *cli_args(single_v1, tmp_path),
                           "rt3")
    assert (rc, out) == (2, "")
    assert err == ("numahook: rt3 is neither a file nor a domain libvirt has defined (by name "
                   "or UUID); check the path, or `virsh list --all`\n")


def _status(capsys: pytest.CaptureFixture[str], roots: dict[str, Path], tmp_path: Path,
            uri: str, *argv: str) -> tuple[int, str, str]:
    args = _other_runs_and_gone_left_a_claim(roots, tmp_path)
    return run_cli(capsys, "status", "--uri", uri, *args, *argv)


@pytest.mark.parametrize("key, section, name", [
    ("vm", "inactive", "vm"), (VM_UUID.upper(), "inactive", "vm"),
    ("other", "running", "other"), (RUNNING_CLAIM.uuid, "running", "other"),
    ("gone", "orphan_claims", "gone")])
def test_status_name_shows_that_domain_alone_in_the_same_schema(
        capsys: pytest.CaptureFixture[str], single_v1: dict[str, Path], tmp_path: Path,
        key: str, section: str, name: str) -> None:
    from tests.support.schemas import validate

    uri = libvirt_test_uri(tmp_path, domain(vcpus=2))
    rc, out, err = _status(capsys, single_v1, tmp_path, uri, "--json", key)
    assert (rc, err) == (0, "")
    doc = json.loads(out)
    validate("status", doc)
    assert {k: [d["name"] for d in v] for k, v in doc.items()
            if k not in ("schema_version", "host")} == \
        {"running": [], "inactive": [], "orphan_claims": [], section: [name]}
    # the map stays the host's: every holder, whichever domain is asked for
    assert [h["name"] for h in doc["host"]["holders"]] == ["other", "gone"]
    rc, text, _ = _status(capsys, single_v1, tmp_path, uri, key)
    assert rc == 0 and text.startswith(("orphan claim " if section == "orphan_claims" else "")
                                       + name)


@pytest.mark.parametrize("key, error", [
    ("nosuch", "libvirt has no domain named 'nosuch' or with that UUID; check `virsh list "
               "--all`"),
    ("plain", "plain is not managed by numahook: its definition has no <numahook:domain> "
              "metadata; add it to opt in (numahook(8), OPTING IN)")])
def test_status_of_an_unknown_or_unmanaged_domain_is_one_line_with_the_fix(
        capsys: pytest.CaptureFixture[str], single_v1: dict[str, Path], tmp_path: Path,
        key: str, error: str) -> None:
    plain = domain(vcpus=1).replace("<name>vm</name>", "<name>plain</name>")
    start, end = plain.index("<metadata>"), plain.index("</metadata>") + len("</metadata>")
    uri = libvirt_test_uri(tmp_path, plain[:start] + plain[end:])
    rc, out, err = _status(capsys, single_v1, tmp_path, uri, key)
    assert (rc, out, err) == (2, "", f"numahook: {error}\n")


# --------------------------------------------------------------------------- node


def _node_args(cfg: Config) -> list[str]:
    return ["--sysfs-root", cfg.sysfs_root, "--cgroup-root", cfg.cgroup_root,
            "--proc-root", cfg.proc_root, "--no-libvirt"]


def test_cli_node_json_and_text(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NUMAHOOK_CONFIG", str(tmp_path / "numahook.conf"))
    (tmp_path / "numahook.conf").write_text("[realtime]\nthrottled = delegate\n")
    cfg = make_host(tmp_path, "intel-2s-ht", 1)
    assert cli.main(["node", "--json", *_node_args(cfg)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["realtime_capable"] is False and doc["libvirt"]["reachable"] is None
    assert doc["start_policy"]["mode"] == "delegate"
    assert cli.main(["node", *_node_args(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("real-time capable    no (kernel.sched_rt_runtime_us = 950000")
    assert SYSCTL_FIX in out


def test_node_says_one_thing_on_a_throttled_node_without_group_budget(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Throttling on, no RT group budget to hand down (cgroup v2): starts use <vcpusched>.

    The report once said "real-time capable: no" and then "real-time capable: no RT group
    budget is needed"; now "capable" means KubeVirt's test everywhere.
    """
    cfg = make_host(tmp_path, "intel-2s-ht-rt", 2)
    assert cli.main(["node", "--config", "/dev/null", *_node_args(cfg)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith("real-time capable    no (kernel.sched_rt_runtime_us = 950000")
    assert lines[1].startswith("real-time starts     allowed (vcpusched): RT throttling is on")
    assert "at most 950000 us of each 1000000 us period" in lines[1]
    assert out.count("real-time capable") == 2  # the verdict and the fix that leads to it
    assert "real-time capable:" not in out


@pytest.mark.parametrize("runtime, code", [(-1, 0), (950000, 1)])
def test_cli_node_check_exits_by_the_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             runtime: int, code: int) -> None:
    cfg = make_host(tmp_path, "intel-2s-ht-rt", 1, runtime)
    assert cli.main(["node", "--check", "--config", "/dev/null", *_node_args(cfg)]) == code
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    if code == 0:
        assert out == "real-time capable; real-time starts allowed (vcpusched)\n"
    else:
        assert out.startswith(f"not real-time capable: {SYSCTL_FIX}")
        assert out.endswith("; real-time starts refused (refuse)\n")
    # the report itself exits 0 either way: it is a report
    assert cli.main(["node", "--config", "/dev/null", *_node_args(cfg)]) == 0
    with pytest.raises(SystemExit):
        cli.main(["node", "--check", "--json", *_node_args(cfg)])  # one output at a time


def test_cli_node_exits_3_when_the_host_cannot_be_read(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = make_host(tmp_path, "single", 1)
    args = _node_args(replace(cfg, proc_root=str(tmp_path / "nowhere")))
    assert cli.main(["node", "--config", "/dev/null", *args]) == 3
    err = capsys.readouterr().err
    assert err.startswith("numahook: ") and err.count("\n") == 1 and "sched_rt_runtime_us" in err


# -- numahook config check: the check numahookd.service runs before each reload (issue 25)

@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NUMAHOOK_CONFIG", raising=False)


def test_a_good_file_is_one_ok_line(no_env: None, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_cli(capsys, "config", "check", str(CONF)) == (0, f"{CONF}: ok\n", "")


def test_a_bad_file_is_one_line_with_the_file_the_line_and_the_fix(no_env: None,
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "numahook.conf"
    bad.write_text(CONF.read_text().replace("throttled = refuse", "throttled = delgate"))
    line = CONF.read_text().splitlines().index("throttled = refuse") + 1
    assert run_cli(capsys, "config", "check", str(bad)) == (
        2, "", f"numahook: {bad}:{line}: [realtime] throttled: 'delgate' is not valid; set it "
        "to refuse or delegate\n")


def test_without_file_it_checks_what_the_hook_reads(
        no_env: None, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    default = tmp_path / "numahook.conf"
    monkeypatch.setattr(config, "DEFAULT_PATH", str(default))
    assert run_cli(capsys, "config", "check") == (
        0, f"{default}: ok (no file: the defaults apply)\n", "")
    default.write_text("[features]\nNUMA = maybe\n")
    rc, out, err = run_cli(capsys, "config", "check")
    assert (rc, out) == (2, "") and err.startswith(f"numahook: {default}:2: [features] numa")
    monkeypatch.setenv("NUMAHOOK_CONFIG", str(CONF))
    assert run_cli(capsys, "config", "check") == (0, f"{CONF}: ok\n", "")


def test_a_missing_named_file_is_an_error(no_env: None, capsys: pytest.CaptureFixture[str],
                                          tmp_path: Path) -> None:
    rc, _, err = run_cli(capsys, "config", "check", str(tmp_path / "none.conf"))
    assert rc == 2 and "no such file; create it" in err



def test_apply_to_a_domain_that_did_not_opt_in_says_where_to_read_how(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`numahook apply plain` said "add it to opt in" and no more (issue 31): the man page's
    section and the examples the package installs show how."""
    plain = domain(vcpus=1).replace("<name>vm</name>", "<name>plain</name>")
    start, end = plain.index("<metadata>"), plain.index("</metadata>") + len("</metadata>")
    uri = libvirt_test_uri(tmp_path, plain[:start] + plain[end:])
    rc, out, err = run_cli(capsys, "apply", "--uri", uri, "--state-dir", str(tmp_path / "run"),
                           "plain")
    assert (rc, out) == (2, "")
    assert err == ("numahook: plain has no <numahook:domain> metadata; add it to opt in "
                   "(numahook(8), OPTING IN; examples in /usr/share/doc/numahook/examples)\n")


@pytest.mark.parametrize("throttled", ["refuse", "delegate"])
def test_check_runs_the_host_checks_prepare_runs(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, throttled: str) -> None:
    """check iterates the tunables' preconditions as prepare does (numahook/tunables/): on
    a throttled node with RT group scheduling and ``throttled = refuse``, prepare refuses a
    real-time domain with realtime-node, and check used to say it fits."""
    from numahook.core.plan import Check
    from numahook.host import rtsched

    roots = host_roots(tmp_path / "host", "single", 1)
    cpu = roots["cgroup"] / "cpu,cpuacct"
    (cpu / "cpu.shares").write_text("1024\n")  # a v1 cpu controller, with RT group budgets
    assert (cpu / "cpu.rt_runtime_us").is_file()
    args = cli_args(roots, tmp_path)
    conf = tmp_path / "numahook.conf"
    conf.write_text(CONF.read_text().replace("throttled = refuse", f"throttled = {throttled}"))
    args[args.index("--config") + 1] = str(conf)
    cfg = config.load(str(conf))
    gate: Check = rtsched.realtime_gate(replace(cfg, cgroup_root=str(roots["cgroup"]),
                                                proc_root=str(roots["proc"])))
    assert gate.ok is (throttled == "delegate")  # the fixture host needs a group budget
    rc, out, _ = run_cli(capsys, "check", "--json", *args, write(tmp_path, domain(realtime=RT)))
    checks = {c["name"]: c for c in json.loads(out)["preconditions"]}
    assert checks["realtime-node"]["ok"] is gate.ok
    assert checks["realtime-node"]["reason"] == gate.reason
    assert rc == (0 if gate.ok else 1)


# --------------------------------------------------------------------------- who holds what


def test_status_draws_the_map_first_and_name_shows_the_domain_alone(
        capsys: pytest.CaptureFixture[str], single_v1: dict[str, Path], tmp_path: Path) -> None:
    args = _other_runs_and_gone_left_a_claim(single_v1, tmp_path)
    rc, out, _ = run_cli(capsys, "status", "--uri", "test:///nowhere", *args)
    assert rc == 0
    lines = out.splitlines()
    assert lines[:5] == ["node 0 (16 GiB): 2 cores x 2 threads, CPUs 0-3, 1 free",
                         "  cpu    0  1", "        A0 A1", "  cpu    2  3", "        Bc  ."]
    assert "  A  other (running)" in lines and "  B  gone (claim, claimed)" in lines
    assert lines[lines.index("other  running  cpus 0-1  emulator not pinned") - 1] == ""
    assert "\033[" not in out  # not a terminal
    rc, out, _ = run_cli(capsys, "status", "--uri", "test:///nowhere", *args, "other")
    assert rc == 0 and out.startswith("other  running") and "  cpu " not in out


def test_status_colours_a_terminal_only_and_never_under_no_color(
        capsys: pytest.CaptureFixture[str], single_v1: dict[str, Path], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    args = _other_runs_and_gone_left_a_claim(single_v1, tmp_path)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.delenv("NO_COLOR", raising=False)
    rc, out, _ = run_cli(capsys, "status", "--uri", "test:///nowhere", *args)
    assert rc == 0 and "\033[36m" in out and "\033[32m" in out  # A's colour; free in green
    monkeypatch.setenv("NO_COLOR", "1")
    assert "\033[" not in run_cli(capsys, "status", "--uri", "test:///nowhere", *args)[1]
    monkeypatch.delenv("NO_COLOR")
    monkeypatch.setenv("TERM", "dumb")
    assert "\033[" not in run_cli(capsys, "status", "--uri", "test:///nowhere", *args)[1]


def test_node_lists_free_dedicated_cpus_per_node_and_who_holds_the_rest(
        capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from tests.support.schemas import validate

    roots = host_roots(tmp_path / "host", "intel-2s-ht", 1,
                       {"": "0-79", "machine": "0-19,40-59"})
    args = _other_runs_and_gone_left_a_claim(roots, tmp_path)
    rc, out, _ = run_cli(capsys, "node", "--no-libvirt", *args)
    assert rc == 0
    assert ("dedicated node0      3-19,40-59 free (37 of the 40 CPUs of /machine's cpuset "
            "here; gone holds 2; other holds 0-1)") in out.splitlines()
    assert ("dedicated node1      none free (0 of the 0 CPUs of /machine's cpuset here)"
            in out.splitlines())
    rc, out, _ = run_cli(capsys, "node", "--json", "--no-libvirt", *args)
    doc = json.loads(out)
    validate("node", doc)
    assert doc["dedicated"] == {"partition": "/machine", "nodes": [
        {"id": 0, "cpus": "0-19,40-59", "free": "3-19,40-59",
         "held": {"gone": "2", "other": "0-1"}},
        {"id": 1, "cpus": "", "free": "", "held": {}}]}
