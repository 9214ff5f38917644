"""User-visible errors in GraphQL answers: a stable ``extensions.code``, a message that
says what to do.

The error tree and the table of codes are ``gateway.core.errors`` (``GatewayError`` and
``ERROR_CODES`` are imported from there, and still importable from here). Resolvers
raise public errors of that tree; the formatter turns anything else into ``INTERNAL``
with the request id to look up in the logs, so no stack trace or internal message ever
reaches a client.

No Flask here: the web tier hands the request id over in ``REQUEST_ID``, a context
variable it sets when a request starts and resets when it ends (gateway/web/hooks.py).
"""

from __future__ import annotations

from contextvars import ContextVar
from typing import Any

import structlog
from graphql import GraphQLError

from gateway.core.errors import ERROR_CODES, GatewayError, WagateError

__all__ = ["ERROR_CODES", "REQUEST_ID", "GatewayError", "format_error"]

log = structlog.get_logger("wagate.api")

# The id of the request being answered ("" outside a request), named by INTERNAL errors.
REQUEST_ID: ContextVar[str] = ContextVar("wagate_request_id", default="")


def format_error(error: GraphQLError, debug: bool = False) -> dict[str, Any]:
    """Ariadne's error formatter: public errors keep their code, the rest are masked."""
    original = error.original_error
    formatted: dict[str, Any] = {"message": error.message}
    if error.locations:
        formatted["locations"] = [{"line": loc.line, "column": loc.column}
                                  for loc in error.locations]
    if error.path:
        formatted["path"] = error.path
    if isinstance(original, WagateError) and original.public:
        formatted["extensions"] = {"code": original.code, **original.extensions}
    elif original is None or (isinstance(original, GraphQLError) and not error.path):
        # Syntax or validation errors of the query document itself, and variables
        # that do not fit their declared types (graphql-core wraps the scalar's
        # GraphQLError; it happens before any resolver runs, so there is no path).
        formatted["extensions"] = {"code": "GRAPHQL_VALIDATION_FAILED"}
    else:
        request_id = REQUEST_ID.get()
        log.error("unexpected error in a resolver", error=repr(original), path=error.path,
                  exc_info=original)
        formatted["message"] = ("internal error; report this request id to the operator: "
                                f"{request_id}")
        formatted["extensions"] = {"code": "INTERNAL", "requestId": request_id}
    return formatted
