"""A small opted-in domain, and ``numahook``'s own ``main`` run in-process on fixture hosts.

tests/unit/test_cli.py (what the CLI prints) and tests/unit/test_schemas.py (that its JSON
matches docs/schemas/) run the same commands on the same domains.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from numahook import NAMESPACE, cli

REPO = Path(__file__).resolve().parents[2]
#: the numahook.conf the packages ship
CONF = REPO / "packaging" / "numahook.conf"


def domain(cpu_attrs: str = 'dedicatedCpuPlacement="true"', *, numa: bool = True,
           realtime: str = "", vcpus: int = 4, memory: str = "<memory unit='MiB'>64</memory>",
           backing: str | None = None, cputune: str = "", iothreads: str = "",
           cpu: str = "<cpu mode='host-passthrough'>\n    <feature policy='require' "
                      "name='tsc-deadline'/>\n  </cpu>",
           devices: str = "<serial type='pty'/>") -> str:
    """Domain XML with numahook metadata; ``numa`` adds passthrough and 2 MiB hugepages."""
    inner = ("<numahook:numa><numahook:guestMappingPassthrough/></numahook:numa>"
             if numa else "") + realtime
    if backing is None:
        backing = ("<memoryBacking>\n    <hugepages>\n      <page size='2048' unit='KiB'/>\n"
                   "    </hugepages>\n  </memoryBacking>" if numa else "")
    return f"""<domain type='kvm'>
  <name>vm</name>
  <uuid>5e1b1a5e-0000-4000-8000-0000000000aa</uuid>
  <metadata>
    <numahook:domain xmlns:numahook='{NAMESPACE}'>
      <numahook:cpu {cpu_attrs}>{inner}</numahook:cpu>
    </numahook:domain>
  </metadata>
  {memory}
  {backing}
  <vcpu placement='static'>{vcpus}</vcpu>
  {iothreads}
  {cputune}
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
  </os>
  {cpu}
  <devices>
    {devices}
  </devices>
</domain>
"""


#: real-time vCPUs 0, 2 and 3
RT = "<numahook:realtime mask='0-3,^1'/>"

#: a real-time domain that check --json has advice for (CPU model, VNC, balloon)
ADVISED = domain(realtime="<numahook:realtime/>",
                 cpu="<cpu mode='host-model'/>",
                 devices="<graphics type='vnc'/>\n    <memballoon model='virtio'/>")


def cli_args(roots: dict[str, Path], tmp_path: Path) -> list[str]:
    """Every root of the CLI pointed at a fixture host, its state under ``tmp_path``."""
    run = tmp_path / "libvirt-run"
    run.mkdir(exist_ok=True)
    return ["--config", str(CONF), "--sysfs-root", str(roots["sysfs"]),
            "--cgroup-root", str(roots["cgroup"]), "--proc-root", str(roots["proc"]),
            "--libvirt-run", str(run), "--state-dir", str(tmp_path / "state")]


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def write(tmp_path: Path, xml: str, name: str = "dom.xml") -> str:
    path = tmp_path / name
    path.write_text(xml)
    return str(path)


def only_requoted(line: str, added: list[str]) -> bool:
    """The line came back with other attribute quotes only (metadata keeps libvirt's ").

    For diffs of a rendering, whether the library's or ``numahook render --diff``'s.
    """
    return line.replace('"', "'") in {a.replace('"', "'") for a in added}
