"""The postinst reloads libvirt through the init system's tools, never by signalling pids.

Each init system is stood in for by stubs on PATH (systemctl, deb-systemd-invoke,
invoke-rc.d) that log how they were called; the script's two probe paths, /run/systemd/
system and /etc/init.d, are pointed at a temporary directory in a copy of the script.
scripts/package-test runs the real script on a host where no init system manages
libvirtd (these test machines).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

POSTINST = Path(__file__).resolve().parents[2] / "packaging/debian/numahook.postinst"

STUB = """#!/bin/sh
echo "$(basename "$0") $*" >>"$STUB_LOG"
case "$(basename "$0") $*" in
"systemctl --quiet is-active libvirtd.service") exit "${ACTIVE_LIBVIRTD:-3}" ;;
"systemctl --quiet is-active virtqemud.service") exit 3 ;;
"invoke-rc.d --query "*) exit "${QUERY:-104}" ;;
"invoke-rc.d --quiet "*" status") exit "${RUNNING:-0}" ;;
"numahook config check")
    [ -z "$CONFIG_ERROR" ] && { echo "/etc/numahook/numahook.conf: ok"; exit 0; }
    echo "numahook: $CONFIG_ERROR" >&2; exit 2 ;;
esac
exit 0
"""


def run(tmp_path: Path, systemd: bool = False, initd: tuple[str, ...] = (),
        upgrade_from: str = "0.0.9", **stub_env: str) -> tuple[str, list[str]]:
    root = tmp_path / "root"
    (root / "initd").mkdir(parents=True, exist_ok=True)
    if systemd:
        (root / "systemd").mkdir(exist_ok=True)
    for name in initd:
        script = root / "initd" / name
        script.write_text("#!/bin/sh\nexit 0\n")
        script.chmod(0o755)
    text = POSTINST.read_text()
    assert text.count("/run/systemd/system") >= 1 and text.count('"/etc/init.d/$daemon"') == 1
    text = text.replace("/run/systemd/system", str(root / "systemd"))
    text = text.replace('"/etc/init.d/$daemon"', f'"{root}/initd/$daemon"')
    script = tmp_path / "postinst"
    script.write_text(text)
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    for name in ("systemctl", "deb-systemd-invoke", "invoke-rc.d", "kill", "numahook"):
        (stubs / name).write_text(STUB)
        (stubs / name).chmod(0o755)
    log = tmp_path / "calls.log"
    log.write_text("")
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "STUB_LOG": str(log), **stub_env}
    argv = ["sh", str(script), "configure"] + ([upgrade_from] if upgrade_from else [])
    proc = subprocess.run(argv, capture_output=True,
                          text=True, env=env, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout + proc.stderr, log.read_text().splitlines()


def test_systemd_reloads_the_active_unit_with_deb_systemd_invoke(tmp_path: Path) -> None:
    out, calls = run(tmp_path, systemd=True, ACTIVE_LIBVIRTD="0")
    assert "deb-systemd-invoke reload libvirtd.service" in calls
    assert not any("virtqemud.service" in c and "reload" in c for c in calls)
    assert "numahook: reloaded libvirtd.service so that it runs the numahook hook" in out


def test_sysvinit_reloads_a_running_daemon_with_invoke_rc_d(tmp_path: Path) -> None:
    out, calls = run(tmp_path, initd=("libvirtd",))
    assert calls == ["invoke-rc.d --query libvirtd reload",
                     "invoke-rc.d --quiet libvirtd status",
                     "invoke-rc.d --quiet libvirtd reload",
                     "numahook config check"]
    assert "numahook: reloaded libvirtd so that it runs the numahook hook" in out


def test_sysvinit_leaves_a_stopped_daemon_alone(tmp_path: Path) -> None:
    _, calls = run(tmp_path, initd=("libvirtd",), RUNNING="3")
    assert "invoke-rc.d --quiet libvirtd reload" not in calls


def test_policy_rc_d_that_forbids_wins(tmp_path: Path) -> None:
    out, calls = run(tmp_path, initd=("libvirtd",), QUERY="101")
    assert calls == ["invoke-rc.d --query libvirtd reload", "numahook config check"]
    assert ("numahook: policy-rc.d forbids reloading libvirtd; restart or reload it yourself "
            "so that it runs the numahook hook") in out


@pytest.mark.parametrize("systemd", [False, True])
def test_no_init_system_no_signal(tmp_path: Path, systemd: bool) -> None:
    out, calls = run(tmp_path, systemd=systemd)
    assert not [c for c in calls if c.startswith(("kill", "deb-systemd-invoke", "invoke-rc.d"))]
    if not systemd:
        assert "neither systemd nor an init script manages libvirtd" in out


def test_the_script_signals_no_pid_itself() -> None:
    text = POSTINST.read_text()
    code = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    assert not [ln for ln in code if "kill " in ln and "echo" not in ln]
    assert ".pid" not in "".join(ln for ln in code if "echo" not in ln)
    assert os.access(POSTINST, os.R_OK)


def test_a_bad_config_is_named_with_its_fix_and_the_install_goes_on(tmp_path: Path) -> None:
    """An edited conffile survives upgrades; a setting this version refuses would refuse
    every managed start, so the postinst says so (issue 25)."""
    error = ("/etc/numahook/numahook.conf:15: [realtime] throttled: 'delgate' is not valid; "
             "set it to refuse or delegate")
    out, calls = run(tmp_path, CONFIG_ERROR=error)
    assert "numahook config check" in calls
    assert f"numahook: {error}" in out.splitlines()
    assert ("until /etc/numahook/numahook.conf is fixed, managed domains do not start and "
            "numahookd does not reload; fix it, then run 'numahook config check'") in out


def test_a_good_config_is_quiet_and_a_new_install_says_how_to_check_it(tmp_path: Path) -> None:
    out, calls = run(tmp_path)
    assert "numahook config check" in calls and "numahook.conf" not in out
    out, _ = run(tmp_path, upgrade_from="")
    assert "after editing /etc/numahook/numahook.conf, check it with 'numahook config check'" in out
