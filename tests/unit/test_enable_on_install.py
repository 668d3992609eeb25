"""numahookd is enabled on install as each distribution's preset says (issue 31, item 7).

Debian enables and starts the services its packages install: the .deb's maintainer scripts
are what dh_installsystemd generates from packaging/debian (rules with no --no-enable),
merged into ours by dh_installdeb, and run here with deb-systemd-helper,
deb-systemd-invoke and systemctl stood in for by stubs that log their calls. Fedora and
EL enable what their presets name: the spec's %post leaves that to %systemd_post and says
what came of it. Both then say when numahookd does not run, since a managed domain's
first start is refused until something renders its definition. tests/host/test_enable.py
installs the real .deb under a real systemd.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEBIAN = REPO / "packaging" / "debian"
SPEC = REPO / "packaging" / "rpm" / "numahook.spec"
UNIT = "numahookd.service"

STUB = """#!/bin/sh
echo "$(basename "$0") $*" >>"$STUB_LOG"
case "$(basename "$0") $*" in
"deb-systemd-helper --quiet was-enabled numahookd.service") exit "${WAS_ENABLED:-0}" ;;
"deb-systemd-helper debian-installed numahookd.service") exit 0 ;;
"systemctl --quiet is-active numahookd.service") exit "${ACTIVE:-0}" ;;
"systemctl --quiet is-enabled numahookd.service") exit "${ENABLED:-0}" ;;
"systemctl --quiet is-active "*) exit 3 ;;
"numahook config check") echo "/etc/numahook/numahook.conf: ok" ;;
esac
exit 0
"""
STUBBED = ("deb-systemd-helper", "deb-systemd-invoke", "systemctl", "invoke-rc.d", "numahook",
           "systemd-tmpfiles", "py3compile", "py3clean", "systemd-post")


def _stubs(tmp_path: Path) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name in STUBBED:
        (bin_dir / name).write_text(STUB)
        (bin_dir / name).chmod(0o755)
    return bin_dir


#: what the maintainer scripts remove on purge or remove: these tests run as root, and the
#: real files are a running numahook's state (claims: removing them leaks every running
#: domain's hugepages and CPUs), so each is pointed into the test's own tree
REMOVED = ("/run/numahook", "/run/numahookd.pid", "/var/log/numahookd.log",
           "/etc/kubernetes/node-feature-discovery/features.d/numahook",
           "/var/lib/prometheus/node-exporter/numahook.prom")


def _run(tmp_path: Path, script_text: str, argv: list[str], systemd: bool = True,
         **stub_env: str) -> tuple[str, list[str]]:
    """Run a maintainer script with the init system's tools stubbed; /run/systemd/system
    (systemd runs) is pointed at a directory that exists or not, and what it removes
    (REMOVED) at copies under ``tmp_path/root``."""
    flag = tmp_path / "run-systemd-system"
    if systemd:
        flag.mkdir(exist_ok=True)
    else:
        shutil.rmtree(flag, ignore_errors=True)
    script = tmp_path / "script"
    text = script_text.replace("/run/systemd/system", str(flag))
    for path in REMOVED:  # whole paths only: /run/numahook is not /run/numahookd.pid
        text = re.sub(rf"(?<=\s){re.escape(path)}(?=[\s/;]|$)", f"{tmp_path}/root{path}", text,
                      flags=re.MULTILINE)
    assert not [ln for ln in text.splitlines() if ln.strip().startswith("rm ")
                and " /" in ln.replace(f" {tmp_path}/root/", " ")], \
        "a maintainer script removes a host path these tests do not redirect; add it to REMOVED"
    script.write_text(text)
    log = tmp_path / "calls.log"
    log.write_text("")
    env = {"PATH": f"{_stubs(tmp_path)}:/usr/bin:/bin", "STUB_LOG": str(log), **stub_env}
    proc = subprocess.run(["sh", str(script), *argv], capture_output=True, text=True,
                          env=env, timeout=30, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout + proc.stderr, log.read_text().splitlines()


# --------------------------------------------------------------------------- Debian


@pytest.fixture(scope="module")
def debian_scripts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """postinst, prerm and postrm as the .deb carries them: the dh_installsystemd steps
    that `dh binary` runs with packaging/debian/rules (an override there included), then
    dh_installdeb, which puts the snippets at #DEBHELPER#."""
    if not (shutil.which("dh_installsystemd") and shutil.which("dh_installdeb")):
        pytest.skip("debhelper is not installed (the RPM's %check has no use for it)")
    tree = tmp_path_factory.mktemp("deb")
    shutil.copytree(DEBIAN, tree / "debian")
    unit_dir = tree / "debian" / "numahook" / "lib" / "systemd" / "system"
    unit_dir.mkdir(parents=True)
    shutil.copy(REPO / "systemd" / UNIT, unit_dir)
    # the build runs these tests under dpkg-buildpackage, make and dh: none of theirs here
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DH_", "DEB_", "MAKE", "MFLAGS", "DPKG_"))}

    def dh(*argv: str) -> str:
        proc = subprocess.run(list(argv), cwd=tree, env=env, capture_output=True, text=True,
                              timeout=120, check=False)
        assert proc.returncode == 0, f"{' '.join(argv)}:\n{proc.stdout}{proc.stderr}"
        return proc.stdout

    steps = [ln.split() for ln in dh("dh", "binary", "--no-act").splitlines()
             if "installsystemd" in ln and "installsystemduser" not in ln]
    assert steps, "dh binary runs no dh_installsystemd step"
    for step in steps:
        dh(*step)
    dh("dh_installdeb")
    return {name: (tree / "debian/numahook/DEBIAN" / name).read_text()
            for name in ("postinst", "prerm", "postrm")}


def test_rules_let_dh_installsystemd_enable_and_start() -> None:
    rules = (DEBIAN / "rules").read_text()
    code = "\n".join(ln for ln in rules.splitlines() if not ln.lstrip().startswith("#"))
    for option in ("--no-enable", "--no-start", "--no-restart-after-upgrade"):
        assert option not in code, f"rules pass {option} to dh_installsystemd"


def test_a_new_install_enables_starts_and_says_so(tmp_path: Path,
                                                  debian_scripts: dict[str, str]) -> None:
    out, calls = _run(tmp_path, debian_scripts["postinst"], ["configure"])
    assert f"deb-systemd-helper enable {UNIT}" in calls
    assert f"deb-systemd-invoke start {UNIT}" in calls
    # the report comes after the start, so it says what happened
    assert calls.index(f"systemctl --quiet is-active {UNIT}") > \
        calls.index(f"deb-systemd-invoke start {UNIT}")
    assert "numahook: numahookd is enabled and running" in out


def test_an_upgrade_restarts_quietly(tmp_path: Path, debian_scripts: dict[str, str]) -> None:
    out, calls = _run(tmp_path, debian_scripts["postinst"], ["configure", "0.0.9"])
    assert f"deb-systemd-invoke restart {UNIT}" in calls
    assert "numahookd" not in out


def test_an_admins_disable_outlives_the_upgrade_and_is_named(
        tmp_path: Path, debian_scripts: dict[str, str]) -> None:
    out, calls = _run(tmp_path, debian_scripts["postinst"], ["configure", "0.0.9"],
                      WAS_ENABLED="1", ACTIVE="3", ENABLED="1")
    assert f"deb-systemd-helper enable {UNIT}" not in calls
    assert f"deb-systemd-helper update-state {UNIT}" in calls
    assert ("numahook: numahookd is disabled here (an admin's 'systemctl disable' outlives "
            "upgrades), so nothing renders managed domains; run 'systemctl enable --now "
            "numahookd', or 'numahook apply NAME' after defining or editing one") in out


def test_a_start_policy_rc_d_forbade_is_named(tmp_path: Path,
                                              debian_scripts: dict[str, str]) -> None:
    out, _ = _run(tmp_path, debian_scripts["postinst"], ["configure"], ACTIVE="3")
    assert ("numahook: numahookd is enabled but not running (a policy-rc.d forbade the start, "
            "or it failed: see 'systemctl status numahookd'); start it with 'systemctl start "
            "numahookd'") in out


def test_without_systemd_it_is_enabled_for_later_and_the_way_to_run_it_is_said(
        tmp_path: Path, debian_scripts: dict[str, str]) -> None:
    out, calls = _run(tmp_path, debian_scripts["postinst"], ["configure"], systemd=False)
    assert f"deb-systemd-helper enable {UNIT}" in calls
    assert not [c for c in calls if c.startswith(("deb-systemd-invoke", "systemctl"))]
    assert ("numahook: systemd does not run here, so numahookd was not started; start it "
            "with 'numahookd --daemonize'") in out


def test_remove_stops_it_and_purge_removes_its_links(tmp_path: Path,
                                                     debian_scripts: dict[str, str]) -> None:
    _, calls = _run(tmp_path, debian_scripts["prerm"], ["remove"])
    assert f"deb-systemd-invoke stop {UNIT}" in calls
    _, calls = _run(tmp_path, debian_scripts["prerm"], ["upgrade", "0.1.1"])
    assert f"deb-systemd-invoke stop {UNIT}" not in calls  # restarted after, not stopped
    for path in REMOVED:  # a purge finds the state numahook left
        made = tmp_path / "root" / path.lstrip("/")
        made.parent.mkdir(parents=True, exist_ok=True)
        made.write_text("x")
    _, calls = _run(tmp_path, debian_scripts["postrm"], ["purge"])
    assert f"deb-systemd-helper purge {UNIT}" in calls
    assert not [p for p in REMOVED if (tmp_path / "root" / p.lstrip("/")).exists()]


# --------------------------------------------------------------------------- RPM

#: what the spec's %post uses, as Fedora and EL define it; the systemd macros are stubs
RPM_MACROS = {
    "%systemd_post numahookd.service": "systemd-post numahookd.service",
    "%tmpfiles_create %{_tmpfilesdir}/numahook.conf": ":",
    "%{_bindir}": "/usr/bin", "%{_sysconfdir}": "/etc", "%{_docdir}": "/usr/share/doc",
    "%{name}": "numahook", "%%": "%",
}


def rpm_post() -> str:
    """The spec's %post, its macros expanded as above (anything else fails here)."""
    spec = SPEC.read_text()
    body = re.search(r"^%post\n(.*?)^%preun", spec, re.MULTILINE | re.DOTALL)
    assert body, "the spec has no %post"
    text = body.group(1)
    for macro, value in RPM_MACROS.items():
        text = text.replace(macro, value)
    code = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    left = [ln for ln in code if re.search(r"%[{A-Za-z_]", ln)]
    assert not left, f"macros this test does not know: {left}"
    return text


def test_rpm_leaves_enabling_to_the_preset(tmp_path: Path) -> None:
    spec = SPEC.read_text()
    for macro in ("%systemd_post", "%systemd_preun", "%systemd_postun_with_restart"):
        assert re.search(rf"^{macro} {re.escape(UNIT)}$", spec, re.MULTILINE), macro
    _, calls = _run(tmp_path, rpm_post(), ["1"])
    ours = [c for c in calls if c.startswith("systemctl ")]
    assert not [c for c in ours if re.search(r" (enable|start|preset|restart) ", c + " ")], ours


@pytest.mark.parametrize("enabled, active, says", [
    ("1", "3", "numahook: numahookd is disabled (by the distribution's preset, which disables "
               "what it does not name, or by an admin), so nothing renders managed domains; "
               "run 'systemctl enable --now numahookd'"),
    ("0", "3", "numahook: numahookd is enabled (a preset says so) but not running; start it "
               "with 'systemctl start numahookd'"),
    ("0", "0", None),
], ids=["disabled", "enabled", "running"])
def test_rpm_post_says_what_the_preset_did(tmp_path: Path, enabled: str, active: str,
                                           says: str | None) -> None:
    out, _ = _run(tmp_path, rpm_post(), ["1"], ENABLED=enabled, ACTIVE=active)
    if says is None:
        assert "numahookd is" not in out
    else:
        assert says in out
    out, _ = _run(tmp_path, rpm_post(), ["1"], systemd=False)
    assert "numahook: systemd does not run here, so numahookd was not started" in out
