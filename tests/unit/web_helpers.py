"""In-process web tier: the real Flask app over a ``FakeBridge``.

``FakeBridge`` stands in for the actor system, not for the code under test: it has
``ActorBridge``'s public methods (``ask``, ``audit``) and answers each actor message
with the reply the actors give (real ``actors.messages`` dataclasses: ``Ok``,
``Failed``, ``Accepted``, ``MessagePage``, ``HealthReport`` ...), unwrapped the way
``ActorBridge.ask`` unwraps it (``Failed`` becomes ``GatewayError``, ``None``
``UNAVAILABLE``). Everything else (hooks, gates, the GraphQL endpoint, resolvers,
error formatting, the token file, the number cache in SQLite) is the real code.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from actors.messages import (
    Accepted,
    CheckNumbers,
    Connect,
    Disconnect,
    ForgetSession,
    GetHealth,
    GetMessage,
    GetStatus,
    HealthReport,
    ListMessages,
    MessagePage,
    Ok,
    Ping,
    RequestPairingCode,
    SendText,
    SessionState,
    SessionStatus,
)
from actors.transport.base import NumberInfo
from gateway.api.errors import GatewayError
from gateway.auth.tokens import TokenEntry, TokenFile, new_token, token_hash, tokens_path
from gateway.core.config import Config, load_config
from gateway.core.networks import parse_networks
from gateway.web.app import create_app

Handler = Callable[[Any], Any]
UNAVAILABLE_MESSAGE = "the gateway's actor system is not answering (fake)"
PAIRING_CODE = "ABCD1234"


def record(message_id: str = "m1", session: str = "default", phone: str = "14155552671",
           state: str = "QUEUED", **changes: Any) -> dict[str, Any]:
    """A message record as the outbox hands it out (``public_record``: no text)."""
    now = time.time()
    return {"id": message_id, "session": session, "phone": phone, "state": state,
            "accepted_at": now, "updated_at": now, "next_attempt_at": 0.0,
            "valid_until": None, "attempts": 0, "wa_message_id": None, "reason": "",
            "error": "", "request_id": "", "requester": "", "idempotency_key": None,
            "is_test": False, "uncertain": False, "history": [["QUEUED", now, ""]],
            "account": "", "link_epoch": 0, **changes}


def _accept(message: SendText) -> Accepted:
    state = "SENT" if message.require_connected else "QUEUED"
    kept = record(session=message.session, phone=message.phone, state=state,
                  idempotency_key=message.idempotency_key, requester=message.requester)
    return Accepted("m1", state, kept["accepted_at"], record=kept)


def _health(_: GetHealth) -> HealthReport:
    return HealthReport(sessions=(SessionStatus("default", SessionState.CONNECTED),
                                  SessionStatus("alpha"), SessionStatus("beta")),
                        worker_pids={"supervisor": 1, "outbox": 2},
                        queue_by_session={"default": 2, "alpha": 1})


def default_handlers() -> dict[type, Handler]:
    """What a healthy gateway with a connected ``default`` session answers."""
    return {
        Ping: lambda m: Ok(True),
        GetStatus: lambda m: Ok(SessionStatus(m.session, SessionState.CONNECTED,
                                              paired=True, phone="14155552671")),
        Connect: lambda m: Ok(True),
        Disconnect: lambda m: Ok(True),
        ForgetSession: lambda m: Ok(True),
        SendText: _accept,
        GetMessage: lambda m: Ok(record(m.message_id)),
        ListMessages: lambda m: MessagePage((record(session=m.session or "default"),),
                                            ("c1",), False),
        CheckNumbers: lambda m: Ok([NumberInfo(p, p.endswith("1"), f"{p}@s.whatsapp.net")
                                    for p in m.phones]),
        RequestPairingCode: lambda m: Ok(PAIRING_CODE),
        GetHealth: _health,
    }


@dataclass
class FakeBridge:
    """The actor system as the web tier sees it; records what it was asked and told."""

    handlers: dict[type, Handler] = field(default_factory=default_handlers)
    asked: list[Any] = field(default_factory=list)
    audits: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)

    def ask(self, message: Any, timeout: float | None = None, to_outbox: bool = False) -> Any:
        self.asked.append(message)
        handler = self.handlers.get(type(message))
        reply = handler(message) if handler is not None else None
        if reply is None:
            raise GatewayError("UNAVAILABLE", UNAVAILABLE_MESSAGE)
        if getattr(reply, "code", None) is not None and hasattr(reply, "details"):
            raise GatewayError(reply.code, reply.message, **reply.details)  # a Failed
        return getattr(reply, "value", reply)

    def audit(self, event: str, request_id: str = "", **fields: Any) -> None:
        self.audits.append((event, request_id, fields))

    def asked_of(self, kind: type) -> list[Any]:
        return [m for m in self.asked if isinstance(m, kind)]

    def audited(self, event: str) -> list[dict[str, Any]]:
        return [fields for name, _, fields in self.audits if name == event]


def web_config(tmp_path: Path, **overrides: Any) -> Config:
    """A simulator gateway's configuration with its data in ``tmp_path``."""
    return load_config(None, {"storage.data_dir": str(tmp_path / "data"),
                              "transport.engine": "simulator", **overrides})


def add_token(config: Config, name: str, role: str, sessions: tuple[str, ...] | None = None,
              networks: tuple[str, ...] = (), **changes: Any) -> str:
    """A token in the gateway's token file (as `wagate token create` writes it)."""
    secret = new_token()
    entry = TokenEntry(name, role, token_hash(secret),
                       parse_networks(list(networks), "networks") if networks else (),
                       frozenset(sessions) if sessions is not None else None, **changes)
    TokenFile(tokens_path(config)).add(entry)
    return secret


@dataclass
class Web:
    """The app under test, its client and its fake actor system."""

    app: Flask
    client: FlaskClient
    bridge: FakeBridge
    config: Config

    def post(self, query: str, variables: dict[str, Any] | None = None,
             token: str | None = None, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        headers.update(kwargs.pop("headers", {}))
        return self.client.post("/graphql", json={"query": query, "variables": variables or {}},
                                headers=headers, **kwargs)

    def gql(self, query: str, variables: dict[str, Any] | None = None,
            token: str | None = None) -> dict[str, Any]:
        """The GraphQL result of one operation (HTTP 200 expected)."""
        response = self.post(query, variables, token)
        assert response.status_code == 200, response.get_data(as_text=True)
        result: dict[str, Any] = response.get_json()
        return result


def web(config: Config, bridge: FakeBridge | None = None) -> Iterator[Web]:
    """A fixture's body: the app for ``config``, its SQLite connection closed at the end."""
    fake = bridge or FakeBridge()
    app = create_app(config, bridge=fake)
    try:
        with app.test_client() as client:
            yield Web(app, client, fake, config)
    finally:
        app.extensions["wagate"].numbers.close()  # its one SQLite connection


def codes(result: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in result.get("errors", [])]
