"""``wagate status`` and ``wagate drain``: ask the running gateway itself.

Both join the gateway's actor system on ``actors.admin_port`` (bound to 127.0.0.1,
so they work only on the gateway's host) and ask the supervisor for the same health
report ``/admin/health`` shows: no HTTP, no API token, and an answer even when the
web server is down. The port is found in ``data_dir/run/gateway.json``, which the
running launcher writes (gateway/cli/run_state.py; trusted only while that launcher
runs), so ``--data-dir`` is enough to pick a gateway; ``--admin-port`` overrides it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from actors.messages import Failed, GetHealth, HealthReport, Ok
from gateway.api.health import add_storage, health_document
from gateway.cli.progress import Progress
from gateway.core.config import RANGES, Config
from gateway.core.errors import WagateError
from gateway.core.ranges import Range, flag

DRAIN_TIMEOUT_SECONDS = 300.0
DRAIN_INTERVAL_SECONDS = 0.5
DRAIN_TIMEOUT = Range(0, 604800)  # up to a week
DRAIN_INTERVAL = Range(0, 3600, above=True)


class GatewayUnreachable(WagateError):
    """No running gateway answered; the message says why and what to do."""


class GatewayNotYours(GatewayUnreachable):
    """Another user's process listens on the admin port: never joined (gateway/cli/listeners.py)."""


def register(commands: Any, common: Any) -> None:
    status = commands.add_parser("status", help="sessions, queue and limits of the running "
                                 "gateway (as GET /admin/health)")
    common(status)
    status.add_argument("--json", action="store_true", help="the /admin/health JSON document")
    _admin_port(status)
    status.set_defaults(handler=cmd_status)

    drain = commands.add_parser("drain", help="wait until every queued message is sent "
                                "(before stopping for an upgrade)")
    common(drain)
    drain.add_argument("--timeout", type=flag(float, DRAIN_TIMEOUT),
                       default=DRAIN_TIMEOUT_SECONDS,
                       help=f"give up after this many seconds ({DRAIN_TIMEOUT.describe()}; "
                       f"default {DRAIN_TIMEOUT_SECONDS:g})")
    drain.add_argument("--interval", type=flag(float, DRAIN_INTERVAL),
                       default=DRAIN_INTERVAL_SECONDS,
                       help=f"seconds between looks at the queue ({DRAIN_INTERVAL.describe()}; "
                       f"default {DRAIN_INTERVAL_SECONDS:g})")
    _admin_port(drain)
    drain.set_defaults(handler=cmd_drain)


def _admin_port(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--admin-port", type=flag(int, RANGES["actors.admin_port"]),
                        help="the gateway's actors.admin_port "
                        "(default: the one the gateway of --data-dir runs on)")


# ---- asking the gateway ----------------------------------------------------------------


class HealthClient:
    """The running gateway's health report, straight from its supervisor."""

    def __init__(self, config: Config, admin_port: int | None = None) -> None:
        self.config = config
        self.port = admin_port or running_admin_port(config.data_path) or \
            config.actors.admin_port
        self.timeout = config.actors.ask_timeout_seconds
        self._system: Any = None
        self._supervisor: Any = None

    def report(self) -> HealthReport:
        from actors.system import (
            SUPERVISOR_NAME,
            allowed_networks,
            bind_address,
            configure_thespian_log,
            join_system,
            port_listening,
        )

        if self._supervisor is None:
            try:
                address = bind_address(self.config)
                if not port_listening(self.port, address):
                    raise ConnectionError(self.port)
                self._refuse_foreign_listener(address)
                # Thespian's own log next to the gateway's, never the shared default.
                configure_thespian_log(self.config.data_path / "logs", create=False)
                if self._system is None:
                    self._system = join_system(self.port, address,
                                               allowed_networks(self.config))
                self._supervisor = self._find_supervisor(address, SUPERVISOR_NAME)
            except (ConnectionError, OSError):
                raise GatewayUnreachable(
                    f"no gateway is running: nothing listens on 127.0.0.1:{self.port} "
                    "(actors.admin_port); start one with `wagate serve`, or name the one you "
                    "mean with --data-dir or --admin-port") from None
        reply = self._system.ask(self._supervisor, GetHealth(f"cli.{time.time_ns()}"),
                                 self.timeout)
        if isinstance(reply, Failed):
            raise GatewayUnreachable(f"the gateway answered {reply.code}: {reply.message}")
        if not isinstance(reply, Ok) or not isinstance(reply.value, HealthReport):
            raise GatewayUnreachable(
                f"the gateway on port {self.port} did not answer within {self.timeout:g} s; "
                "it may be starting or stopping: retry, or see data_dir/logs/actors.log")
        return reply.value

    def _find_supervisor(self, address: str, name: str) -> Any:
        """A member's supervisor is the followed leader's, found by status questions:
        asked by global name, a member's Admin answers only its first asker
        (``actors.leader_supervisor``), so a second `wagate status` would wait 50 s."""
        if self.config.cluster.role != "member":
            return self._system.createActor("actors.supervisor.actor.SupervisorActor",
                                            globalName=name)
        from actors import leader_supervisor

        local = leader_supervisor.admin_address(self._system, address, self.port)
        found = leader_supervisor.find(self._system.ask, local, name, self.timeout)
        if found is None:
            raise GatewayUnreachable(
                f"the leader this member follows did not answer within {self.timeout:g} s "
                "(or its supervisor is not running yet): check the leader, then retry")
        return found.supervisor

    def _refuse_foreign_listener(self, address: str) -> None:
        from gateway.cli.listeners import foreign_listener

        owner = foreign_listener(self.port, address, os.geteuid())
        if owner is not None:
            raise _refuse(self.port, address, owner)


def _refuse(port: int, address: str, owner: int) -> GatewayNotYours:
    return GatewayNotYours(
        f"the process listening on {address}:{port} (actors.admin_port) is another "
        f"user's (uid {owner}): wagate joins only a gateway of the user running it (its "
        "actor system speaks pickle). Run the command as the gateway's user (sudo -u), "
        "or name your own gateway with --data-dir or --admin-port")


def running_admin_port(data_path: Path) -> int | None:
    """The admin port of the gateway running on ``data_path``, if its launcher said and
    still runs (a crashed one's port may be another gateway's by now)."""
    from gateway.cli.run_state import running_admin_port as recorded_port

    return recorded_port(data_path)


# ---- wagate status -------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    from gateway.cli.wagate import resolve_config

    config = resolve_config(args)
    try:
        report = HealthClient(config, args.admin_port).report()
    except GatewayUnreachable as exc:
        print(f"wagate status: {exc}", file=sys.stderr)
        return 1
    document = health_document(report, time.time())
    add_storage(document, config)
    print(json.dumps(document, indent=2) if args.json else status_table(document))
    return 0


COLUMNS = ("SESSION", "GATEWAY", "STATE", "PHONE", "UPTIME", "RECONNECT", "QUEUE", "LAST ERROR")


def status_table(document: dict[str, Any]) -> str:
    """The health document for people: one row per session, then the totals, then what
    the sessions' last errors say to do."""
    queue = document["queue"]
    rows = [COLUMNS]
    for s in document["sessions"]:
        error = s["lastError"]
        rows.append((
            s["session"], s["gatewayStatus"], s["state"],
            s["phoneNumber"] or "-",
            duration(s["uptimeSeconds"]) if s["connected"] else "-",
            str(s["reconnectAttempt"]) if s["reconnectAttempt"] else "-",
            str(queue["bySession"].get(s["session"], 0)),
            error["code"] if error else "-",
        ))
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [f"wagate {document['version']}: {document['status']} at {document['time']}", ""]
    if len(rows) == 1:
        lines.append("no sessions yet: call whatsAppConnect to link one")
    else:
        lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
                  for row in rows]
    lines.append("")
    uncertain = f", {queue['uncertainTotal']} uncertain" if queue["uncertainTotal"] else ""
    lines.append(f"queue: {plural(queue['depth'], 'message')} waiting{uncertain}")
    limiter = document.get("limiter") or {}
    if "global_day_limit" in limiter:
        lines.append(f"daily limit: {int(limiter['global_day_used'])} of "
                     f"{int(limiter['global_day_limit'])} used "
                     f"({limiter.get('global_day_ratio', 0.0):.0%})")
    for s in document["sessions"]:
        if s["lastError"]:
            lines.append(f"{s['session']}: {s['lastError']['code']}: "
                         f"{s['lastError']['message']}")
    return "\n".join(lines)


def duration(seconds: float) -> str:
    whole = int(seconds)
    days, rest = divmod(whole, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


# ---- wagate drain ----------------------------------------------------------------------------


def cmd_drain(args: argparse.Namespace) -> int:
    from gateway.cli.wagate import resolve_config

    client = HealthClient(resolve_config(args), args.admin_port)
    return drain(client, args.timeout, args.interval, Progress())


def drain(client: HealthClient, timeout: float, interval: float, progress: Progress) -> int:
    """Wait until the outbox holds no message, showing the count as it falls."""
    started = time.monotonic()
    deadline = started + timeout
    first: int | None = None
    while True:
        try:
            report = client.report()
        except GatewayUnreachable as exc:
            progress.done()
            print(f"wagate drain: {exc}", file=sys.stderr)
            return 1
        depth = report.queue_depth
        first = depth if first is None else first
        now = time.monotonic()
        if depth == 0:
            progress.done()
            if first:
                print(f"queue empty: {plural(first, 'message')} sent in "
                      f"{now - started:.1f} s")
            else:
                print("queue empty: nothing was waiting")
            return 0
        if now >= deadline:
            progress.done()
            print(f"timed out after {timeout:g} s: {plural(depth, 'message')} still "
                  f"waiting{_stuck(report)}")
            return 1
        progress.update(f"{plural(depth, 'message')} waiting", f"{deadline - now:.0f} s left")
        time.sleep(min(interval, max(0.0, deadline - now)))


def _stuck(report: HealthReport) -> str:
    """Why a queue may not be moving: its session is not connected."""
    states = {s.session: s.state.value for s in report.sessions}
    idle = [f"'{name}' is {states.get(name, 'unknown')}"
            for name, depth in sorted(report.queue_by_session.items())
            if depth and states.get(name) != "CONNECTED"]
    if not idle:
        return " (its sessions are connected: some may wait for a retry, see delivery.retry_*)"
    return (f"; session {', '.join(idle)}: its messages wait for the connection "
            "(`wagate status`)")
