"""Starting, joining and stopping the Thespian actor system.

Facts this module is built on (docs/architecture.md §4):
- the Admin daemonises (setsid + double fork), so every actor ends up in the
  Admin's process group (shown, never signalled by its id: the launcher stops only
  processes proven its own, gateway/cli/ownership.py);
- Thespian binds every socket to all interfaces and speaks pickle, so in
  single-host mode we rewrite the bind address to 127.0.0.1 before the first
  ``ActorSystem(...)``; forked children inherit the patch;
- ``ActorSystem(...)`` *starts* an Admin when none listens, so processes that only
  want to join (web workers) must probe the port first;
- every ``ActorSystem(...)`` of a wagate process goes through ``open_system``, which
  installs the bind address, the accept filter and the fork guard first: no caller
  can open an actor-system socket without them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import socket
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from actors.protocol import compatible, identity
from gateway.core.config import lease_mode
from gateway.core.networks import address_in, parse_networks

SYSTEM_BASE = "multiprocTCPBase"
SUPERVISOR_NAME = "wagate.supervisor"
LOOPBACK = "127.0.0.1"
# Capabilities a gateway's actor system advertises to its convention (cluster mode).
ROLE_CAPABILITY = "wagate_role"
HOST_CAPABILITY = "wagate_host"
SLOTS_CAPABILITY = "wagate_sessions"

_bound: str | None = None  # the address every actor-system socket is bound to
_allowed: tuple[Any, ...] | None = None  # networks whose connections are accepted; None: any
# This process's own listening actor-system sockets (a forked child drops them). A
# weak set: a web worker opens a transport for every call context it makes, and a list
# of weak references kept one dead entry for each, for the life of the process.
_listeners: weakref.WeakSet[Any] = weakref.WeakSet()
_listeners_tracked = False
# The configuration of this host, inherited by every actor process forked from the
# launcher: a session placed here by the leader uses it, never the leader's.
_host_config: Any = None


def bind_only(address: str) -> None:
    """Bind every actor-system socket of this process and of the processes it forks to
    ``address`` instead of all interfaces, and advertise that address (idempotent; a
    process is bound to one address for its life).

    Relies on ``IPActorAddress.bindname`` of thespian 4.0.1 (pinned); the
    integration tests list the gateway's listening sockets to catch a regression.
    """
    global _bound
    if _bound is not None:
        if _bound != address:
            raise RuntimeError(f"actor-system sockets are already bound to {_bound}")
        return
    from thespian.system.transport import IPBase

    original_init = IPBase.IPActorAddress.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        host = self.bindname[0]
        if host in ("", "0.0.0.0"):
            self.bindname = (address, *self.bindname[1:])

    IPBase.IPActorAddress.__init__ = init
    os.environ["THESPIAN_BASE_IPADDR"] = address
    _bound = address


def poll_thespian_sockets() -> None:
    """Make Thespian's TCP transport wait with ``poll`` instead of ``epoll``, in this
    process and the processes it forks (idempotent).

    Thespian builds a new selector at every turn of its loop (``_runWithExpiry``: one
    per message in or out, per ack, per bridge wake) and registers every socket and
    watched descriptor in it again. For epoll each turn is an ``epoll_create``, one
    ``epoll_ctl`` per descriptor and a ``close`` (the outbox, with a socket per web
    helper thread, made about 16 ``epoll_ctl`` calls per turn under load); poll keeps
    no kernel object between calls: 7.5 us a turn against 17 us with five descriptors,
    measured. Only the names the transport module uses are replaced (thespian 4.0.1,
    pinned).
    """
    from thespian.system.transport import TCPTransport

    TCPTransport.selectors = SimpleNamespace(
        DefaultSelector=selectors.PollSelector, EVENT_READ=selectors.EVENT_READ,
        EVENT_WRITE=selectors.EVENT_WRITE)


def accept_only_from(networks: tuple[str, ...], own_address: str) -> None:
    """Close every actor-system connection whose peer is outside ``networks`` (or
    ``own_address``: a host talks to itself over its advertised address) before a
    single byte of it is read: Thespian unpickles what it receives, so the check must
    come before any data. Installed by ``open_system`` before its ``ActorSystem``,
    inherited by the forked Admin and actors (idempotent; the last call wins).

    Wraps ``TCPTransport._acceptNewIncoming`` of thespian 4.0.1 (pinned): after it
    has accepted a connection (nothing is read yet: reads happen in a later round of
    its loop), a connection from a refused peer is closed and forgotten. Failing the
    accept itself is no option: Thespian's accept-error path hands an internal marker
    to the Admin's message handler, which kills the Admin. The cluster test connects
    from an address outside the networks and checks that the connection is closed.
    """
    global _allowed
    allowed = parse_networks((*networks, own_address), "cluster.allow_networks")
    first = _allowed is None
    _allowed = allowed
    if not first:
        return
    from thespian.system.transport import TCPTransport

    original = TCPTransport.TCPTransport._acceptNewIncoming

    def accept(self: Any) -> None:
        before = set(self._incomingSockets)
        original(self)
        for fileno in set(self._incomingSockets) - before:
            incoming = self._incomingSockets[fileno]
            try:
                peer = incoming.socket.getpeername()[0]
            except OSError:
                peer = ""
            if _allowed is not None and not address_in(peer, _allowed):
                del self._incomingSockets[fileno]
                with contextlib.suppress(OSError):
                    incoming.socket.close()
                _refused(peer)

    TCPTransport.TCPTransport._acceptNewIncoming = accept


def _refused(peer: str) -> None:
    from thespian.system.utilis import thesplog

    thesplog("refused an actor-system connection from %s: outside cluster.allow_networks",
             peer or "an unknown address", level=logging.WARNING)


def drop_listeners_at_fork() -> None:
    """Keep every listening actor-system socket in the one process that opened it
    (idempotent; inherited by forked children, like the other patches).

    Thespian forks the Admin from the process that starts the system while that
    process's own endpoint listens, and forks its logger from the Admin: each child
    would hold its parent's listening socket without ever accepting on it, so an
    outside connection would wait there unread, and the port would stay bound, for as
    long as any actor lives. Wraps ``TCPTransport.__init__`` of thespian 4.0.1 (pinned)
    to note each listening socket; a test checks that no listener has two owners.
    """
    global _listeners_tracked
    if _listeners_tracked:
        return
    from thespian.system.transport import TCPTransport

    original_init = TCPTransport.TCPTransport.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original_init(self, *args, **kwargs)
        _listeners.add(self.socket)

    TCPTransport.TCPTransport.__init__ = init
    os.register_at_fork(after_in_child=_drop_inherited_listeners)
    _listeners_tracked = True


def _drop_inherited_listeners() -> None:
    """In a child right after ``fork``: stop holding the parent's listening sockets.

    The descriptor's number stays taken (by /dev/null) rather than closed: Thespian
    closes its parent's descriptors by number when an actor starts, and a number
    freed here could by then belong to another file of the child."""
    inherited = list(_listeners)
    _listeners.clear()
    for sock in inherited:
        fd = sock.detach()  # the socket object no longer closes (or shuts down) it
        if fd < 0:
            continue
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            os.dup2(null, fd, inheritable=False)
        finally:
            os.close(null)


def open_system(address: str, networks: tuple[str, ...], capabilities: dict[str, Any],
                log_defs: Any = None) -> Any:
    """Start or join the actor system on ``address``: the only ``ActorSystem(...)`` of
    every wagate process (launcher, web workers, CLI commands), so none can open an
    actor-system socket unfiltered. Before Thespian creates its first socket: bind to
    ``address`` only, close connections from outside ``networks`` (and ``address``)
    unread, and keep listeners out of forked children.

    ``networks``: ``cluster.allow_networks`` in a cluster, () on a single host (only
    this host's own address may connect then)."""
    bind_only(address)
    accept_only_from(networks, address)
    drop_listeners_at_fork()
    poll_thespian_sockets()
    from thespian.actors import ActorSystem

    return ActorSystem(SYSTEM_BASE, capabilities, logDefs=log_defs)


def start_system(config: Any, log_defs: Any, convention: str | None = None) -> Any:
    """The launcher's actor system (its Admin is forked from here, and every actor from
    the Admin): filtered like any other, and this host's ``config`` stays in the forked
    processes for the sessions placed here (``host_config``), instead of travelling to
    the leader in the capabilities."""
    global _host_config
    _host_config = config
    return open_system(bind_address(config), allowed_networks(config),
                       gateway_capabilities(config, convention), log_defs)


def host_config() -> Any:
    """The configuration of the host this actor process runs on (set by its launcher
    before the fork), or None outside a launcher's actor system."""
    return _host_config


def allowed_networks(config: Any) -> tuple[str, ...]:
    """The networks besides its own address whose actor-system connections a gateway
    with ``config`` accepts: ``cluster.allow_networks`` in a cluster, none on one host."""
    cluster = config.cluster
    return () if cluster.role == "single" else tuple(cluster.allow_networks)


def configure_thespian_log(log_dir: Path, create: bool = True) -> None:
    """Thespian's own log defaults to /tmp/thespian.log (shared, 50 KB): keep ours.
    ``create=False`` (a command that only asks a gateway) never makes the directory: a
    missing one sends the client's few lines nowhere rather than make a data_dir."""
    if create:
        log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.environ["THESPLOG_FILE"] = (str(log_dir / "thespian.log") if log_dir.is_dir()
                                   else os.devnull)
    os.environ.setdefault("THESPLOG_FILE_MAXSIZE", str(5 * 1024 * 1024))
    os.environ.setdefault("THESPLOG_THRESHOLD", "WARNING")


def capabilities(admin_port: int) -> dict[str, Any]:
    """What every actor system of wagate advertises: its port, the fork start method
    (the patches above rely on it) and which wagate runs it (``actors.protocol``)."""
    return {"Admin Port": admin_port, "Process Startup Method": "fork", **identity()}


def on_required_host(capabilities: dict[str, Any], requirements: dict[str, Any] | None
                     ) -> bool:
    """Thespian's placement check for actors the supervisor places by host name: the
    host it names (``HOST_CAPABILITY``), or this one when it names none; never a host
    that runs another wagate (its pickles would be misread: ``actors.protocol``)."""
    if not compatible(capabilities):
        return False
    wanted = (requirements or {}).get(HOST_CAPABILITY)
    return wanted is None or wanted == capabilities.get(HOST_CAPABILITY)


def host_name(config: Any) -> str:
    """This host's name in placement: ``cluster.host_name``, else the machine's name."""
    return config.cluster.host_name or socket.gethostname()


def gateway_capabilities(config: Any, convention: str | None = None) -> dict[str, Any]:
    """The capabilities of a gateway's actor system: on a single host the Admin Port
    and this wagate's identity; in a cluster also the convention (the leader's
    address), this host's role, name and slots (read by the leader's supervisor when
    the member joins; ``convention``: the listed leader a member with leases joins,
    the one holding the leadership lock). Only what placement needs: capabilities
    travel to every host and Thespian logs them (a member that misses check-ins), so
    never a setting that could hold a credential; sessions placed here read this
    host's configuration from ``host_config``."""
    caps = capabilities(config.actors.admin_port)
    cluster = config.cluster
    if cluster.role == "single":
        return caps
    own = f"{bind_address(config)}:{config.actors.admin_port}"
    leaders = list(cluster.leaders) or [own]
    if lease_mode(config):
        # One convention per leader, led by itself; a member is in one at a time: the
        # first leader's, then the one of whichever leader holds the leadership lock
        # (its launcher follows it: gateway/cli/leader_follow.py).
        member_joins = convention if convention in leaders else leaders[0]
        caps["Convention Address.IPv4"] = own if cluster.role == "leader" else member_joins
    else:
        caps["Convention Address.IPv4"] = leaders[0] if len(leaders) == 1 else leaders
    caps[ROLE_CAPABILITY] = cluster.role
    caps[HOST_CAPABILITY] = host_name(config)
    caps[SLOTS_CAPABILITY] = cluster.sessions
    return caps


def convention_timer_env(config: Any) -> dict[str, str]:
    """Thespian's convention timers (undocumented env vars, read when its convention
    module is imported; docs/architecture.md §4) from ``cluster.reregister_seconds`` and
    ``cluster.heartbeat_misses``: Thespian drops a member after that many missed
    re-registrations (about 22 minutes with its defaults).

    Not shorter: Thespian sends repeated convention messages with a "hysteresis" delay
    of up to 45 s, and with a 1 s period it dropped a live member within seconds (seen
    while building the cluster tests). Our own heartbeats notice a dead member first.
    """
    cluster = config.cluster
    seconds = max(1, round(cluster.reregister_seconds))
    return {"CONVENTION_REREGISTRATION_PERIOD": f"{seconds // 60}:{seconds % 60:02d}",
            "CONVENTION_REGISTRATION_MISS_MAX": str(cluster.heartbeat_misses)}


def bind_address(config: Any) -> str:
    """The address the actor system of a gateway with ``config`` binds and advertises:
    loopback on a single host, ``cluster.advertise_address`` in a cluster."""
    cluster = config.cluster
    return LOOPBACK if cluster.role == "single" else cluster.advertise_address or LOOPBACK


def port_listening(port: int, host: str = LOOPBACK) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def join_system(admin_port: int, address: str, networks: tuple[str, ...]) -> Any:
    """The actor system of a running gateway, for processes that must not start one
    (``address``: where it listens, see ``bind_address``; ``networks``: see
    ``open_system`` and ``allowed_networks``)."""
    if not port_listening(admin_port, address):
        raise ConnectionError(f"no actor system listens on {address}:{admin_port}")
    return open_system(address, networks, capabilities(admin_port))


def is_poison_for(reply: Any, request_id: str) -> bool:
    """Whether ``reply`` is Thespian's notice that the message with ``request_id`` made
    its handler fail twice (a PoisonMessage returned to the sender), so the web tier can
    answer at once instead of waiting out its deadline."""
    from thespian.actors import PoisonMessage

    return (isinstance(reply, PoisonMessage)
            and getattr(reply.poisonMessage, "request_id", None) == request_id)


def stop_actor(system: Any, actor: Any) -> None:
    """Ask one actor of ``system`` to exit (Thespian's ActorExitRequest)."""
    from thespian.actors import ActorExitRequest

    system.tell(actor, ActorExitRequest())

