"""The Flask application: GraphQL, health endpoints and the request log.

``create_app`` builds everything from a ``Config`` and never starts an actor system;
the bridge joins a running one on first use, after gunicorn has forked.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import structlog
from ariadne import graphql_sync
from ariadne.explorer import ExplorerGraphiQL
from flask import Flask, Response, g, jsonify, request

from actors.messages import GetHealth, HealthReport, Ping, SessionState, SessionStatus
from actors.status_snapshot import SnapshotReader
from gateway import __version__
from gateway.bridge import ActorBridge
from gateway.config import Config
from gateway.errors import GatewayError, format_error
from gateway.query_cache import DocumentCache
from gateway.resolvers import build_schema, iso_time

log = structlog.get_logger("wagate.http")

MAX_BODY_BYTES = 256 * 1024  # a 4096-character message is < 20 KB even fully escaped
REQUEST_ID_HEADER = "X-Request-Id"
# Ariadne logs every GraphQL error with a traceback, expected ones (NOT_CONNECTED,
# RATE_LIMITED ...) included. format_error logs the unexpected ones itself.
GRAPHQL_ERROR_LOGGER = "wagate.graphql.errors"


def create_app(config: Config, bridge: ActorBridge | None = None) -> Flask:
    app = Flask("wagate")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    bridge = bridge or ActorBridge(config.actors.admin_port, config.actors.ask_timeout_seconds)
    schema = build_schema()
    snapshots = SnapshotReader(config.data_path)
    documents = DocumentCache()
    explorer_html = ExplorerGraphiQL(title="wagate GraphQL").html(None)

    @app.before_request
    def start_request() -> None:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if 0 < len(incoming) <= 64 else uuid.uuid4().hex
        g.started = time.perf_counter()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=g.request_id)

    @app.after_request
    def finish_request(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        if request.path not in ("/healthz", "/readyz"):
            log.info("request", method=request.method, path=request.path,
                     status=response.status_code, operation=g.get("operation"),
                     session=g.get("session"),
                     ms=round((time.perf_counter() - g.get("started", 0)) * 1000, 2))
        return response

    @app.get("/graphql")
    def explorer() -> Response:
        return Response(explorer_html, mimetype="text/html")

    @app.post("/graphql")
    def graphql() -> tuple[Response, int]:
        data = request.get_json(silent=True)
        if not isinstance(data, dict):
            return _error_response("GRAPHQL_VALIDATION_FAILED",
                                   "send a JSON object {query, variables, operationName} "
                                   "with Content-Type: application/json", 400)
        g.operation = data.get("operationName")
        variables = data.get("variables")
        if isinstance(variables, dict) and isinstance(variables.get("session"), str):
            g.session = variables["session"]
        context: dict[str, Any] = {"bridge": bridge, "config": config,
                                   "request_id": g.request_id, "snapshots": snapshots}
        _, result = graphql_sync(schema, data, context_value=context, error_formatter=format_error,
                                 debug=False, logger=GRAPHQL_ERROR_LOGGER,
                                 query_parser=documents.parser,
                                 query_validator=documents.validator)
        return jsonify(result), 200

    @app.get("/healthz")
    def healthz() -> Response:
        return jsonify({"status": "ok", "version": __version__})

    @app.get("/readyz")
    def readyz() -> tuple[Response, int]:
        try:
            bridge.ask(Ping(g.request_id), timeout=min(2.0, config.actors.ask_timeout_seconds))
        except GatewayError as exc:
            return jsonify({"status": "unavailable", "reason": exc.message}), 503
        return jsonify({"status": "ready"}), 200

    @app.get("/admin/health")
    def admin_health() -> tuple[Response, int]:
        try:
            report: HealthReport = bridge.ask(GetHealth(g.request_id))
        except GatewayError as exc:
            return jsonify({"status": "unavailable", "reason": exc.message,
                            "version": __version__}), 503
        return jsonify(health_document(report, time.time())), 200

    @app.errorhandler(413)
    def too_large(_: Exception) -> tuple[Response, int]:
        return _error_response("GRAPHQL_VALIDATION_FAILED",
                               f"request body larger than {MAX_BODY_BYTES} bytes", 413)

    return app


def health_document(report: HealthReport, now: float) -> dict[str, Any]:
    """The /admin/health JSON: overall status plus every session's detail."""
    sessions = [_session_health(s, now) for s in report.sessions]
    degraded = any(s["state"] in ("RECONNECTING", "FAILED") for s in sessions)
    return {
        "status": "degraded" if degraded else "ok",
        "version": __version__,
        "time": iso_time(now),
        "sessions": sessions,
        "queue": {"depth": report.queue_depth, "bySession": report.queue_by_session,
                  "uncertainTotal": report.uncertain_total},
        "limiter": report.limiter,
        "processes": report.worker_pids,
    }


def _session_health(status: SessionStatus, now: float) -> dict[str, Any]:
    return {
        "session": status.session,
        "state": status.state.value,
        "connected": status.state is SessionState.CONNECTED,
        "phoneNumber": status.phone,
        "reconnectAttempt": status.reconnect_attempt,
        "lastError": (None if status.last_error is None else
                      {"code": status.last_error.code, "message": status.last_error.message}),
        "connectedSince": iso_time(status.connected_since),
        "uptimeSeconds": (round(now - status.connected_since, 1)
                          if status.connected_since else 0.0),
        "pid": status.pid,
    }


def _error_response(code: str, message: str, status: int) -> tuple[Response, int]:
    body = {"errors": [{"message": message, "extensions": {"code": code}}]}
    return Response(json.dumps(body), mimetype="application/json"), status
