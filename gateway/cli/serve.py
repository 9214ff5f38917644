"""``wagate serve``: the foreground launcher that owns every process of the gateway.

Before it starts anything it installs its SIGTERM/SIGINT/SIGHUP handlers and claims
``data_dir`` (gateway/cli/run_state.py): it stops what a crashed predecessor left
running, marks every process it is about to start (gateway/cli/ownership.py) and records
the run in ``data_dir/run/gateway.json``. It then starts the actor system (whose
Admin daemonises into its own process group) and the HTTP server (in a process group
of its own). A stop signal at any moment, during start-up too, stops them in order:
web first (no new requests), then ``Stop`` to the supervisor (no respawns), then the
actor system, then every process that still holds the run's mark, so nothing
survives; and only a process that holds the mark is ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from actors.messages import (
    LeaderSeen,
    Ok,
    ProcessInfo,
    StartGateway,
    Stop,
    WatchLeader,
    WhoAreYou,
)
from actors.system import (
    SUPERVISOR_NAME,
    bind_address,
    configure_thespian_log,
    convention_timer_env,
    port_listening,
    start_system,
    stop_actor,
)
from actors.transport import preload_for_forks
from gateway.cli.cluster_mode import cluster_problem
from gateway.cli.ownership import Stamp
from gateway.cli.run_state import ClaimError, Run
from gateway.core.allocator import limit_arenas
from gateway.core.collector import freeze_long_lived
from gateway.core.config import Config, lease_mode
from gateway.core.disk import access_problem
from gateway.core.errors import WagateError
from gateway.core.migrations import NewerStoreError, check_not_newer
from gateway.core.mounts import mount_of_path, mounts_below, network_problem, read_mounts, within
from gateway.core.observability import setup_logging
from gateway.web.metrics_files import reset_metrics_dir
from gateway.web.server import web_environment

if TYPE_CHECKING:  # psycopg is imported only by a member with leases
    from gateway.cli.leader_follow import LeaderFollower

log = structlog.get_logger("wagate.serve")

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class StartupError(WagateError, RuntimeError):
    """The gateway cannot start; the message says why and what to do."""


def serve(config: Config) -> int:
    limit_arenas(os.environ)  # before any actor process is forked (they inherit it)
    data = config.data_path
    prepare_data_dir(data)
    setup_logging(config.logging, console=config.http.dev)
    check_filesystems(config)
    problem = cluster_problem(config)
    if problem is not None:
        raise StartupError(problem)
    check_access(config)
    warn_on_settings(config)
    # From here on a stop signal only asks for a stop, at whatever point of start-up it
    # comes; the claim records the run before any process exists, so even a SIGKILL
    # leaves the next start enough to find (and stop) what this one started.
    with StopSignals() as stop:
        try:
            run = Run.claim(data, config.actors.admin_port, config.cluster.role)
        except ClaimError as exc:
            raise StartupError(str(exc)) from None
        with run:
            check_ports(config)
            check_store_versions(config)
            reset_metrics_dir(data)  # after the sweep: no web process of a predecessor
            # Before any actor starts: a wrong or missing storage key stops the gateway
            # here. The stores lock it takes is never closed: it lasts as long as this
            # process and the actor processes (which inherit it) run, keeping
            # `wagate keys rotate` out.
            check_session_stores(config)
            code = run_gateway(config, run, stop)
        log.info("wagate stopped")
        return code


def prepare_data_dir(data: Path) -> None:
    """data_dir and its run/ and logs/ exist and are private, and every directory and
    file in it is writable and readable: a read-only mount or a store the gateway
    cannot read stops the start here, with a message naming it."""
    try:
        for sub in ("", "run", "logs"):
            (data / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise StartupError(f"cannot create {exc.filename or data} ({exc.strerror}): "
                           "data_dir must be on a writable file system") from None
    problem = access_problem(data)
    if problem is not None:
        raise StartupError(problem)
    os.chmod(data, 0o700)


def check_filesystems(config: Config, mountinfo: str | None = None) -> None:
    """Refuse a data_dir on a network file system (``gateway.core.mounts``)."""
    problem = filesystem_problem(config, mountinfo)
    if problem is not None:
        raise StartupError(problem)


def filesystem_problem(config: Config, mountinfo: str | None = None) -> str | None:
    """Why ``storage.data_dir`` cannot hold the gateway's SQLite databases, or None:
    it, or a mount inside it, is a network file system. A mount at or inside
    ``storage.sessions_dir`` is allowed: it holds sealed files, written whole to a temp
    file and renamed, never a live database and no lock (with the stores in clear text,
    ``--demo`` only, ``gateway.cli.store_keys`` refuses it). So is one at or inside
    ``storage.media_dir``: media files are written to a temp file and renamed too, the
    key pair published with a hard link, and nothing there is a database. ``mountinfo``: the text
    instead of this process's ``/proc/self/mountinfo``."""
    mounts = read_mounts(mountinfo)
    if mounts is None:
        log.warning("cannot read /proc/self/mountinfo: data_dir's file system is not "
                    "checked (it must not be a network file system)")
        return None
    data = config.data_path
    mount = mount_of_path(data, mounts)
    problem = None if mount is None else network_problem("storage.data_dir", str(data), mount)
    if problem is not None:
        return problem
    shared = (str(config.sessions_path), str(config.media_path))
    for below in mounts_below(str(data), mounts):
        if any(within(below.mount_point, directory) for directory in shared):
            continue
        here = mount_of_path(Path(below.mount_point), mounts)
        problem = None if here is None else network_problem(
            "storage.data_dir's subdirectory", below.mount_point, here)
        if problem is not None:
            return problem
    return None


class StopSignals:
    """SIGTERM, SIGINT (Ctrl-C) and SIGHUP (the terminal closed) ask for a stop: the
    handler only records it, and start-up and the serving loop look at ``requested``
    between steps, so a signal never cuts a step in half (leaving a process started
    but not yet known to the cleanup). The previous handlers come back on exit.

    The actor system is forked from this process and inherits the handler; Thespian
    sets its own for some signals, not for all (the Admin keeps ours for SIGTERM). In
    any process but the launcher the handler therefore acts as the previous one did:
    a SIGTERM still ends the Admin, and the launcher notices."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, Any] = {}
        self._launcher = os.getpid()

    @property
    def requested(self) -> bool:
        return bool(self.received)

    def _handle(self, signum: int, frame: Any) -> None:
        if os.getpid() != self._launcher:
            previous = self._previous.get(signum, signal.SIG_DFL)
            signal.signal(signum, previous)
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                signal.raise_signal(signum)
            return
        self.received.append(signum)

    def __enter__(self) -> StopSignals:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *_exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


class Started:
    """What start-up has started so far, for the stop (any of it may be missing)."""

    def __init__(self) -> None:
        self.system: Any = None
        self.supervisor: Any = None
        self.admin: Stamp | None = None
        self.admin_starter: int | None = None  # exited child to reap (reap_admin_starter)
        self.web: subprocess.Popen[bytes] | None = None
        self.follower: LeaderFollower | None = None  # a member with leases


def check_ports(config: Config) -> None:
    for what, host, port in (("actors.admin_port", bind_address(config),
                              config.actors.admin_port),
                             ("http.port", config.http.host, config.http.port)):
        if port_listening(port, host if host not in ("0.0.0.0", "") else "127.0.0.1"):
            raise StartupError(f"port {port} ({what}) is already in use; stop what uses it "
                               f"or choose another with --{what.split('.')[-1].replace('_', '-')}")


def run_gateway(config: Config, run: Run, stop: StopSignals) -> int:
    """Start the actor system and the web server, serve until asked to stop (or until
    one of them dies), then stop whatever was started. Exit code: 0 for a requested
    stop (during start-up too), 1 when a part of the gateway died."""
    started = Started()
    try:
        if not stop.requested:
            start_actor_system(config, started, run)
        if not stop.requested:
            started.web = start_web(config, run.mark_fd)
            run.update(web_pgid=started.web.pid, web=Stamp.of(started.web.pid))
            wait_for_web(config, started.web, stop)
        if stop.requested:
            log.info("stop requested during start-up; stopping what was started")
            return 0
        base = base_url(config.http.host, config.http.port)
        # The dashboard's address leads: it is what a person at the terminal opens next.
        log.info(f"wagate is serving: open the dashboard at {base}/", graphql=f"{base}/graphql",
                 engine=config.transport.engine, data_dir=str(config.data_path),
                 admin_port=config.actors.admin_port, role=config.cluster.role)
        return watch(started, config, stop)
    finally:
        stop_everything(started, run)


def base_url(host: str, port: int) -> str:
    """The address a browser on this machine uses: a wildcard bind is reached on
    loopback, and an IPv6 address needs brackets."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def watch(started: Started, config: Config, stop: StopSignals) -> int:
    """Serve until a stop is requested or a part of the gateway dies (exit code 1)."""
    follower = started.follower
    try:
        return _watch(started, config, stop, follower)
    finally:
        if follower is not None:
            follower.close()


def leader_follower(config: Config) -> LeaderFollower | None:
    """A member with leases follows the leader holding the leadership lock."""
    if config.cluster.role != "member" or not lease_mode(config):
        return None
    from gateway.cli.leader_follow import LeaderFollower

    return LeaderFollower(config)


def _watch(started: Started, config: Config, stop: StopSignals,
           follower: LeaderFollower | None) -> int:
    web, admin = started.web, started.admin
    assert web is not None
    while not stop.requested:
        reap_admin_starter(started)
        if web.poll() is not None:
            log.error("the HTTP server exited; stopping the gateway", code=web.returncode)
            return 1
        if admin is not None and not admin.alive():
            # Without the Admin nothing answers. Exit non-zero so systemd or the
            # container runtime restarts the gateway (sessions and queued messages
            # come back from disk).
            log.error("the actor system died; stopping the gateway so it can be "
                      "restarted", admin_pid=admin.pid)
            return 1
        if follower is not None:
            follower.tick(started.system)
        problem = tend_endpoint(started.system, config, 0.2)
        if problem is not None:
            log.error(problem)
            return 1
    return 0


def reap_admin_starter(started: Started) -> None:
    """Collect the exit status of the process Thespian forked to start the Admin.

    Thespian starts its Admin with ``multiprocessing.Process``; that child calls
    ``setsid()`` (so its pid is the actor system's process group id), forks the real
    Admin and exits at once. Thespian then drops it from multiprocessing's list of
    children, so nothing waited for it and it stayed a ``<defunct>`` child of the
    launcher for the gateway's whole life. Polled, never blocking: it may not have
    exited yet the first time."""
    pid = started.admin_starter
    if pid is None:
        return
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:  # not our child (or reaped already): nothing to collect
        done = pid
    if done == pid:
        started.admin_starter = None


def warn_on_settings(config: Config) -> None:
    """Log settings that work but defeat each other (also in health's ``warnings``)."""
    from gateway.api.health import config_warnings

    for warning in config_warnings(config):
        log.warning(warning["message"], code=warning["code"])


def check_access(config: Config) -> None:
    """Refuse to serve an API that anyone could use, or that nobody could."""
    # From gateway.auth, not the web tier: the launcher stays free of Flask and
    # GraphQL, which every actor process would inherit (see start_actor_system).
    from gateway.auth.tokens import TokenFileError, authenticator_for, tokens_path

    if not config.auth.required:  # the demo: the config loader allows it on loopback only
        log.warning("serving WITHOUT API tokens (demo on loopback): every local program "
                    "may use the API", host=config.http.host)
        return
    try:
        usable = authenticator_for(config).load()
    except (TokenFileError, ValueError) as exc:
        raise StartupError(str(exc)) from None
    if usable == 0:
        raise StartupError(
            f"no usable API tokens in {tokens_path(config)}, so every request would be "
            "refused; create one with `wagate token create --name admin --role admin` "
            "(with the same --config as here), or try the gateway without tokens: "
            "`wagate serve --demo` (loopback only)")


def preload_engine(engine: str) -> None:
    """Load what each session process of ``engine`` shares from this one (the actor
    system is forked from here): ``actors.transport.preload_for_forks``. Best effort:
    on failure each session loads its own, and reports any problem as it would."""
    try:
        loaded = preload_for_forks(engine)
    except Exception as exc:  # e.g. a protobuf runtime too old for neonize's modules
        log.warning("engine modules not preloaded; each session loads its own",
                    engine=engine, error=f"{type(exc).__name__}: {exc}")
        return
    if loaded:
        log.debug("engine modules preloaded for the session processes", modules=len(loaded))


def freeze_before_fork() -> None:
    """Keep the launcher's heap shared with the actor processes forked from it.

    The Admin is forked from this process and every actor from the Admin's tree, so
    each starts with a copy-on-write view of this heap. The cyclic garbage collector
    writes into every object it examines, which would copy those pages into every
    actor at its first full collection. Objects frozen here are never examined, in
    this process or in any forked from it (``gc.freeze``; issue 17,
    ``tests/perf/bench_memory.py``). They are the launcher's modules and
    configuration, which live as long as the process anyway. The collector's measure
    of the oldest generation is reset too, or no actor would run a full collection
    for a long time (``gateway.core.collector``)."""
    freeze_long_lived()


def start_actor_system(config: Config, started: Started, run: Run) -> None:
    """Start the Admin and, except on a cluster member, the supervisor tree, noting
    each part in ``started`` as soon as it exists (the stop uses what is there) and
    the actors' process group and Admin in the run's record.

    A member's actor system joins the leader's convention; the leader's supervisor
    places sessions (and a host agent) on it. The Admin and every actor inherit the
    run's mark from this process (fork).
    """
    logs = config.data_path / "logs"
    if config.cluster.role != "single":
        # Read by Thespian's convention module when it is first imported: before it.
        os.environ.update(convention_timer_env(config))
    from actors.supervisor.actor import SupervisorActor

    configure_thespian_log(logs)
    preload_engine(config.transport.engine)
    # A member with leases joins the leader holding the leadership lock, if one does.
    started.follower = leader_follower(config)
    convention = started.follower.start() if started.follower is not None else None
    # The Admin and every actor inherit fds 0-2: point them at the actor log, never at
    # our terminal or a caller's pipe (a leftover actor would hold that pipe open).
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    log_fd = os.open(logs / "actors.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        freeze_before_fork()
        started.system = start_system(config, thespian_log_defs(logs / "actors.log"),
                                      convention)
    finally:
        for fd, copy in zip((0, 1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(log_fd)
        os.close(null_fd)
    system = started.system
    timeout = config.actors.start_timeout_seconds
    if config.cluster.role == "member":
        info = _member_processes(system, timeout)
    else:
        started.supervisor = system.createActor(SupervisorActor, globalName=SUPERVISOR_NAME)
        info = system.ask(started.supervisor, WhoAreYou(), timeout)
    if not isinstance(info, ProcessInfo):
        raise StartupError("the actor system did not start; see data_dir/logs/thespian.log")
    # The supervisor's parent is the Admin (a member's probe's too): watched while
    # serving, by pid *and* start time (a pid alone may be someone else's by then).
    started.admin = Stamp.of(info.ppid)
    if started.admin is None:
        raise StartupError("the actor system died during start-up; see "
                           "data_dir/logs/thespian.log")
    run.update(actor_pgid=info.pgid, admin=started.admin)
    started.admin_starter = info.pgid
    reap_admin_starter(started)
    if started.supervisor is None:  # a member: it joins only a leader of the same wagate
        problem = watch_leader(system, config, timeout)
        if problem is not None:
            raise StartupError(problem)
        return
    reply = system.ask(started.supervisor, StartGateway(config), timeout)
    if not isinstance(reply, Ok):
        raise StartupError(f"the supervisor did not start ({reply!r}); see "
                           "data_dir/logs/actors.log")


def _member_processes(system: Any, timeout: float) -> Any:
    """A member runs no supervisor: a short-lived local actor tells the process group
    of its actor system and the Admin's pid (to watch)."""
    from actors.supervisor.host_agent import HostAgent

    probe = system.createActor(HostAgent)
    info = system.ask(probe, WhoAreYou(), timeout)
    stop_actor(system, probe)
    return info


def watch_leader(system: Any, config: Config, timeout: float) -> str | None:
    """Start a member's LeaderWatch and wait up to ``timeout`` for the leader: why this
    member must not join it (another wagate), or None. A leader that is not up yet is
    checked when it registers (``tend_endpoint`` gets the watch's report then)."""
    from actors.supervisor.leader_watch import LeaderWatch

    watch = system.createActor(LeaderWatch)
    seen = system.ask(watch, WatchLeader(), timeout)
    if isinstance(seen, LeaderSeen):
        return leader_problem(config, seen)
    log.warning("the leader has not answered yet; this member joins it when it does",
                leaders=list(config.cluster.leaders), waited_seconds=timeout)
    return None


def leader_problem(config: Config, seen: LeaderSeen) -> str | None:
    """The member's refusal, for the operator, when the leader runs another wagate."""
    if seen.problem is None:
        log.info("the leader runs the same wagate", leader=seen.address, runs=seen.identity)
        return None
    return (f"refusing to join the leader ({', '.join(config.cluster.leaders)}): "
            f"{seen.problem}. The hosts exchange pickled messages, which another version "
            "misreads: install the same wagate version, on the same Python minor version, "
            "on every host (README: Deployment on several hosts, Upgrades)")


def tend_endpoint(system: Any, config: Config, seconds: float) -> str | None:
    """Wait ``seconds`` on the launcher's own actor-system endpoint rather than sleep.

    An endpoint runs its accept filter only while it runs: one left idle would hold
    every connection from outside the allowed networks open, unread, until the
    gateway stops. Returns why the gateway must stop (a member whose leader turned
    out to run another wagate), or None."""
    message = system.listen(seconds)
    if isinstance(message, LeaderSeen):
        return leader_problem(config, message)
    return None


def thespian_log_defs(path: Path) -> dict[str, Any]:
    """Thespian forwards actors' stdlib logging to a logger process: into our file."""
    return {
        "version": 1,
        "formatters": {"plain": {"format": "%(asctime)s %(process)d %(levelname)s %(name)s "
                                           "| %(message)s"}},
        "handlers": {"file": {"class": "logging.handlers.WatchedFileHandler",
                              "filename": str(path), "formatter": "plain",
                              "level": "WARNING"}},
        "root": {"handlers": ["file"], "level": "WARNING"},
    }


def start_web(config: Config, mark_fd: int) -> subprocess.Popen[bytes]:
    """The HTTP server, in a process group of its own, holding the run's mark (so a
    sweep can prove its processes ours) and none of the secrets it does not need."""
    return subprocess.Popen([sys.executable, "-m", "gateway.web"],
                            env=web_environment(config, os.environ),
                            stdin=subprocess.DEVNULL, start_new_session=True,
                            pass_fds=(mark_fd,))


def wait_for_web(config: Config, web: subprocess.Popen[bytes], stop: StopSignals,
                 timeout: float = 30.0) -> None:
    host = config.http.host if config.http.host not in ("0.0.0.0", "") else "127.0.0.1"
    deadline = time.monotonic() + timeout
    while not stop.requested and not port_listening(config.http.port, host):
        if web.poll() is not None:
            raise StartupError(f"the HTTP server exited at start (code {web.returncode})")
        if time.monotonic() > deadline:
            raise StartupError(f"the HTTP server did not listen on port {config.http.port} "
                               f"within {timeout:.0f} s")
        time.sleep(0.05)


def stop_everything(started: Started, run: Run) -> None:
    """Stop, in order, what start-up started: the web server (no new requests), the
    supervisor (no respawns), the actor system; then every process of the run that
    is still alive (``Run.close``), whatever start-up got to."""
    web = started.web
    if web is not None:
        web.send_signal(signal.SIGTERM)  # our child, not yet reaped: its pid is its own
        try:
            web.wait(15)
        except subprocess.TimeoutExpired:
            log.warning("the HTTP server did not stop in time; killing it")
        run.sweep(settle=0.5, grace=2.0, pgid=web.pid)  # its workers, proven ours
        with contextlib.suppress(subprocess.TimeoutExpired):
            web.wait(5)  # reaped: no zombie
    if started.system is None:
        return
    try:
        if started.supervisor is not None:  # a member has none (the leader's is not ours)
            started.system.ask(started.supervisor, Stop(), 10)  # no child respawned now
        started.system.shutdown()
    except Exception as exc:
        log.warning("actor system shutdown failed", error=repr(exc))


def check_store_versions(config: Config) -> None:
    """A store written by a newer wagate (its schema version is above what this one
    knows, gateway/core/migrations.py) stops the start here, before anything opens it."""
    from actors.outbox import numbers, store

    try:
        check_not_newer(config.data_path / "outbox" / store.STORE_FILE,
                        f"the outbox store (data_dir/outbox/{store.STORE_FILE})",
                        len(store.MIGRATIONS))
        check_not_newer(config.data_path / numbers.CACHE_FILE,
                        f"the number cache (data_dir/{numbers.CACHE_FILE})",
                        len(numbers.MIGRATIONS))
    except NewerStoreError as exc:
        raise StartupError(str(exc)) from None


def check_session_stores(config: Config) -> int:
    """The storage key and the encrypted session stores (gateway/cli/store_keys.py);
    returns the descriptor of the shared stores lock, to keep open while serving."""
    from actors.session.sealed_store import StoreError
    from gateway.cli.store_keys import StoreCheckError, acquire_stores_lock, check_stores

    try:
        lock = acquire_stores_lock(config.data_path, exclusive=False)
    except StoreCheckError as exc:
        raise StartupError(str(exc)) from None
    try:
        check_stores(config)
    except StoreCheckError as exc:
        os.close(lock)
        raise StartupError(str(exc)) from None
    except (StoreError, OSError) as exc:
        os.close(lock)
        raise StartupError(f"cannot check the encrypted session stores: {exc}") from None
    return lock
