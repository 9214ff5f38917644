"""The hooks every request passes: its id, the gates before any view, the log line after.

Before any view runs: a request id (the client's ``X-Request-Id`` when it is
reasonable, else a fresh one), the network check, the Host and Origin checks (DNS
rebinding, other sites' pages: ``gateway.core.origins``), a CORS preflight's answer,
and (except the public paths) the token check, so a refused request costs no GraphQL
work. Every refusal is logged and handed to the audit log (``auth.failure``). What
each principal may do is checked per operation by the resolvers
(``gateway.api.context.authorize``).
"""

from __future__ import annotations

import time
import uuid

import structlog
from flask import Flask, Response, g, request

from gateway.api.errors import REQUEST_ID
from gateway.auth.tokens import Denied, Principal, check
from gateway.core.origins import cors_headers, preflight_headers
from gateway.web.errors import error_response
from gateway.web.explorer import is_explorer_path
from gateway.web.state import current

log = structlog.get_logger("wagate.http")

REQUEST_ID_HEADER = "X-Request-Id"
MAX_REQUEST_ID = 64  # characters of a client's X-Request-Id that are kept as is
# Paths that hold no data and so need no token (the network check still applies).
PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
NO_ROUTE = "(no route)"  # the audit's route for a path that matches no route
AUDIT_PATH_CHARS = 200  # of a refused request's path in the audit log


def install_hooks(app: Flask) -> None:
    app.before_request(start_request)
    app.after_request(finish_request)
    app.teardown_request(end_request)


def end_request(_: BaseException | None) -> None:
    """A worker thread answers many requests: none may name the previous one's id."""
    if "request_id_token" in g:
        REQUEST_ID.reset(g.pop("request_id_token"))


def start_request() -> tuple[Response, int] | None:
    """Name the request, then refuse it or let it through (a view runs only after None)."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    g.request_id = incoming if 0 < len(incoming) <= MAX_REQUEST_ID else uuid.uuid4().hex
    g.request_id_token = REQUEST_ID.set(g.request_id)  # for format_error, no Flask there
    g.started = time.perf_counter()
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=g.request_id)
    state = current()
    g.client_ip = state.authenticator.networks.client_address(
        request.remote_addr or "", request.headers.get("X-Forwarded-For"))
    denied = state.authenticator.check_network(g.client_ip) or check_browser()
    if denied is not None:
        return refuse(denied)
    if g.get("cors_origin") and request.method == "OPTIONS" and \
            "Access-Control-Request-Method" in request.headers:
        return Response(status=204, headers=preflight_headers(g.cors_origin)), 204
    if is_public(request.path, request.method, state.config.graphql.explorer):
        return None
    who = state.authenticator.authenticate(g.client_ip, request.headers.get("Authorization"),
                                           time.time())
    if isinstance(who, Denied):
        return refuse(who)
    g.principal = who
    structlog.contextvars.bind_contextvars(actor=who.name)
    return None


def check_browser() -> Denied | None:
    """DNS rebinding (the Host header) and other origins' pages (gateway/core/origins.py);
    an allowed other origin is remembered for its CORS headers."""
    browsers = current().browsers
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


def refuse(denied: Denied) -> tuple[Response, int]:
    """The refusal's response, after a log line and an ``auth.failure`` audit entry."""
    log.warning("request refused", path=request.path, ip=g.client_ip, code=denied.code,
                token=denied.token, status=denied.status)
    # Bursts are keyed on the route template, never on the path the client chose.
    rule = request.url_rule
    current().audit("auth.failure", ip=g.client_ip, route=rule.rule if rule else NO_ROUTE,
                    path=request.path[:AUDIT_PATH_CHARS], code=denied.code,
                    actor=denied.token, reason=denied.message)
    response, status = error_response(denied.code, denied.message, denied.status)
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="wagate"'
    return response, status


def require(action: str) -> Principal:
    """The request's principal, checked for ``action`` (raises GatewayError)."""
    principal: Principal = g.principal
    check(principal, action)
    return principal


def finish_request(response: Response) -> Response:
    """The request id, Vary and CORS headers, the request's log line, and a refused
    GraphQL request's metrics."""
    response.headers[REQUEST_ID_HEADER] = g.get("request_id", "")
    if "Origin" in request.headers:
        response.vary.add("Origin")  # CORS headers and refusals depend on it
    if g.get("cors_origin"):
        response.headers.update(cors_headers(g.cors_origin))
    if request.path not in PUBLIC_PATHS:  # probes are not worth a log line
        _log_request(response.status_code)
    if (request.path == "/graphql" and request.method == "POST"
            and not g.get("graphql_observed") and "started" in g):
        # Refused before any operation ran (token, size, not JSON): still a request.
        current().graphql_metrics.observe_refused(response.status_code,
                                                  time.perf_counter() - g.started)
    return response


def _log_request(status: int) -> None:
    quiet = current().config.logging.reads_at_debug and _only_read(status)
    (log.debug if quiet else log.info)(
        "request", method=request.method, path=request.path, status=status,
        operation=g.get("operation"), session=g.get("session"),
        ms=round((time.perf_counter() - g.get("started", 0)) * 1000, 2))


def _only_read(status: int) -> bool:
    """This request only read and succeeded: a dashboard file, or GraphQL queries
    without errors (what a dashboard tab polls). Its request line may go to DEBUG."""
    if status not in (200, 304):
        return False
    if request.method == "GET":
        return request.path == "/" or request.path.startswith("/static/")
    return request.path == "/graphql" and bool(g.get("reads"))


def is_public(path: str, method: str, explorer: bool) -> bool:
    """Paths that carry no data: probes, the dashboard's static files, the explorer's."""
    if path in PUBLIC_PATHS:
        return True
    if method == "GET" and (path == "/" or path.startswith("/static/")):
        return True
    return explorer and method == "GET" and is_explorer_path(path)
