"""The views beside GraphQL: probes, the operator's health document, metrics, tokens.

``/healthz`` and ``/readyz`` need no token (they hold no data); the others check the
principal's role here (``health``: admin, viewer; ``admin``: admin), and a token
limited to some sessions sees only those sessions' part.
"""

from __future__ import annotations

import time
from typing import Any

from flask import Blueprint, Response, g, jsonify

from actors.messages import GetHealth, HealthReport, Ping, WebhookCommand
from gateway import __version__
from gateway.api.errors import GatewayError
from gateway.api.health import add_storage, config_warnings, health_document, storage_space
from gateway.auth.tokens import TokenFile
from gateway.web.errors import error_body
from gateway.web.hooks import require
from gateway.web.metrics import CONTENT_TYPE
from gateway.web.metrics import render as render_metrics
from gateway.web.state import current

READY_TIMEOUT_SECONDS = 2.0  # at most, for /readyz's ping (a probe must answer quickly)

rest_blueprint = Blueprint("rest", __name__)


@rest_blueprint.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok", "version": __version__})


@rest_blueprint.get("/readyz")
def readyz() -> tuple[Response, int]:
    state = current()
    wait = min(READY_TIMEOUT_SECONDS, state.config.actors.ask_timeout_seconds)
    try:
        state.bridge.ask(Ping(g.request_id), timeout=wait)
    except GatewayError as exc:
        return jsonify({"status": "unavailable", "reason": exc.message}), 503
    return jsonify({"status": "ready"}), 200


@rest_blueprint.get("/admin/health")
def admin_health() -> tuple[Response, int]:
    principal = require("health")
    state = current()
    try:
        report: HealthReport = state.bridge.ask(GetHealth(g.request_id))
    except GatewayError as exc:
        return jsonify({"status": "unavailable", "reason": exc.message,
                        "version": __version__,
                        **error_body(exc.code, exc.message)}), 503
    document = health_document(report, time.time(), principal.sessions)
    document["warnings"] += config_warnings(state.config)
    if principal.sessions is None:  # gateway-wide, like the event log's size
        add_storage(document, state.config)
    document["auth"] = {"required": state.authenticator.required, "principal": principal.name,
                        "role": principal.role}
    return jsonify(document), 200


@rest_blueprint.get("/metrics")
def metrics() -> Response:
    # AUTH: the "health" action (admin, viewer); a token limited to some sessions
    # sees only their series.
    principal = require("health")
    try:
        report: HealthReport | None = current().bridge.ask(GetHealth(g.request_id))
    except GatewayError:
        report = None  # wagate_actors_up 0; the web tier's own metrics still count
    webhooks = _webhook_metrics() if principal.sessions is None and report else None
    free = storage_space(current().config) if principal.sessions is None else None
    return Response(render_metrics(report, principal.sessions, webhooks, free),
                    content_type=CONTENT_TYPE)


def _webhook_metrics() -> dict[str, Any] | None:
    """The webhook actor's counters (gateway-wide: only for an unscoped token)."""
    try:
        found = current().bridge.ask(WebhookCommand("metrics", {}, g.request_id))
    except GatewayError:
        return None
    return found if isinstance(found, dict) else None


@rest_blueprint.get("/admin/tokens")
def admin_tokens() -> tuple[Response, int]:
    # An admin limited to some sessions sees only the tokens limited to (some of)
    # them: the others belong to whoever shares the gateway with it.
    principal = require("admin")
    now = time.time()
    entries = TokenFile(current().authenticator.token_path).entries().values()
    return jsonify({"tokens": [entry.public(now) for entry in entries
                               if principal.covers(entry.sessions)]}), 200
