"""Which file system a path is on (gateway/core/mounts.py) from sample mountinfo text,
and the launcher's refusal of a data_dir on a network file system
(gateway/cli/serve.py ``filesystem_problem``, gateway/cli/store_keys.py
``clear_stores_problem``)."""

from __future__ import annotations

import os
from pathlib import Path

from gateway.cli.serve import filesystem_problem
from gateway.cli.store_keys import clear_stores_problem
from gateway.core.config import Config, load_config
from gateway.core.mounts import (
    NETWORK_FILESYSTEMS,
    Mount,
    mount_of,
    mounts_below,
    network_problem,
    parse_mountinfo,
    unescape,
)

SAMPLE = r"""22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
25 27 0:23 / /dev/shm rw,relatime - tmpfs tmpfs rw,size=24683584k
30 25 0:27 / /dev/shm rw,relatime - tmpfs shm2 rw,size=1k
50 27 0:55 / /srv/wa\040data rw,relatime shared:7 master:3 - nfs4 nas:/export/wa rw,vers=4.2
51 50 0:56 / /srv/wa\040data/local rw,relatime - ext4 /dev/sdb1 rw
52 27 0:57 / /home/u/back\134slash rw - fuse.sshfs u@h:/x rw
53 27 0:58 / /mnt/tab\011here rw - cifs //srv/share rw
garbage line without the separator
54 27 bad / /mnt/bad rw - ext4 /dev/sdc rw
"""


def _of(path: str, mounts: list[Mount], device: int | None = None) -> Mount:
    found = mount_of(path, mounts, device)
    assert found is not None
    return found


def test_fields_and_escapes_are_read() -> None:
    mounts = parse_mountinfo(SAMPLE)
    assert [m.mount_point for m in mounts] == [
        "/proc", "/", "/dev/shm", "/dev/shm", "/srv/wa data", "/srv/wa data/local",
        "/home/u/back\\slash", "/mnt/tab\there"]
    nfs = mounts[4]
    assert (nfs.fs_type, nfs.source, nfs.device) == ("nfs4", "nas:/export/wa", (0, 55))
    assert unescape(r"a\040b\012c\134d") == "a b\nc\\d"


def test_the_longest_mount_point_prefix_wins_by_whole_components() -> None:
    mounts = parse_mountinfo(SAMPLE)
    assert _of("/srv/wa data/db", mounts).fs_type == "nfs4"
    assert _of("/srv/wa data", mounts).fs_type == "nfs4"
    assert _of("/srv/wa data/local/x", mounts).fs_type == "ext4"
    # "/srv/wa database" merely starts with the same characters: it is on "/"
    assert _of("/srv/wa database/x", mounts).mount_point == "/"
    assert _of("/home/u/back\\slash/d", mounts).fs_type == "fuse.sshfs"
    assert _of("/mnt/tab\there", mounts).fs_type == "cifs"


def test_a_mount_over_a_mount_point_is_the_one_in_use() -> None:
    assert _of("/dev/shm/x", parse_mountinfo(SAMPLE)).source == "shm2"


def test_the_device_number_finds_a_path_under_a_mount_that_hides_another() -> None:
    # /data/db was an NFS mount, then a tmpfs was mounted over /data: the NFS mount is
    # still listed, but /data/db is on the tmpfs now (its st_dev says so).
    text = ("27 1 8:1 / / rw - ext4 /dev/sda1 rw\n"
            "60 27 0:70 / /data/db rw - nfs nas:/db rw\n"
            "61 27 0:71 / /data rw - tmpfs tmpfs rw\n")
    mounts = parse_mountinfo(text)
    assert _of("/data/db", mounts).fs_type == "nfs"
    assert _of("/data/db", mounts, os.makedev(0, 71)).fs_type == "tmpfs"
    # A device no line names (btrfs subvolumes, overlay): the prefix decides.
    assert _of("/data/db", mounts, os.makedev(0, 99)).fs_type == "nfs"


def test_mounts_below_a_directory() -> None:
    below = mounts_below("/srv", parse_mountinfo(SAMPLE))
    assert [m.mount_point for m in below] == ["/srv/wa data", "/srv/wa data/local"]
    assert mounts_below("/srv/wa data/local", parse_mountinfo(SAMPLE)) == []


def test_the_refusal_names_the_directory_the_type_and_the_reason() -> None:
    nfs = parse_mountinfo(SAMPLE)[4]
    message = network_problem("storage.data_dir", "/srv/wa data/gw", nfs)
    assert message is not None
    assert "storage.data_dir /srv/wa data/gw" in message
    assert "nfs4" in message and "nas:/export/wa" in message
    assert "WAL" in message and "one host" in message and "locks" in message
    assert network_problem("storage.data_dir", "/", parse_mountinfo(SAMPLE)[1]) is None
    assert {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "fuse.sshfs", "ceph",
            "glusterfs"} <= NETWORK_FILESYSTEMS
    assert not {"ext4", "xfs", "btrfs", "tmpfs", "zfs", "overlay"} & NETWORK_FILESYSTEMS


# ------------------------------------------------------------- the launcher's check


def _mountinfo(tmp_path: Path, *mounts: tuple[Path, str]) -> str:
    """Root on ext4 and ``mounts`` (path, type) on devices no real path here has."""
    real = os.stat(tmp_path).st_dev
    devices = (f"0:{n}" for n in range(900, 999)
               if os.makedev(0, n) != real)
    lines = [f"27 1 {next(devices)} / / rw - ext4 /dev/root rw"]
    for number, (path, fs_type) in enumerate(mounts, 60):
        escaped = str(path).replace("\\", r"\134").replace(" ", r"\040")
        lines.append(f"{number} 27 {next(devices)} / {escaped} rw - {fs_type} srv:/x rw")
    return "\n".join(lines) + "\n"


def _config(tmp_path: Path, **extra: object) -> Config:
    return load_config(None, {"storage.data_dir": str(tmp_path / "my data"), **extra})


def test_serve_refuses_a_data_dir_on_nfs(tmp_path: Path) -> None:
    config = _config(tmp_path)
    config.data_path.mkdir()
    text = _mountinfo(tmp_path, (tmp_path, "nfs4"))
    problem = filesystem_problem(config, text)
    assert problem is not None
    assert problem.startswith(f"storage.data_dir {config.data_path} is on a network file "
                              "system (nfs4, srv:/x mounted at ")
    assert filesystem_problem(config, _mountinfo(tmp_path, (tmp_path, "xfs"))) is None
    assert filesystem_problem(config, _mountinfo(tmp_path)) is None


def test_a_network_mount_inside_data_dir_is_refused_but_the_sessions_dir(
        tmp_path: Path) -> None:
    config = _config(tmp_path)
    for sub in ("state", "sessions"):
        (config.data_path / sub).mkdir(parents=True)
    state = config.data_path / "state"
    problem = filesystem_problem(config, _mountinfo(tmp_path, (state, "cifs")))
    assert problem is not None and f"subdirectory {state} is on a network" in problem
    # data_dir/sessions is the default sessions_dir: sealed files only
    assert filesystem_problem(
        config, _mountinfo(tmp_path, (config.data_path / "sessions", "nfs4"))) is None
    elsewhere = _config(tmp_path, **{"storage.sessions_dir": str(tmp_path / "shared")})
    problem = filesystem_problem(
        elsewhere, _mountinfo(tmp_path, (config.data_path / "sessions", "nfs4")))
    assert problem is not None  # not the sessions_dir of this configuration


def test_a_network_sessions_dir_is_refused_only_for_clear_text_stores(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    problem = clear_stores_problem(shared, _mountinfo(tmp_path, (shared, "nfs")))
    assert problem is not None and f"storage.sessions_dir {shared}" in problem
    assert "configure a storage key" in problem
    assert clear_stores_problem(shared, _mountinfo(tmp_path)) is None


def test_a_media_dir_on_a_network_file_system_is_accepted(tmp_path: Path) -> None:
    """The media store holds plain files written whole and renamed (no database, no
    lock): at its default data_dir/media, a network mount there is accepted, and so is
    a storage.media_dir anywhere else; data_dir itself still may not be one."""
    config = _config(tmp_path)
    media = config.data_path / "media"
    media.mkdir(parents=True)
    assert filesystem_problem(config, _mountinfo(tmp_path, (media, "nfs4"))) is None
    shared = tmp_path / "shared-media"
    elsewhere = _config(tmp_path, **{"storage.media_dir": str(shared)})
    assert filesystem_problem(elsewhere, _mountinfo(tmp_path, (shared, "nfs4"))) is None
    moved = _config(tmp_path, **{"storage.media_dir": str(tmp_path / "other")})
    assert filesystem_problem(moved, _mountinfo(tmp_path, (media, "nfs4"))) is not None
