"""Resource partitions: validation, libvirt's cgroup naming, and the cpuset they resolve to."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from numahook.errors import InputError
from numahook.host import cgroups
from tests.fixtures.hosts import build_cgroup

# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("partition", "parts"), [
    (None, ["machine"]),
    ("/machine", ["machine"]),
    ("/machine/", ["machine"]),
    ("/machine/rt", ["machine", "rt"]),
    ("/machine/rt-1/vm_2", ["machine", "rt-1", "vm_2"]),
    ("/system", ["system"]),
    ("/tenant", ["tenant"]),
    ("/_hidden", ["_hidden"]),
    ("/" + "/".join(["a"] * 8), ["a"] * 8),
    ("/" + "x" * 64, ["x" * 64]),
])
def test_valid_partitions(partition: str | None, parts: list[str]) -> None:
    assert cgroups.validate_partition(partition) == parts


def _refused(partition: str) -> str:
    with pytest.raises(InputError) as exc:
        cgroups.validate_partition(partition)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("partition", [
    "/machine/..",
    "/machine/../../etc",
    "/..",
    "/machine/.",
    "/./machine",
    "/machine//rt",
    "/machine/r t",
    "/machine/rt;rm",
    "/machine/rt$x",
    "/machine/r\u00e9",
    "/machine/rt.partition",
    "/machine/-rt",
    "/machine/rt\\x2d",
    "/machine/" + "x" * 65,
])
def test_escaping_or_odd_components_are_refused_naming_the_fix(partition: str) -> None:
    msg = _refused(partition)
    assert "resource partition" in msg
    assert "letters, digits, '_' and '-' only" in msg
    assert "'..', '.' and empty components are refused" in msg


@pytest.mark.parametrize("partition", ["machine", "machine/rt", "", "../machine", " /machine"])
def test_relative_partition_is_refused(partition: str) -> None:
    msg = _refused(partition)
    assert "must be an absolute path like /machine or /machine/rt" in msg


def test_root_partition_is_refused() -> None:
    msg = _refused("/")
    assert "root cgroup" in msg
    assert "use /machine or below" in msg


def test_too_deep_partition_is_refused() -> None:
    msg = _refused("/" + "/".join(["a"] * 9))
    assert "nests deeper than 8" in msg


def test_overlong_partition_is_refused() -> None:
    msg = _refused("/" + "/".join(["abcdefgh"] * 60))
    assert "must be an absolute path" in msg


@pytest.mark.parametrize("partition", ["/machine/rt\n/vm", "/machine/rt\n", "/machine\n/rt"])
def test_newline_in_a_component_is_refused(partition: str) -> None:
    # regression: '$' in the component pattern also matched before a trailing newline
    msg = _refused(partition)
    assert "letters, digits" in msg or "absolute path" in msg


# --------------------------------------------------------------------------- libvirt naming


@pytest.mark.parametrize(("partition", "path"), [
    ("/machine", "machine"),
    ("/machine/rt", "machine/rt.partition"),
    ("/machine/rt/vm1", "machine/rt.partition/vm1.partition"),
    ("/system", "system"),
    ("/user", "user"),
    ("/tenant", "tenant.partition"),  # only machine, system and user are kept bare
    ("/tenant/machine", "tenant.partition/machine.partition"),  # ... and only at the top
    ("/machine/my-rt", "machine/my-rt.partition"),  # '-' needs no escaping in cgroupfs
    ("/machine/_x", "machine/__x.partition"),  # a leading '_' is escaped with another
])
def test_cgroupfs_names_follow_libvirt(partition: str, path: str) -> None:
    assert cgroups.cgroupfs_path(cgroups.validate_partition(partition)) == path


@pytest.mark.parametrize(("partition", "path"), [
    ("/machine/cpu", "machine/_cpu.partition"),
    ("/machine/memory", "machine/_memory.partition"),
    ("/machine/cpuset", "machine/_cpuset.partition"),
    ("/machine/cgroup", "machine/_cgroup.partition"),
    ("/machine/cpux", "machine/cpux.partition"),  # only a whole controller name clashes
    ("/machine/rt/pids", "machine/rt.partition/_pids.partition"),
])
def test_cgroupfs_escapes_controller_names_like_libvirt(partition: str, path: str) -> None:
    # regression: libvirt's virCgroupPartitionNeedsEscaping prefixes '_' to a component
    # that starts with a controller name and a dot ("cpu.partition")
    assert cgroups.cgroupfs_path(cgroups.validate_partition(partition)) == path


@pytest.mark.parametrize(("partition", "path"), [
    ("/machine", "machine.slice"),
    ("/machine/rt", "machine.slice/machine-rt.slice"),
    ("/machine/rt/vm1", "machine.slice/machine-rt.slice/machine-rt-vm1.slice"),
    ("/machine/my-rt", "machine.slice/machine-my\\x2drt.slice"),  # systemd escapes '-'
    ("/machine/a-b/c", "machine.slice/machine-a\\x2db.slice/machine-a\\x2db-c.slice"),
    ("/machine/rt_1", "machine.slice/machine-rt_1.slice"),
    ("/tenant", "tenant.slice"),
])
def test_systemd_names_follow_libvirt(partition: str, path: str) -> None:
    assert cgroups.systemd_path(cgroups.validate_partition(partition)) == path


# --------------------------------------------------------------------------- cpusets


def test_v1_cgroupfs_partition(tmp_path: Path) -> None:
    root = build_cgroup(tmp_path, 1, {"": "0-79", "machine": "0-79",
                                      "machine/rt.partition": "2-4,42-44"})
    cs = cgroups.partition_cpuset(root, "/machine/rt")
    assert cs.cpus == frozenset({2, 3, 4, 42, 43, 44})
    assert cs.path == str(root / "cpuset/machine/rt.partition")
    assert (cs.layout, cs.version) == ("cgroupfs", 1)


def test_v1_default_partition_is_machine(tmp_path: Path) -> None:
    root = build_cgroup(tmp_path, 1, {"": "0-15", "machine": "4-15"})
    cs = cgroups.partition_cpuset(root, None)
    assert cs.cpus == frozenset(range(4, 16))
    assert cs.path == str(root / "cpuset/machine")


def test_v1_reads_the_effective_set(tmp_path: Path) -> None:
    # the child asks for 0-7 but its parent only has 4-15: the kernel gives it 4-7
    root = build_cgroup(tmp_path, 1, {"": "0-15", "machine": "4-15",
                                      "machine/rt.partition": "0-7"})
    assert cgroups.partition_cpuset(root, "/machine/rt").cpus == frozenset(range(4, 8))


def test_v1_missing_partition_inherits_nearest_ancestor(tmp_path: Path) -> None:
    root = build_cgroup(tmp_path, 1, {"": "0-15", "machine": "2-9"})
    cs = cgroups.partition_cpuset(root, "/machine/rt/vm7")
    assert cs.cpus == frozenset(range(2, 10))
    assert cs.path == str(root / "cpuset/machine")
    assert cs.layout == "cgroupfs"


def test_v1_missing_top_level_inherits_root(tmp_path: Path) -> None:
    root = build_cgroup(tmp_path, 1, {"": "0-7"})
    cs = cgroups.partition_cpuset(root, "/machine")
    assert cs.cpus == frozenset(range(8))
    assert cs.path == str(root / "cpuset")


def test_v1_systemd_partition(tmp_path: Path) -> None:
    root = build_cgroup(tmp_path, 1, {"": "0-79", "machine.slice": "0-79",
                                      "machine.slice/machine-rt.slice": "2-19,42-59"})
    cs = cgroups.partition_cpuset(root, "/machine/rt")
    assert cs.cpus == frozenset(range(2, 20)) | frozenset(range(42, 60))
    assert cs.path == str(root / "cpuset/machine.slice/machine-rt.slice")
    assert (cs.layout, cs.version) == ("systemd", 1)


def test_v1_systemd_escaped_dash(tmp_path: Path) -> None:
    root = build_cgroup(tmp_path, 1, {"": "0-15", "machine.slice": "0-15",
                                      "machine.slice/machine-my\\x2drt.slice": "5-6"})
    cs = cgroups.partition_cpuset(root, "/machine/my-rt")
    assert cs.cpus == frozenset({5, 6})
    assert os.path.basename(cs.path) == "machine-my\\x2drt.slice"


def test_v1_systemd_missing_partition_inherits(tmp_path: Path) -> None:
    root = build_cgroup(tmp_path, 1, {"": "0-15", "machine.slice": "8-15"})
    cs = cgroups.partition_cpuset(root, "/machine/rt")
    assert cs.cpus == frozenset(range(8, 16))
    assert cs.path == str(root / "cpuset/machine.slice")
    assert cs.layout == "systemd"


def test_v2_systemd_partition(tmp_path: Path) -> None:
    root = build_cgroup(tmp_path, 2, {"": "0-63", "machine.slice": "0-63",
                                      "machine.slice/machine-rt.slice": "8-15,40-47"})
    cs = cgroups.partition_cpuset(root, "/machine/rt")
    assert cs.cpus == frozenset(range(8, 16)) | frozenset(range(40, 48))
    assert cs.path == str(root / "machine.slice/machine-rt.slice")
    assert (cs.layout, cs.version) == ("systemd", 2)


def test_v2_empty_cpuset_inherits_the_parent_effective_set(tmp_path: Path) -> None:
    # v2: an empty cpuset.cpus means "the parent's"; cpuset.cpus.effective says so
    root = build_cgroup(tmp_path, 2, {"": "0-63", "machine.slice": "16-31",
                                      "machine.slice/machine-rt.slice": ""})
    cs = cgroups.partition_cpuset(root, "/machine/rt")
    assert cs.cpus == frozenset(range(16, 32))
    assert cs.path == str(root / "machine.slice/machine-rt.slice")


def test_v2_missing_partition_inherits_nearest_ancestor(tmp_path: Path) -> None:
    root = build_cgroup(tmp_path, 2, {"": "0-63", "machine.slice": "0-31"})
    cs = cgroups.partition_cpuset(root, "/machine/rt/vm1")
    assert cs.cpus == frozenset(range(32))
    assert cs.path == str(root / "machine.slice")
    assert cs.version == 2


def test_v2_default_partition(tmp_path: Path) -> None:
    root = build_cgroup(tmp_path, 2, {"": "0-7", "machine.slice": "1-7"})
    cs = cgroups.partition_cpuset(root, None)
    assert cs.cpus == frozenset(range(1, 8))


def test_version_detection(tmp_path: Path) -> None:
    assert cgroups.version(build_cgroup(tmp_path / "v1", 1, {"machine": "0-3"})) == 1
    assert cgroups.version(build_cgroup(tmp_path / "v2", 2, {"machine.slice": "0-3"})) == 2


def test_no_cpuset_hierarchy_is_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "memory").mkdir()  # a v1 host without the cpuset controller mounted
    with pytest.raises(InputError) as exc:
        cgroups.partition_cpuset(tmp_path, "/machine")
    assert "mount the cpuset controller" in str(exc.value)
    assert "\n" not in str(exc.value)


def test_partition_is_validated_before_touching_files(tmp_path: Path) -> None:
    root = build_cgroup(tmp_path, 1, {"machine": "0-3"})
    with pytest.raises(InputError, match="letters, digits"):
        cgroups.partition_cpuset(root, "/machine/../../../etc")


def test_garbage_cpuset_file_is_one_line_error(tmp_path: Path) -> None:
    root = build_cgroup(tmp_path, 1, {"": "0-7", "machine": "0-7"})
    (root / "cpuset/machine/cpuset.effective_cpus").write_text("zero-seven\n")
    with pytest.raises(InputError) as exc:
        cgroups.partition_cpuset(root, "/machine")
    assert "cpuset.effective_cpus" in str(exc.value)
    assert "\n" not in str(exc.value)
