"""GraphQL resolvers: validate input, ask the actors, shape the answer.

Input is checked here, before any actor is asked, so bad input costs nothing and
loses nothing. The shape of ``WhatsAppStatus`` comes from ``SessionStatus``.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from importlib import resources
from typing import Any

from ariadne import MutationType, ObjectType, QueryType, make_executable_schema
from graphql import GraphQLResolveInfo, GraphQLSchema

from actors.messages import (
    BRIDGE_STATES,
    Accepted,
    Connect,
    Disconnect,
    GetStatus,
    RequestPairingCode,
    SendText,
    SessionStatus,
)
from gateway.config import Config
from gateway.qr import qr_png_base64, qr_svg_data_uri
from gateway.validation import normalize_phone_number, validate_message, validate_session_name


def build_schema() -> GraphQLSchema:
    type_defs = resources.files("gateway").joinpath("schema.graphql").read_text("utf-8")
    query, mutation, status = QueryType(), MutationType(), ObjectType("WhatsAppStatus")

    @query.field("whatsAppStatus")
    def resolve_status(_: Any, info: GraphQLResolveInfo, session: str = "default"
                       ) -> SessionStatus:
        return _ask(info, GetStatus(validate_session_name(session), _request_id(info)))

    @mutation.field("whatsAppConnect")
    def resolve_connect(_: Any, info: GraphQLResolveInfo, session: str = "default") -> bool:
        return bool(_ask(info, Connect(validate_session_name(session), _request_id(info))))

    @mutation.field("whatsAppDisconnect")
    def resolve_disconnect(_: Any, info: GraphQLResolveInfo, session: str = "default",
                           keepSession: bool = False) -> bool:
        message = Disconnect(validate_session_name(session), bool(keepSession), _request_id(info))
        return bool(_ask(info, message))

    @mutation.field("sendWhatsAppNotification")
    def resolve_send(_: Any, info: GraphQLResolveInfo, phoneNumber: str, message: str,
                     session: str = "default") -> bool:
        config = _config(info)
        send = SendText(
            session=validate_session_name(session),
            phone=normalize_phone_number(phoneNumber),
            text=validate_message(message, config.messages.max_length),
            request_id=_request_id(info),
        )
        accepted: Accepted = _ask(info, send, _send_wait(config))
        info.context["message_id"] = accepted.message_id
        return True

    @mutation.field("whatsAppRequestPairingCode")
    def resolve_pairing_code(_: Any, info: GraphQLResolveInfo, phoneNumber: str,
                             session: str = "default") -> str:
        request = RequestPairingCode(validate_session_name(session),
                                     normalize_phone_number(phoneNumber), _request_id(info))
        return str(_ask(info, request, _send_wait(_config(info))))

    @mutation.field("testWhatsAppConnection")
    def resolve_test(_: Any, info: GraphQLResolveInfo, phoneNumber: str,
                     session: str = "default") -> bool:
        config = _config(info)
        send = SendText(
            session=validate_session_name(session),
            phone=normalize_phone_number(phoneNumber),
            text=config.messages.test_message,
            request_id=_request_id(info),
            require_connected=True,
        )
        accepted: Accepted = _ask(info, send, _send_wait(config))
        return accepted.state == "SENT"

    status.set_field("connected", lambda s, _: s.connected)
    status.set_field("qrCode", lambda s, _: qr_png_base64(s.qr_code) if s.qr_code else None)
    status.set_field("qrCodeSvg",
                     lambda s, _: qr_svg_data_uri(s.qr_code) if s.qr_code else None)
    status.set_field("qrCodeRaw", lambda s, _: s.qr_code)
    status.set_field("qrExpiresAt", lambda s, _: iso_time(s.qr_expires_at))
    status.set_field("session", lambda s, _: s.session)
    status.set_field("state", lambda s, _: s.state.value)
    status.set_field("phoneNumber", lambda s, _: s.phone)
    status.set_field("reconnectAttempt", lambda s, _: s.reconnect_attempt)
    status.set_field("lastError", lambda s, _: s.last_error and {
        "code": s.last_error.code, "message": s.last_error.message})
    status.set_field("connectedSince", lambda s, _: iso_time(s.connected_since))
    status.set_field("bridgeState", lambda s, _: BRIDGE_STATES[s.state])
    status.set_field("bannedUntil", lambda s, _: iso_time(s.banned_until))
    return make_executable_schema(type_defs, query, mutation, status)


def iso_time(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds").replace(
        "+00:00", "Z")


def _ask(info: GraphQLResolveInfo, message: Any, timeout: float | None = None) -> Any:
    return info.context["bridge"].ask(message, timeout)


def _config(info: GraphQLResolveInfo) -> Config:
    return info.context["config"]


def _request_id(info: GraphQLResolveInfo) -> str:
    return info.context.get("request_id") or uuid.uuid4().hex


def _send_wait(config: Config) -> float:
    """A send may wait for WhatsApp's ack: give the actors that long plus a margin."""
    return config.messages.send_timeout_seconds + config.actors.ask_timeout_seconds
