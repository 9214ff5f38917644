"""``whatsAppEvents``: the event log, paged by cursor, for an application that lost
webhooks or prefers pulling (README: Events).

Which role: ``events`` (admin, operator, sender; gateway/auth/tokens.py). A token
limited to some sessions sees only their events, whether it names a session or not.
A role without ``messages`` (sender) may not list replies (whatsAppIncomingMessages),
so it may not read them here either: its message.received events come with the
text, the sender's number, JIDs and push name null (``without_personal``).
``data`` is a JSON scalar, not typed fields: each event type has its own shape, the
same object a webhook delivers as ``data``, so pull and push read alike and a new event
type needs no schema change.

Module-level bindables over the records of ``gateway.api.records``; ``EVENTS`` is what
``gateway.api.resolvers.build_schema`` binds.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from typing import Any

from ariadne import EnumType, QueryType, ScalarType
from graphql import GraphQLResolveInfo

from actors.messages import ChartMessageStates, EventPage, ListEvents
from actors.outbox.events import (
    MESSAGE_RECEIVED,
    MESSAGE_STATUS,
    SESSION_STATUS,
    decode_event_cursor,
    without_personal,
)
from gateway.api.context import authorize, request_context
from gateway.api.errors import GatewayError
from gateway.api.records import (
    ChartBucketRecord,
    EventConnection,
    chart_records,
    event_connection,
)
from gateway.auth.tokens import Principal, check
from gateway.core.ranges import Range
from gateway.core.validation import validate_session_name

EVENT_PAGE = Range(1, 500)  # whatsAppEvents(first:): a page is small rows, so more than messages
CHART_HOURS = Range(1, 168)  # whatsAppMessageChart(hours:): up to a week of hourly buckets

query = QueryType()
json_scalar = ScalarType("JSON")
event_type = EnumType("EventType", {"MESSAGE_STATUS": MESSAGE_STATUS,
                                    "MESSAGE_RECEIVED": MESSAGE_RECEIVED,
                                    "SESSION_STATUS": SESSION_STATUS})


@json_scalar.serializer
def serialize_json(value: Any) -> Any:
    """Already plain JSON (decoded from the log's TEXT column): passed as it is."""
    return value


@query.field("whatsAppEvents")
def resolve_events(_: Any, info: GraphQLResolveInfo, after: str | None = None,
                   types: list[str] | None = None, session: str | None = None,
                   first: int = 100) -> EventConnection:
    principal = authorize(info, "events")
    if not EVENT_PAGE.contains(first):
        raise GatewayError("GRAPHQL_VALIDATION_FAILED",
                           EVENT_PAGE.refusal("first", first, whole=True), field="first")
    try:
        after_seq = decode_event_cursor(after) if after else 0
    except ValueError as exc:
        raise GatewayError("GRAPHQL_VALIDATION_FAILED", f"{exc}; pass the endCursor of a "
                           "previous whatsAppEvents page, or nothing to start from the "
                           "oldest event kept", field="after") from None
    request = ListEvents(after_seq, tuple(types) if types is not None else None,
                         _sessions(principal, session), first, _request_id(info))
    page: EventPage = request_context(info).bridge.ask(request, None)
    if not principal.may("messages"):  # the rule of whatsAppIncomingMessages: no replies
        page = replace(page, events=tuple(without_personal(e) for e in page.events))
    return event_connection(page)


@query.field("whatsAppMessageChart")
def resolve_message_chart(_: Any, info: GraphQLResolveInfo, hours: int = 24,
                          session: str | None = None) -> tuple[ChartBucketRecord, ...]:
    """Hourly counts of message.status events by state, counted by the outbox in one
    query: the roles and session rule of whatsAppEvents (counts hold no text or number,
    so every role that may read events gets them whole)."""
    principal = authorize(info, "events")
    if not CHART_HOURS.contains(hours):
        raise GatewayError("GRAPHQL_VALIDATION_FAILED",
                           CHART_HOURS.refusal("hours", hours, whole=True), field="hours")
    request = ChartMessageStates(hours, _sessions(principal, session), _request_id(info))
    return chart_records(request_context(info).bridge.ask(request, None))


def _sessions(principal: Principal, session: str | None) -> tuple[str, ...] | None:
    """The sessions whose events the caller gets: the one it names (if it may see it),
    else every session its token covers (None: all)."""
    if session is not None:
        name = validate_session_name(session)
        check(principal, "events", name)
        return (name,)
    return None if principal.sessions is None else tuple(sorted(principal.sessions))


def _request_id(info: GraphQLResolveInfo) -> str:
    return request_context(info).request_id or uuid.uuid4().hex


EVENTS = (query, json_scalar, event_type)
