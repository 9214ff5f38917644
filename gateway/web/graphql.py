"""The GraphQL endpoint: ``POST /graphql`` (one operation or a batch), ``GET /graphql``
(the explorer page when ``graphql.explorer`` is on).

The body is read by ``gateway.web.request_body`` (no recursion, no unpaired
surrogates) before graphql-core sees it; every operation of a batch runs on its own,
with the same context: the request's principal, id and client address, the bridge and
the caches (the keys are the resolvers' contract with the web tier).
"""

from __future__ import annotations

import json
import time
from typing import Any

from ariadne import graphql_sync
from flask import Blueprint, Response, g, request

from gateway.api.context import RequestContext
from gateway.api.errors import format_error
from gateway.web.errors import error_body, error_response
from gateway.web.explorer import page_response
from gateway.web.hooks import require
from gateway.web.metrics import observe_number_checks
from gateway.web.request_body import BodyError, parse_json_body
from gateway.web.state import WebState, current
from gateway.web.uploads import MULTIPART, discard_uploads, multipart_operations

# Ariadne logs every GraphQL error with a traceback, expected ones (NOT_CONNECTED,
# RATE_LIMITED ...) included. format_error logs the unexpected ones itself.
GRAPHQL_ERROR_LOGGER = "wagate.graphql.errors"
SEND_JSON = ("send a JSON object {query, variables, operationName} "
             "with Content-Type: application/json (or, with files, a multipart/form-data "
             "request by the GraphQL multipart request specification)")

graphql_blueprint = Blueprint("graphql", __name__)


@graphql_blueprint.get("/graphql")
def explorer() -> tuple[Response, int]:
    if not current().config.graphql.explorer:
        return error_response("NOT_FOUND", "the GraphQL explorer is off "
                              "(graphql.explorer); POST queries to /graphql", 404)
    return page_response(), 200


@graphql_blueprint.post("/graphql")
def graphql() -> tuple[Response, int]:
    if request.mimetype == MULTIPART:  # an upload (sendWhatsAppMedia)
        # Before a byte of the body is stored: a token that may not send never makes
        # the gateway write an upload (its session is checked by the resolver).
        require("send")
        try:
            return _answer(multipart_operations(request, current().config))
        except BodyError as exc:
            return error_response("GRAPHQL_VALIDATION_FAILED", str(exc), 400)
        finally:
            discard_uploads()
    if not request.is_json:
        return error_response("GRAPHQL_VALIDATION_FAILED", SEND_JSON, 400)
    try:
        data = parse_json_body(request.get_data(cache=False))
    except BodyError as exc:
        return error_response("GRAPHQL_VALIDATION_FAILED", str(exc), 400)
    return _answer(data)


def _answer(data: Any) -> tuple[Response, int]:
    """One operation, or a batch, as parsed from the body."""
    if isinstance(data, list):
        max_batch = current().config.graphql.max_batch
        if not 1 <= len(data) <= max_batch:
            return error_response("GRAPHQL_VALIDATION_FAILED",
                                  f"a batch holds 1 to {max_batch} operations "
                                  "(graphql.max_batch)", 400)
        return _json([execute(item) for item in data]), 200
    if not isinstance(data, dict):
        return error_response("GRAPHQL_VALIDATION_FAILED", SEND_JSON, 400)
    return _json(execute(data)), 200


def _json(result: Any) -> Response:
    """The result with its fields in the query's order, as GraphQL asks of an ordered
    format (Flask's ``jsonify`` sorts keys, which also cost a tenth of a 500-event
    ``whatsAppEvents`` page)."""
    return Response(json.dumps(result, separators=(",", ":")), mimetype="application/json")


def execute(data: Any) -> dict[str, Any]:
    """One operation of the request; its result, errors included (never raises)."""
    if not isinstance(data, dict):
        return error_body("GRAPHQL_VALIDATION_FAILED", "each operation must be a JSON object "
                          "{query, variables, operationName}")
    g.operation = data.get("operationName")
    variables = data.get("variables")
    if isinstance(variables, dict) and isinstance(variables.get("session"), str):
        g.session = variables["session"]
    state = current()
    started = time.perf_counter()
    _, result = graphql_sync(state.schema, data, context_value=_context(state),
                             error_formatter=format_error, debug=False,
                             logger=GRAPHQL_ERROR_LOGGER,
                             query_parser=state.documents.parser,
                             query_validator=state.documents.validator,
                             validation_rules=state.rules,
                             # graphql.introspection = false is enforced by `rules`,
                             # whose refusal says where the schema is instead
                             introspection=True)
    g.graphql_observed = True
    state.graphql_metrics.observe(data, result, time.perf_counter() - started)
    # Every operation of the request (a batch has several) must be a query that
    # succeeded for its request line to count as a mere read.
    g.reads = g.get("reads", True) and not result.get("errors") and \
        state.graphql_metrics.is_query(data)
    return result


def _context(state: WebState) -> RequestContext:
    """What the resolvers see of the request and of the web process."""
    return RequestContext(bridge=state.bridge, config=state.config, principal=g.principal,
                          audit=state.audit, snapshots=state.snapshots,
                          numbers=state.numbers, request_id=g.request_id,
                          client_ip=g.client_ip, observe_numbers=observe_number_checks)
