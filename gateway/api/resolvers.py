"""GraphQL resolvers: validate input, ask the actors, shape the answer.

Input is checked here, before any actor is asked, so bad input costs nothing and
loses nothing. The shape of ``WhatsAppStatus`` comes from ``SessionStatus``.
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

from ariadne import MutationType, ObjectType, QueryType, make_executable_schema
from graphql import (
    GraphQLArgument,
    GraphQLInputField,
    GraphQLInputObjectType,
    GraphQLResolveInfo,
    GraphQLSchema,
    Undefined,
    get_named_type,
)

from actors.messages import (
    Accepted,
    CheckNumbers,
    Connect,
    Disconnect,
    ForgetSession,
    GetMessage,
    GetStatus,
    ListMessages,
    MessagePage,
    MessageState,
    RequestPairingCode,
    SendText,
    SessionStatus,
)
from actors.outbox.numbers import (
    Budget,
    LookupBudgetExceeded,
    LookupFailed,
    NumberCache,
    NumberCheck,
    check_numbers,
)
from actors.outbox.store import STATES, delivery_unconfirmed
from actors.session.states import SESSION_STATES
from actors.session.states import hint as session_hint
from gateway.api.errors import GatewayError
from gateway.api.overview import gateway_type, resolve_gateway, resolve_sessions
from gateway.api.qr import qr_png_base64, qr_svg_data_uri
from gateway.auth.tokens import Principal, authorize, check
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
from gateway.web.metrics import observe_number_checks

MAX_PAGE = 200
PAGE_SIZE = Range(1, MAX_PAGE)  # whatsAppMessages(first:)
VALID_FOR = Range(1, 2**31 - 1)  # validForSeconds: any positive GraphQL Int (68 years)
MAX_KEY_LENGTH = 128
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
    principal: Principal = info.context["principal"]
    recipient = re.sub(r"\D", "", phone)[:RECIPIENT_DIGITS] if isinstance(phone, str) else None
    info.context["audit"](
        "mutation", operation=info.field_name, actor=principal.name, role=principal.role,
        ip=info.context.get("client_ip"), session=str(session)[:64], recipient=recipient,
        outcome=outcome, messageId=info.context.get("message_id"))


def build_schema() -> GraphQLSchema:
    type_defs = resources.files("gateway.api").joinpath("schema.graphql").read_text("utf-8")
    query, mutation, status = QueryType(), MutationType(), ObjectType("WhatsAppStatus")

    @query.field("whatsAppStatus")
    def resolve_status(_: Any, info: GraphQLResolveInfo, session: str = "default"
                       ) -> SessionStatus:
        name = validate_session_name(session)
        authorize(info, "status", name)
        snapshot: SessionStatus | None = info.context["snapshots"].status(name)  # fresh file
        if snapshot is not None:  # ... so no actor round trip
            return snapshot
        asked: SessionStatus = _ask(info, GetStatus(name, _request_id(info)))
        return asked

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
            record = accepted.record or {}
            raise GatewayError("SEND_FAILED", f"this idempotency key's message is "
                               f"{accepted.state} ({record.get('reason') or 'no reason'})",
                               reason=record.get("reason", ""), messageId=accepted.message_id,
                               uncertain=bool(record.get("uncertain")))
        return True

    @mutation.field("sendWhatsAppMessage")
    @mutation_guard("send")
    def resolve_send_message(_: Any, info: GraphQLResolveInfo, input: dict[str, Any]
                             ) -> dict[str, Any]:
        valid_for = input.get("validForSeconds")
        if valid_for is not None and not VALID_FOR.contains(valid_for):
            raise GatewayError("INVALID_MESSAGE",
                               VALID_FOR.refusal("validForSeconds", valid_for, whole=True),
                               field="validForSeconds")
        accepted = _send(info, input["phoneNumber"], input["message"],
                         input.get("session") or "default", input.get("idempotencyKey"),
                         valid_for)
        return {**(accepted.record or {}), "duplicate": accepted.duplicate}

    @query.field("whatsAppMessage")
    def resolve_message(_: Any, info: GraphQLResolveInfo, id: str
                        ) -> dict[str, Any] | None:
        principal = authorize(info, "messages")
        record = _ask(info, GetMessage(str(id), _request_id(info)))
        if record is None or not principal.may_see(record["session"]):
            return None  # another session's message is as good as absent
        return {**record, "duplicate": False}

    @query.field("whatsAppMessages")
    def resolve_messages(_: Any, info: GraphQLResolveInfo, session: str | None = None,
                         state: str | None = None, phoneNumber: str | None = None,
                         first: int = 20, after: str | None = None) -> dict[str, Any]:
        principal = authorize(info, "messages")
        if session is None and principal.sessions is not None:
            if len(principal.sessions) != 1:
                raise GatewayError("FORBIDDEN", f"token {principal.name!r} may use only "
                                   f"some sessions: pass session (one of "
                                   f"{', '.join(sorted(principal.sessions))})")
            session = next(iter(principal.sessions))
        if session is not None:
            check(principal, "messages", validate_session_name(session))
        if not PAGE_SIZE.contains(first):
            raise GatewayError("GRAPHQL_VALIDATION_FAILED",
                               PAGE_SIZE.refusal("first", first, whole=True), field="first")
        if state is not None and state not in STATES:
            raise GatewayError("GRAPHQL_VALIDATION_FAILED",
                               f"unknown state {state!r}; use one of {', '.join(STATES)}",
                               field="state")
        request = ListMessages(
            session=validate_session_name(session) if session is not None else None,
            state=MessageState(state) if state is not None else None,
            phone=normalize_phone_number(phoneNumber) if phoneNumber is not None else None,
            first=first, after=after, request_id=_request_id(info))
        page: MessagePage = _ask(info, request)
        edges = [{"cursor": c, "node": {**r, "duplicate": False}}
                 for r, c in zip(page.records, page.cursors, strict=True)]
        return {"edges": edges, "pageInfo": {"hasNextPage": page.has_next_page,
                                             "endCursor": page.cursors[-1] if edges else None}}

    @query.field("whatsAppCheckNumbers")
    def resolve_check_numbers(_: Any, info: GraphQLResolveInfo, phoneNumbers: list[str],
                              session: str = "default") -> list[dict[str, Any]]:
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
        return [_number_check(raw, check) for raw, check in zip(phoneNumbers, checks,
                                                                 strict=True)]

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
            requester=_requester(info),
        )
        accepted: Accepted = info.context["bridge"].ask(send, _send_wait(config),
                                                        to_outbox=True)
        return accepted.state == MessageState.SENT

    message = ObjectType("WhatsAppMessage")
    message.set_field("phoneNumber", lambda r, _: e164(r["phone"]))
    message.set_field("acceptedAt", lambda r, _: iso_time(r["accepted_at"]))
    message.set_field("updatedAt", lambda r, _: iso_time(r["updated_at"]))
    message.set_field("whatsAppMessageId", lambda r, _: r["wa_message_id"])
    message.set_field("reason", lambda r, _: r["reason"] or None)
    message.set_field("error", lambda r, _: r["error"] or None)
    message.set_field("validUntil", lambda r, _: iso_time(r["valid_until"]))
    message.set_field("idempotencyKey", lambda r, _: r["idempotency_key"])
    message.set_field("deliveryUnconfirmed", lambda r, info: delivery_unconfirmed(
        r, time.time(), _config(info).delivery.unconfirmed_after_seconds))
    message.set_field("history", lambda r, _: [
        {"state": state, "at": iso_time(at), "reason": reason or None}
        for state, at, reason in r["history"]])

    status.set_field("connected", lambda s, _: s.connected)
    status.set_field("qrCode", lambda s, _: qr_png_base64(s.qr_code) if s.qr_code else None)
    status.set_field("qrCodeSvg",
                     lambda s, _: qr_svg_data_uri(s.qr_code) if s.qr_code else None)
    status.set_field("qrCodeRaw", lambda s, _: s.qr_code)
    status.set_field("qrExpiresAt", lambda s, _: iso_time(s.qr_expires_at))
    status.set_field("session", lambda s, _: s.session)
    status.set_field("state", lambda s, _: s.state.value)
    status.set_field("phoneNumber", lambda s, _: e164(s.phone))
    status.set_field("reconnectAttempt", lambda s, _: s.reconnect_attempt)
    status.set_field("lastError", lambda s, _: s.last_error and {
        "code": s.last_error.code, "message": s.last_error.message})
    status.set_field("connectedSince", lambda s, _: iso_time(s.connected_since))
    status.set_field("bridgeState", lambda s, _: SESSION_STATES[s.state].bridge_state)
    status.set_field("hint", lambda s, _: _hint(s))
    status.set_field("bannedUntil", lambda s, _: iso_time(s.banned_until))
    query.set_field("whatsAppSessions", resolve_sessions)
    query.set_field("whatsAppGateway", resolve_gateway)
    schema = make_executable_schema(type_defs, query, mutation, status, message,
                                    gateway_type())
    _null_means_default(schema)
    return schema


def _hint(status: SessionStatus) -> dict[str, str]:
    """``WhatsAppStatus.hint``: the state's row (actors/session/states.py), which the
    dashboard shows instead of keeping its own copy."""
    found = session_hint(status)
    return {"label": found.label, "meaning": found.meaning, "whatToDo": found.what_to_do,
            "tone": found.tone}


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
    cache: NumberCache | None = info.context.get("numbers")
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
            return list(info.context["bridge"].ask(
                CheckNumbers(session, tuple(batch), _request_id(info)),
                numbers.timeout_seconds))
        except GatewayError as exc:
            reason = exc.extensions.get("reason") or (
                "TIMEOUT" if exc.code == "UNAVAILABLE" else exc.code)
            raise LookupFailed(str(reason), exc.message) from exc

    outcome = check_numbers(_number_cache(info), session, phones, lookup,
                            Budget(numbers.per_session_per_minute, numbers.per_session_per_day),
                            numbers.timeout_seconds, strict_budget=strict_budget)
    observe_number_checks([c.on_whatsapp for c in outcome], [c.reason for c in outcome],
                          [c.cached for c in outcome])
    return outcome


def _number_check(raw: str, check: NumberCheck) -> dict[str, Any]:
    return {"input": raw, "phoneNumber": e164(check.phone), "onWhatsApp": check.on_whatsapp,
            "jid": check.jid or None, "lid": check.lid or None, "business": check.business,
            "checkedAt": iso_time(check.checked_at), "cached": check.cached,
            "reason": check.reason or None}


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
          idempotency_key: str | None, valid_for: int | None) -> Accepted:
    """Validate, then hand the message to the actors; returns once it is on disk."""
    config = _config(info)
    if idempotency_key is not None and not 1 <= len(idempotency_key) <= MAX_KEY_LENGTH:
        raise GatewayError("INVALID_MESSAGE", f"idempotencyKey must be 1 to {MAX_KEY_LENGTH} "
                           "characters", field="idempotencyKey")
    name, number = validate_session_name(session), normalize_phone_number(phone)
    checked_text = validate_message(text, config.messages.max_length)
    unknown = _refuse_unregistered(info, name, number) if config.delivery.check_recipient else ""
    send = SendText(
        session=name,
        phone=number,
        text=checked_text,
        request_id=_request_id(info),
        idempotency_key=idempotency_key,
        valid_for=float(valid_for) if valid_for is not None else None,
        requester=_requester(info),
        recipient_unknown=unknown,
    )
    try:
        accepted: Accepted = info.context["bridge"].ask(send, _send_wait(config),
                                                        to_outbox=True)
    except GatewayError as exc:  # SEND_FAILED, SEND_UNCONFIRMED ...: the audit names it
        info.context["message_id"] = exc.extensions.get("messageId")
        raise
    info.context["message_id"] = accepted.message_id
    return accepted


def _ask(info: GraphQLResolveInfo, message: Any, timeout: float | None = None) -> Any:
    return info.context["bridge"].ask(message, timeout)


def _config(info: GraphQLResolveInfo) -> Config:
    config: Config = info.context["config"]
    return config


def _requester(info: GraphQLResolveInfo) -> str:
    """The token's name: it owns the message's idempotency key."""
    principal: Principal = info.context["principal"]
    return principal.name


def _request_id(info: GraphQLResolveInfo) -> str:
    return info.context.get("request_id") or uuid.uuid4().hex


def _send_wait(config: Config) -> float:
    """A send may wait for WhatsApp's ack: give the actors that long plus a margin."""
    return config.messages.send_timeout_seconds + config.actors.ask_timeout_seconds
