"""numahook's command line on fixture hosts: what its options promise, and text a human reads."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from numahook import cli, config
from numahook.records import replace
from numahook.state.claims import Claim
from numahook.state.statedir import StateDir
from tests.fixtures import devices as devfix
from tests.fixtures.hosts import host_roots
from tests.fixtures.status import MANAGED_STATUS
from tests.support import claims
from tests.support.cli import ADVISED, CONF, RT, cli_args, domain, run_cli, write


@pytest.fixture(scope="module")
def single_v1(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return host_roots(tmp_path_factory.mktemp("single-v1"), "single", 1)


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


@pytest.mark.parametrize("command", [["apply", "vm"], ["status"]])
@pytest.mark.parametrize("option", [["--no-state"], ["--cpuset", "0-1"]])
def test_apply_and_status_do_not_take_what_if_options(
        capsys: pytest.CaptureFixture[str], command: list[str], option: list[str]) -> None:
    """They act on or show the host as it is; they used to accept these and ignore them."""
    with pytest.raises(SystemExit) as exc:
        cli.parser().parse_args([command[0], *option, *command[1:]])
    assert exc.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err


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
    node = args[:8]  # --config and the roots: node reads no state
    runs += [("node", "--no-libvirt", *node), ("node", "--check", "--no-libvirt", *node),
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
    assert {k: [d["name"] for d in v] for k, v in doc.items() if k != "schema_version"} == \
        {"running": [], "inactive": [], "orphan_claims": [], section: [name]}
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
