"""``whatsAppSessions`` and ``whatsAppGateway``: the gateway as a whole, for dashboards.

Sessions come from the status snapshot while it is fresh (no actor round trip, like
``whatsAppStatus``), otherwise from the supervisor. Queue and usage figures need the
outbox, so they are asked for only when selected, and at most once per operation.
Everything is filtered to the sessions the caller's token may see; the daily usage,
which counts every session's sends, is null for a token limited to some.

Module-level bindables over the records of ``gateway.api.records``; ``OVERVIEW`` is
what ``gateway.api.resolvers.build_schema`` binds.
"""

from __future__ import annotations

import uuid
from typing import Any

from ariadne import ObjectType, QueryType
from graphql import GraphQLResolveInfo

from actors.messages import GetHealth, HealthReport
from gateway import __version__
from gateway.api.context import authorize, request_context
from gateway.api.errors import GatewayError
from gateway.api.records import (
    DailyUsage,
    GatewayRecord,
    SessionQueue,
    SessionRecord,
    daily_usage,
    gateway_record,
    queue_by_session,
    session_records,
)
from gateway.auth.scope import scoped_report

query = QueryType()
gateway = ObjectType("WhatsAppGateway")


@query.field("whatsAppSessions")
def resolve_sessions(_: Any, info: GraphQLResolveInfo) -> list[SessionRecord]:
    principal = authorize(info, "status")
    known = request_context(info).snapshots.sessions()
    # A missing or stale snapshot: ask the supervisor.
    statuses = _health(info).sessions if known is None else known.values()
    return session_records(statuses, principal)


@query.field("whatsAppGateway")
def resolve_gateway(_: Any, info: GraphQLResolveInfo) -> GatewayRecord:
    principal = authorize(info, "status")
    return gateway_record(__version__, request_context(info).config, principal)


@gateway.field("queueBySession")
def resolve_queue_by_session(_: GatewayRecord, info: GraphQLResolveInfo
                             ) -> tuple[SessionQueue, ...]:
    return queue_by_session(_scoped_report(info))


@gateway.field("queueDepth")
def resolve_queue_depth(_: GatewayRecord, info: GraphQLResolveInfo) -> int:
    return sum(queue.depth for queue in queue_by_session(_scoped_report(info)))


@gateway.field("dailyUsage")
def resolve_daily_usage(_: GatewayRecord, info: GraphQLResolveInfo) -> DailyUsage | None:
    """The daily count is of every session's sends: not for a token limited to some."""
    context = request_context(info)
    if context.principal.sessions is not None:
        return None
    return daily_usage(_scoped_report(info), context.config)


OVERVIEW = (query, gateway)


def _scoped_report(info: GraphQLResolveInfo) -> HealthReport:
    """The health report as the caller may see it (gateway/auth/scope.py), asked for once
    per operation however many of its figures the query selects."""
    context = request_context(info)
    if context.health is None:
        report = _health(info)
        if "outbox" not in report.worker_pids:
            raise GatewayError("UNAVAILABLE", "the message store is restarting; "
                               "retry in a few seconds")
        context.health = scoped_report(report, context.principal.sessions)
    return context.health


def _health(info: GraphQLResolveInfo) -> HealthReport:
    context = request_context(info)
    report: HealthReport = context.bridge.ask(GetHealth(context.request_id or uuid.uuid4().hex))
    return report
