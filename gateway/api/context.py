"""What a resolver may use during one GraphQL operation: ``info.context``.

The resolvers are module-level functions, built once; everything that differs per
process or per request (the door into the actor system, the configuration, who is
calling) reaches them here. The web tier builds one ``RequestContext`` per operation
(a batch runs several) and passes it as Ariadne's ``context_value``. No Flask: the
resolvers run the same under any HTTP server, or none.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from graphql import GraphQLResolveInfo

from actors.messages import HealthReport, SessionStatus
from actors.outbox.numbers import NumberCache, NumberCheck
from gateway.auth.tokens import Principal, check
from gateway.core.config import Config


class Bridge(Protocol):
    """The web tier's door into the actor system (``gateway.web.bridge.ActorBridge``):
    a reply, or ``GatewayError`` (``UNAVAILABLE`` for no reply, the actor's code for a
    ``Failed``)."""

    def ask(self, message: Any, timeout: float | None = None,
            to_outbox: bool = False) -> Any: ...


class Snapshots(Protocol):
    """The supervisor's status file (``actors.supervisor.snapshot.SnapshotReader``):
    None when missing or stale, so the caller asks the supervisor instead."""

    def status(self, session: str) -> SessionStatus | None: ...

    def sessions(self) -> dict[str, SessionStatus] | None: ...


@dataclass(slots=True)
class RequestContext:
    """One operation's dependencies. ``message_id`` and ``health`` are written during
    the operation: the id of the message a send created (its audit entry names it) and
    the health report as the caller may see it (asked for at most once)."""

    bridge: Bridge
    config: Config
    principal: Principal
    audit: Callable[..., None]  # (event, **fields): to the audit log's single writer
    snapshots: Snapshots
    numbers: NumberCache | None
    request_id: str = ""
    client_ip: str | None = None
    # Told each number-check outcome (the web tier counts them for /metrics; the API
    # does not import the web tier).
    observe_numbers: Callable[[Sequence[NumberCheck]], None] | None = None
    message_id: str | None = None
    health: HealthReport | None = None


def request_context(info: GraphQLResolveInfo) -> RequestContext:
    context = info.context
    if not isinstance(context, RequestContext):
        raise TypeError(f"context_value must be a RequestContext, not {type(context).__name__}")
    return context


def authorize(info: GraphQLResolveInfo, action: str, session: str | None = None) -> Principal:
    """The request's principal, checked for ``action`` on ``session`` (raises FORBIDDEN)."""
    principal = request_context(info).principal
    check(principal, action, session)
    return principal
