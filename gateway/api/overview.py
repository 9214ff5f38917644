"""``whatsAppSessions`` and ``whatsAppGateway``: the gateway as a whole, for dashboards.

Sessions come from the status snapshot while it is fresh (no actor round trip, like
``whatsAppStatus``), otherwise from the supervisor. Queue and usage figures need the
outbox, so they are asked for only when selected, and at most once per request.
Everything is filtered to the sessions the caller's token may see; the daily usage,
which counts every session's sends, is null for a token limited to some.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from ariadne import ObjectType
from graphql import GraphQLResolveInfo

from actors.messages import GetHealth, HealthReport, SessionStatus
from gateway import __version__
from gateway.api.errors import GatewayError
from gateway.auth.scope import scoped_report
from gateway.auth.tokens import ACTIONS, Principal, authorize
from gateway.core.config import Config


def resolve_sessions(_: Any, info: GraphQLResolveInfo) -> list[SessionStatus]:
    principal = authorize(info, "status")
    known = info.context["snapshots"].sessions()
    # A missing or stale snapshot: ask the supervisor.
    statuses = list(_health(info).sessions) if known is None else list(known.values())
    return sorted((s for s in statuses if principal.may_see(s.session)),
                  key=lambda s: s.session)


@dataclass
class GatewayView:
    """What ``whatsAppGateway`` resolves to; the health report is fetched lazily."""

    info: GraphQLResolveInfo
    principal: Principal
    config: Config
    _report: HealthReport | None = field(default=None, repr=False)

    def report(self) -> HealthReport:
        """The health report as the caller may see it (gateway/auth/scope.py)."""
        if self._report is None:
            report = _health(self.info)
            if "outbox" not in report.worker_pids:
                raise GatewayError("UNAVAILABLE", "the message store is restarting; "
                                   "retry in a few seconds")
            self._report = scoped_report(report, self.principal.sessions)
        return self._report

    def queue_by_session(self) -> list[dict[str, Any]]:
        return [{"session": name, "depth": depth}
                for name, depth in sorted(self.report().queue_by_session.items()) if depth]


def resolve_gateway(_: Any, info: GraphQLResolveInfo) -> GatewayView:
    principal = authorize(info, "status")
    return GatewayView(info, principal, info.context["config"])


def role_actions(role: str) -> list[str]:
    """What ``role`` may do, from the one table of roles (``gateway.auth.tokens.ACTIONS``): the
    dashboard shows only the controls a token can use, instead of buttons that end in
    FORBIDDEN."""
    return sorted(action for action, roles in ACTIONS.items() if role in roles)


def gateway_type() -> ObjectType:
    gateway = ObjectType("WhatsAppGateway")
    gateway.set_field("version", lambda v, _: __version__)
    gateway.set_field("authRequired", lambda v, _: v.config.auth.required)
    gateway.set_field("principal", lambda v, _: {
        "name": v.principal.name, "role": v.principal.role,
        "sessions": None if v.principal.sessions is None else sorted(v.principal.sessions),
        "actions": role_actions(v.principal.role)})
    gateway.set_field("queueBySession", lambda v, _: v.queue_by_session())
    gateway.set_field("queueDepth", lambda v, _: sum(q["depth"] for q in v.queue_by_session()))
    gateway.set_field("dailyUsage", _daily_usage)
    gateway.set_field("limits", _limits)
    return gateway


def _daily_usage(view: GatewayView, _: GraphQLResolveInfo) -> dict[str, int] | None:
    """The daily count is of every session's sends: not for a token limited to some."""
    if view.principal.sessions is not None:
        return None
    usage = view.report().limiter
    limit = int(usage.get("global_day_limit", view.config.limits.global_per_day))
    used = int(usage.get("global_day_used", 0))
    return {"used": used, "limit": limit, "remaining": max(0, limit - used)}


def _limits(view: GatewayView, _: GraphQLResolveInfo) -> dict[str, int]:
    config = view.config
    return {
        "perNumberPerMinute": config.limits.per_number_per_minute,
        "perNumberPerHour": config.limits.per_number_per_hour,
        "globalPerDay": config.limits.global_per_day,
        "maxSessions": config.sessions.max_sessions,
        "maxQueuePerSession": config.delivery.max_queue_per_session,
        "maxMessageLength": config.messages.max_length,
        "reconnectAttempts": config.reconnect.attempts,
    }


def _health(info: GraphQLResolveInfo) -> HealthReport:
    request_id = info.context.get("request_id") or uuid.uuid4().hex
    report: HealthReport = info.context["bridge"].ask(GetHealth(request_id))
    return report
