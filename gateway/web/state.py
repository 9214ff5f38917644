"""What one Flask app holds for its lifetime, in one place: ``app.extensions["wagate"]``.

The hooks, the GraphQL endpoint and the REST views are plain module-level functions
that read this record through ``current()``, instead of closures over ``create_app``'s
locals: each can be read (and tested) on its own, and nothing is captured by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from flask import Flask, current_app, g
from graphql import ASTValidationRule, GraphQLSchema

from actors.outbox.numbers import NumberCache
from actors.supervisor.snapshot import SnapshotReader
from gateway.api.query_cache import DocumentCache
from gateway.auth.tokens import Authenticator
from gateway.core.config import Config
from gateway.core.origins import BrowserPolicy
from gateway.web.metrics import GraphqlMetrics

EXTENSION = "wagate"  # the key in app.extensions


class Bridge(Protocol):
    """What the web tier needs of the actor system (``gateway.web.bridge.ActorBridge``);
    tests hand ``create_app`` another implementation that answers with the same
    ``actors.messages`` replies."""

    def ask(self, message: Any, timeout: float | None = None,
            to_outbox: bool = False) -> Any: ...

    def audit(self, event: str, request_id: str = "", **fields: Any) -> None: ...


@dataclass(frozen=True)
class WebState:
    """Everything a request handler needs beyond the request itself."""

    config: Config
    bridge: Bridge
    schema: GraphQLSchema
    snapshots: SnapshotReader
    numbers: NumberCache
    documents: DocumentCache
    graphql_metrics: GraphqlMetrics
    rules: list[type[ASTValidationRule]]
    authenticator: Authenticator
    browsers: BrowserPolicy

    def audit(self, event: str, **fields: Any) -> None:
        """Hand an entry to the audit log's single writer (never raises)."""
        self.bridge.audit(event, g.get("request_id", ""), **fields)

    def install(self, app: Flask) -> None:
        app.extensions[EXTENSION] = self


def current() -> WebState:
    """The state of the app handling the current request."""
    state: WebState = current_app.extensions[EXTENSION]
    return state
