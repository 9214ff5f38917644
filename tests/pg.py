"""A throwaway PostgreSQL cluster for the tests, made from the system's packages.

The multi-host mode keeps its leases in PostgreSQL (issue 22), so its tests need a
real server: ``scripts/system-deps`` installs Debian's ``postgresql`` and this module
makes a private cluster with ``initdb`` in a temporary directory and runs ``postgres``
on 127.0.0.1 on a free port. PostgreSQL refuses to run as root, so as root the cluster
belongs to ``nobody``; as anyone else it runs as that user.

No leaks, however pytest ends: ``stop`` (called by the fixtures' finalizers, which
also run on a failure, Ctrl-C and pytest-timeout) shuts the server down and removes
the directory; the server gets SIGINT (a fast shutdown) if the process that started
it dies (``PR_SET_PDEATHSIG``), and a directory that a killed run left behind is
removed by the next run (``sweep_leftovers``), once no server runs in it.
"""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "wagate-pg-"
START_DEADLINE_SECONDS = 30.0
STOP_DEADLINE_SECONDS = 15.0
SUPERUSER = "wagate"
_PR_SET_PDEATHSIG = 1


def find_bindir() -> Path | None:
    """The directory with ``initdb`` and ``postgres``: on PATH, or Debian's
    ``/usr/lib/postgresql/<version>/bin`` (the newest version), or None."""
    on_path = shutil.which("initdb")
    if on_path and shutil.which("postgres"):
        return Path(on_path).resolve().parent
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    return Path(found[-1]).parent if found else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_user() -> pwd.struct_passwd | None:
    """Who runs the server: ``nobody`` when we are root (postgres refuses root), else us."""
    return pwd.getpwnam("nobody") if os.geteuid() == 0 else None


def _die_with_parent() -> None:
    """In the child, after it changed user: SIGINT (fast shutdown) when the thread
    that started it dies, so a SIGKILLed pytest leaves no server running."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0)


def _maker_alive(path: Path) -> bool:
    """Whether the test process named in ``path`` (``wagate-pg-<pid>-…``) still runs:
    pytest's parallel workers each make clusters, and one must not remove another's
    directory between its ``mkdtemp`` and its server's start."""
    maker = path.name.removeprefix(PREFIX).split("-", 1)[0]
    if not maker.isdigit():
        return False
    try:
        os.kill(int(maker), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_leftovers(tmp: Path | None = None) -> list[Path]:
    """Remove the directories of clusters that a killed test run left behind (no
    ``postmaster.pid`` naming a live process); returns what was removed."""
    removed = []
    for path in Path(tmp or tempfile.gettempdir()).glob(PREFIX + "*"):
        if _maker_alive(path):
            continue  # a live test process made it: maybe still running initdb
        pid_file = path / "data" / "postmaster.pid"
        with contextlib.suppress(OSError, ValueError, IndexError):
            pid = int(pid_file.read_text().splitlines()[0])
            os.kill(pid, 0)
            continue  # a server still runs there: another run's live cluster
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


@dataclass
class PgCluster:
    """One private cluster: ``start`` (initdb on first use), ``stop``, ``restart``,
    ``dsn``. The data survives ``restart``; ``destroy`` removes everything."""

    bindir: Path
    root: Path = field(
        default_factory=lambda: Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-")))
    port: int = field(default_factory=free_port)
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    process: subprocess.Popen[bytes] | None = None
    # Where the server runs and listens: a command prefix that enters another network
    # namespace (tests/netns.py, ``ip netns exec NAME``) and an address there.
    prefix: tuple[str, ...] = ()
    listen: str = "127.0.0.1"
    # Tests run without fsync (faster, and a test never outlives a power cut); a
    # benchmark that quotes a production figure turns it on.
    fsync: bool = False

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "postgres.log"

    def dsn(self, dbname: str = "postgres") -> str:
        return (f"host={self.listen} port={self.port} user={SUPERUSER} "
                f"password={self.password} dbname={dbname} connect_timeout=5")

    def url(self, dbname: str = "postgres") -> str:
        """The same as ``dsn``, as the URL ``cluster.database_url`` takes."""
        return f"postgresql://{SUPERUSER}:{self.password}@{self.listen}:{self.port}/{dbname}"

    def start(self) -> None:
        """initdb (the first time) and start the server; returns once it accepts
        connections, or raises with the server's log."""
        if not self.data.exists():
            self._initdb()
            if self.listen != "127.0.0.1":
                # Clients on the listen address's own subnet (a test's hosts), by password.
                with (self.data / "pg_hba.conf").open("a", encoding="utf-8") as hba:
                    hba.write("host all all samenet scram-sha-256\n")
        log = open(self.log, "ab")  # noqa: SIM115 - the child keeps it; closed below
        command = [str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                   "-c", f"listen_addresses={self.listen}",
                   "-c", f"unix_socket_directories={self.root}",
                   *(() if self.fsync else ("-c", "fsync=off", "-c", "full_page_writes=off"))]
        try:
            self.process = subprocess.Popen(
                self._entered(command), stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                **({} if self.prefix else self._as_user()), preexec_fn=_die_with_parent)
        finally:
            log.close()
        self._wait_ready()

    def stop(self) -> None:
        """Fast shutdown (SIGINT), SIGKILL if it does not end in time; idempotent."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGINT)
        try:
            process.wait(STOP_DEADLINE_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_DEADLINE_SECONDS)

    def processes(self) -> list[int]:
        """The server's processes: the postmaster and its children (one per connection
        and the background workers)."""
        if self.process is None:
            return []
        root = self.process.pid
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, ValueError, IndexError):
                # The command name may hold spaces: the fields after its ")" are fixed.
                if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == root:
                    children.append(int(stat.parent.name))
        return [root, *children]

    def freeze(self, frozen: bool = True) -> None:
        """SIGSTOP (or SIGCONT) every process of the server: it accepts connections
        into the kernel's queue and answers nothing, like a host that hangs."""
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP if frozen else signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop the server and remove the cluster's directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def _as_user(self) -> dict[str, int]:
        user = _server_user()
        return {} if user is None else {"user": user.pw_uid, "group": user.pw_gid,
                                         "extra_groups": []}

    def _entered(self, command: list[str]) -> list[str]:
        """``command`` behind ``prefix``: entering a namespace needs root, so the user
        changes after it (setpriv, which also re-arms the parent-death signal that a
        change of user clears)."""
        user = _server_user()
        if not self.prefix:
            return command
        if user is None:
            return [*self.prefix, *command]
        return [*self.prefix, "setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                "--clear-groups", "--pdeathsig", "INT", *command]

    def _initdb(self) -> None:
        user = _server_user()
        if user is not None:
            os.chown(self.root, user.pw_uid, user.pw_gid)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        if user is not None:
            os.chown(pwfile, user.pw_uid, user.pw_gid)
        pwfile.chmod(0o600)
        done = subprocess.run(
            [str(self.bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER,
             f"--pwfile={pwfile}", "--auth=scram-sha-256", "-E", "UTF8", "--no-sync",
             "--locale=C"],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
            cwd=self.root, **self._as_user())
        pwfile.unlink()
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {done.stderr[-2000:]}")

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_DEADLINE_SECONDS
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.process.returncode}): "
                                   f"{self.log.read_text(errors='replace')[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(
                    (self.listen, self.port), timeout=0.5):
                if self._accepts_queries():
                    return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"postgres did not accept connections within "
                           f"{START_DEADLINE_SECONDS:g} s: {self.log.read_text()[-2000:]}")

    def _accepts_queries(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(self.dsn(), autocommit=True) as conn:
                conn.execute("SELECT 1")
        except psycopg.OperationalError:
            return False  # still starting up ("the database system is starting up")
        return True


def new_database(cluster: PgCluster, name: str) -> str:
    """A fresh, empty database in ``cluster``; returns its DSN."""
    import psycopg

    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return cluster.dsn(name)
