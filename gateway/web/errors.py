"""The web tier's error responses: one JSON shape for every refusal, as GraphQL's.

Every error the HTTP layer answers itself (a refused token, a 404, a body too large,
an exception no one expected) has the shape of a GraphQL error response,
``{"errors": [{"message", "extensions": {"code"}}]}``, so a client reads every
failure the same way. An unexpected exception becomes ``INTERNAL`` with the request
id to look up in the logs, never its text.
"""

from __future__ import annotations

import json
from typing import Any

import structlog
from flask import Flask, Response, g, request
from werkzeug.exceptions import HTTPException

from gateway.api.errors import GatewayError
from gateway.web.state import current

log = structlog.get_logger("wagate.http")


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"errors": [{"message": message, "extensions": {"code": code}}]}


def error_response(code: str, message: str, status: int) -> tuple[Response, int]:
    return Response(json.dumps(error_body(code, message)), mimetype="application/json"), status


def install_error_handlers(app: Flask) -> None:
    """On the app, not a blueprint: a path that matches no route reaches only the app's."""
    app.register_error_handler(GatewayError, gateway_error)
    app.register_error_handler(HTTPException, http_error)
    app.register_error_handler(Exception, unexpected)


def gateway_error(exc: GatewayError) -> tuple[Response, int]:
    status = {"FORBIDDEN": 403, "UNAUTHENTICATED": 401}.get(exc.code, 503)
    return error_response(exc.code, exc.message, status)


def http_error(exc: HTTPException) -> tuple[Response, int]:
    status = exc.code or 500
    if status == 413 and request.mimetype == "multipart/form-data":
        from gateway.web.uploads import max_body

        most = max_body(current().config)
        return error_response("INVALID_MEDIA", f"the upload is larger than {most} bytes, "
                              "more than any media may be (media.max_<kind>_mb)", 413)
    if status == 413:
        limit = current().config.graphql.max_body_bytes
        return error_response("GRAPHQL_VALIDATION_FAILED", "request body larger than "
                              f"{limit} bytes (graphql.max_body_bytes)", 413)
    if status == 404:
        return error_response("NOT_FOUND", f"no such path {request.path}; the API is "
                              "POST /graphql", 404)
    if status == 405:
        return error_response("GRAPHQL_VALIDATION_FAILED",
                              f"{request.method} is not allowed on {request.path}", 405)
    return error_response("GRAPHQL_VALIDATION_FAILED", exc.description or exc.name, status)


def unexpected(exc: Exception) -> tuple[Response, int]:
    request_id = g.get("request_id", "")
    log.error("unexpected error", error=repr(exc), exc_info=exc)
    return error_response("INTERNAL", "internal error; report this request id to the "
                          f"operator: {request_id}", 500)
