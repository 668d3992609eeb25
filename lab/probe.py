"""Build the guest probe: a Debian cloud kernel plus a busybox initramfs whose /init reports.

The artefacts land in ``<cache>/probe/<key>/`` where the key hashes every input (the init
script, the three package versions, the copied shared libraries and this builder's format
version), and are copied to the stable paths ``<cache>/probe/vmlinuz`` and
``<cache>/probe/initrd.img`` that ``examples/*.xml`` boot. A second build with the same
inputs does nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from lab import REPO, LabError, apt, cache_dir, run, say

#: Bump when the layout of the initramfs changes in a way the inputs do not show.
FORMAT = 3
INIT_SCRIPT = REPO / "lab" / "initramfs" / "init"
KERNEL_META = "linux-image-cloud-amd64"
BUSYBOX = "busybox-static"
RT_TESTS = "rt-tests"
#: Kernel options the probe cannot work without (checked in the package's config file).
KERNEL_NEEDS = (
    "CONFIG_NUMA",
    "CONFIG_ACPI_NUMA",
    "CONFIG_SERIAL_8250_CONSOLE",
    "CONFIG_BLK_DEV_INITRD",
    "CONFIG_RD_GZIP",
    "CONFIG_DEVTMPFS",
)


@dataclass(frozen=True)
class Probe:
    """Built probe artefacts at their stable paths."""

    kernel: Path
    initrd: Path
    key: str
    manifest: dict[str, str]


def probe_dir() -> Path:
    """``<cache>/probe``: stable kernel and initrd paths plus one directory per build key."""
    return cache_dir() / "probe"


def kernel_package() -> str:
    """The versioned kernel package: NUMAHOOK_LAB_KERNEL, or what the cloud metapackage names."""
    forced = os.environ.get("NUMAHOOK_LAB_KERNEL")
    if forced:
        return forced
    for attempt in (0, 1):
        out = run(["apt-cache", "depends", KERNEL_META], check=False).stdout
        m = re.search(r"Depends:\s*(linux-image-[0-9][^\s]*-cloud-amd64)\s*$", out, re.M)
        if m:
            return m.group(1)
        if attempt == 0:
            apt.update_once()
    cached = sorted((cache_dir() / "debs").glob("linux-image-*-cloud-amd64_*.deb"))
    if cached:
        return cached[-1].name.split("_", 1)[0]
    raise LabError(f"apt cannot resolve {KERNEL_META} and no kernel .deb is cached")


def _extract(deb: Path, wanted: dict[str, Path]) -> dict[str, Path]:
    """Extract the members ``wanted`` (tar names without './') of ``deb`` to the given paths.

    Symlinks inside the package are followed within the package (busybox is a regular file,
    but cyclictest or the kernel could be links in some future package).
    """
    proc = subprocess.run(
        ["dpkg-deb", "--fsys-tarfile", str(deb)],
        check=False,
        capture_output=True,
        timeout=300,
    )
    if proc.returncode != 0:
        raise LabError(f"dpkg-deb cannot read {deb}: {proc.stderr.decode(errors='replace')}")
    got: dict[str, Path] = {}
    with tarfile.open(fileobj=io.BytesIO(proc.stdout), mode="r:") as tar:
        members = {m.name.lstrip("./"): m for m in tar.getmembers()}
        for name, dest in wanted.items():
            member = members.get(name)
            hops = 0
            while member is not None and member.issym() and hops < 8:
                target = os.path.normpath(os.path.join(os.path.dirname(name), member.linkname))
                member = members.get(target.lstrip("/"))
                hops += 1
            if member is None or not member.isfile():
                continue
            src = tar.extractfile(member)
            if src is None:
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            with src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
            got[name] = dest
    return got


def _kernel(pkg: str) -> tuple[Path, str]:
    """vmlinuz of ``pkg`` in the cache (extracted once) and the package version."""
    deb = apt.fetch(pkg)
    version = apt.deb_version(deb)
    kdir = cache_dir() / "kernel" / f"{pkg}_{version}"
    vmlinuz = kdir / "vmlinuz"
    if not vmlinuz.exists():
        release = pkg[len("linux-image-") :]
        tmp = kdir.with_name(kdir.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        got = _extract(
            deb,
            {f"boot/vmlinuz-{release}": tmp / "vmlinuz", f"boot/config-{release}": tmp / "config"},
        )
        if f"boot/vmlinuz-{release}" not in got:
            raise LabError(f"{deb.name} holds no boot/vmlinuz-{release}")
        shutil.rmtree(kdir, ignore_errors=True)
        tmp.rename(kdir)
    config = kdir / "config"
    if config.exists():
        text = config.read_text(errors="replace")
        lacking = [o for o in KERNEL_NEEDS if not re.search(rf"^{o}=y$", text, re.M)]
        if lacking:
            raise LabError(f"{pkg} is built without {', '.join(lacking)}; the probe needs them")
    return vmlinuz, version


def _libraries(binary: Path) -> list[Path]:
    """The shared libraries ``binary`` loads on this host (ldd), including the loader."""
    out = run(["ldd", str(binary)]).stdout
    libs: list[Path] = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(Path(m.group(1)))
        elif "not found" in line:
            raise LabError(f"{binary.name} needs {line.split()[0]}, which is not installed")
    return libs


class _Cpio:
    """A minimal, reproducible cpio 'newc' writer (mtime 0, uid/gid 0)."""

    def __init__(self) -> None:
        self.buf = io.BytesIO()
        self.ino = 1

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        namez = name.encode() + b"\0"
        fields = (
            self.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(namez), 0,
        )  # fmt: skip
        self.ino += 1
        self.buf.write(b"070701" + b"".join(b"%08X" % f for f in fields))
        self.buf.write(namez)
        self.buf.write(b"\0" * (-(110 + len(namez)) % 4))
        self.buf.write(data)
        self.buf.write(b"\0" * (-len(data) % 4))

    def dir(self, name: str) -> None:
        self._entry(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, stat.S_IFREG | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, stat.S_IFLNK | 0o777, target.encode())

    def chardev(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, stat.S_IFCHR | mode, rdev=(major, minor))

    def finish(self) -> bytes:
        self._entry("TRAILER!!!", 0)
        return self.buf.getvalue()


def _initramfs(init: bytes, busybox: Path, cyclictest: Path | None, libs: list[Path]) -> bytes:
    cpio = _Cpio()
    dirs = ["bin", "dev", "etc", "lib", "lib64", "proc", "root", "run", "sbin", "sys", "tmp",
            "usr", "usr/bin", "usr/sbin"]  # fmt: skip
    for lib in libs:
        parts = lib.parent.relative_to("/").parts
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.append(d)
    for d in dirs:
        cpio.dir(d)
    # The kernel opens /dev/console for init before any devtmpfs is mounted.
    cpio.chardev("dev/console", 5, 1)
    cpio.chardev("dev/null", 1, 3, 0o666)
    cpio.chardev("dev/ttyS0", 4, 64)
    cpio.file("bin/busybox", busybox.read_bytes(), 0o755)
    cpio.symlink("bin/sh", "busybox")
    cpio.file("init", init, 0o755)
    if cyclictest is not None:
        cpio.file("usr/bin/cyclictest", cyclictest.read_bytes(), 0o755)
        for lib in libs:
            cpio.file(str(lib.relative_to("/")), lib.resolve().read_bytes(), 0o755)
    return gzip.compress(cpio.finish(), compresslevel=6, mtime=0)


#: probe builds kept in the cache, the current one included
KEEP_BUILDS = 4


def _copy_atomic(src: Path, dest: Path) -> None:
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.chmod(0o644)
    tmp.replace(dest)


def build(force: bool = False) -> Probe:
    """Build (or reuse) the probe and publish it at the stable paths; return where it is."""
    apt.install(["libnuma1"])  # cyclictest's libnuma, resolved by ldd on this host
    kpkg = kernel_package()
    vmlinuz, kver = _kernel(kpkg)
    tools = cache_dir() / "tools"
    bb_deb = apt.fetch(BUSYBOX)
    rt_deb = apt.fetch(RT_TESTS)
    bb_ver, rt_ver = apt.deb_version(bb_deb), apt.deb_version(rt_deb)
    busybox = tools / f"busybox_{bb_ver}"
    cyclictest = tools / f"cyclictest_{rt_ver}"
    if not busybox.exists():
        got = _extract(bb_deb, {"bin/busybox": busybox})
        if not got:
            raise LabError(f"{bb_deb.name} holds no bin/busybox")
        busybox.chmod(0o755)
    if not cyclictest.exists():
        got = _extract(rt_deb, {"usr/bin/cyclictest": cyclictest})
        if not got:
            raise LabError(f"{rt_deb.name} holds no usr/bin/cyclictest")
        cyclictest.chmod(0o755)
    libs = _libraries(cyclictest)
    init = INIT_SCRIPT.read_bytes()

    h = hashlib.sha256()
    manifest = {
        "format": str(FORMAT),
        "kernel": f"{kpkg} {kver}",
        "busybox": f"{BUSYBOX} {bb_ver}",
        "rt-tests": f"{RT_TESTS} {rt_ver}",
        "init_sha256": hashlib.sha256(init).hexdigest(),
    }
    for k in sorted(manifest):
        h.update(f"{k}={manifest[k]}\n".encode())
    for lib in libs:
        h.update(str(lib).encode() + hashlib.sha256(lib.resolve().read_bytes()).digest())
    key = h.hexdigest()[:16]
    manifest["key"] = key

    pdir = probe_dir()
    built = pdir / key
    if force or not (built / "initrd.img").exists():
        say("building the guest probe %s (%s, %s, %s)", key, kpkg, BUSYBOX, RT_TESTS)
        tmp = pdir / f".{key}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        (tmp / "initrd.img").write_bytes(_initramfs(init, busybox, cyclictest, libs))
        shutil.copyfile(vmlinuz, tmp / "vmlinuz")
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        shutil.rmtree(built, ignore_errors=True)
        tmp.rename(built)
    current = pdir / "manifest.json"
    published = json.loads(current.read_text()) if current.exists() else {}
    if published.get("key") != key or not (pdir / "initrd.img").exists():
        for name in ("vmlinuz", "initrd.img", "manifest.json"):
            _copy_atomic(built / name, pdir / name)
    # Keep the cache from growing with every init script edit, but keep a few recent
    # builds: checkouts with different init scripts (worktrees) share this directory, and
    # deleting every other build made them rebuild each other's in turn.
    built.touch()
    others = sorted((d for d in pdir.iterdir()
                     if d.is_dir() and not d.name.startswith(".") and d.name != key),
                    key=lambda d: d.stat().st_mtime, reverse=True)
    for old in others[KEEP_BUILDS - 1:]:
        shutil.rmtree(old, ignore_errors=True)
    pdir.chmod(0o755)
    return Probe(pdir / "vmlinuz", pdir / "initrd.img", key, manifest)
