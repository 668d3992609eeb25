"""numahook's command line on fixture hosts: what its options promise, and text a human reads."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from numahook import cli
from numahook.state.claims import Claim
from numahook.state.statedir import StateDir
from tests.fixtures.hosts import host_roots
from tests.fixtures.status import MANAGED_STATUS
from tests.support.cli import cli_args, domain, run_cli, write


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
