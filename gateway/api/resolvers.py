"""GraphQL resolvers: validate input, ask the actors, shape the answer.

Input is checked here, before any actor is asked, so bad input costs nothing and
loses nothing. Resolvers are module-level functions bound to module-level Ariadne
bindables; what they need per request (the bridge, the configuration, the caller) comes
from ``info.context`` (``gateway.api.context.RequestContext``). What they return are the
typed records of ``gateway.api.records``, named like the schema's fields, so no resolver
here knows the outbox's columns or the supervisor's status fields.
"""

from __future__ import annotations

import functools
import math
import re
import time
import uuid
from collections.abc import Callable
from importlib import resources
from typing import Any

from ariadne import MutationType, ObjectType, QueryType, make_executable_schema, upload_scalar
from graphql import (
    GraphQLArgument,
    GraphQLInputField,
    GraphQLInputObjectType,
    GraphQLResolveInfo,
    GraphQLSchema,
    Undefined,
    get_named_type,
)

from actors.media.kinds import check_caption, check_file_name, parse_kind
from actors.messages import (
    Accepted,
    CheckNumbers,
    Connect,
    Disconnect,
    ForgetSession,
    GetMessage,
    GetMessageByKey,
    GetStatus,
    IncomingPage,
    ListIncoming,
    ListMessages,
    MarkRead,
    MediaSpec,
    MessagePage,
    MessageState,
    RequestPairingCode,
    SendText,
)
from actors.outbox.numbers import (
    Budget,
    LookupBudgetExceeded,
    LookupFailed,
    NumberCache,
    NumberCheck,
    check_numbers,
)
from actors.outbox.store import STATES
from gateway.api import media as media_upload
from gateway.api.context import authorize, request_context
from gateway.api.errors import GatewayError
from gateway.api.events import EVENTS
from gateway.api.overview import OVERVIEW
from gateway.api.qr import qr_png_base64, qr_svg_data_uri
from gateway.api.records import (
    IncomingConnection,
    MessageConnection,
    MessageRecord,
    NumberCheckRecord,
    SessionRecord,
    incoming_connection,
    message_connection,
    message_record,
    number_check_record,
    session_record,
)
from gateway.api.webhooks import WEBHOOK_BINDABLES
from gateway.auth.tokens import check
from gateway.core.config import Config
from gateway.core.ranges import Range
from gateway.core.times import iso_time
from gateway.core.validation import (
    ValidationError,
    e164,
    normalize_phone_number,
    validate_message,
    validate_session_name,
)

MAX_PAGE = 200
PAGE_SIZE = Range(1, MAX_PAGE)  # whatsAppMessages(first:)
VALID_FOR = Range(1, 2**31 - 1)  # validForSeconds: any positive GraphQL Int (68 years)
MAX_KEY_LENGTH = 128
# The idempotency key the gateway gives a send without one, so that a caller told
# UNCERTAIN can look the message up (whatsAppMessageByKey) or send it again safely.
AUTO_KEY_PREFIX = "auto-"
RECIPIENT_DIGITS = 20  # what of a phone number argument the audit log may see


def mutation_guard(action: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Authorize a mutation before it runs and record it in the audit log after,
    whatever the outcome (an attempt refused as FORBIDDEN is recorded too)."""
    def wrap(resolver: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(resolver)
        def guarded(obj: Any, info: GraphQLResolveInfo, **kwargs: Any) -> Any:
            fields = kwargs.get("input") or kwargs
            session = fields.get("session") or "default"
            outcome = "ok"
            try:
                principal = authorize(info, action)
                check(principal, action, validate_session_name(session))
                return resolver(obj, info, **kwargs)
            except (GatewayError, ValidationError) as exc:
                outcome = exc.code
                raise
            except Exception:
                outcome = "INTERNAL"
                raise
            finally:
                _audit_mutation(info, session, fields.get("phoneNumber"), outcome)
        return guarded
    return wrap


def _audit_mutation(info: GraphQLResolveInfo, session: Any, phone: Any, outcome: str) -> None:
    context = request_context(info)
    principal = context.principal
    recipient = re.sub(r"\D", "", phone)[:RECIPIENT_DIGITS] if isinstance(phone, str) else None
    context.audit(
        "mutation", operation=info.field_name, actor=principal.name, role=principal.role,
        ip=context.client_ip, session=str(session)[:64], recipient=recipient,
        outcome=outcome, messageId=context.message_id)


query = QueryType()
mutation = MutationType()
status = ObjectType("WhatsAppStatus")


@query.field("whatsAppStatus")
def resolve_status(_: Any, info: GraphQLResolveInfo, session: str = "default") -> SessionRecord:
    name = validate_session_name(session)
    authorize(info, "status", name)
    snapshot = request_context(info).snapshots.status(name)  # fresh file: no actor round trip
    if snapshot is not None:
        return session_record(snapshot)
    return session_record(_ask(info, GetStatus(name, _request_id(info))))


@status.field("qrCode")
def resolve_qr_png(record: SessionRecord, _: GraphQLResolveInfo) -> str | None:
    return qr_png_base64(record.qrCodeRaw) if record.qrCodeRaw else None


@status.field("qrCodeSvg")
def resolve_qr_svg(record: SessionRecord, _: GraphQLResolveInfo) -> str | None:
    return qr_svg_data_uri(record.qrCodeRaw) if record.qrCodeRaw else None


@mutation.field("whatsAppConnect")
@mutation_guard("connect")
def resolve_connect(_: Any, info: GraphQLResolveInfo, session: str = "default") -> bool:
    return bool(_ask(info, Connect(validate_session_name(session), _request_id(info))))


@mutation.field("whatsAppDisconnect")
@mutation_guard("connect")
def resolve_disconnect(_: Any, info: GraphQLResolveInfo, session: str = "default",
                       keepSession: bool = False) -> bool:
    message = Disconnect(validate_session_name(session), bool(keepSession), _request_id(info))
    return bool(_ask(info, message))


@mutation.field("whatsAppForgetSession")
@mutation_guard("connect")
def resolve_forget(_: Any, info: GraphQLResolveInfo, session: str) -> bool:
    return bool(_ask(info, ForgetSession(validate_session_name(session), _request_id(info))))


@mutation.field("sendWhatsAppNotification")
@mutation_guard("send")
def resolve_send(_: Any, info: GraphQLResolveInfo, phoneNumber: str, message: str,
                 session: str = "default", idempotencyKey: str | None = None) -> bool:
    accepted = _send(info, phoneNumber, message, session, idempotencyKey, None)
    # A retried key whose message failed:
    if accepted.state in (MessageState.FAILED, MessageState.EXPIRED):
        record = _accepted_record(info, accepted)
        raise GatewayError("SEND_FAILED", f"this idempotency key's message is "
                           f"{accepted.state} ({record.reason or 'no reason'})",
                           reason=record.reason or "", messageId=accepted.message_id,
                           uncertain=record.uncertain)
    return True


@mutation.field("sendWhatsAppMessage")
@mutation_guard("send")
def resolve_send_message(_: Any, info: GraphQLResolveInfo, input: dict[str, Any]
                         ) -> MessageRecord:
    valid_for = input.get("validForSeconds")
    if valid_for is not None and not VALID_FOR.contains(valid_for):
        raise GatewayError("INVALID_MESSAGE",
                           VALID_FOR.refusal("validForSeconds", valid_for, whole=True),
                           field="validForSeconds")
    accepted = _send(info, input["phoneNumber"], input["message"],
                     input.get("session") or "default", input.get("idempotencyKey"), valid_for)
    return _accepted_record(info, accepted)


@mutation.field("sendWhatsAppMedia")
@mutation_guard("send")
def resolve_send_media(_: Any, info: GraphQLResolveInfo, input: dict[str, Any]
                       ) -> MessageRecord:
    """Every cheap check first (a bad number must not cost a download), then the file
    into the media store, then the same path as a text."""
    upload, url = input.get("file"), input.get("url")
    media_upload.exactly_one(upload, url)
    kind = parse_kind(str(input["kind"]))
    caption = check_caption(input.get("caption"), kind) or ""
    file_name = check_file_name(input.get("fileName"))
    valid_for = _valid_for(input.get("validForSeconds"))
    session, phone = input.get("session") or "default", input["phoneNumber"]
    validate_session_name(session)
    normalize_phone_number(phone)
    if input.get("idempotencyKey") is not None:
        _check_key(input["idempotencyKey"])
    spec = media_upload.store_media(_config(info), kind, upload, url, file_name)
    accepted = _send(info, phone, caption, session, input.get("idempotencyKey"), valid_for,
                     media=spec)
    return _accepted_record(info, accepted)


def _valid_for(valid_for: Any) -> int | None:
    if valid_for is not None and not VALID_FOR.contains(valid_for):
        raise GatewayError("INVALID_MESSAGE",
                           VALID_FOR.refusal("validForSeconds", valid_for, whole=True),
                           field="validForSeconds")
    return int(valid_for) if valid_for is not None else None


@query.field("whatsAppMessage")
def resolve_message(_: Any, info: GraphQLResolveInfo, id: str) -> MessageRecord | None:
    principal = authorize(info, "messages")
    row = _ask(info, GetMessage(str(id), _request_id(info)))
    if row is None:
        return None
    record = _message_record(info, row)
    # another session's message is as good as absent
    return record if principal.may_see(record.session) else None


@query.field("whatsAppMessageByKey")
def resolve_message_by_key(_: Any, info: GraphQLResolveInfo, idempotencyKey: str,
                           session: str = "default") -> MessageRecord | None:
    """The caller's own message with this key (what UNCERTAIN names): a token that may
    send on the session may find what it sent, and nothing another token sent."""
    name = validate_session_name(session)
    principal = authorize(info, "send", name)
    _check_key(idempotencyKey)
    row = _ask(info, GetMessageByKey(name, idempotencyKey, principal.name, _request_id(info)))
    return _message_record(info, row) if row is not None else None


@query.field("whatsAppMessages")
def resolve_messages(_: Any, info: GraphQLResolveInfo, session: str | None = None,
                     state: str | None = None, phoneNumber: str | None = None,
                     first: int = 20, after: str | None = None) -> MessageConnection:
    session = _listed_session(info, session)
    if not PAGE_SIZE.contains(first):
        raise GatewayError("GRAPHQL_VALIDATION_FAILED",
                           PAGE_SIZE.refusal("first", first, whole=True), field="first")
    if state is not None and state not in STATES:
        raise GatewayError("GRAPHQL_VALIDATION_FAILED",
                           f"unknown state {state!r}; use one of {', '.join(STATES)}",
                           field="state")
    request = ListMessages(
        session=session, state=MessageState(state) if state is not None else None,
        phone=normalize_phone_number(phoneNumber) if phoneNumber is not None else None,
        first=first, after=after, request_id=_request_id(info))
    page: MessagePage = _ask(info, request)
    return message_connection(page, now=time.time(), unconfirmed_after=_unconfirmed_after(info))


@query.field("whatsAppIncomingMessages")
def resolve_incoming(_: Any, info: GraphQLResolveInfo, session: str | None = None,
                     after: str | None = None, first: int = 20) -> IncomingConnection:
    """Replies to the linked accounts, with the same roles and session rules as
    whatsAppMessages (what a token may read of one session, it may read here)."""
    session = _listed_session(info, session)
    if not PAGE_SIZE.contains(first):
        raise GatewayError("GRAPHQL_VALIDATION_FAILED",
                           PAGE_SIZE.refusal("first", first, whole=True), field="first")
    request = ListIncoming(session=session, first=first, after=after,
                           request_id=_request_id(info))
    page: IncomingPage = request_context(info).bridge.ask(request, to_outbox=True)
    return incoming_connection(page)


@mutation.field("whatsAppMarkRead")
def resolve_mark_read(_: Any, info: GraphQLResolveInfo, id: str) -> bool:
    """The session of the message is known only to the outbox: the caller's sessions
    travel along, and another session's message is answered as unknown (false)."""
    principal = authorize(info, "send")
    outcome = "ok"
    try:
        sessions = (tuple(sorted(principal.sessions)) if principal.sessions is not None
                    else None)
        marked = request_context(info).bridge.ask(
            MarkRead(str(id), sessions, _request_id(info)), to_outbox=True)
        outcome = "ok" if marked else "unknown"
        return bool(marked)
    except GatewayError as exc:
        outcome = exc.code
        raise
    finally:
        _audit_mutation(info, "", None, outcome)


@query.field("whatsAppCheckNumbers")
def resolve_check_numbers(_: Any, info: GraphQLResolveInfo, phoneNumbers: list[str],
                          session: str = "default") -> list[NumberCheckRecord]:
    name = validate_session_name(session)
    authorize(info, "send", name)  # a lookup spends the account's standing, as a send
    limit = _config(info).numbers.max_per_call
    if len(phoneNumbers) > limit:
        raise GatewayError("INVALID_NUMBER", f"at most {limit} numbers per call "
                           f"(numbers.max_per_call); got {len(phoneNumbers)}: split them",
                           field="phoneNumbers")
    phones = [normalize_phone_number(raw) for raw in phoneNumbers]
    try:
        checks = _check(info, name, phones, strict_budget=True)
    except LookupBudgetExceeded as exc:
        raise GatewayError("RATE_LIMITED", f"session {name!r} may look up only "
                           f"{exc.left} more numbers this {exc.scope} "
                           f"(numbers.per_session_per_{exc.scope}); cached answers are "
                           "free, retry later", scope=f"lookup_{exc.scope}",
                           retryAfterSeconds=math.ceil(exc.retry_after)) from exc
    return [number_check_record(raw, check)
            for raw, check in zip(phoneNumbers, checks, strict=True)]


@mutation.field("whatsAppRequestPairingCode")
@mutation_guard("connect")
def resolve_pairing_code(_: Any, info: GraphQLResolveInfo, phoneNumber: str,
                         session: str = "default") -> str:
    request = RequestPairingCode(validate_session_name(session),
                                 normalize_phone_number(phoneNumber), _request_id(info))
    return str(_ask(info, request, _send_wait(_config(info))))


@mutation.field("testWhatsAppConnection")
@mutation_guard("send")
def resolve_test(_: Any, info: GraphQLResolveInfo, phoneNumber: str,
                 session: str = "default") -> bool:
    config = _config(info)
    send = SendText(
        session=validate_session_name(session),
        phone=normalize_phone_number(phoneNumber),
        text=config.messages.test_message,
        request_id=_request_id(info),
        require_connected=True,
        idempotency_key=_auto_key(),
        requester=_requester(info),
    )
    accepted: Accepted = request_context(info).bridge.ask(send, _send_wait(config),
                                                          to_outbox=True)
    return accepted.state == MessageState.SENT


BINDABLES = (query, mutation, status, upload_scalar, *OVERVIEW, *EVENTS, *WEBHOOK_BINDABLES)


def type_defs() -> str:
    """The schema's text (gateway/api/schema.graphql), shipped as package data."""
    return resources.files("gateway.api").joinpath("schema.graphql").read_text("utf-8")


def build_schema() -> GraphQLSchema:
    """The executable schema: the SDL bound to this module's (and the overview's)
    resolvers. Built per app (and per test); the bindables are built once, at import."""
    schema = make_executable_schema(type_defs(), *BINDABLES)
    _null_means_default(schema)
    return schema


Definitions = dict[str, GraphQLArgument] | dict[str, GraphQLInputField]


def _null_means_default(schema: GraphQLSchema) -> None:
    """An explicit ``null`` for an argument (or input field) that has a default gets
    the default, as if it had been left out.

    GraphQL passes such a null through to the resolver, where ``session: null`` used to
    reach the session-name check as None and fail as INTERNAL. Clients often send null
    for "not set" (JSON has no "absent" in a variables object), so null means "use the
    default" for every root field at once, never per resolver.
    """
    for root in (schema.query_type, schema.mutation_type):
        for field in (root.fields.values() if root else ()):
            if field.resolve is not None and _has_defaults(field.args):
                field.resolve = _filling(field.resolve, field.args)


def _has_defaults(definitions: Definitions, seen: frozenset[str] = frozenset()) -> bool:
    for definition in definitions.values():
        if definition.default_value is not Undefined:
            return True
        named = get_named_type(definition.type)
        if (isinstance(named, GraphQLInputObjectType) and named.name not in seen
                and _has_defaults(named.fields, seen | {named.name})):
            return True
    return False


def _filling(resolve: Callable[..., Any], definitions: Definitions) -> Callable[..., Any]:
    @functools.wraps(resolve)
    def resolver(obj: Any, info: GraphQLResolveInfo, **kwargs: Any) -> Any:
        return resolve(obj, info, **_with_defaults(kwargs, definitions))
    return resolver


def _with_defaults(values: dict[str, Any], definitions: Definitions) -> dict[str, Any]:
    filled = dict(values)
    for name, definition in definitions.items():
        value = filled.get(name)
        if name in filled and value is None and definition.default_value is not Undefined:
            filled[name] = definition.default_value
        elif isinstance(value, dict):
            named = get_named_type(definition.type)
            if isinstance(named, GraphQLInputObjectType):
                filled[name] = _with_defaults(value, named.fields)
    return filled


def _number_cache(info: GraphQLResolveInfo) -> NumberCache:
    """The web tier's one cache per process (created on first use)."""
    cache = request_context(info).numbers
    if cache is None:
        raise GatewayError("INTERNAL", "the number cache is not set up")
    return cache


def _check(info: GraphQLResolveInfo, session: str, phones: list[str], *,
           strict_budget: bool) -> list[NumberCheck]:
    """Answer from the cache, looking the misses up through the session in one query."""
    config = _config(info)
    numbers = config.numbers

    def lookup(batch: list[str]) -> list[Any]:
        try:
            return list(request_context(info).bridge.ask(
                CheckNumbers(session, tuple(batch), _request_id(info)),
                numbers.timeout_seconds))
        except GatewayError as exc:
            reason = exc.extensions.get("reason") or (
                "TIMEOUT" if exc.code == "UNAVAILABLE" else exc.code)
            raise LookupFailed(str(reason), exc.message) from exc

    outcome = check_numbers(_number_cache(info), session, phones, lookup,
                            Budget(numbers.per_session_per_minute, numbers.per_session_per_day),
                            numbers.timeout_seconds, strict_budget=strict_budget)
    observe = request_context(info).observe_numbers
    if observe is not None:
        observe(outcome)
    return outcome


def _refuse_unregistered(info: GraphQLResolveInfo, session: str, phone: str) -> str:
    """The pre-send check: NOT_ON_WHATSAPP for a number known not to be on WhatsApp.
    Unknown (no connection, a timeout, the lookup budget spent) lets the send go on;
    returns why it is unknown ("" when known), for the message's record."""
    check = _check(info, session, [phone], strict_budget=False)[0]
    if check.on_whatsapp is False:
        raise GatewayError("NOT_ON_WHATSAPP", f"+{phone} has no WhatsApp account (checked "
                           f"{iso_time(check.checked_at)}); nothing was sent: fall back to "
                           "SMS or another channel", phoneNumber=e164(phone),
                           checkedAt=iso_time(check.checked_at))
    return "" if check.on_whatsapp else check.reason or "UNKNOWN"


def _send(info: GraphQLResolveInfo, phone: str, text: str, session: str,
          idempotency_key: str | None, valid_for: int | None,
          media: MediaSpec | None = None) -> Accepted:
    """Validate, then hand the message to the actors; returns once it is on disk. A
    media message's ``text`` is its caption (checked by ``check_caption``; may be "")."""
    context = request_context(info)
    config = context.config
    if idempotency_key is not None:
        _check_key(idempotency_key)
    name, number = validate_session_name(session), normalize_phone_number(phone)
    checked_text = text if media is not None else validate_message(
        text, config.messages.max_length)
    unknown = _refuse_unregistered(info, name, number) if config.delivery.check_recipient else ""
    send = SendText(
        session=name,
        phone=number,
        text=checked_text,
        request_id=_request_id(info),
        idempotency_key=idempotency_key if idempotency_key is not None else _auto_key(),
        valid_for=float(valid_for) if valid_for is not None else None,
        requester=_requester(info),
        recipient_unknown=unknown,
        media=media,
    )
    try:
        accepted: Accepted = context.bridge.ask(send, _send_wait(config), to_outbox=True)
    except GatewayError as exc:  # SEND_FAILED, SEND_UNCONFIRMED ...: the audit names it
        context.message_id = exc.extensions.get("messageId")
        raise
    context.message_id = accepted.message_id
    return accepted


def _check_key(key: str) -> None:
    if not 1 <= len(key) <= MAX_KEY_LENGTH:
        raise GatewayError("INVALID_MESSAGE", f"idempotencyKey must be 1 to {MAX_KEY_LENGTH} "
                           "characters", field="idempotencyKey")


def _auto_key() -> str:
    """A key for a send without one: a client told UNCERTAIN finds its message by it."""
    return f"{AUTO_KEY_PREFIX}{uuid.uuid4().hex}"


def _listed_session(info: GraphQLResolveInfo, session: str | None) -> str | None:
    """The session whatsAppMessages lists (None: every one), checked for the caller: a
    token limited to one session lists that one; to several, it must name one."""
    principal = authorize(info, "messages")
    if session is None and principal.sessions is not None:
        if len(principal.sessions) != 1:
            raise GatewayError("FORBIDDEN", f"token {principal.name!r} may use only "
                               f"some sessions: pass session (one of "
                               f"{', '.join(sorted(principal.sessions))})")
        session = next(iter(principal.sessions))
    if session is None:
        return None
    name = validate_session_name(session)
    check(principal, "messages", name)
    return name


def _message_record(info: GraphQLResolveInfo, row: dict[str, Any], *,
                    duplicate: bool = False) -> MessageRecord:
    return message_record(row, now=time.time(), unconfirmed_after=_unconfirmed_after(info),
                          duplicate=duplicate)


def _accepted_record(info: GraphQLResolveInfo, accepted: Accepted) -> MessageRecord:
    """The message a send accepted (or, for a retried idempotency key, found)."""
    return _message_record(info, accepted.record or {}, duplicate=accepted.duplicate)


def _unconfirmed_after(info: GraphQLResolveInfo) -> float:
    return _config(info).delivery.unconfirmed_after_seconds


def _ask(info: GraphQLResolveInfo, message: Any, timeout: float | None = None) -> Any:
    return request_context(info).bridge.ask(message, timeout)


def _config(info: GraphQLResolveInfo) -> Config:
    return request_context(info).config


def _requester(info: GraphQLResolveInfo) -> str:
    """The token's name: it owns the message's idempotency key."""
    return request_context(info).principal.name


def _request_id(info: GraphQLResolveInfo) -> str:
    return request_context(info).request_id or uuid.uuid4().hex


def _send_wait(config: Config) -> float:
    """A send may wait for WhatsApp's ack: give the actors that long plus a margin."""
    return config.messages.send_timeout_seconds + config.actors.ask_timeout_seconds
