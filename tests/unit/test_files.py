"""The one atomic file writer (gateway/core/files.py): old or new file after any crash,
the mode its callers need, no temp file left behind, and no second writer in the code."""

from __future__ import annotations

import platform
import re
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.core.files import fsync_dir, stale_temp_files, write_atomic

ROOT = Path(__file__).parents[2]


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def run_child(script: str) -> subprocess.CompletedProcess[str]:
    """In a child process: resource limits and a killed process must not touch the test
    runner. Run from the repository root, so it imports this checkout's code."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(script)],
                          capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_write_atomic_writes_a_private_file_and_replaces_it(tmp_path: Path) -> None:
    path = tmp_path / "simulator.json"
    write_atomic(path, b"one")
    assert path.read_bytes() == b"one"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    write_atomic(path, "two ✓")
    assert path.read_text(encoding="utf-8") == "two ✓"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert names(tmp_path) == ["simulator.json"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o400])
def test_the_mode_is_the_one_asked_for_whatever_the_umask(tmp_path: Path, mode: int) -> None:
    path = tmp_path / "file"
    write_atomic(path, b"x", mode=mode)
    assert stat.S_IMODE(path.stat().st_mode) == mode
    assert names(tmp_path) == ["file"]


def test_replacing_a_file_gives_it_the_new_mode_not_the_old(tmp_path: Path) -> None:
    path = tmp_path / "tokens.toml"
    path.write_bytes(b"old")
    path.chmod(0o666)
    write_atomic(path, b"new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    """A real failure half-way (the file size limit, as a full disk would): the old
    file stays whole and no temp file is left behind."""
    path = tmp_path / "neonize.db"
    path.write_bytes(b"old store")
    done = run_child(f"""
        import resource, signal, sys
        from pathlib import Path
        from gateway.core.files import write_atomic
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            write_atomic(Path({str(path)!r}), b"x" * 100_000)
        except OSError as exc:
            print("failed:", exc.errno)
            sys.exit(0)
        sys.exit("the write did not fail")
    """)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("failed:"), done.stdout
    assert path.read_bytes() == b"old store"
    assert names(tmp_path) == ["neonize.db"]


def test_a_crash_between_the_write_and_the_rename_leaves_the_old_file(tmp_path: Path) -> None:
    """The process dies (SIGKILL: no cleanup runs) after the new bytes are on disk but
    before the rename: the old file is whole, and the orphaned temp file is one that
    ``stale_temp_files`` finds, so the next start can remove it."""
    path = tmp_path / "simulator.json"
    path.write_bytes(b"old credentials")
    done = run_child(f"""
        import os, signal
        from pathlib import Path
        from gateway.core.files import write_atomic
        os.replace = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # the power cut
        write_atomic(Path({str(path)!r}), b"new credentials")
    """)
    assert done.returncode == -9, (done.returncode, done.stderr)
    assert path.read_bytes() == b"old credentials"
    orphans = stale_temp_files(tmp_path, "simulator.json")
    assert len(orphans) == 1, names(tmp_path)
    assert orphans[0].read_bytes() == b"new credentials"
    assert stat.S_IMODE(orphans[0].stat().st_mode) == 0o600  # never readable by others
    assert stale_temp_files(tmp_path, "neonize.db") == []


def test_a_failed_rename_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    (target / "inside").mkdir(parents=True)  # a non-empty directory cannot be replaced
    with pytest.raises(OSError):
        write_atomic(target, b"x")
    assert names(tmp_path) == ["taken"]


def test_an_exclusive_write_never_replaces_a_file(tmp_path: Path) -> None:
    path = tmp_path / "store.key"
    write_atomic(path, "first\n", exclusive=True)
    assert path.read_text() == "first\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with pytest.raises(FileExistsError):
        write_atomic(path, "second\n", exclusive=True)
    assert path.read_text() == "first\n"
    assert path.stat().st_nlink == 1  # the temp name that linked it is gone
    assert names(tmp_path) == ["store.key"]


def test_an_exclusive_write_does_not_follow_a_planted_symlink(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "store.key").symlink_to(victim)
    with pytest.raises(FileExistsError):
        write_atomic(tmp_path / "store.key", "secret", exclusive=True)
    assert victim.read_text() == "keep"


def test_a_write_replaces_a_symlink_rather_than_writing_through_it(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (tmp_path / "gateway.json").symlink_to(victim)
    write_atomic(tmp_path / "gateway.json", "{}")
    assert victim.read_text() == "keep"
    assert not (tmp_path / "gateway.json").is_symlink()


def test_a_write_that_is_not_durable_is_still_atomic(tmp_path: Path) -> None:
    path = tmp_path / "status.json"
    write_atomic(path, "{}", durable=False)
    write_atomic(path, '{"a": 1}', durable=False)
    assert path.read_text() == '{"a": 1}'
    assert names(tmp_path) == ["status.json"]


def test_fsync_dir_refuses_a_file(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError):
        fsync_dir(tmp_path / "f")


REPLACING = re.compile(r"os\.replace\(|os\.rename\(|\.rename\(|mkstemp\(|NamedTemporaryFile\(")


def test_there_is_one_atomic_writer() -> None:
    """Every file the gateway replaces goes through ``write_atomic``: a second writer
    would be a second place to get the fsyncs, the mode or the cleanup wrong."""
    found = [f"{path.relative_to(ROOT)}:{n}"
             for folder in ("gateway", "actors") for path in sorted((ROOT / folder).rglob("*.py"))
             if path.name != "files.py" or path.parent.name != "core"
             for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if REPLACING.search(line)]
    assert found == []


# A file system without hard links (vfat, exFAT, sshfs: a key kept on a USB stick, say)
# answers link() with EPERM. Such a file system is not at hand in a test, so a child
# process gets the kernel's own answer: a seccomp filter makes every link syscall of
# that process (and only that one) fail with EPERM, as the file system would.
NO_HARD_LINKS = """
    import ctypes, errno, platform, struct
    LINK_SYSCALLS = {"x86_64": (86, 265), "aarch64": (37,)}  # link, linkat
    numbers = LINK_SYSCALLS[platform.machine()]
    def insn(code, k, jt=0, jf=0):
        return struct.pack("HBBI", code, jt, jf, k)
    program = [insn(0x20, 0)]  # load the syscall number
    program += [insn(0x15, nr, len(numbers) - i, 0) for i, nr in enumerate(numbers)]
    program += [insn(0x06, 0x7FFF0000), insn(0x06, 0x00050000 | errno.EPERM)]
    code = ctypes.create_string_buffer(b"".join(program))
    class Program(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    libc = ctypes.CDLL(None, use_errno=True)
    filtered = Program(len(program), ctypes.addressof(code))
    if (libc.prctl(38, 1, 0, 0, 0) != 0  # PR_SET_NO_NEW_PRIVS
            or libc.prctl(22, 2, ctypes.byref(filtered), 0, 0) != 0):  # SECCOMP_MODE_FILTER
        raise SystemExit(77)  # NO_SECCOMP
"""
NO_SECCOMP = 77  # the child's exit status when this kernel takes no seccomp filter


@pytest.mark.skipif(platform.machine() not in ("x86_64", "aarch64") or sys.platform != "linux",
                    reason="the seccomp filter names the link syscalls of these machines")
def test_an_exclusive_write_works_where_hard_links_do_not(tmp_path: Path) -> None:
    """``wagate keys create --out`` on a file system without hard links: the key is
    written (it was, before the one writer published exclusive files by a hard link),
    still never over an existing file, still private, and no temp file stays."""
    path = tmp_path / "store.key"
    taken = tmp_path / "taken.key"
    taken.write_text("keep\n")
    done = run_child(NO_HARD_LINKS + f"""
    import os
    from pathlib import Path
    from gateway.core.files import write_atomic
    try:
        os.link({str(taken)!r}, {str(tmp_path / "probe")!r})
        raise SystemExit("the filter let a hard link through")
    except PermissionError:
        pass
    write_atomic(Path({str(path)!r}), "secret\\n", exclusive=True)
    try:
        write_atomic(Path({str(taken)!r}), "other\\n", exclusive=True)
        raise SystemExit("an existing key was replaced")
    except FileExistsError:
        print("refused")
    """)
    if done.returncode == NO_SECCOMP:
        pytest.skip("this kernel (or its sandbox) takes no seccomp filter")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "refused"
    assert path.read_text() == "secret\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert taken.read_text() == "keep\n"
    assert names(tmp_path) == ["store.key", "taken.key"]
