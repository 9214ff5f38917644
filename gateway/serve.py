"""``wagate serve``: the foreground launcher that owns every process of the gateway.

It starts the actor system (whose Admin daemonises into its own process group),
then the HTTP server (in a process group of its own), records both groups in
``data_dir/run/gateway.json``, and on SIGTERM/SIGINT stops them in order: web
first (no new requests), then ``Stop`` to the supervisor (no respawns), then the
actor system, then a sweep of both groups so nothing survives. On start it sweeps
what a crashed predecessor left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
    group_alive,
    port_listening,
    start_system,
    sweep_group,
)
from gateway.cluster import cluster_problem
from gateway.config import Config
from gateway.metrics import reset_metrics_dir
from gateway.observability import setup_logging
from gateway.web import web_environment

log = structlog.get_logger("wagate.serve")

STATE_FILE = "run/gateway.json"


class StartupError(RuntimeError):
    """The gateway cannot start; the message says why and what to do."""


def serve(config: Config) -> int:
    data = config.data_path
    for sub in ("", "run", "logs"):
        (data / sub).mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data, 0o700)
    setup_logging(config.logging, console=config.http.dev)
    problem = cluster_problem(config)
    if problem is not None:
        raise StartupError(problem)
    check_access(config)
    sweep_leftovers(data)
    for what, host, port in (("actors.admin_port", bind_address(config),
                              config.actors.admin_port),
                             ("http.port", config.http.host, config.http.port)):
        if port_listening(port, host if host not in ("0.0.0.0", "") else "127.0.0.1"):
            raise StartupError(f"port {port} ({what}) is already in use; stop what uses it "
                               f"or choose another with --{what.split('.')[-1].replace('_', '-')}")
    reset_metrics_dir(data)  # after the sweep: no web process of a predecessor writes there
    # Before any actor starts: a wrong or missing storage key stops the gateway here.
    # The stores lock it takes is never closed: it lasts as long as this process and
    # the actor processes (which inherit it) run, keeping `wagate keys rotate` out.
    check_session_stores(config)

    stop_requested: list[int] = []

    def request_stop(signum: int, _frame: Any) -> None:
        stop_requested.append(signum)

    system, supervisor, actor_pgid, admin_pid = start_actor_system(config)
    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    web: subprocess.Popen[bytes] | None = None
    exit_code = 0
    try:
        # admin_port: `wagate status` and `wagate drain` find the actor system with it.
        state = {"launcher": os.getpid(), "actor_pgid": actor_pgid,
                 "admin_port": config.actors.admin_port, "role": config.cluster.role}
        write_state(data, state)
        web = start_web(config)
        write_state(data, {**state, "web_pgid": web.pid})
        wait_for_web(config, web)
        log.info("wagate is serving", url=f"http://{config.http.host}:{config.http.port}/graphql",
                 engine=config.transport.engine, data_dir=str(data),
                 admin_port=config.actors.admin_port, role=config.cluster.role)
        while not stop_requested:
            if web.poll() is not None:
                log.error("the HTTP server exited; stopping the gateway", code=web.returncode)
                exit_code = 1
                break
            if not _is_alive(admin_pid):
                # Without the Admin nothing answers. Exit non-zero so systemd or the
                # container runtime restarts the gateway (sessions and queued messages
                # come back from disk).
                log.error("the actor system died; stopping the gateway so it can be "
                          "restarted", admin_pid=admin_pid)
                exit_code = 1
                break
            problem = tend_endpoint(system, config, 0.2)
            if problem is not None:
                log.error(problem)
                exit_code = 1
                break
    finally:
        stop_everything(system, supervisor, actor_pgid, web)
        with contextlib.suppress(FileNotFoundError):
            (data / STATE_FILE).unlink()
        log.info("wagate stopped")
    return exit_code


def check_access(config: Config) -> None:
    """Refuse to serve an API that anyone could use, or that nobody could."""
    from gateway.app import make_authenticator
    from gateway.auth import TokenFileError, tokens_path

    if not config.auth.required:  # the demo: the config loader allows it on loopback only
        log.warning("serving WITHOUT API tokens (demo on loopback): every local program "
                    "may use the API", host=config.http.host)
        return
    try:
        usable = make_authenticator(config).load()
    except (TokenFileError, ValueError) as exc:
        raise StartupError(str(exc)) from None
    if usable == 0:
        raise StartupError(
            f"no usable API tokens in {tokens_path(config)}, so every request would be "
            "refused; create one with `wagate token create --name admin --role admin` "
            "(with the same --config as here), or try the gateway without tokens: "
            "`wagate serve --demo` (loopback only)")


def start_actor_system(config: Config) -> tuple[Any, Any, int, int]:
    """Start the Admin and, except on a cluster member, the supervisor tree.

    Returns (system, supervisor or None on a member, process group of the actors, pid
    of the Admin). A member's actor system joins the leader's convention; the leader's
    supervisor places sessions (and a host agent) on it.
    """
    logs = config.data_path / "logs"
    if config.cluster.role != "single":
        # Read by Thespian's convention module when it is first imported: before it.
        os.environ.update(convention_timer_env(config))
    from actors.supervisor import SupervisorActor

    configure_thespian_log(logs)
    # The Admin and every actor inherit fds 0-2: point them at the actor log, never at
    # our terminal or a caller's pipe (a leftover actor would hold that pipe open).
    saved = [os.dup(fd) for fd in (0, 1, 2)]
    log_fd = os.open(logs / "actors.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    try:
        os.dup2(null_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        system = start_system(config, thespian_log_defs(logs / "actors.log"))
    finally:
        for fd, copy in zip((0, 1, 2), saved, strict=True):
            os.dup2(copy, fd)
            os.close(copy)
        os.close(log_fd)
        os.close(null_fd)
    timeout = config.actors.start_timeout_seconds
    if config.cluster.role == "member":
        pgid, admin_pid = _member_processes(system, timeout)
        problem = watch_leader(system, config, timeout)
        if problem is not None:
            stop_everything(system, None, pgid, None)
            raise StartupError(problem)
        return system, None, pgid, admin_pid
    supervisor = system.createActor(SupervisorActor, globalName=SUPERVISOR_NAME)
    info = system.ask(supervisor, WhoAreYou(), timeout)
    if not isinstance(info, ProcessInfo):
        system.shutdown()
        raise StartupError("the actor system did not start; see data_dir/logs/thespian.log")
    reply = system.ask(supervisor, StartGateway(config), timeout)
    if not isinstance(reply, Ok):
        stop_everything(system, supervisor, info.pgid, None)
        raise StartupError(f"the supervisor did not start ({reply!r}); see "
                           "data_dir/logs/actors.log")
    return system, supervisor, info.pgid, info.ppid


def _member_processes(system: Any, timeout: float) -> tuple[int, int]:
    """A member runs no supervisor: a short-lived local actor tells the process group
    of its actor system (to sweep) and the Admin's pid (to watch)."""
    from thespian.actors import ActorExitRequest

    from actors.host_agent import HostAgent

    probe = system.createActor(HostAgent)
    info = system.ask(probe, WhoAreYou(), timeout)
    system.tell(probe, ActorExitRequest())
    if not isinstance(info, ProcessInfo):
        system.shutdown()
        raise StartupError("the actor system did not start; see data_dir/logs/thespian.log")
    return info.pgid, info.ppid


def watch_leader(system: Any, config: Config, timeout: float) -> str | None:
    """Start a member's LeaderWatch and wait up to ``timeout`` for the leader: why this
    member must not join it (another wagate), or None. A leader that is not up yet is
    checked when it registers (``tend_endpoint`` gets the watch's report then)."""
    from actors.leader_watch import LeaderWatch

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


def start_web(config: Config) -> subprocess.Popen[bytes]:
    """The HTTP server, in a process group of its own, without the secrets it does not
    need."""
    return subprocess.Popen([sys.executable, "-m", "gateway.web"],
                            env=web_environment(config, os.environ),
                            stdin=subprocess.DEVNULL, start_new_session=True)


def wait_for_web(config: Config, web: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    host = config.http.host if config.http.host not in ("0.0.0.0", "") else "127.0.0.1"
    deadline = time.monotonic() + timeout
    while not port_listening(config.http.port, host):
        if web.poll() is not None:
            raise StartupError(f"the HTTP server exited at start (code {web.returncode})")
        if time.monotonic() > deadline:
            raise StartupError(f"the HTTP server did not listen on port {config.http.port} "
                               f"within {timeout:.0f} s")
        time.sleep(0.05)


def stop_everything(system: Any, supervisor: Any, actor_pgid: int,
                    web: subprocess.Popen[bytes] | None) -> None:
    if web is not None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(web.pid, signal.SIGTERM)
        try:
            web.wait(15)
        except subprocess.TimeoutExpired:
            log.warning("the HTTP server did not stop in time; killing it")
        sweep_group(web.pid, settle=0.5, grace=2.0)
    try:
        if supervisor is not None:  # a member has none (the leader's is not ours to stop)
            system.ask(supervisor, Stop(), 10)  # before shutdown(): no child is respawned now
        system.shutdown()
    except Exception as exc:
        log.warning("actor system shutdown failed", error=repr(exc))
    outcome = sweep_group(actor_pgid)
    if outcome != "clean":
        log.warning("actor processes had to be killed after shutdown", how=outcome)


# ---- leftovers of a crashed predecessor ------------------------------------------------


def write_state(data: Path, state: dict[str, int]) -> None:
    path = data / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state), encoding="utf-8")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def sweep_leftovers(data: Path) -> None:
    path = data / STATE_FILE
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return
    launcher = int(state.get("launcher", 0))
    if launcher and launcher != os.getpid() and _is_wagate(launcher):
        raise StartupError(f"another wagate (pid {launcher}) is running with data_dir {data}; "
                           "stop it first or use another --data-dir")
    for key in ("web_pgid", "actor_pgid"):
        pgid = int(state.get(key, 0))
        if pgid and group_alive(pgid):
            outcome = sweep_group(pgid, settle=0.0, grace=5.0)
            log.warning("stopped processes left by a previous crash", group=key, how=outcome)
    path.unlink()


def running_gateway(data: Path) -> str | None:
    """What still runs on ``data`` according to the launcher's state file, or None."""
    try:
        state = json.loads((data / STATE_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, ValueError):
        return None
    launcher = int(state.get("launcher", 0))
    if launcher and _is_wagate(launcher):
        return f"a running wagate (pid {launcher})"
    for key in ("actor_pgid", "web_pgid"):
        pgid = int(state.get(key, 0))
        if pgid and group_alive(pgid):
            return f"processes a crashed wagate left behind (process group {pgid})"
    return None


def check_session_stores(config: Config) -> int:
    """The storage key and the encrypted session stores (gateway/store_keys.py);
    returns the descriptor of the shared stores lock, to keep open while serving."""
    from actors.sealed_store import StoreError
    from gateway.store_keys import StoreCheckError, acquire_stores_lock, check_stores

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


def _is_alive(pid: int) -> bool:
    """Running, not a zombie (the Admin is not our child, so nobody reaps it here)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2] != "Z"


def _is_wagate(pid: int) -> bool:
    """A live process running wagate: pids get reused after a crash."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return _is_alive(pid) and (b"wagate" in cmdline or b"gateway" in cmdline)
