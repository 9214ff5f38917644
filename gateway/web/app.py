"""The Flask application: GraphQL, health endpoints and the request log.

``create_app`` builds everything from a ``Config`` and never starts an actor system;
the bridge joins a running one on first use, after gunicorn has forked.

Every request passes the network check, the Host and Origin checks (DNS rebinding,
other sites' pages: ``gateway.core.origins``) and (except the public paths) the token check
before any view runs, so a refused request costs no GraphQL work; what each principal
may do is checked per operation by the resolvers (``gateway.auth.tokens.authorize``).
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import structlog
from ariadne import graphql_sync
from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from actors.messages import GetHealth, HealthReport, Ping
from actors.outbox.numbers import open_cache
from actors.supervisor.snapshot import SnapshotReader
from actors.system import allowed_networks, bind_address
from gateway import __version__
from gateway.api.errors import GatewayError, format_error
from gateway.api.health import health_document
from gateway.api.limits import limit_rules
from gateway.api.query_cache import DocumentCache
from gateway.api.resolvers import build_schema
from gateway.auth.tokens import (
    Authenticator,
    Denied,
    NetworkPolicy,
    Principal,
    TokenFile,
    check,
    tokens_path,
)
from gateway.core.config import Config
from gateway.core.networks import parse_networks
from gateway.core.origins import BrowserPolicy, cors_headers, preflight_headers
from gateway.web.bridge import ActorBridge
from gateway.web.dashboard import dashboard_blueprint
from gateway.web.explorer import explorer_blueprint, is_explorer_path, page_response
from gateway.web.metrics import CONTENT_TYPE, GraphqlMetrics
from gateway.web.metrics import render as render_metrics
from gateway.web.request_body import BodyError, parse_json_body

log = structlog.get_logger("wagate.http")

REQUEST_ID_HEADER = "X-Request-Id"
# Paths that hold no data and so need no token (the network check still applies).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
# Ariadne logs every GraphQL error with a traceback, expected ones (NOT_CONNECTED,
# RATE_LIMITED ...) included. format_error logs the unexpected ones itself.
GRAPHQL_ERROR_LOGGER = "wagate.graphql.errors"
NO_ROUTE = "(no route)"  # the audit's route for a path that matches no route
AUDIT_PATH_CHARS = 200  # of a refused request's path in the audit log


def create_app(config: Config, bridge: ActorBridge | None = None) -> Flask:
    app = Flask("wagate", static_folder=None)  # the dashboard serves its own files
    app.register_blueprint(dashboard_blueprint(config))
    limits = config.graphql
    if limits.explorer:
        app.register_blueprint(explorer_blueprint())
    app.config["MAX_CONTENT_LENGTH"] = limits.max_body_bytes
    bridge = bridge or ActorBridge(config.actors.admin_port, config.actors.ask_timeout_seconds,
                                   bind_address(config), allowed_networks(config))
    schema = build_schema()
    snapshots = SnapshotReader(config.data_path)
    numbers = open_cache(config.data_path, config.numbers.positive_ttl_hours,
                         config.numbers.negative_ttl_hours)
    documents = DocumentCache()
    graphql_metrics = GraphqlMetrics(schema, documents.parser)
    rules = limit_rules(limits.max_depth, limits.max_cost, limits.introspection)
    authenticator = make_authenticator(config)
    browsers = BrowserPolicy.build(config.http.host, config.http.allowed_hosts,
                                   config.http.allowed_origins)

    def audit(event: str, **fields: Any) -> None:
        """Hand an entry to the audit log's single writer (never raises)."""
        bridge.audit(event, g.get("request_id", ""), **fields)

    def refuse(denied: Denied) -> tuple[Response, int]:
        log.warning("request refused", path=request.path, ip=g.client_ip, code=denied.code,
                    token=denied.token, status=denied.status)
        # Bursts are keyed on the route template, never on the path the client chose.
        rule = request.url_rule
        audit("auth.failure", ip=g.client_ip, route=rule.rule if rule else NO_ROUTE,
              path=request.path[:AUDIT_PATH_CHARS], code=denied.code, actor=denied.token,
              reason=denied.message)
        response, status = _error_response(denied.code, denied.message, denied.status)
        if status == 401:
            response.headers["WWW-Authenticate"] = 'Bearer realm="wagate"'
        return response, status

    @app.before_request
    def start_request() -> tuple[Response, int] | None:
        incoming = request.headers.get(REQUEST_ID_HEADER, "")
        g.request_id = incoming if 0 < len(incoming) <= 64 else uuid.uuid4().hex
        g.started = time.perf_counter()
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=g.request_id)
        g.client_ip = authenticator.networks.client_address(
            request.remote_addr or "", request.headers.get("X-Forwarded-For"))
        denied = authenticator.check_network(g.client_ip) or check_browser()
        if denied is not None:
            return refuse(denied)
        if g.get("cors_origin") and request.method == "OPTIONS" and \
                "Access-Control-Request-Method" in request.headers:
            return Response(status=204, headers=preflight_headers(g.cors_origin)), 204
        if _is_public(request.path, request.method, limits.explorer):
            return None
        who = authenticator.authenticate(g.client_ip, request.headers.get("Authorization"),
                                         time.time())
        if isinstance(who, Denied):
            return refuse(who)
        g.principal = who
        structlog.contextvars.bind_contextvars(actor=who.name)
        return None

    def check_browser() -> Denied | None:
        """DNS rebinding (the Host header) and other origins' pages (gateway/core/origins.py);
        an allowed other origin is remembered for its CORS headers."""
        host = request.headers.get("Host")
        reason = browsers.host_refusal(host)
        if reason is not None:
            return Denied(403, "FORBIDDEN", reason)
        origin = request.headers.get("Origin")
        verdict = browsers.origin_verdict(origin, request.headers.get("Sec-Fetch-Site"), host)
        if verdict == "refused":
            return Denied(403, "FORBIDDEN", browsers.origin_refusal(origin or ""))
        if verdict == "allowed":
            g.cors_origin = origin
        return None

    def require(action: str) -> Principal:
        """The request's principal, checked for ``action`` (raises GatewayError)."""
        principal: Principal = g.principal
        check(principal, action)
        return principal

    @app.after_request
    def finish_request(response: Response) -> Response:
        response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
        if "Origin" in request.headers:
            response.vary.add("Origin")  # CORS headers and refusals depend on it
        if g.get("cors_origin"):
            response.headers.update(cors_headers(g.cors_origin))
        if request.path not in PUBLIC_PATHS:  # probes are not worth a log line
            quiet = config.logging.reads_at_debug and _only_read(response.status_code)
            (log.debug if quiet else log.info)(
                "request", method=request.method, path=request.path,
                status=response.status_code, operation=g.get("operation"),
                session=g.get("session"),
                ms=round((time.perf_counter() - g.get("started", 0)) * 1000, 2))
        if (request.path == "/graphql" and request.method == "POST"
                and not g.get("graphql_observed") and "started" in g):
            # Refused before any operation ran (token, size, not JSON): still a request.
            graphql_metrics.observe_refused(response.status_code,
                                            time.perf_counter() - g.started)
        return response

    @app.get("/graphql")
    def explorer() -> tuple[Response, int]:
        if not limits.explorer:
            return _error_response("NOT_FOUND", "the GraphQL explorer is off "
                                   "(graphql.explorer); POST queries to /graphql", 404)
        return page_response(), 200

    def execute(data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            return _error_body("GRAPHQL_VALIDATION_FAILED",
                               "each operation must be a JSON object "
                               "{query, variables, operationName}")
        g.operation = data.get("operationName")
        variables = data.get("variables")
        if isinstance(variables, dict) and isinstance(variables.get("session"), str):
            g.session = variables["session"]
        context: dict[str, Any] = {"bridge": bridge, "config": config, "audit": audit,
                                   "request_id": g.request_id, "snapshots": snapshots,
                                   "numbers": numbers,
                                   "principal": g.principal, "client_ip": g.client_ip}
        started = time.perf_counter()
        _, result = graphql_sync(schema, data, context_value=context, error_formatter=format_error,
                                 debug=False, logger=GRAPHQL_ERROR_LOGGER,
                                 query_parser=documents.parser,
                                 query_validator=documents.validator,
                                 validation_rules=rules,
                                 # graphql.introspection = false is enforced by `rules`,
                                 # whose refusal says where the schema is instead
                                 introspection=True)
        g.graphql_observed = True
        graphql_metrics.observe(data, result, time.perf_counter() - started)
        # Every operation of the request (a batch has several) must be a query that
        # succeeded for its request line to count as a mere read.
        g.reads = g.get("reads", True) and not result.get("errors") and \
            graphql_metrics.is_query(data)
        return result

    @app.post("/graphql")
    def graphql() -> tuple[Response, int]:
        if not request.is_json:
            return _error_response("GRAPHQL_VALIDATION_FAILED",
                                   "send a JSON object {query, variables, operationName} "
                                   "with Content-Type: application/json", 400)
        try:
            data = parse_json_body(request.get_data(cache=False))
        except BodyError as exc:
            return _error_response("GRAPHQL_VALIDATION_FAILED", str(exc), 400)
        if isinstance(data, list):
            if not 1 <= len(data) <= limits.max_batch:
                return _error_response("GRAPHQL_VALIDATION_FAILED",
                                       f"a batch holds 1 to {limits.max_batch} operations "
                                       "(graphql.max_batch)", 400)
            return jsonify([execute(item) for item in data]), 200
        if not isinstance(data, dict):
            return _error_response("GRAPHQL_VALIDATION_FAILED",
                                   "send a JSON object {query, variables, operationName} "
                                   "with Content-Type: application/json", 400)
        return jsonify(execute(data)), 200

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
        principal = require("health")
        try:
            report: HealthReport = bridge.ask(GetHealth(g.request_id))
        except GatewayError as exc:
            return jsonify({"status": "unavailable", "reason": exc.message,
                            "version": __version__,
                            **_error_body(exc.code, exc.message)}), 503
        document = health_document(report, time.time(), principal.sessions)
        document["auth"] = {"required": authenticator.required, "principal": principal.name,
                            "role": principal.role}
        return jsonify(document), 200

    @app.get("/metrics")
    def metrics() -> Response:
        # AUTH: the "health" action (admin, viewer); a token limited to some sessions
        # sees only their series.
        principal = require("health")
        try:
            report: HealthReport | None = bridge.ask(GetHealth(g.request_id))
        except GatewayError:
            report = None  # wagate_actors_up 0; the web tier's own metrics still count
        return Response(render_metrics(report, principal.sessions), content_type=CONTENT_TYPE)

    @app.get("/admin/tokens")
    def admin_tokens() -> tuple[Response, int]:
        # An admin limited to some sessions sees only the tokens limited to (some of)
        # them: the others belong to whoever shares the gateway with it.
        principal = require("admin")
        now = time.time()
        entries = TokenFile(authenticator.token_path).entries().values()
        return jsonify({"tokens": [entry.public(now) for entry in entries
                                   if principal.covers(entry.sessions)]}), 200

    @app.errorhandler(GatewayError)
    def gateway_error(exc: GatewayError) -> tuple[Response, int]:
        status = {"FORBIDDEN": 403, "UNAUTHENTICATED": 401}.get(exc.code, 503)
        return _error_response(exc.code, exc.message, status)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> tuple[Response, int]:
        status = exc.code or 500
        if status == 413:
            return _error_response("GRAPHQL_VALIDATION_FAILED", "request body larger than "
                                   f"{limits.max_body_bytes} bytes (graphql.max_body_bytes)",
                                   413)
        if status == 404:
            return _error_response("NOT_FOUND", f"no such path {request.path}; the API is "
                                   "POST /graphql", 404)
        if status == 405:
            return _error_response("GRAPHQL_VALIDATION_FAILED",
                                   f"{request.method} is not allowed on {request.path}", 405)
        return _error_response("GRAPHQL_VALIDATION_FAILED", exc.description or exc.name, status)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception) -> tuple[Response, int]:
        request_id = g.get("request_id", "")
        log.error("unexpected error", error=repr(exc), exc_info=exc)
        return _error_response("INTERNAL", "internal error; report this request id to the "
                               f"operator: {request_id}", 500)

    return app


def make_authenticator(config: Config) -> Authenticator:
    auth = config.auth
    policy = NetworkPolicy(parse_networks(auth.allowed_networks, "auth.allowed_networks"),
                           parse_networks(auth.trusted_proxies, "auth.trusted_proxies"))
    authenticator = Authenticator(tokens_path(config), policy, auth.required)
    if auth.required:
        authenticator.load()
    return authenticator


def _only_read(status: int) -> bool:
    """This request only read and succeeded: a dashboard file, or GraphQL queries
    without errors (what a dashboard tab polls). Its request line may go to DEBUG."""
    if status not in (200, 304):
        return False
    if request.method == "GET":
        return request.path == "/" or request.path.startswith("/static/")
    return request.path == "/graphql" and bool(g.get("reads"))


def _is_public(path: str, method: str, explorer: bool) -> bool:
    """Paths that carry no data: probes, the dashboard's static files, the explorer's."""
    if path in PUBLIC_PATHS:
        return True
    if method == "GET" and (path == "/" or path.startswith("/static/")):
        return True
    return explorer and method == "GET" and is_explorer_path(path)


def _error_body(code: str, message: str) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code}}]}


def _error_response(code: str, message: str, status: int) -> tuple[Response, int]:
    return Response(json.dumps(_error_body(code, message)), mimetype="application/json"), status
