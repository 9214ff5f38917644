"""data_dir's file system read from the real /proc/self/mountinfo (gateway/core/mounts.py):
a local file system is accepted, a mount inside data_dir too, and a mount point whose
name the kernel escapes is found. Real tmpfs mounts (root needed; skipped otherwise,
with the reason), unmounted however the test ends. The refusal of a network file
system is tested on mountinfo text (tests/unit/test_mounts.py): no NFS server here."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from gateway.cli.serve import filesystem_problem
from gateway.core.config import load_config
from gateway.core.mounts import mount_of_path, read_mounts
from tests.integration.harness import Gateway
from tests.integration.test_disk_full import small_fs  # noqa: F401 (the mount fixture)


def test_a_gateway_on_tmpfs_with_a_mount_inside_data_dir_starts_and_serves(
        small_fs: Callable[[Path, int], Path],  # noqa: F811
        make_gateway: Callable[..., Gateway]) -> None:
    gateway = make_gateway()
    small_fs(gateway.data_dir, 32)
    small_fs(gateway.data_dir / "state", 8)
    config = load_config(gateway.config_path)
    mounts = read_mounts()
    assert mounts is not None
    for path in (gateway.data_dir, gateway.data_dir / "state"):
        found = mount_of_path(path, mounts)
        assert found is not None and (found.fs_type, found.mount_point) == ("tmpfs", str(path))
    assert filesystem_problem(config) is None
    gateway.start()
    assert gateway.link()["state"] == "CONNECTED"


def test_a_mount_point_with_a_space_in_its_name_is_found(
        small_fs: Callable[[Path, int], Path], tmp_path: Path) -> None:  # noqa: F811
    spaced = small_fs(tmp_path / "wa data", 1)
    mounts = read_mounts()
    assert mounts is not None
    found = mount_of_path(spaced / "not yet made" / "db", mounts)
    assert found is not None and (found.fs_type, found.mount_point) == ("tmpfs", str(spaced))
