"""``/metrics``: the web tier's own metrics plus the actors', in Prometheus' text format.

gunicorn runs several worker processes and a scrape reaches only one of them, so
the web tier's counters use prometheus-client's multiprocess mode: every worker
writes its values to files in ``data_dir/run/metrics`` (``PROMETHEUS_MULTIPROC_DIR``,
set by ``wagate serve``, which empties the directory at start) and a scrape sums
the files of all workers, dead ones included. The actors' metrics are asked for at
scrape time (``GetHealth``) and added by ``ActorCollector``.

GraphQL requests are labelled by their root field (``sendWhatsAppNotification``),
never by the client's free-form ``operationName``, so the number of series stays
bounded whatever clients send.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import prometheus_client
from graphql import (
    DocumentNode,
    FieldNode,
    GraphQLSchema,
    OperationDefinitionNode,
    OperationType,
)
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.multiprocess import MultiProcessCollector

from actors.messages import HealthReport
from actors.outbox.numbers import NumberCheck
from gateway.auth.scope import Scope
from gateway.core.disk import Space
from gateway.core.errors import ERROR_CODES
from gateway.web.actor_metrics import ActorCollector, WebhookCollector
from gateway.web.allocated_metrics import install, tolerant
from gateway.web.metrics_files import MULTIPROC_ENV

# Text format 0.0.4: every Prometheus (2.x and 3.x) reads it, and our names need nothing newer.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
SEND_FIELDS = frozenset({"sendWhatsAppNotification", "sendWhatsAppMessage",
                         "testWhatsAppConnection", "sendWhatsAppMedia"})
MEDIA_FIELD = "sendWhatsAppMedia"
MEDIA_KINDS = frozenset({"IMAGE", "VIDEO", "AUDIO", "VOICE", "DOCUMENT", "STICKER"})
# Requests refused before any GraphQL ran (token, body size, not JSON), by HTTP status.
REFUSED_OUTCOMES = {401: "UNAUTHENTICATED", 403: "FORBIDDEN"}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

# ``_created`` series exist only in single-process mode: leave them out everywhere so
# that the output does not depend on how the web tier runs.
prometheus_client.disable_created_metrics()
# Worker files whose blocks are allocated first: a full disk must not kill a worker
# with SIGBUS (gateway/web/allocated_metrics.py).
install()

GRAPHQL_REQUESTS = Counter(
    "wagate_graphql_requests", "GraphQL operations by root field and outcome ('ok' or the "
    "error code)", ["operation", "outcome"], registry=None)
GRAPHQL_SECONDS = Histogram(
    "wagate_graphql_request_duration_seconds", "time to answer a GraphQL operation",
    ["operation"], buckets=LATENCY_BUCKETS, registry=None)
SEND_ERRORS = Counter(
    "wagate_send_errors", "send operations (sendWhatsAppNotification, sendWhatsAppMessage, "
    "testWhatsAppConnection) that returned an error, by error code", ["code"], registry=None)
MEDIA_MESSAGES = Counter(
    "wagate_media_messages", "sendWhatsAppMedia calls by kind and outcome ('accepted' or "
    "the error code: INVALID_MEDIA, RATE_LIMITED ...)", ["kind", "outcome"], registry=None)
NUMBER_LOOKUPS = Counter(
    "wagate_number_lookups", "numbers answered by a lookup (whatsAppCheckNumbers and the "
    "pre-send check), by outcome: on_whatsapp, not_on_whatsapp, or why it is unknown",
    ["outcome"], registry=None)
NUMBER_CACHE_HITS = Counter(
    "wagate_number_cache_hits", "numbers answered from the lookup cache (no query to "
    "WhatsApp)", registry=None)
# Why an answer is unknown; anything else is counted as "unknown" (bounded series).
LOOKUP_REASONS = frozenset({"NOT_CONNECTED", "TIMEOUT", "RATE_LIMITED", "IN_FLIGHT",
                            "LOOKUP_FAILED", "UNAVAILABLE"})
WEB_METRICS = (GRAPHQL_REQUESTS, GRAPHQL_SECONDS, SEND_ERRORS, NUMBER_LOOKUPS,
               NUMBER_CACHE_HITS, MEDIA_MESSAGES)


@tolerant
def observe_number_checks(checks: Sequence[NumberCheck]) -> None:
    """Count number answers: cache hits, and each lookup's outcome."""
    for check in checks:
        on, reason = check.on_whatsapp, check.reason
        if check.cached:
            NUMBER_CACHE_HITS.inc()
        elif on is None:
            NUMBER_LOOKUPS.labels(reason.lower() if reason in LOOKUP_REASONS
                                  else "unknown").inc()
        else:
            NUMBER_LOOKUPS.labels("on_whatsapp" if on else "not_on_whatsapp").inc()


def _observe_media(data: dict[str, Any], errors: list[Any]) -> None:
    """One sendWhatsAppMedia by its kind (only the schema's kinds: a label never takes
    a caller's free text) and outcome."""
    variables = data.get("variables")
    fields = variables.get("input") if isinstance(variables, dict) else None
    kind = fields.get("kind") if isinstance(fields, dict) else None
    label = kind if isinstance(kind, str) and kind in MEDIA_KINDS else "unknown"
    MEDIA_MESSAGES.labels(label, _code(errors[0]) if errors else "accepted").inc()


class GraphqlMetrics:
    """Counts and times GraphQL operations; one per web process (thread-safe: the
    instruments lock themselves, and the rest only reads)."""

    def __init__(self, schema: GraphQLSchema,
                 parse: Callable[[Any, dict[str, Any]], DocumentNode]) -> None:
        self.parse = parse  # the app's document cache: the text was just parsed
        self.fields = frozenset(
            name for root in (schema.query_type, schema.mutation_type) if root is not None
            for name in root.fields)

    @tolerant
    def observe(self, data: dict[str, Any], result: dict[str, Any], seconds: float) -> None:
        operation, aliases = self.operation(data)
        errors = result.get("errors") or []
        outcome = _code(errors[0]) if errors else "ok"
        GRAPHQL_REQUESTS.labels(operation, outcome).inc()
        GRAPHQL_SECONDS.labels(operation).observe(seconds)
        for error in errors:
            path = error.get("path") or []
            field = aliases.get(path[0]) if path else operation
            if field in SEND_FIELDS:
                SEND_ERRORS.labels(_code(error)).inc()
        if operation == MEDIA_FIELD:
            _observe_media(data, errors)

    @tolerant
    def observe_refused(self, status: int, seconds: float) -> None:
        """A POST /graphql answered before any operation ran."""
        outcome = REFUSED_OUTCOMES.get(status, "INTERNAL" if status >= 500
                                       else "GRAPHQL_VALIDATION_FAILED")
        GRAPHQL_REQUESTS.labels("none", outcome).inc()
        GRAPHQL_SECONDS.labels("none").observe(seconds)

    def is_query(self, data: dict[str, Any]) -> bool:
        """The chosen operation only reads (a query, not a mutation)."""
        try:
            document = self.parse(None, data)
        except Exception:  # not a string, or a syntax error: GraphQL said so already
            return False
        chosen = _chosen_operation(document, data.get("operationName"))
        return chosen is not None and chosen.operation == OperationType.QUERY

    def operation(self, data: dict[str, Any]) -> tuple[str, dict[str, str]]:
        """The operation's label and its root fields by response key.

        The label is the root field's name when there is exactly one (the usual
        case), ``multiple`` for several, ``introspection`` for ``__schema`` and the
        like, ``unknown`` for a field the schema lacks, ``invalid`` when the document
        does not parse or names no operation.
        """
        try:
            document = self.parse(None, data)
        except Exception:  # not a string, or a syntax error: GraphQL said so already
            return "invalid", {}
        chosen = _chosen_operation(document, data.get("operationName"))
        if chosen is None:
            return "invalid", {}
        selections = chosen.selection_set.selections
        aliases = {s.alias.value if s.alias else s.name.value: s.name.value
                   for s in selections if isinstance(s, FieldNode)}
        names = set(aliases.values())
        if len(aliases) != len(selections) or len(names) > 1:
            return "multiple", aliases
        if not names:
            return "invalid", aliases
        name = names.pop()
        if name.startswith("__"):
            return "introspection", aliases
        return (name if name in self.fields else "unknown"), aliases


def render(report: HealthReport | None, scope: Scope = None,
           webhooks: dict[str, Any] | None = None, free: Space | None = None) -> bytes:
    """The whole scrape: the web tier's metrics (every worker's) and the actors'. A
    token limited to some sessions (``scope``) gets their series only: the web tier's
    counters are of every client's requests, so they are left out too."""
    registry = CollectorRegistry(auto_describe=False)
    if scope is None:
        if os.environ.get(MULTIPROC_ENV):
            MultiProcessCollector(registry)
        else:  # one process (e.g. the app in a test): its own values are all there is
            registry.register(_Local())
    registry.register(ActorCollector(report, scope))
    if webhooks is not None and scope is None:
        registry.register(WebhookCollector(webhooks))
    if free is not None and scope is None:
        registry.register(_Storage(free))
    return generate_latest(registry)


class _Storage:
    """Free space on data_dir's file system, read at scrape time (statvfs)."""

    def __init__(self, free: Space) -> None:
        self.free = free

    def collect(self) -> Iterator[Metric]:
        free = GaugeMetricFamily("wagate_data_dir_free_bytes", "free space on data_dir's "
                                 "file system (below wagate_data_dir_min_free_bytes, sends are "
                                 "refused with DISK_FULL)", value=self.free.free_bytes)
        floor = GaugeMetricFamily("wagate_data_dir_min_free_bytes", "storage.min_free_mb, "
                                  "in bytes", value=self.free.min_free_bytes)
        yield free
        yield floor


class _Local:
    def collect(self) -> Iterator[Metric]:
        for metric in WEB_METRICS:
            yield from metric.collect()


def _chosen_operation(document: DocumentNode, name: Any) -> OperationDefinitionNode | None:
    operations = [d for d in document.definitions if isinstance(d, OperationDefinitionNode)]
    if isinstance(name, str) and name:
        return next((o for o in operations if o.name and o.name.value == name), None)
    return operations[0] if len(operations) == 1 else None


def _code(error: dict[str, Any]) -> str:
    code = (error.get("extensions") or {}).get("code")
    return code if code in ERROR_CODES else "OTHER"
