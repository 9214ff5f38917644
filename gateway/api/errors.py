"""User-visible errors: a stable ``extensions.code``, a message that says what to do.

Resolvers raise ``GatewayError``; the formatter turns anything else into ``INTERNAL``
with the request id to look up in the logs, so no stack trace or internal message
ever reaches a client.
"""

from __future__ import annotations

from typing import Any

import structlog
from graphql import GraphQLError

log = structlog.get_logger("wagate.api")

# Codes of the product specification, then ours.
ERROR_CODES = frozenset({
    "NOT_CONNECTED", "RATE_LIMITED", "INVALID_NUMBER", "SEND_FAILED", "QR_EXPIRED",
    "UNAUTHENTICATED", "FORBIDDEN", "INVALID_MESSAGE", "INVALID_SESSION", "SESSION_LIMIT",
    "UNAVAILABLE", "INTERNAL", "GRAPHQL_VALIDATION_FAILED", "PAIRING_FAILED", "NOT_FOUND",
    "IDEMPOTENCY_KEY_REUSED", "SEND_UNCONFIRMED", "NOT_ON_WHATSAPP",
    "UNKNOWN_SESSION", "SESSION_IN_USE",
})


class GatewayError(Exception):
    def __init__(self, code: str, message: str, **extensions: Any) -> None:
        super().__init__(message)
        assert code in ERROR_CODES, code
        self.code = code
        self.message = message
        self.extensions = extensions


def format_error(error: GraphQLError, debug: bool = False) -> dict[str, Any]:
    """Ariadne's error formatter: known errors keep their code, the rest are masked."""
    from flask import g, has_app_context

    from gateway.core.validation import ValidationError

    original = error.original_error
    formatted: dict[str, Any] = {"message": error.message}
    if error.locations:
        formatted["locations"] = [{"line": loc.line, "column": loc.column}
                                  for loc in error.locations]
    if error.path:
        formatted["path"] = error.path
    if isinstance(original, GatewayError):
        formatted["extensions"] = {"code": original.code, **original.extensions}
    elif isinstance(original, ValidationError):
        formatted["extensions"] = {"code": original.code, "field": original.field}
    elif original is None or (isinstance(original, GraphQLError) and not error.path):
        # Syntax or validation errors of the query document itself, and variables
        # that do not fit their declared types (graphql-core wraps the scalar's
        # GraphQLError; it happens before any resolver runs, so there is no path).
        formatted["extensions"] = {"code": "GRAPHQL_VALIDATION_FAILED"}
    else:
        request_id = g.get("request_id", "") if has_app_context() else ""
        log.error("unexpected error in a resolver", error=repr(original), path=error.path,
                  exc_info=original)
        formatted["message"] = ("internal error; report this request id to the operator: "
                                f"{request_id}")
        formatted["extensions"] = {"code": "INTERNAL", "requestId": request_id}
    return formatted
