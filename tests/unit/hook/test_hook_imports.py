"""The hook's import closure: what a managed prepare loads is most of what it costs.

bench/hook.py holds the target (prepare <= interpreter start + 30 ms); these tests keep
the modules that were taken out of the hook's path from coming back, without timing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.fixtures.hosts import host_roots
from tests.golden.cases import CASES, DATA

REPO = Path(__file__).resolve().parents[3]

#: stdlib modules the hook does not need (top-level names; submodules count too)
NOT_IN_HOOK = ("lxml", "logging", "tempfile", "random", "shutil", "signal", "dataclasses",
               "inspect", "typing", "configparser", "pathlib")

#: the hook run as libvirtd runs it (-I, syslog), then what it imported
_HOOK = """
import io, os, sys
sys.path.insert(0, sys.argv[1])
from numahook.hook.main import main
xml = sys.stdin.read()
claims = os.path.join(sys.argv[2], "claims")
for op, sub in (("prepare", "begin"), ("started", "begin"), ("release", "end")):
    sys.stdin = io.StringIO(xml)
    assert main(["dedicated", op, sub, "-"]) == 0, op
    if op == "prepare":
        assert len(os.listdir(claims)) == 1, "prepare claims (and so writes a file)"
assert os.listdir(claims) == [], "release gives the claim back"
print(" ".join(sorted(sys.modules)))
"""


def fixture_host(tmp_path: Path) -> tuple[Path, str]:
    """A config for a fixture host, and a domain rendered for it (dedicated CPUs)."""
    case = next(c for c in CASES if c.id == "intel-dedicated-partition")
    roots = host_roots(tmp_path, case.host, case.cgroup_version, case.cpusets)
    (tmp_path / "run").mkdir()
    conf = tmp_path / "numahook.conf"
    conf.write_text(f"[paths]\nstate_dir = {tmp_path / 'state'}\n"
                    f"sysfs_root = {roots['sysfs']}\ncgroup_root = {roots['cgroup']}\n"
                    f"proc_root = {roots['proc']}\nlibvirt_run = {tmp_path / 'run'}\n")
    return conf, (DATA / f"{case.id}-out.xml").read_text()


def hook_modules(tmp_path: Path) -> list[str]:
    """Every module a managed prepare, started and release load, as libvirtd runs them."""
    conf, xml = fixture_host(tmp_path)
    proc = subprocess.run([sys.executable, "-I", "-c", _HOOK, str(REPO),
                           str(tmp_path / "state")], input=xml, capture_output=True, text=True,
                          env={"NUMAHOOK_CONFIG": str(conf)}, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout.split()


def test_managed_hook_calls_stay_out_of_the_heavy_modules(tmp_path: Path) -> None:
    loaded = {m.split(".")[0] for m in hook_modules(tmp_path)}
    assert "numahook" in loaded
    assert sorted(loaded.intersection(NOT_IN_HOOK)) == []


def test_ruffs_import_budget_covers_exactly_the_hooks_modules(tmp_path: Path) -> None:
    """pyproject.toml bans NOT_IN_HOOK at module level (ruff TID253) in the files listed
    there; that list must be the hook's own modules, no more and no fewer."""
    files = set()
    for name in hook_modules(tmp_path):
        if name == "numahook" or name.startswith("numahook."):
            path = Path(*name.split("."))
            files.add(str(path / "__init__.py") if (REPO / path).is_dir() else f"{path}.py")
    text = (REPO / "pyproject.toml").read_text()
    listed = re.search(r'^"!\{([^}]*)\}" = \["TID253"\]$', text, re.MULTILINE)
    assert listed, "pyproject.toml has no TID253 exemption for files outside the hook's path"
    assert set(listed.group(1).split(",")) == files
    banned = re.search(r"banned-module-level-imports = \[([^]]*)\]", text)
    assert banned
    assert set(re.findall(r'"([a-z]+)"', banned.group(1))) == set(NOT_IN_HOOK)


def test_the_sh_front_runs_the_hook_as_libvirtd_does(tmp_path: Path) -> None:
    """The front's own Python (GC off, frozen at exit) still exits with main's status and
    flushes what main printed: migrate's XML on stdout, a refusal on stderr."""
    conf, xml = fixture_host(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "NUMAHOOK_CONFIG": str(conf),
           "NUMAHOOK_PYTHON": sys.executable, "NUMAHOOK_PYTHONPATH": str(REPO)}

    def hook(op: str, sub: str, doc: str = xml) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["sh", str(REPO / "libvirt-hooks" / "numahook"), "dedicated", op,
                               sub, "-"], input=doc, capture_output=True, text=True, env=env,
                              check=False)

    claims = tmp_path / "state" / "claims"
    assert hook("prepare", "begin").returncode == 0
    assert len(list(claims.iterdir())) == 1
    migrated = hook("migrate", "begin")
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.startswith("<domain") and migrated.stdout.rstrip().endswith(
        "</domain>")
    assert hook("release", "end").returncode == 0
    assert list(claims.iterdir()) == []
    # the definition no longer matches what numahook renders: refused, in one line
    refused = hook("prepare", "begin", xml.replace("<vcpupin vcpu='0' cpuset='2'/>",
                                                   "<vcpupin vcpu='0' cpuset='5'/>"))
    assert refused.returncode == 1
    assert refused.stderr.startswith("numahook: ") and refused.stderr.count("\n") == 1


def test_the_front_skips_site_processing_but_keeps_the_site_directories(tmp_path: Path) -> None:
    """-S keeps other packages' .pth files and sitecustomize out of every managed call; the
    distribution's site-packages (lxml, libvirt) must still be found, as without -S. And
    the call runs at nice -10 (as root)."""
    probe = tmp_path / "probe" / "numahook" / "hook"
    probe.mkdir(parents=True)
    (probe.parent / "__init__.py").write_text("")
    (probe / "__init__.py").write_text("")
    (probe / "main.py").write_text(
        "import json, os, sys\n"
        "def main(argv):\n"
        "    import lxml.etree\n"
        "    print(json.dumps({'no_site': sys.flags.no_site, 'path': sys.path,\n"
        "                      'argv': argv, 'nice': os.getpriority(os.PRIO_PROCESS, 0)}))\n"
        "    return 3\n")
    _conf, xml = fixture_host(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "NUMAHOOK_PYTHON": sys.executable,
           "NUMAHOOK_PYTHONPATH": str(tmp_path / "probe")}
    proc = subprocess.run(["sh", str(REPO / "libvirt-hooks" / "numahook"), "dedicated",
                           "prepare", "begin", "-"], input=xml, capture_output=True, text=True,
                          env=env, check=False)
    assert proc.returncode == 3, proc.stderr
    seen = json.loads(proc.stdout)
    assert seen["no_site"] == 1
    assert seen["argv"] == ["dedicated", "prepare", "begin", "-"]
    # the larger CFS share on libvirtd's critical path; without root it stays as it was
    assert seen["nice"] == (-10 if os.geteuid() == 0 else os.getpriority(os.PRIO_PROCESS, 0))
    normal = subprocess.run([sys.executable, "-I", "-c",
                             "import json, site; print(json.dumps(site.getsitepackages()))"],
                            capture_output=True, text=True, check=True)
    site_dirs = [p for p in json.loads(normal.stdout) if Path(p).is_dir()]
    assert site_dirs and all(p in seen["path"] for p in site_dirs)


def test_the_front_starts_python_only_for_the_calls_numahook_has_work_on(
        tmp_path: Path) -> None:
    """A managed domain's ``start begin`` and the ends of ``prepare``/``started`` cost no
    Python start (hook/main.py's run does nothing on them); the calls it handles do."""
    probe = tmp_path / "probe" / "numahook" / "hook"
    probe.mkdir(parents=True)
    (probe.parent / "__init__.py").write_text("")
    (probe / "__init__.py").write_text("")
    (probe / "main.py").write_text("def main(argv):\n    print(' '.join(argv[1:3]))\n"
                                   "    return 0\n")
    _conf, xml = fixture_host(tmp_path)
    env = {"PATH": "/usr/bin:/bin", "NUMAHOOK_PYTHON": sys.executable,
           "NUMAHOOK_PYTHONPATH": str(tmp_path / "probe")}

    def ran(op: str, sub: str) -> bool:
        proc = subprocess.run(["sh", str(REPO / "libvirt-hooks" / "numahook"), "dedicated",
                               op, sub, "-"], input=xml, capture_output=True, text=True,
                              env=env, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip() == f"{op} {sub}"

    for op, sub in (("prepare", "begin"), ("started", "begin"), ("migrate", "begin"),
                    ("restore", "begin"), ("reconnect", "begin"), ("stopped", "end"),
                    ("release", "end")):
        assert ran(op, sub), (op, sub)
    for op, sub in (("start", "begin"), ("prepare", "end"), ("started", "end"),
                    ("attach", "begin"), ("migrate", "end")):
        assert not ran(op, sub), (op, sub)
