"""The host VM lab's disk image: Debian 12 with systemd, libvirt and QEMU, built once.

``mmdebstrap`` builds it from this machine's own apt sources (nothing else is reachable
here) into ``<cache>/host/<key>/``, where the key hashes every input: the package list, the
files written into the tree, the apt sources, the guest probe's key and :data:`FORMAT`. A
second build with the same inputs does nothing. numahook itself is not in the image: each
``up`` installs the .deb of the checkout with apt, so the package's own install path is
what the VM tests.

The VM boots Debian's cloud kernel with the initramfs that initramfs-tools made inside
the image (virtio-blk is a module of that kernel), with systemd as PID 1 and cgroup v2.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from lab import LabError, cache_dir, probe, run, say

#: Bump when the image changes in a way the inputs below do not show.
FORMAT = 1
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
#: What a bare-metal libvirt host has, plus what the tests drive it with. numahook's own
#: dependencies (python3-libvirt, python3-lxml) are here so that installing the .deb in a
#: VM without network needs nothing from outside.
PACKAGES = (
    "systemd", "systemd-sysv", "udev", "kmod", "dbus", "openssh-server", "iproute2",
    "procps", "e2fsprogs", "linux-image-cloud-amd64", "initramfs-tools",
    "libvirt-daemon-system", "libvirt-daemon-driver-qemu", "libvirt-clients",
    "qemu-system-x86", "numactl", "python3", "python3-libvirt", "python3-lxml",
    "python3-daemon",
)  # fmt: skip
#: Units that cost boot time and do nothing for the lab (timers that would run apt, the
#: e2scrub of a disk that is thrown away, libvirt-guests' shutdown wait).
MASKED = (
    "e2scrub_reap.service", "e2scrub_all.timer", "apt-daily.timer",
    "apt-daily-upgrade.timer", "fstrim.timer", "libvirt-guests.service",
)  # fmt: skip
#: Inside the image: the inner guests' probe kernel and initramfs.
PROBE_DIR = "/var/lib/numahook-lab/probe"
IMAGE_SIZE = "6G"
BUILD_TIMEOUT = 1800.0
FILES = {
    "etc/hostname": "numahook-hostlab\n",
    "etc/hosts": "127.0.0.1 localhost\n127.0.1.1 numahook-hostlab\n",
    "etc/fstab": "/dev/vda / ext4 defaults,errors=remount-ro 0 1\n",
    # QEMU's user network gives DHCP; it is restricted (no way out), only the ssh forward
    "etc/systemd/network/10-lab.network": "[Match]\nName=en* eth*\n[Network]\nDHCP=ipv4\n",
    "etc/ssh/sshd_config.d/lab.conf": (
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\nUseDNS no\n"
    ),
    # a lab VM's journal is read by the tests and thrown away with the overlay
    "etc/systemd/journald.conf.d/lab.conf": "[Journal]\nStorage=volatile\n",
}


@dataclass(frozen=True)
class Image:
    """A built image and what boots it."""

    directory: Path
    disk: Path
    kernel: Path
    initrd: Path
    key: Path
    known_hosts_key: str
    manifest: dict[str, object]


def host_dir() -> Path:
    """``<cache>/host``: one directory per image key, plus ``run/`` for the live VM."""
    return cache_dir() / "host"


def _inputs(probe_key: str) -> dict[str, object]:
    try:
        sources = SOURCES.read_text()
    except OSError as exc:
        raise LabError(f"cannot read {SOURCES} ({exc.strerror}): the image is built from "
                       "this machine's Debian apt sources") from None
    return {"format": FORMAT, "packages": PACKAGES, "masked": MASKED, "files": FILES,
            "sources": sources, "probe": probe_key, "size": IMAGE_SIZE}


def _key(inputs: dict[str, object]) -> str:
    blob = json.dumps(inputs, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _load(directory: Path) -> Image | None:
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        host_key = (directory / "ssh_host_ed25519_key.pub").read_text().split()
    except (OSError, ValueError):
        return None
    img = Image(directory, directory / "disk.img", directory / "vmlinuz",
                directory / "initrd.img", directory / "id_ed25519",
                " ".join(host_key[:2]), manifest)
    if all(p.exists() for p in (img.disk, img.kernel, img.initrd, img.key)):
        return img
    return None


def _customize(root: Path, key: Path, probe_built: probe.Probe) -> None:
    for rel, text in FILES.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    ssh = root / "root" / ".ssh"
    ssh.mkdir(mode=0o700, parents=True, exist_ok=True)
    (ssh / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
    (ssh / "authorized_keys").chmod(0o600)
    wants = root / "etc/systemd/system/multi-user.target.wants"
    wants.mkdir(parents=True, exist_ok=True)
    (wants / "systemd-networkd.service").unlink(missing_ok=True)
    (wants / "systemd-networkd.service").symlink_to("/lib/systemd/system/systemd-networkd.service")
    for unit in MASKED:
        link = root / "etc/systemd/system" / unit
        link.unlink(missing_ok=True)
        link.symlink_to("/dev/null")
    # the default NAT network would want dnsmasq; the lab's guests have no NIC
    (root / "etc/libvirt/qemu/networks/autostart/default.xml").unlink(missing_ok=True)
    dest = root / PROBE_DIR.lstrip("/")
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(probe_built.kernel, dest / "vmlinuz")
    shutil.copy2(probe_built.initrd, dest / "initrd.img")


def build(force: bool = False) -> Image:
    """The image for the current inputs: built when missing, else reused."""
    probe_built = probe.build()
    inputs = _inputs(probe_built.key)
    key = _key(inputs)
    final = host_dir() / key
    if not force:
        img = _load(final)
        if img is not None:
            return img
    for tool in ("mmdebstrap", "mke2fs", "ssh-keygen"):
        if shutil.which(tool) is None:
            raise LabError(f"{tool} is missing: apt-get install mmdebstrap e2fsprogs "
                           "openssh-client")
    t0 = time.monotonic()
    host_dir().mkdir(parents=True, exist_ok=True)
    work = host_dir() / f"build-{key}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    root = work / "root"
    try:
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "numahook-lab",
             "-f", str(work / "id_ed25519")])
        say("host lab: building the Debian 12 image %s with mmdebstrap (once per inputs)", key)
        run(["mmdebstrap", "--variant=minbase", "--mode=root",
             "--aptopt=Acquire::Check-Valid-Until \"false\"",
             "--aptopt=APT::Install-Recommends \"false\"",
             "--include=" + ",".join(PACKAGES), "bookworm", str(root), str(SOURCES)],
            timeout=BUILD_TIMEOUT)
        t_strap = time.monotonic() - t0
        _customize(root, work / "id_ed25519", probe_built)
        shutil.copy2(root / "etc/ssh/ssh_host_ed25519_key.pub", work / "ssh_host_ed25519_key.pub")
        kernels = sorted((root / "boot").glob("vmlinuz-*"))
        initrds = sorted((root / "boot").glob("initrd.img-*"))
        if not kernels or not initrds:
            raise LabError(f"the image has no kernel or initramfs in {root}/boot")
        shutil.copy2(kernels[-1], work / "vmlinuz")
        shutil.copy2(initrds[-1], work / "initrd.img")
        run(["mke2fs", "-q", "-t", "ext4", "-L", "hostlab", "-d", str(root), "-F",
             str(work / "disk.img"), IMAGE_SIZE], timeout=600)
        manifest = {"key": key, "kernel": kernels[-1].name, "inputs": inputs,
                    "seconds": {"mmdebstrap": round(t_strap, 1),
                                "total": round(time.monotonic() - t0, 1)}}
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(root)
        shutil.rmtree(final, ignore_errors=True)
        work.rename(final)
    except (LabError, OSError, subprocess.SubprocessError):
        shutil.rmtree(work, ignore_errors=True)
        raise
    img = _load(final)
    if img is None:
        raise LabError(f"the image in {final} is incomplete after its build")
    say("host lab: image %s built in %.0f s", key, time.monotonic() - t0)
    return img


def prune(keep: str) -> None:
    """Remove images of other keys: each is several hundred MB."""
    for d in host_dir().iterdir() if host_dir().is_dir() else ():
        if d.is_dir() and d.name not in (keep, "run") and (d / "manifest.json").exists():
            shutil.rmtree(d, ignore_errors=True)
