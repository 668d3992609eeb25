"""A sysfs tree whose hugepage pools behave like the kernel's, for the reservation tests
(tests/unit/host/test_hugepages.py, and the hook's admit and release on a fixture host)."""

from __future__ import annotations

from pathlib import Path

import pytest

from numahook.host import fsutil, hugepages
from numahook.host.hugepages import PoolKey


class FakeKernel:
    """A sysfs tree whose nr_hugepages behaves like the kernel's: it may deliver fewer pages.

    ``capacity[pool]`` is how many more pages the kernel can find; compaction adds
    ``after_compaction[pool]``. Writes go through the real fsutil.write_knob underneath.
    ``root`` holds ``sys/`` and ``proc/``: pools made with :meth:`add`, or a fixture host's
    (tests/fixtures/hosts.py), whose pools start with no capacity until a test sets one.
    """

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.sys = root / "sys"
        self.proc = root / "proc"
        (self.proc / "sys" / "vm").mkdir(parents=True, exist_ok=True)
        (self.proc / "sys" / "vm" / "compact_memory").write_text("")
        self.capacity: dict[PoolKey, int] = {}
        self.after_compaction: dict[PoolKey, int] = {}
        self.compactions = 0
        self.refuse: set[PoolKey] = set()
        self.writes: list[tuple[PoolKey, int]] = []
        real_write = fsutil.write_knob

        def write(path: fsutil.PathLike, value: str, hint: str | None = None) -> None:
            p = Path(path)
            if p.name == "compact_memory":
                self.compactions += 1
                for pool, more in self.after_compaction.items():
                    self.capacity[pool] = self.capacity.get(pool, 0) + more
                self.after_compaction = {}
            elif p.name == "nr_hugepages":
                pool = self.pool_of(p)
                if pool in self.refuse:
                    real_write(self.sys / "no-such-dir" / "nr_hugepages", value, hint)
                self.writes.append((pool, int(value)))
                self.set_nr(pool, int(value))
                return
            real_write(path, value, hint)

        monkeypatch.setattr(hugepages.fsutil, "write_knob", write)

    def pool_of(self, path: Path) -> PoolKey:
        size = int(path.parent.name[len("hugepages-") : -len("kB")])
        node = int(path.parent.parent.parent.name[len("node") :])
        return node, size

    def add(self, node: int, size: int, nr: int = 0, free: int | None = None,
            capacity: int = 1000) -> None:
        d = self.sys / "devices/system/node" / f"node{node}" / "hugepages" / f"hugepages-{size}kB"
        d.mkdir(parents=True)
        for name, value in (("nr", nr), ("free", nr if free is None else free), ("surplus", 0)):
            (d / f"{name}_hugepages").write_text(f"{value}\n")
        self.capacity[(node, size)] = capacity

    def read(self, pool: PoolKey, what: str = "nr") -> int:
        return int((Path(hugepages.pool_dir(str(self.sys), pool)) / f"{what}_hugepages")
                   .read_text())

    def set_nr(self, pool: PoolKey, target: int) -> None:
        d = Path(hugepages.pool_dir(str(self.sys), pool))
        nr, free = self.read(pool), self.read(pool, "free")
        if target > nr:
            grow = min(target - nr, self.capacity.get(pool, 0))
            self.capacity[pool] = self.capacity.get(pool, 0) - grow
            nr, free = nr + grow, free + grow
        else:
            shrink = nr - target
            free -= min(free, shrink)
            nr = target
            self.capacity[pool] = self.capacity.get(pool, 0) + shrink
        (d / "nr_hugepages").write_text(f"{nr}\n")
        (d / "free_hugepages").write_text(f"{free}\n")
