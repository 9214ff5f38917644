"""What the API returns, as typed records named like the API's fields.

The outbox answers with its rows (dicts keyed by SQLite column) and the supervisor with
``SessionStatus``; those are the actors' shapes, free to change with their storage.
The API's shape is the schema. This module is the one place where the one becomes the
other: each ``*_record`` function reads a row or an actor's answer and returns a frozen
record whose attribute names are the schema's field names, so GraphQL's default
resolver reads them directly and no resolver knows a column name. A new column is
invisible to clients until a record names it; a renamed column breaks one function
here, not the contract.

Pure: no Ariadne, no Flask, no actor system (tests build records from a real store's
rows and real statuses without either).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from actors.messages import EventPage, HealthReport, IncomingPage, MessagePage, SessionStatus
from actors.outbox.events import StateBucket, event_cursor
from actors.outbox.numbers import NumberCheck
from actors.outbox.store import delivery_unconfirmed
from actors.session.states import SESSION_STATES
from actors.session.states import hint as session_hint
from gateway.auth.tokens import ACTIONS, Principal
from gateway.core.config import Config
from gateway.core.times import iso_time
from gateway.core.validation import e164

# The attributes below are the schema's field names (camelCase on purpose): a record
# *is* its GraphQL type, field for field (tests/unit/test_api_records.py holds them to it).


@dataclass(frozen=True, slots=True)
class StateChange:
    """``MessageStateChange``: one step of a message's history."""

    state: str
    at: str | None
    reason: str | None


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """``WhatsAppMessage``: an accepted message, without its text."""

    id: str
    state: str
    session: str
    phoneNumber: str | None
    acceptedAt: str | None
    updatedAt: str | None
    attempts: int
    whatsAppMessageId: str | None
    reason: str | None
    error: str | None
    uncertain: bool
    deliveryUnconfirmed: bool
    validUntil: str | None
    idempotencyKey: str | None
    duplicate: bool
    history: tuple[StateChange, ...]
    media: MediaFileRecord | None = None


@dataclass(frozen=True, slots=True)
class MediaFileRecord:
    """``MediaFile``: the file of a media message. A sent message's caption is its text,
    which the API never returns (as for a text message): null there."""

    id: str
    kind: str
    mimeType: str
    size: int
    sha256: str
    caption: str | None
    fileName: str | None
    url: str


def media_file_record(media_id: str, kind: str, mime: str, size: int, sha256: str,
                      caption: str | None, file_name: str | None) -> MediaFileRecord:
    return MediaFileRecord(id=media_id, kind=kind, mimeType=mime, size=size, sha256=sha256,
                           caption=caption or None, fileName=file_name or None,
                           url=f"/media/{media_id}")


def message_record(row: dict[str, Any], *, now: float, unconfirmed_after: float,
                   duplicate: bool = False) -> MessageRecord:
    """The outbox's row (``actors.outbox.store``, without its text) as the API shows it.

    ``deliveryUnconfirmed`` depends on the clock and the operator's threshold
    (``delivery.unconfirmed_after_seconds``), so the caller passes both."""
    return MessageRecord(
        id=row["id"],
        state=row["state"],
        session=row["session"],
        phoneNumber=e164(row["phone"]),
        acceptedAt=iso_time(row["accepted_at"]),
        updatedAt=iso_time(row["updated_at"]),
        attempts=row["attempts"],
        whatsAppMessageId=row["wa_message_id"],
        reason=row["reason"] or None,
        error=row["error"] or None,
        uncertain=bool(row["uncertain"]),
        deliveryUnconfirmed=delivery_unconfirmed(row, now, unconfirmed_after),
        validUntil=iso_time(row["valid_until"]),
        idempotencyKey=row["idempotency_key"],
        duplicate=duplicate,
        history=tuple(StateChange(state, iso_time(at), reason or None)
                      for state, at, reason in row["history"]),
        media=media_file_record(row["media_id"], row["media_kind"], row["media_mime"],
                                int(row["media_size"]), row["media_sha256"], None,
                                row.get("media_file_name")) if row.get("media_id") else None,
    )


@dataclass(frozen=True, slots=True)
class MessageEdge:
    """``WhatsAppMessageEdge``."""

    cursor: str
    node: MessageRecord


@dataclass(frozen=True, slots=True)
class PageInfo:
    """``PageInfo``."""

    hasNextPage: bool
    endCursor: str | None


@dataclass(frozen=True, slots=True)
class MessageConnection:
    """``WhatsAppMessageConnection``: one page of messages, newest first."""

    edges: tuple[MessageEdge, ...]
    pageInfo: PageInfo


def message_connection(page: MessagePage, *, now: float,
                       unconfirmed_after: float) -> MessageConnection:
    """The outbox's page of rows as the API's connection (cursor paging)."""
    edges = tuple(MessageEdge(cursor, message_record(row, now=now,
                                                     unconfirmed_after=unconfirmed_after))
                  for row, cursor in zip(page.records, page.cursors, strict=True))
    return MessageConnection(edges, PageInfo(page.has_next_page,
                                             page.cursors[-1] if edges else None))


@dataclass(frozen=True, slots=True)
class EventRecord:
    """``WhatsAppEvent``: one entry of the event log, as a webhook would carry it."""

    id: str
    type: str
    session: str
    timestamp: str
    data: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EventEdge:
    """``WhatsAppEventEdge``."""

    cursor: str
    node: EventRecord


@dataclass(frozen=True, slots=True)
class EventConnection:
    """``WhatsAppEventConnection``: one page of events, oldest first."""

    edges: tuple[EventEdge, ...]
    pageInfo: PageInfo


def event_connection(page: EventPage) -> EventConnection:
    """The outbox's page of events as the API's connection. ``endCursor`` is the last
    event's cursor, or null on an empty page (the caller keeps the cursor it has)."""
    edges = tuple(EventEdge(event_cursor(e.seq), EventRecord(
        e.id, e.type, e.session, iso_time(e.created_at, "microseconds"), dict(e.data)))
        for e in page.events)
    return EventConnection(edges, PageInfo(page.has_next_page,
                                           edges[-1].cursor if edges else None))


@dataclass(frozen=True, slots=True)
class ChartBucketRecord:
    """``WhatsAppChartBucket``: one hour of whatsAppMessageChart."""

    start: str
    sent: int
    delivered: int
    read: int
    failed: int


def chart_records(buckets: Iterable[StateBucket]) -> tuple[ChartBucketRecord, ...]:
    """The outbox's hourly counts as the API's buckets, oldest first."""
    return tuple(ChartBucketRecord(iso_time(b.start), b.sent, b.delivered, b.read, b.failed)
                 for b in buckets)


@dataclass(frozen=True, slots=True)
class IncomingRecord:
    """``WhatsAppIncomingMessage``: a message written to a linked account."""

    id: str
    session: str
    whatsAppMessageId: str
    kind: str
    text: str | None
    phoneNumber: str | None
    senderJid: str
    senderLid: str | None
    pushName: str | None
    chat: str
    isGroup: bool
    quotedMessageId: str | None
    sentAt: str | None
    receivedAt: str
    readAt: str | None
    optOut: bool
    truncated: bool
    media: MediaFileRecord | None = None
    mediaMissing: str | None = None


@dataclass(frozen=True, slots=True)
class IncomingEdge:
    """``WhatsAppIncomingEdge``."""

    cursor: str
    node: IncomingRecord


@dataclass(frozen=True, slots=True)
class IncomingConnection:
    """``WhatsAppIncomingConnection``: one page of received messages, oldest first."""

    edges: tuple[IncomingEdge, ...]
    pageInfo: PageInfo


def incoming_record(row: dict[str, Any]) -> IncomingRecord:
    """A row of the outbox's ``incoming`` table (actors/outbox/incoming.py) as the API's."""
    return IncomingRecord(
        id=row["id"], session=row["session"], whatsAppMessageId=row["wa_message_id"],
        kind=row["kind"], text=row["text"],
        phoneNumber=e164(row["sender_phone"]) if row["sender_phone"] else None,
        senderJid=row["sender_jid"], senderLid=row["sender_lid"] or None,
        pushName=row["push_name"] or None, chat=row["chat"], isGroup=bool(row["is_group"]),
        quotedMessageId=row["quoted_id"] or None, sentAt=iso_time(row["sent_at"]),
        receivedAt=iso_time(row["received_at"]), readAt=iso_time(row["read_at"]),
        optOut=bool(row.get("opt_out", False)), truncated=bool(row.get("truncated", False)),
        media=_incoming_media(row), mediaMissing=_media_missing(row))


def _media_missing(row: dict[str, Any]) -> str | None:
    """Why a received file is not stored (``actors.media.incoming``), or None."""
    meta = row.get("meta") or {}
    return meta.get("media_missing") if isinstance(meta, dict) else None


def _incoming_media(row: dict[str, Any]) -> MediaFileRecord | None:
    """A received file, from what the outbox noted in the row's ``meta``; the caption
    is the message's text."""
    meta = row.get("meta") or {}
    if not isinstance(meta, dict) or "media_id" not in meta:
        return None
    return media_file_record(meta["media_id"], meta["media_kind"], meta["media_mime"],
                             int(meta["media_size"]), meta.get("media_sha256", ""),
                             row["text"], meta.get("media_file_name"))


def incoming_connection(page: IncomingPage) -> IncomingConnection:
    """The outbox's page of received messages as the API's connection."""
    edges = tuple(IncomingEdge(cursor, incoming_record(row))
                  for row, cursor in zip(page.records, page.cursors, strict=True))
    return IncomingConnection(edges, PageInfo(page.has_next_page,
                                              page.cursors[-1] if edges else None))


@dataclass(frozen=True, slots=True)
class SessionErrorRecord:
    """``SessionError``: why the session is in its state, and what to do."""

    code: str
    message: str


@dataclass(frozen=True, slots=True)
class SessionHintRecord:
    """``SessionHint``: the state's row of the one state table (actors/session/states.py),
    which the dashboard shows instead of keeping its own copy."""

    label: str
    meaning: str
    whatToDo: str
    tone: str


@dataclass(frozen=True, slots=True)
class SessionRecord:
    """``WhatsAppStatus`` but for ``qrCode`` and ``qrCodeSvg``: images rendered from
    ``qrCodeRaw`` by their resolvers only when a query selects them (a PNG costs
    milliseconds; a dashboard polling the state needs none)."""

    session: str
    connected: bool
    qrCodeRaw: str | None
    qrExpiresAt: str | None
    state: str
    bridgeState: str
    hint: SessionHintRecord
    bannedUntil: str | None
    phoneNumber: str | None
    reconnectAttempt: int
    lastError: SessionErrorRecord | None
    connectedSince: str | None
    host: str | None


def session_record(status: SessionStatus) -> SessionRecord:
    """The supervisor's ``SessionStatus`` (or the snapshot's copy) as the API shows it."""
    error = status.last_error
    return SessionRecord(
        session=status.session,
        connected=status.connected,
        qrCodeRaw=status.qr_code,
        qrExpiresAt=iso_time(status.qr_expires_at),
        state=status.state.value,
        bridgeState=SESSION_STATES[status.state].bridge_state,
        hint=hint_record(status),
        bannedUntil=iso_time(status.banned_until),
        phoneNumber=e164(status.phone),
        reconnectAttempt=status.reconnect_attempt,
        lastError=SessionErrorRecord(error.code, error.message) if error else None,
        connectedSince=iso_time(status.connected_since),
        host=status.host,
    )


def hint_record(status: SessionStatus) -> SessionHintRecord:
    found = session_hint(status)
    return SessionHintRecord(found.label, found.meaning, found.what_to_do, found.tone)


def session_records(statuses: Iterable[SessionStatus], principal: Principal
                    ) -> list[SessionRecord]:
    """The sessions ``principal`` may see, by name."""
    return [session_record(s) for s in sorted(statuses, key=lambda s: s.session)
            if principal.may_see(s.session)]


@dataclass(frozen=True, slots=True)
class NumberCheckRecord:
    """``NumberCheck``: one number's answer, in the order asked."""

    input: str
    phoneNumber: str | None
    onWhatsApp: bool | None
    jid: str | None
    lid: str | None
    business: bool | None
    checkedAt: str | None
    cached: bool
    reason: str | None


def number_check_record(raw: str, check: NumberCheck) -> NumberCheckRecord:
    """``check`` (for the normalised number) answering ``raw``, the number as given."""
    return NumberCheckRecord(
        input=raw, phoneNumber=e164(check.phone), onWhatsApp=check.on_whatsapp,
        jid=check.jid or None, lid=check.lid or None, business=check.business,
        checkedAt=iso_time(check.checked_at), cached=check.cached,
        reason=check.reason or None)


@dataclass(frozen=True, slots=True)
class PrincipalRecord:
    """``Principal``: who is calling, and what its role may do."""

    name: str
    role: str
    sessions: tuple[str, ...] | None
    actions: tuple[str, ...]


def role_actions(role: str) -> tuple[str, ...]:
    """What ``role`` may do, from the one table of roles (``gateway.auth.tokens.ACTIONS``):
    the dashboard shows only the controls a token can use, instead of buttons that end
    in FORBIDDEN."""
    return tuple(sorted(action for action, roles in ACTIONS.items() if role in roles))


def principal_record(principal: Principal) -> PrincipalRecord:
    sessions = None if principal.sessions is None else tuple(sorted(principal.sessions))
    return PrincipalRecord(principal.name, principal.role, sessions,
                           role_actions(principal.role))


@dataclass(frozen=True, slots=True)
class LimitsRecord:
    """``GatewayLimits``: the configured limits."""

    perNumberPerMinute: int
    perNumberPerHour: int
    globalPerDay: int
    maxSessions: int
    maxQueuePerSession: int
    maxMessageLength: int
    reconnectAttempts: int


def limits_record(config: Config) -> LimitsRecord:
    return LimitsRecord(
        perNumberPerMinute=config.limits.per_number_per_minute,
        perNumberPerHour=config.limits.per_number_per_hour,
        globalPerDay=config.limits.global_per_day,
        maxSessions=config.sessions.max_sessions,
        maxQueuePerSession=config.delivery.max_queue_per_session,
        maxMessageLength=config.messages.max_length,
        reconnectAttempts=config.reconnect.attempts,
    )


@dataclass(frozen=True, slots=True)
class GatewayRecord:
    """``WhatsAppGateway`` but for the figures that need the outbox (``queueDepth``,
    ``queueBySession``, ``dailyUsage``): their resolvers ask for the health report only
    when a query selects them, so the rest never costs an actor round trip."""

    version: str
    authRequired: bool
    principal: PrincipalRecord
    limits: LimitsRecord


def gateway_record(version: str, config: Config, principal: Principal) -> GatewayRecord:
    return GatewayRecord(version, config.auth.required, principal_record(principal),
                         limits_record(config))


@dataclass(frozen=True, slots=True)
class SessionQueue:
    """``SessionQueue``: messages waiting on one session."""

    session: str
    depth: int


def queue_by_session(report: HealthReport) -> tuple[SessionQueue, ...]:
    """Sessions with waiting messages, by name (``report`` already scoped to the caller)."""
    return tuple(SessionQueue(name, depth)
                 for name, depth in sorted(report.queue_by_session.items()) if depth)


@dataclass(frozen=True, slots=True)
class DailyUsage:
    """``DailyUsage``: sends in the sliding 24 hours against ``limits.global_per_day``."""

    used: int
    limit: int
    remaining: int


def daily_usage(report: HealthReport, config: Config) -> DailyUsage:
    usage = report.limiter
    limit = int(usage.get("global_day_limit", config.limits.global_per_day))
    used = int(usage.get("global_day_used", 0))
    return DailyUsage(used, limit, max(0, limit - used))


@dataclass(frozen=True, slots=True)
class WebhookRecord:
    """``Webhook``: an endpoint as the webhook actor describes it (never its secret)."""

    id: str
    url: str
    events: tuple[str, ...]
    sessions: tuple[str, ...]
    description: str
    origin: str
    enabled: bool
    disabledReason: str | None
    cursor: int
    failures: int
    lastStatus: int | None
    lastError: str | None
    lastDeliveryAt: float | None


@dataclass(frozen=True, slots=True)
class WebhookWithSecretRecord:
    """``WebhookWithSecret``: the answer of createWebhook and rotateWebhookSecret."""

    webhook: WebhookRecord
    secret: str


@dataclass(frozen=True, slots=True)
class WebhookTestRecord:
    """``WebhookTestResult``."""

    delivered: bool
    status: int | None
    error: str | None


def webhook_record(data: dict[str, Any]) -> WebhookRecord:
    return WebhookRecord(
        id=str(data["id"]), url=str(data["url"]), events=tuple(data["events"]),
        sessions=tuple(data["sessions"]), description=str(data["description"]),
        origin=str(data["origin"]), enabled=bool(data["enabled"]),
        disabledReason=data.get("disabledReason"), cursor=int(data["cursor"]),
        failures=int(data["failures"]), lastStatus=data.get("lastStatus"),
        lastError=data.get("lastError"), lastDeliveryAt=data.get("lastDeliveryAt"))


def webhook_with_secret_record(data: dict[str, Any]) -> WebhookWithSecretRecord:
    return WebhookWithSecretRecord(webhook_record(data["webhook"]), str(data["secret"]))


def webhook_test_record(data: dict[str, Any]) -> WebhookTestRecord:
    return WebhookTestRecord(bool(data["delivered"]), data.get("status"), data.get("error"))
